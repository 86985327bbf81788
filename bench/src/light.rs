//! Light members: clients that register, publish KeyPackages and (optionally) read their push
//! stream through the real client API, without an MLS group of their own. They are real
//! members of the rooms they are added to (their KeyPackages are real openmls KeyPackages, the
//! hub adds them with a real Commit and Welcome, MIMI.md §6.2), but they never process their
//! Welcome and never decrypt: a push stream reader counts the items it is pushed.
//!
//! What they are for:
//! - large rooms (large-room-fanout): 1,000 members that each joined from a Welcome would
//!   verify a 1,000-leaf ratchet tree each at set-up and decrypt every message during the
//!   phase, so the generator, not the provider, would be measured. A light member's cost per
//!   delivery is its QUIC receive and one frame decode.
//! - members that are only ever added and removed (commit-churn): registered with enough
//!   KeyPackages ("pregenerated"), over one connection for many users.
//!
//! Registration, KeyPackages and streams use the wire types of `mimid_node::wire::client`
//! (node/API.md) over `mimid_node::h3::H3Client`; several light members may share one QUIC
//! connection (their requests carry their own bearer tokens).

use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mimid_actors::ids::ClientId;
use mimid_actors::policy::room_leaf_capabilities;
use mimid_node::api::PREFIX;
use mimid_node::client::{Endpoint, CIPHERSUITE};
use mimid_node::h3::{ClientLimits, H3Client, H3ClientError};
use mimid_node::wire::client::{
    PublishKeyPackagesRequest, RegisterClientRequest, RegisterClientResponse,
};
use mimid_node::wire::types::IdentifierUri;
use mimid_node::wire::{Decode, Encode, Limits, Mls};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tokio::sync::mpsc;

/// KeyPackages per publish request (the node's default `limits.max_key_packages_per_publish`).
pub const PUBLISH_BATCH: usize = 100;

/// A connection to a provider shared by light members.
#[derive(Clone)]
pub struct Connection {
    http: Arc<H3Client>,
}

impl Connection {
    /// Opens a QUIC connection to `endpoint`.
    ///
    /// Cancel safety: safe; a dropped attempt leaves nothing running.
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Connection> {
        let tls =
            mimid_node::tls::client_config(endpoint.roots.clone()).context("TLS configuration")?;
        let http = H3Client::connect(
            endpoint.addr,
            &endpoint.server_name,
            tls,
            ClientLimits::default(),
        )
        .await
        .with_context(|| format!("connecting to {}", endpoint.addr))?;
        Ok(Connection {
            http: Arc::new(http),
        })
    }

    /// Closes the connection (after every stream on it ended or was dropped).
    pub async fn close(&self) {
        self.http.close().await;
    }
}

/// A registered client without an MLS group: its id and bearer token, on a connection.
pub struct LightMember {
    id: ClientId,
    token: String,
    connection: Connection,
}

impl LightMember {
    /// Registers `id` (the first client of its user) over `connection`.
    ///
    /// Cancel safety: safe to drop; the client may or may not be registered.
    pub async fn register(connection: &Connection, id: ClientId) -> anyhow::Result<LightMember> {
        let body = RegisterClientRequest {
            client: IdentifierUri::new(id.as_bytes()),
        }
        .to_bytes()
        .context("encoding a registration")?;
        let (status, _, bytes) = connection
            .http
            .request(
                Method::POST,
                &format!("{PREFIX}register"),
                HeaderMap::new(),
                body.into(),
            )
            .await
            .with_context(|| format!("registering {id}"))?;
        check(status, StatusCode::CREATED, &bytes).with_context(|| format!("registering {id}"))?;
        let response = RegisterClientResponse::from_bytes(&bytes, &Limits::default())
            .context("decoding the registration's answer")?;
        let token = String::from_utf8(response.token).context("the token is not UTF-8")?;
        Ok(LightMember {
            id,
            token,
            connection: connection.clone(),
        })
    }

    pub fn id(&self) -> &ClientId {
        &self.id
    }

    fn auth(&self) -> anyhow::Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .context("the token is not a header value")?;
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(headers)
    }

    /// Generates `count` single-use KeyPackages of this client (its own fresh signature key,
    /// the capabilities every room requires) and publishes them, [`PUBLISH_BATCH`] per
    /// request. The private keys are dropped: the client never joins from its Welcome.
    ///
    /// Cancel safety: safe to drop; some batches may be published.
    pub async fn publish_key_packages(&self, count: usize) -> anyhow::Result<()> {
        let id = self.id.clone();
        let key_packages = tokio::task::spawn_blocking(move || key_packages(&id, count))
            .await
            .context("the KeyPackage task panicked")??;
        for batch in key_packages.chunks(PUBLISH_BATCH) {
            let body = PublishKeyPackagesRequest {
                key_packages: batch.to_vec(),
                last_resort: false,
            }
            .to_bytes()
            .context("encoding KeyPackages")?;
            let (status, _, bytes) = self
                .connection
                .http
                .request(
                    Method::POST,
                    &format!("{PREFIX}keyPackages"),
                    self.auth()?,
                    body.into(),
                )
                .await
                .with_context(|| format!("publishing {}'s KeyPackages", self.id))?;
            check(status, StatusCode::CREATED, &bytes)
                .with_context(|| format!("publishing {}'s KeyPackages", self.id))?;
        }
        Ok(())
    }

    /// Opens this client's push stream: the chunks of its body, as they arrive (frames of
    /// `DeliveredItem`s, see `FrameDecoder`).
    ///
    /// Cancel safety: safe; a dropped call resets its stream.
    pub async fn open_stream(
        &self,
    ) -> anyhow::Result<mpsc::Receiver<Result<Bytes, H3ClientError>>> {
        let (status, chunks) = self
            .connection
            .http
            .stream(
                Method::GET,
                &format!("{PREFIX}stream"),
                self.auth()?,
                Bytes::new(),
            )
            .await
            .with_context(|| format!("opening {}'s push stream", self.id))?;
        if status != StatusCode::OK {
            bail!("{}'s push stream was refused: {status}", self.id);
        }
        Ok(chunks)
    }
}

/// `count` KeyPackages of client `id`, encoded for a publish request (CPU-bound: call off the
/// runtime's workers).
pub fn key_packages(
    id: &ClientId,
    count: usize,
) -> anyhow::Result<Vec<Mls<openmls::prelude::KeyPackageIn>>> {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
        .map_err(|e| anyhow::anyhow!("signature key: {e:?}"))?;
    let credential = CredentialWithKey {
        credential: BasicCredential::new(id.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    (0..count)
        .map(|_| {
            let bundle = KeyPackage::builder()
                .leaf_node_capabilities(room_leaf_capabilities())
                .build(CIPHERSUITE, &provider, &signer, credential.clone())
                .map_err(|e| anyhow::anyhow!("KeyPackage of {id}: {e:?}"))?;
            let bytes = bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(|e| anyhow::anyhow!("encoding a KeyPackage: {e:?}"))?;
            Mls::from_bytes(&bytes).context("a KeyPackage that does not decode")
        })
        .collect()
}

fn check(status: StatusCode, expected: StatusCode, body: &[u8]) -> anyhow::Result<()> {
    if status == expected {
        Ok(())
    } else {
        bail!(
            "the provider answered {status}: {}",
            String::from_utf8_lossy(body)
        )
    }
}
