//! The hello two nodes exchange on the first bidirectional stream of a new connection, and the
//! acceptor's verdict on it. Sans-IO: bytes and the node's view of its cluster in, a decision
//! out; [`super::accept`] and [`super::peer`] move the bytes.
//!
//! Wire format (both directions, big-endian):
//!
//! ```text
//! u16 version (2) | u64 node id | u8 name length (1..=64) | cluster name (ASCII)
//! | u8 membership: 0 static (cluster.peers), 1 joining (cluster.join, no cluster id yet),
//!                  2 member (cluster.join) followed by the 16-byte cluster id
//! | u8 address: 0 none, 4 followed by an IPv4 address, 6 followed by an IPv6 address,
//!               then u16 port: the sender's node-to-node address as others dial it
//! ```
//!
//! The dialler sends its hello and finishes the stream; the acceptor answers with its own hello
//! when it accepts, or closes the connection with [`close::REFUSED`] and the reason as close
//! reason when it refuses (a CONNECTION_CLOSE frame reaches the dialler reliably, stream data
//! written right before a close may not). The dialler then checks that the answer comes from
//! the node it dialled, so two peers configured with swapped addresses never exchange frames.
//! Version 1 (before `cluster.join`) had neither membership nor address; nodes of both
//! versions refuse each other ("version"), so a cluster upgrades all its nodes together.
//!
//! TLS has already proved that both certificates come from the cluster CA. The hello adds what
//! a CA cannot tell apart: the cluster (one CA may serve several clusters: by name, and for a
//! cluster formed by `mimid init` by its cluster id, [`reconcile`]) and the node id, which must
//! be a known peer whose known address the presented certificate names (node certificates carry
//! the IP SANs their peers dial), so a node cannot claim another node's id. A node using
//! `cluster.join` also admits nodes it does not know yet, if they use `cluster.join` too and
//! their certificate names the address they give in their hello ([`Admitted::address`]); the
//! transport then adds them to its peers. A node without a cluster id that meets a node with
//! one adopts it ([`Admitted::adopt`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use mimid_actors::cluster_meta::ClusterId;
use mimid_cluster::NodeId;
use rustls::pki_types::CertificateDer;

use crate::config::{check_cluster_name, MAX_CLUSTER_NAME_LEN};
use crate::metrics::HandshakeRefusal;

/// The version of the hello and of everything after it on a connection.
pub(crate) const PROTOCOL_VERSION: u16 = 2;

/// The largest hello: version, node id, name length and the longest name, membership and a
/// cluster id, an IPv6 address and a port.
pub(crate) const MAX_HELLO_BYTES: usize = 2 + 8 + 1 + MAX_CLUSTER_NAME_LEN + 1 + 16 + 1 + 16 + 2;

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
    /// The connection is replaced: the peer's address changed, or this node learned its
    /// cluster id and renews every connection so that each hello carries it.
    pub(crate) const REPLACED: VarInt = VarInt::from_u32(4);
}

/// How a node forms its cluster, as its hello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// `cluster.peers` and `cluster.voters`: the cluster has no id.
    Static,
    /// `cluster.join`, with the cluster id once the node knows it (`None`: not initialized).
    Join(Option<ClusterId>),
}

/// What a node says about itself when a connection opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The sender's node id.
    pub(crate) node_id: NodeId,
    /// The sender's `cluster.name`.
    pub(crate) cluster: String,
    /// How the sender forms its cluster, with its cluster id.
    pub(crate) membership: Membership,
    /// The sender's node-to-node address as others dial it, when it has a usable one.
    pub(crate) listen: Option<SocketAddr>,
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
    /// How this node forms its cluster, with its cluster id.
    pub(crate) membership: Membership,
    /// The known peers and their addresses.
    pub(crate) peers: &'a BTreeMap<NodeId, SocketAddr>,
    /// The leaf certificate the dialler presented (verified against the cluster CA).
    pub(crate) certificate: Option<&'a CertificateDer<'a>>,
}

/// An accepted hello, and what the acceptor learned from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The cluster id this node (not initialized yet) takes from the dialler.
    pub(crate) adopt: Option<ClusterId>,
    /// The dialler's address, to add it to the peers (a node not known yet) or to move it
    /// there (a known node on a new port of its certified address); `None`: nothing to change.
    pub(crate) address: Option<SocketAddr>,
}

