//! The hello two nodes exchange on the first bidirectional stream of a new connection, and the
//! acceptor's verdict on it. Sans-IO: bytes and the node's view of its cluster in, a decision
//! out; [`super::accept`] and [`super::peer`] move the bytes.
//!
//! Wire format (both directions, big-endian):
//!
//! ```text
//! u16 version (1) | u64 node id | u8 name length (1..=64) | cluster name (ASCII)
//! ```
//!
//! The dialler sends its hello and finishes the stream; the acceptor answers with its own hello
//! when it accepts, or closes the connection with [`close::REFUSED`] and the reason as close
//! reason when it refuses (a CONNECTION_CLOSE frame reaches the dialler reliably, stream data
//! written right before a close may not). The dialler then checks that the answer comes from
//! the node it dialled, so two peers configured with swapped addresses never exchange frames.
//!
//! TLS has already proved that both certificates come from the cluster CA. The hello adds what
//! a CA cannot tell apart: the cluster (one CA may serve several clusters) and the node id,
//! which must be a configured peer whose configured address the presented certificate names
//! (node certificates carry the IP SANs their peers dial), so a node cannot claim another
//! node's id.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mimid_cluster::NodeId;
use rustls::pki_types::CertificateDer;

use crate::config::{check_cluster_name, MAX_CLUSTER_NAME_LEN};
use crate::metrics::HandshakeRefusal;

/// The version of the hello and of everything after it on a connection.
pub(crate) const PROTOCOL_VERSION: u16 = 1;

/// The largest hello: version, node id, name length and the longest name.
pub(crate) const MAX_HELLO_BYTES: usize = 2 + 8 + 1 + MAX_CLUSTER_NAME_LEN;

/// Application close codes of node-to-node connections (RFC 9000 §19.19).
pub(crate) mod close {
    use quinn::VarInt;

    /// The node is shutting down, or the peer was removed.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// The hello was refused; the close reason says why.
    pub(crate) const REFUSED: VarInt = VarInt::from_u32(1);
    /// A record exceeded `cluster.max_frame_bytes`.
    pub(crate) const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(2);
    /// The peer broke the stream protocol (a truncated record, a malformed hello answer).
    pub(crate) const PROTOCOL: VarInt = VarInt::from_u32(3);
    /// The dialler replaced the connection (the peer's address changed).
    pub(crate) const REPLACED: VarInt = VarInt::from_u32(4);
}

/// What a node says about itself when a connection opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The sender's node id.
    pub(crate) node_id: NodeId,
    /// The sender's `cluster.name`.
    pub(crate) cluster: String,
}

/// Why a hello could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    /// Another protocol version; nothing after the version is read.
    #[error("protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    Version(u16),
    /// Not a hello of this version.
    #[error("malformed hello: {0}")]
    Malformed(&'static str),
}

/// The acceptor's refusal: the metric label and a short reason for the log and the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The metric label.
    pub(crate) reason: HandshakeRefusal,
    /// Why, in a sentence fragment (ASCII, a few dozen bytes).
    pub(crate) detail: String,
}

/// What the acceptor checks a hello against.
pub(crate) struct Expectation<'a> {
    /// This node's id.
    pub(crate) own_id: NodeId,
    /// This node's `cluster.name`.
    pub(crate) cluster: &'a str,
    /// The configured peers and their addresses.
    pub(crate) peers: &'a BTreeMap<NodeId, SocketAddr>,
    /// The leaf certificate the dialler presented (verified against the cluster CA).
    pub(crate) certificate: Option<&'a CertificateDer<'a>>,
}

impl Hello {
    /// The hello's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let name = self.cluster.as_bytes();
        assert!(
            !name.is_empty() && name.len() <= MAX_CLUSTER_NAME_LEN,
            "cluster names are checked before a hello is built"
        );
        let mut bytes = Vec::with_capacity(MAX_HELLO_BYTES);
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        bytes.extend_from_slice(&self.node_id.to_be_bytes());
        bytes.push(u8::try_from(name.len()).expect("at most MAX_CLUSTER_NAME_LEN"));
        bytes.extend_from_slice(name);
        bytes
    }

    /// Decodes exactly one hello; trailing bytes are an error.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        let (version, rest) = split_array::<2>(bytes).ok_or(HelloError::Malformed("truncated"))?;
        let version = u16::from_be_bytes(version);
        if version != PROTOCOL_VERSION {
            return Err(HelloError::Version(version));
        }
        let (node_id, rest) = split_array::<8>(rest).ok_or(HelloError::Malformed("truncated"))?;
        let ([name_len], name) =
            split_array::<1>(rest).ok_or(HelloError::Malformed("truncated"))?;
        if name.len() != usize::from(name_len) {
            return Err(HelloError::Malformed("name length does not match"));
        }
        let cluster = std::str::from_utf8(name)
            .ok()
            .filter(|name| check_cluster_name(name).is_ok())
            .ok_or(HelloError::Malformed("not a cluster name"))?;
        Ok(Hello {
            node_id: u64::from_be_bytes(node_id),
            cluster: cluster.to_owned(),
        })
    }
}

