//! Credential ↔ client identity, in one place (MIMI.md §2: "the hub needs a function
//! credential → (user URI, client URI); make it pluggable").
//!
//! mimid's clients use MLS BasicCredentials whose identity is the UTF-8 client URI
//! (`mimi://<domain>/d/<user>/<client>`); the user is derived from the client URI
//! ([`ClientId::user`]). X.509 or pseudonymous credentials (identity-05, protocol-06 §6) would be
//! added here.

use openmls::credentials::{BasicCredential, Credential, CredentialType};
use thiserror::Error;

use crate::ids::{ClientId, UriError};

/// Why a credential does not name a client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("credential type {0} is not supported (basic credentials only)")]
    UnsupportedCredential(u16),
    #[error("credential identity is not a client URI: {0}")]
    NotAClientUri(#[from] UriError),
}

/// The client a leaf credential names.
pub fn client_of_credential(credential: &Credential) -> Result<ClientId, IdentityError> {
    match credential.credential_type() {
        // A basic credential's serialized content is its identity bytes.
        CredentialType::Basic => Ok(ClientId::from_bytes(credential.serialized_content())?),
        other => Err(IdentityError::UnsupportedCredential(u16::from(other))),
    }
}

/// The credential a client puts into its leaves and KeyPackages.
pub fn credential_of_client(client: &ClientId) -> Credential {
    BasicCredential::new(client.as_bytes().to_vec()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credential_round_trips_the_client_uri() {
        let client = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        assert_eq!(
            client_of_credential(&credential_of_client(&client)).unwrap(),
            client
        );
    }

    #[test]
    fn rejects_other_credential_types_and_non_client_identities() {
        let x509 = Credential::new(CredentialType::X509, b"mimi://a.example/d/a/b".to_vec());
        assert_eq!(
            client_of_credential(&x509),
            Err(IdentityError::UnsupportedCredential(2))
        );
        let user = BasicCredential::new(b"mimi://a.example/u/alice".to_vec()).into();
        assert!(matches!(
            client_of_credential(&user),
            Err(IdentityError::NotAClientUri(_))
        ));
    }
}