/// Whether a node of `own` membership may talk to one of `theirs`, and the cluster id this node
/// must adopt to do so. Both sides run it: the acceptor on the dialler's hello, the dialler on
/// the answer.
///
/// - Two static nodes: as before cluster ids existed (the name decides).
/// - A static node and a node using `cluster.join`: never (the static cluster has no id to
///   compare, and a joining node must not be taken into a cluster that was not initialized).
/// - Two nodes using `cluster.join`: refused when both have cluster ids and they differ; a node
///   without one (not initialized) adopts the other's; two without are fine.
pub(crate) fn reconcile(own: Membership, theirs: Membership) -> Result<Option<ClusterId>, String> {
    match (own, theirs) {
        (Membership::Static, Membership::Static) => Ok(None),
        (Membership::Static, Membership::Join(_)) => {
            Err("it uses cluster.join, this node the static cluster.peers: not one cluster".into())
        }
        (Membership::Join(_), Membership::Static) => {
            Err("it uses the static cluster.peers, this node cluster.join: not one cluster".into())
        }
        (Membership::Join(None), Membership::Join(theirs)) => Ok(theirs),
        (Membership::Join(Some(_)), Membership::Join(None)) => Ok(None),
        (Membership::Join(Some(own)), Membership::Join(Some(theirs))) if own == theirs => Ok(None),
        (Membership::Join(Some(own)), Membership::Join(Some(theirs))) => Err(format!(
            "cluster id {theirs} is not this node's cluster id {own}"
        )),
    }
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
        match self.membership {
            Membership::Static => bytes.push(0),
            Membership::Join(None) => bytes.push(1),
            Membership::Join(Some(id)) => {
                bytes.push(2);
                bytes.extend_from_slice(id.as_bytes());
            }
        }
        match self.listen {
            None => bytes.push(0),
            Some(addr) => {
                match addr.ip() {
                    IpAddr::V4(ip) => {
                        bytes.push(4);
                        bytes.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        bytes.push(6);
                        bytes.extend_from_slice(&ip.octets());
                    }
                }
                bytes.extend_from_slice(&addr.port().to_be_bytes());
            }
        }
        assert!(bytes.len() <= MAX_HELLO_BYTES);
        bytes
    }

    /// Decodes exactly one hello; trailing bytes are an error.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        let truncated = HelloError::Malformed("truncated");
        let (version, rest) = split_array::<2>(bytes).ok_or(truncated.clone())?;
        let version = u16::from_be_bytes(version);
        if version != PROTOCOL_VERSION {
            return Err(HelloError::Version(version));
        }
        let (node_id, rest) = split_array::<8>(rest).ok_or(truncated.clone())?;
        let ([name_len], rest) = split_array::<1>(rest).ok_or(truncated.clone())?;
        let (name, rest) = rest
            .split_at_checked(usize::from(name_len))
            .ok_or(truncated.clone())?;
        let cluster = std::str::from_utf8(name)
            .ok()
            .filter(|name| check_cluster_name(name).is_ok())
            .ok_or(HelloError::Malformed("not a cluster name"))?;
        let ([membership], rest) = split_array::<1>(rest).ok_or(truncated.clone())?;
        let (membership, rest) = match membership {
            0 => (Membership::Static, rest),
            1 => (Membership::Join(None), rest),
            2 => {
                let (id, rest) = split_array::<16>(rest).ok_or(truncated.clone())?;
                (Membership::Join(Some(ClusterId::from_bytes(id))), rest)
            }
            _ => return Err(HelloError::Malformed("unknown membership")),
        };
        let ([family], rest) = split_array::<1>(rest).ok_or(truncated.clone())?;
        let (ip, rest): (Option<IpAddr>, &[u8]) = match family {
            0 => (None, rest),
            4 => {
                let (ip, rest) = split_array::<4>(rest).ok_or(truncated.clone())?;
                (Some(IpAddr::from(ip)), rest)
            }
            6 => {
                let (ip, rest) = split_array::<16>(rest).ok_or(truncated.clone())?;
                (Some(IpAddr::from(ip)), rest)
            }
            _ => return Err(HelloError::Malformed("unknown address family")),
        };
        let (listen, rest) = match ip {
            None => (None, rest),
            Some(ip) => {
                let (port, rest) = split_array::<2>(rest).ok_or(truncated.clone())?;
                (Some(SocketAddr::new(ip, u16::from_be_bytes(port))), rest)
            }
        };
        if !rest.is_empty() {
            return Err(HelloError::Malformed("trailing bytes"));
        }
        Ok(Hello {
            node_id: u64::from_be_bytes(node_id),
            cluster: cluster.to_owned(),
            membership,
            listen,
        })
    }
}