impl Expectation<'_> {
    /// Accepts `hello` from a dialler, or says why not. Order matters only for which reason a
    /// hello that is wrong in several ways is counted under: the cluster first (a node of another
    /// cluster is not "unknown", it is elsewhere), then the id, then the certificate.
    pub(crate) fn judge(&self, hello: &Hello) -> Result<(), Refusal> {
        let refuse = |reason, detail: String| Err(Refusal { reason, detail });
        if hello.cluster != self.cluster {
            return refuse(
                HandshakeRefusal::ClusterName,
                format!(
                    "cluster {:?} is not this node's cluster {:?}",
                    hello.cluster, self.cluster
                ),
            );
        }
        if hello.node_id == self.own_id {
            return refuse(
                HandshakeRefusal::OwnNodeId,
                format!("node id {} is this node's own", hello.node_id),
            );
        }
        let Some(addr) = self.peers.get(&hello.node_id) else {
            return refuse(
                HandshakeRefusal::UnknownNode,
                format!("node id {} is not a configured peer", hello.node_id),
            );
        };
        let named = self
            .certificate
            .is_some_and(|cert| crate::tls::cert_names_ip(cert, addr.ip()));
        if !named {
            return refuse(
                HandshakeRefusal::Identity,
                format!(
                    "the certificate does not name {}, the address of node {}",
                    addr.ip(),
                    hello.node_id
                ),
            );
        }
        Ok(())
    }
}

impl Refusal {
    /// A refusal for a hello that could not be decoded.
    pub(crate) fn undecodable(err: &HelloError) -> Refusal {
        let reason = match err {
            HelloError::Version(_) => HandshakeRefusal::Version,
            HelloError::Malformed(_) => HandshakeRefusal::Malformed,
        };
        Refusal {
            reason,
            detail: err.to_string(),
        }
    }
}

fn split_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, rest) = bytes.split_at_checked(N)?;
    Some((
        head.try_into().expect("split_at_checked returned N bytes"),
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertAuthority, SubjectName};
    use std::time::{Duration, SystemTime};

    fn hello(node_id: NodeId, cluster: &str) -> Hello {
        Hello {
            node_id,
            cluster: cluster.into(),
        }
    }

    #[test]
    fn hello_round_trips_and_has_the_documented_layout() {
        let bytes = hello(0x0102, "mimid").encode();
        assert_eq!(
            bytes,
            [&[0, 1][..], &[0, 0, 0, 0, 0, 0, 1, 2], &[5], b"mimid"].concat()
        );
        assert_eq!(Hello::decode(&bytes), Ok(hello(0x0102, "mimid")));
        let longest = "x".repeat(MAX_CLUSTER_NAME_LEN);
        let bytes = hello(u64::MAX, &longest).encode();
        assert_eq!(bytes.len(), MAX_HELLO_BYTES);
        assert_eq!(Hello::decode(&bytes), Ok(hello(u64::MAX, &longest)));
    }

    #[test]
    fn malformed_hellos_are_errors_never_panics() {
        let good = hello(2, "mimid").encode();
        for cut in 0..good.len() {
            assert!(
                matches!(Hello::decode(&good[..cut]), Err(HelloError::Malformed(_))),
                "{cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Hello::decode(&trailing),
            Err(HelloError::Malformed("name length does not match"))
        );
        let mut empty_name = good[..10].to_vec();
        empty_name.push(0);
        assert_eq!(
            Hello::decode(&empty_name),
            Err(HelloError::Malformed("not a cluster name"))
        );
        let mut bad_name = good.clone();
        *bad_name.last_mut().unwrap() = b' ';
        assert_eq!(
            Hello::decode(&bad_name),
            Err(HelloError::Malformed("not a cluster name"))
        );
        let mut other_version = good.clone();
        other_version[1] = 2;
        assert_eq!(Hello::decode(&other_version), Err(HelloError::Version(2)));
        assert_eq!(Hello::decode(&[0, 9]), Err(HelloError::Version(9)));
        assert_eq!(
            Refusal::undecodable(&HelloError::Version(9)).reason,
            HandshakeRefusal::Version
        );
    }

    #[test]
    fn the_acceptor_refuses_other_clusters_unknown_ids_its_own_id_and_foreign_identities() {
        let now = SystemTime::now();
        let ca = CertAuthority::generate(now, Duration::from_secs(3600)).unwrap();
        let node2 = ca
            .issue(
                &[SubjectName::Ip("10.0.0.2".parse().unwrap())],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let peers = BTreeMap::from([
            (2, "10.0.0.2:7443".parse().unwrap()),
            (3, "10.0.0.3:7443".parse().unwrap()),
        ]);
        let expect = Expectation {
            own_id: 1,
            cluster: "mimid",
            peers: &peers,
            certificate: Some(node2.cert_der()),
        };
        let reason = |hello: &Hello| expect.judge(hello).map_err(|r| r.reason);
        assert_eq!(reason(&hello(2, "mimid")), Ok(()));
        for (hello, expected) in [
            (hello(2, "other"), HandshakeRefusal::ClusterName),
            (hello(9, "other"), HandshakeRefusal::ClusterName),
            (hello(1, "mimid"), HandshakeRefusal::OwnNodeId),
            (hello(4, "mimid"), HandshakeRefusal::UnknownNode),
            // Node 2's certificate claiming node 3.
            (hello(3, "mimid"), HandshakeRefusal::Identity),
        ] {
            assert_eq!(reason(&hello), Err(expected), "{hello:?}");
        }
        let without_certificate = Expectation {
            certificate: None,
            ..expect
        };
        assert_eq!(
            without_certificate
                .judge(&hello(2, "mimid"))
                .map_err(|r| r.reason),
            Err(HandshakeRefusal::Identity)
        );
        let refusal = expect.judge(&hello(2, "other")).unwrap_err();
        assert!(refusal.detail.contains("\"other\""), "{}", refusal.detail);
    }
}
