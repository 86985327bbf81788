//! rustls configurations for the HTTP/3 listener and for outgoing HTTP/3 connections, and
//! reading the identity a verified peer presented.
//!
//! We build the rustls configs ourselves instead of using quinn's `with_single_cert`, because
//! that helper disables client authentication and accepts 0-RTT, and we want neither:
//! - Client certificates are *optional* but verified against the configured CA when presented,
//!   so one listener serves clients (who authenticate with bearer tokens) and mutually
//!   authenticated peer providers (MIMI protocol-06 §4.1 requires mutual TLS between
//!   providers; the `From`/`Host` binding to the certificate happens above this module).
//! - Early data is off (`max_early_data_size = 0`): 0-RTT requests can be replayed, and MIMI's
//!   POSTs (`/update`, `/submitMessage`, …) are not idempotent at the transport layer.
//!
//! ring is the one crypto provider, passed explicitly through `builder_with_provider`, so the
//! process-wide default provider (which another dependency could install) never matters.
//! QUIC requires TLS 1.3 (RFC 9001 §4.2), so both sides offer only TLS 1.3, with ALPN `h3`
//! (RFC 9114 §3.1).
//!
//! The node-to-node transport has configs of its own ([`cluster_server_config`],
//! [`cluster_client_config`]): ALPN `mimid-cluster/1`, and client certificates *required*,
//! verified against the cluster CA (`[cluster.tls] ca`), never the provider CA.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::config::TlsFiles;

/// The ALPN protocol id of HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";

/// The ALPN protocol id of the node-to-node transport ([`crate::cluster_net`]). The version is
/// part of the id, so nodes of an incompatible release fail the handshake instead of
/// misreading each other's streams.
pub const ALPN_CLUSTER: &[u8] = b"mimid-cluster/1";

/// Why TLS material could not be loaded or a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error, including malformed PEM.
        source: std::io::Error,
    },
    /// A PEM file holds no item of the expected kind.
    #[error("{} holds no {what}", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What was expected, e.g. "certificate".
        what: &'static str,
    },
    /// A CA certificate cannot serve as a trust anchor.
    #[error("{} holds a CA certificate that cannot be a trust anchor: {reason}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why rustls rejected it.
        reason: String,
    },
    /// rustls rejected the configuration (e.g. a key that does not match the certificate).
    #[error("cannot build the TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier cannot be built (e.g. no trust anchors).
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The listener's identity and the CA its peers' certificates are verified against, loaded from
/// [`TlsFiles`].
#[derive(Debug)]
pub struct TlsMaterial {
    /// Certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors for peer certificates.
    pub roots: Arc<RootCertStore>,
}

impl TlsMaterial {
    /// Reads the three PEM files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(TlsMaterial {
            cert_chain: read_cert_chain(&files.cert)?,
            key: read_private_key(&files.key)?,
            roots: Arc::new(read_roots(&files.client_ca)?),
        })
    }
}

/// The crypto provider every config in this crate uses: ring, never the process default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTP/3 listener's config: TLS 1.3, ALPN `h3`, no 0-RTT, client certificates optional but
/// verified against `material.roots` when presented.
pub fn server_config(material: &TlsMaterial) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.cert_chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// An outgoing config that trusts `roots` and presents no client certificate (a client of the
/// client API, which authenticates with a bearer token instead).
pub fn client_config(roots: Arc<RootCertStore>) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    Ok(config)
}

/// An outgoing config that trusts `roots` and authenticates with `cert_chain`/`key`, as a
/// provider calling a peer provider (MIMI protocol-06 §4.1) or a node calling a node.
pub fn client_config_with_identity(
    roots: Arc<RootCertStore>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(cert_chain, key)?;
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    Ok(config)
}