impl Expectation<'_> {
    /// Accepts `hello` from a dialler, or says why not. Order matters only for which reason a
    /// hello that is wrong in several ways is counted under: the cluster first (a node of another
    /// cluster is not "unknown", it is elsewhere: its name, then its cluster id), then the id,
    /// then the certificate.
    pub(crate) fn judge(&self, hello: &Hello) -> Result<Admitted, Refusal> {
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
        let adopt = match reconcile(self.membership, hello.membership) {
            Ok(adopt) => adopt,
            Err(detail) => {
                return refuse(
                    HandshakeRefusal::ClusterId,
                    format!("node {}: {detail}", hello.node_id),
                )
            }
        };
        if hello.node_id == self.own_id {
            return refuse(
                HandshakeRefusal::OwnNodeId,
                format!("node id {} is this node's own", hello.node_id),
            );
        }
        let joining = matches!(self.membership, Membership::Join(_));
        let names = |ip: IpAddr| {
            self.certificate
                .is_some_and(|cert| crate::tls::cert_names_ip(cert, ip))
        };
        match (self.peers.get(&hello.node_id), hello.listen) {
            (Some(known), listen) => {
                if !names(known.ip()) {
                    return refuse(
                        HandshakeRefusal::Identity,
                        format!(
                            "the certificate does not name {}, the address of node {}",
                            known.ip(),
                            hello.node_id
                        ),
                    );
                }
                // A joining node that restarted on another port of its certified address.
                let moved =
                    listen.filter(|listen| joining && listen != known && listen.ip() == known.ip());
                Ok(Admitted {
                    adopt,
                    address: moved,
                })
            }
            (None, _) if !joining => refuse(
                HandshakeRefusal::UnknownNode,
                format!("node id {} is not a configured peer", hello.node_id),
            ),
            (None, None) => refuse(
                HandshakeRefusal::Identity,
                format!(
                    "node {} is not known here and gives no address to check its \
                     certificate against",
                    hello.node_id
                ),
            ),
            (None, Some(listen)) if !names(listen.ip()) => refuse(
                HandshakeRefusal::Identity,
                format!(
                    "the certificate does not name {}, the address node {} gives",
                    listen.ip(),
                    hello.node_id
                ),
            ),
            (None, Some(listen)) => Ok(Admitted {
                adopt,
                address: Some(listen),
            }),
        }
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

    const A: ClusterId = ClusterId::from_bytes([0xaa; 16]);
    const B: ClusterId = ClusterId::from_bytes([0xbb; 16]);

    fn hello(node_id: NodeId, cluster: &str) -> Hello {
        Hello {
            node_id,
            cluster: cluster.into(),
            membership: Membership::Static,
            listen: None,
        }
    }

    fn joining(node_id: NodeId, id: Option<ClusterId>, listen: &str) -> Hello {
        Hello {
            membership: Membership::Join(id),
            listen: Some(listen.parse().unwrap()),
            ..hello(node_id, "mimid")
        }
    }

    #[test]
    fn hello_round_trips_and_has_the_documented_layout() {
        let bytes = hello(0x0102, "mimid").encode();
        assert_eq!(
            bytes,
            [
                &[0, 2][..],
                &[0, 0, 0, 0, 0, 0, 1, 2],
                &[5],
                b"mimid",
                &[0],
                &[0]
            ]
            .concat()
        );
        assert_eq!(Hello::decode(&bytes), Ok(hello(0x0102, "mimid")));
        let member = joining(3, Some(A), "10.0.0.3:7443");
        let bytes = member.encode();
        assert_eq!(
            bytes,
            [
                &[0, 2][..],
                &[0, 0, 0, 0, 0, 0, 0, 3],
                &[5],
                b"mimid",
                &[2],
                &[0xaa; 16],
                &[4, 10, 0, 0, 3],
                &7443u16.to_be_bytes()
            ]
            .concat()
        );
        assert_eq!(Hello::decode(&bytes), Ok(member));
        let waiting = joining(4, None, "[fd00::4]:7443");
        assert_eq!(Hello::decode(&waiting.encode()), Ok(waiting));
        let longest = Hello {
            cluster: "x".repeat(MAX_CLUSTER_NAME_LEN),
            ..joining(u64::MAX, Some(B), "[fd00::4]:65535")
        };
        let bytes = longest.encode();
        assert_eq!(bytes.len(), MAX_HELLO_BYTES);
        assert_eq!(Hello::decode(&bytes), Ok(longest));
    }

    #[test]
    fn malformed_hellos_are_errors_never_panics() {
        let good = joining(2, Some(A), "[fd00::2]:7443").encode();
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
            Err(HelloError::Malformed("trailing bytes"))
        );
        let static_hello = hello(2, "mimid").encode();
        let mut empty_name = static_hello[..10].to_vec();
        empty_name.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            Hello::decode(&empty_name),
            Err(HelloError::Malformed("not a cluster name"))
        );
        let mut bad_name = static_hello.clone();
        bad_name[11] = b' ';
        assert_eq!(
            Hello::decode(&bad_name),
            Err(HelloError::Malformed("not a cluster name"))
        );
        let mut bad_membership = static_hello.clone();
        bad_membership[16] = 3;
        assert_eq!(
            Hello::decode(&bad_membership),
            Err(HelloError::Malformed("unknown membership"))
        );
        let mut bad_family = static_hello.clone();
        bad_family[17] = 5;
        assert_eq!(
            Hello::decode(&bad_family),
            Err(HelloError::Malformed("unknown address family"))
        );
        let mut other_version = static_hello.clone();
        other_version[1] = 1;
        assert_eq!(Hello::decode(&other_version), Err(HelloError::Version(1)));
        assert_eq!(Hello::decode(&[0, 9]), Err(HelloError::Version(9)));
        assert_eq!(
            Refusal::undecodable(&HelloError::Version(9)).reason,
            HandshakeRefusal::Version
        );
    }

    /// Issue 4 bootstrap: which memberships talk to each other, and who adopts a cluster id.
    #[test]
    fn cluster_ids_are_reconciled_adopted_or_refused() {
        use Membership::{Join, Static};
        let cases = [
            (Static, Static, Ok(None)),
            (Static, Join(None), Err(())),
            (Static, Join(Some(A)), Err(())),
            (Join(None), Static, Err(())),
            (Join(Some(A)), Static, Err(())),
            (Join(None), Join(None), Ok(None)),
            (Join(None), Join(Some(A)), Ok(Some(A))),
            (Join(Some(A)), Join(None), Ok(None)),
            (Join(Some(A)), Join(Some(A)), Ok(None)),
            (Join(Some(A)), Join(Some(B)), Err(())),
        ];
        for (own, theirs, expected) in cases {
            assert_eq!(
                reconcile(own, theirs).map_err(drop),
                expected,
                "{own:?} meeting {theirs:?}"
            );
        }
        let reason = reconcile(Join(Some(A)), Join(Some(B))).unwrap_err();
        assert!(reason.contains(&B.to_string()) && reason.contains(&A.to_string()));
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
            membership: Membership::Static,
            peers: &peers,
            certificate: Some(node2.cert_der()),
        };
        let reason = |hello: &Hello| expect.judge(hello).map_err(|r| r.reason);
        assert_eq!(reason(&hello(2, "mimid")), Ok(Admitted::default()));
        for (hello, expected) in [
            (hello(2, "other"), HandshakeRefusal::ClusterName),
            (hello(9, "other"), HandshakeRefusal::ClusterName),
            (hello(1, "mimid"), HandshakeRefusal::OwnNodeId),
            (hello(4, "mimid"), HandshakeRefusal::UnknownNode),
            // Node 2's certificate claiming node 3.
            (hello(3, "mimid"), HandshakeRefusal::Identity),
            // A node using cluster.join at a statically configured node.
            (
                joining(2, None, "10.0.0.2:7443"),
                HandshakeRefusal::ClusterId,
            ),
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

    /// Issue 4 bootstrap: a node using `cluster.join` admits nodes it does not know when their
    /// certificate names the address they give, adopts a cluster id while it has none, and
    /// refuses another cluster's id, a static node, and a certificate for another address.
    #[test]
    fn a_joining_acceptor_admits_new_nodes_by_certificate_and_checks_cluster_ids() {
        let now = SystemTime::now();
        let ca = CertAuthority::generate(now, Duration::from_secs(3600)).unwrap();
        let node2 = ca
            .issue(
                &[SubjectName::Ip("10.0.0.2".parse().unwrap())],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let peers = BTreeMap::from([(3, "10.0.0.3:7443".parse().unwrap())]);
        let acceptor = |membership| Expectation {
            own_id: 1,
            cluster: "mimid",
            membership,
            peers: &peers,
            certificate: Some(node2.cert_der()),
        };
        let new_node = Admitted {
            adopt: None,
            address: Some("10.0.0.2:7443".parse().unwrap()),
        };
        // Not initialized: anyone joining is admitted, and a member's id is adopted.
        let waiting = acceptor(Membership::Join(None));
        assert_eq!(
            waiting.judge(&joining(2, None, "10.0.0.2:7443")),
            Ok(new_node)
        );
        assert_eq!(
            waiting.judge(&joining(2, Some(A), "10.0.0.2:7443")),
            Ok(Admitted {
                adopt: Some(A),
                ..new_node
            })
        );
        // A member of A admits nodes not initialized and members of A, never B's.
        let member = acceptor(Membership::Join(Some(A)));
        assert_eq!(
            member.judge(&joining(2, None, "10.0.0.2:7443")),
            Ok(new_node)
        );
        assert_eq!(
            member.judge(&joining(2, Some(A), "10.0.0.2:7443")),
            Ok(new_node)
        );
        let reason = |hello: &Hello| member.judge(hello).map_err(|r| r.reason);
        for (hello, expected) in [
            (
                joining(2, Some(B), "10.0.0.2:7443"),
                HandshakeRefusal::ClusterId,
            ),
            (hello(2, "mimid"), HandshakeRefusal::ClusterId),
            // The certificate names 10.0.0.2, not the address given.
            (
                joining(2, Some(A), "10.0.0.9:7443"),
                HandshakeRefusal::Identity,
            ),
            (
                Hello {
                    listen: None,
                    ..joining(2, Some(A), "10.0.0.2:7443")
                },
                HandshakeRefusal::Identity,
            ),
            // Node 2's certificate claiming known node 3.
            (
                joining(3, Some(A), "10.0.0.2:7443"),
                HandshakeRefusal::Identity,
            ),
            (
                joining(1, Some(A), "10.0.0.2:7443"),
                HandshakeRefusal::OwnNodeId,
            ),
        ] {
            assert_eq!(reason(&hello), Err(expected), "{hello:?}");
        }
        let refusal = member
            .judge(&joining(2, Some(B), "10.0.0.2:7443"))
            .unwrap_err();
        assert!(
            refusal.detail.contains(&B.to_string()),
            "{}",
            refusal.detail
        );
    }

    #[test]
    fn a_known_joining_node_moves_to_a_new_port_of_its_certified_address() {
        let now = SystemTime::now();
        let ca = CertAuthority::generate(now, Duration::from_secs(3600)).unwrap();
        let node2 = ca
            .issue(
                &[SubjectName::Ip("10.0.0.2".parse().unwrap())],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let peers = BTreeMap::from([(2, "10.0.0.2:7443".parse().unwrap())]);
        let member = Expectation {
            own_id: 1,
            cluster: "mimid",
            membership: Membership::Join(Some(A)),
            peers: &peers,
            certificate: Some(node2.cert_der()),
        };
        assert_eq!(
            member.judge(&joining(2, Some(A), "10.0.0.2:7443")),
            Ok(Admitted::default())
        );
        assert_eq!(
            member.judge(&joining(2, Some(A), "10.0.0.2:7500")),
            Ok(Admitted {
                adopt: None,
                address: Some("10.0.0.2:7500".parse().unwrap())
            })
        );
    }
}
