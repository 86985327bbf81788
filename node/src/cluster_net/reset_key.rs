//! The node-to-node endpoint's connection-id key and stateless-reset key (RFC 9000 §5.1,
//! §10.3), derived from the node's private key so they are the same in every run of the node.
//!
//! Why: when a node is killed, its peers' connections to it stay open until their idle timeout
//! (nothing tells them the process is gone), and the frames they send meanwhile are lost. When
//! the node comes back on the same address, its new endpoint receives those packets for
//! connections it does not know and answers each with a stateless reset. A peer accepts a reset
//! only for a connection id it takes for one of its own, and the peer accepts the reset only if
//! its token matches the one the *old* process issued for that connection id, which quinn
//! derives from the endpoint's reset key. quinn's defaults defeat both: its connection-id
//! generator embeds a keyed hash checked with a key random per run (so the new process drops the
//! packets as foreign), and its reset key is random per run (so a reset would not match). Here
//! connection ids are plain random 8-byte ids that every run accepts as possibly its own (quinn's
//! `RandomConnectionIdGenerator` behaviour; a reset is never larger than the packet that
//! prompted it, so answering foreign ids amplifies nothing), and the reset key is HMAC-SHA256 of
//! the node's TLS private key under a fixed label: secret as long as that key is, distinct for
//! every node, the same in every run. The restarted node's reset then closes the stale
//! connection at once and the peer dials the new process.

use std::sync::Arc;

use quinn::crypto::{CryptoError, HmacKey};

use crate::franking::hmac_sha256;

/// Label separating this use of the node's private key from any other.
const RESET_LABEL: &[u8] = b"mimid cluster_net stateless reset key v1";

/// Length of the connection ids this endpoint issues (quinn's default).
const CID_LEN: usize = 8;

/// The endpoint configuration of the node whose TLS private key (DER) is `private_key_der`:
/// quinn's defaults except the reset key and the connection-id generator.
pub(crate) fn endpoint_config(private_key_der: &[u8]) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(Arc::new(ResetKey::derive(private_key_der)));
    config.cid_generator(|| Box::new(RandomCids));
    config
}

/// Random connection ids, every one accepted by `validate` (its default), so a restarted node
/// answers its predecessor's ids with a stateless reset.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; CID_LEN]>())
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The reset key: HMAC-SHA256 keyed with a secret derived from the node's private key.
pub(crate) struct ResetKey([u8; 32]);

impl ResetKey {
    /// The reset key of the node whose TLS private key (DER) is `private_key_der`.
    pub(crate) fn derive(private_key_der: &[u8]) -> ResetKey {
        ResetKey(hmac_sha256(RESET_LABEL, &[private_key_der]))
    }
}

impl HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        signature_out.copy_from_slice(&hmac_sha256(&self.0, &[data]));
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let expected = hmac_sha256(&self.0, &[data]);
        // Every byte is compared, so the time taken does not say where a forgery went wrong.
        let differ = signature.len() != expected.len()
            || expected
                .iter()
                .zip(signature)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0;
        if differ {
            Err(CryptoError)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_private_key_gives_the_same_tokens_and_another_key_other_tokens() {
        let (a, a_again, b) = (
            ResetKey::derive(b"node a key"),
            ResetKey::derive(b"node a key"),
            ResetKey::derive(b"node b key"),
        );
        let mut token = [0u8; 32];
        a.sign(b"connection id", &mut token);
        let mut again = [0u8; 32];
        a_again.sign(b"connection id", &mut again);
        assert_eq!(
            token, again,
            "a restarted node issues the tokens it issued before"
        );
        assert!(a_again.verify(b"connection id", &token).is_ok());
        assert!(b.verify(b"connection id", &token).is_err());
        assert!(a.verify(b"other connection id", &token).is_err());
        let mut altered = token;
        altered[31] ^= 1;
        assert!(a.verify(b"connection id", &altered).is_err());
        assert!(a.verify(b"connection id", &token[..31]).is_err());
    }
}