/// The node-to-node listener's config: TLS 1.3, ALPN `mimid-cluster/1` only (a client offering
/// only `h3` fails the handshake with `no_application_protocol`), no 0-RTT, and a client
/// certificate *required* and verified against `material.roots`, the cluster CA: only nodes
/// of the cluster may connect.
pub fn cluster_server_config(material: &TlsMaterial) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider.clone())
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.cert_chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_CLUSTER.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The node-to-node dialler's config: TLS 1.3, ALPN `mimid-cluster/1`, no 0-RTT, the node
/// certificate as client identity, and the server's certificate verified against the cluster
/// CA (`material.roots`) and the name the caller connects to (a node's IP address: node
/// certificates carry IP SANs).
pub fn cluster_client_config(material: &TlsMaterial) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = client_config_with_identity(
        material.roots.clone(),
        material.cert_chain.clone(),
        material.key.clone_key(),
    )?;
    config.alpn_protocols = vec![ALPN_CLUSTER.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The leaf certificate the peer of `conn` presented, verified during the handshake; `None`
/// when it presented none.
pub fn peer_leaf_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}

/// Whether `cert` names `ip` in an iPAddress subjectAltName entry. An unparsable certificate
/// names nothing.
pub fn cert_names_ip(cert: &CertificateDer<'_>, ip: std::net::IpAddr) -> bool {
    let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let name = rustls::pki_types::ServerName::IpAddress(ip.into());
    parsed.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The DNS names (subjectAltName dNSName entries) of the certificate the peer of `conn`
/// presented, or an empty list when it presented none.
///
/// rustls verified the certificate against the configured CA during the handshake (a
/// certificate that fails verification aborts the handshake), so the names can be trusted as
/// the peer's identity, e.g. for the `From` check of MIMI protocol-06 §4.1.
pub fn peer_dns_names(conn: &quinn::Connection) -> Vec<String> {
    let Some(identity) = conn.peer_identity() else {
        return Vec::new();
    };
    match identity.downcast::<Vec<CertificateDer<'static>>>() {
        Ok(chain) => chain.first().map(cert_dns_names).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// The dNSName entries of `cert`'s subjectAltName extension. An unparsable certificate has
/// none.
pub fn cert_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(parsed) => parsed.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads every certificate of a PEM file, in order.
pub fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut reader = open_pem(path)?;
    let chain = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(chain)
}

/// Reads the first private key of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut reader = open_pem(path)?;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        })
}

/// Reads the CA certificates of a PEM file into a trust store; every certificate must be
/// usable, so a typo in an operator's bundle fails loudly instead of shrinking trust silently.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_cert_chain(path)? {
        roots.add(cert).map_err(|err| TlsError::BadCa {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    }
    Ok(roots)
}

fn open_pem(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertAuthority, SubjectName};
    use std::time::{Duration, SystemTime};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn material(dir: &Path) -> (TlsFiles, CertAuthority) {
        let now = SystemTime::now();
        let ca = CertAuthority::generate(now, 30 * DAY).expect("ca");
        let ca_files = ca.save(dir).expect("save ca");
        let leaf = ca
            .issue(&[SubjectName::Dns("a.example".into())], now, DAY)
            .expect("issue");
        let leaf_files = leaf.save(dir, "provider").expect("save leaf");
        (
            TlsFiles {
                cert: leaf_files.cert,
                key: leaf_files.key,
                client_ca: ca_files.cert,
            },
            ca,
        )
    }

    #[test]
    fn server_config_requires_h3_and_refuses_early_data() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = material(dir.path());
        let loaded = TlsMaterial::load(&files).expect("load");
        assert_eq!(loaded.cert_chain.len(), 1);
        assert_eq!(loaded.roots.len(), 1);
        let config = server_config(&loaded).expect("server config");
        assert_eq!(config.alpn_protocols, vec![b"h3".to_vec()]);
        assert_eq!(config.max_early_data_size, 0);
        quinn::crypto::rustls::QuicServerConfig::try_from(config).expect("QUIC-compatible");
    }

    #[test]
    fn client_configs_offer_h3() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = material(dir.path());
        let loaded = TlsMaterial::load(&files).expect("load");
        let anonymous = client_config(loaded.roots.clone()).expect("client config");
        assert_eq!(anonymous.alpn_protocols, vec![b"h3".to_vec()]);
        assert!(!anonymous.client_auth_cert_resolver.has_certs());
        let mutual = client_config_with_identity(
            loaded.roots.clone(),
            loaded.cert_chain.clone(),
            loaded.key.clone_key(),
        )
        .expect("client config with identity");
        assert!(mutual.client_auth_cert_resolver.has_certs());
        quinn::crypto::rustls::QuicClientConfig::try_from(mutual).expect("QUIC-compatible");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (files, ca) = material(dir.path());
        let other = ca
            .issue(
                &[SubjectName::Dns("b.example".into())],
                SystemTime::now(),
                DAY,
            )
            .expect("issue");
        let other_files = other.save(dir.path(), "other").expect("save");
        let mismatched = TlsFiles {
            key: other_files.key,
            ..files
        };
        let loaded = TlsMaterial::load(&mismatched).expect("files parse");
        let err = server_config(&loaded).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");
    }

    #[test]
    fn missing_and_empty_pem_files_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.pem");
        let err = read_cert_chain(&absent).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
        assert!(err.to_string().contains("absent.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        assert!(matches!(
            read_cert_chain(&empty),
            Err(TlsError::Missing {
                what: "certificate",
                ..
            })
        ));
        assert!(matches!(
            read_private_key(&empty),
            Err(TlsError::Missing {
                what: "private key",
                ..
            })
        ));
    }

    #[test]
    fn cluster_configs_speak_only_mimid_cluster_and_require_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = material(dir.path());
        let loaded = TlsMaterial::load(&files).expect("load");
        let server = cluster_server_config(&loaded).expect("server config");
        assert_eq!(server.alpn_protocols, vec![b"mimid-cluster/1".to_vec()]);
        assert_eq!(server.max_early_data_size, 0);
        quinn::crypto::rustls::QuicServerConfig::try_from(server).expect("QUIC-compatible");
        let client = cluster_client_config(&loaded).expect("client config");
        assert_eq!(client.alpn_protocols, vec![b"mimid-cluster/1".to_vec()]);
        assert!(!client.enable_early_data);
        assert!(client.client_auth_cert_resolver.has_certs());
        quinn::crypto::rustls::QuicClientConfig::try_from(client).expect("QUIC-compatible");
    }

    #[test]
    fn ip_names_come_from_the_subject_alt_name() {
        let ca = CertAuthority::generate(SystemTime::now(), DAY).expect("ca");
        let leaf = ca
            .issue(
                &[
                    SubjectName::Ip("10.0.0.7".parse().unwrap()),
                    SubjectName::Dns("node7.a.example".into()),
                ],
                SystemTime::now(),
                DAY,
            )
            .expect("issue");
        assert!(cert_names_ip(leaf.cert_der(), "10.0.0.7".parse().unwrap()));
        assert!(!cert_names_ip(leaf.cert_der(), "10.0.0.8".parse().unwrap()));
        assert!(!cert_names_ip(
            &CertificateDer::from(vec![1, 2, 3]),
            "10.0.0.7".parse().unwrap()
        ));
    }

    #[test]
    fn dns_names_come_from_the_subject_alt_name() {
        let ca = CertAuthority::generate(SystemTime::now(), DAY).expect("ca");
        let leaf = ca
            .issue(
                &[
                    SubjectName::Dns("a.example".into()),
                    SubjectName::Ip("127.0.0.1".parse().unwrap()),
                    SubjectName::Dns("node1.a.example".into()),
                ],
                SystemTime::now(),
                DAY,
            )
            .expect("issue");
        assert_eq!(
            cert_dns_names(leaf.cert_der()),
            vec!["a.example".to_string(), "node1.a.example".to_string()]
        );
        assert!(cert_dns_names(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }
}
