//! Idempotent retries of `/update` and `/submitMessage` (MIMI.md §7.6 [IMPL CHOICE]).
//!
//! protocol-06 has no idempotency key for these endpoints, yet a client regularly cannot know
//! whether its request took effect: the connection broke, or the replication layer answered
//! "dropped" while the entry may still commit. Resending the same bytes must then not produce
//! a second log item (a duplicate application message) nor a misleading `wrongEpoch` for a
//! Commit that in fact won its epoch. The room therefore remembers the verdict of every
//! request it accepted, keyed by a digest of who sent what, and answers a resend with the
//! original verdict without changing anything.
//!
//! Only accepted requests are remembered. A refusal leaves no trace in replicated state
//! (ARCHITECTURE.md invariants): a resent refused request is simply evaluated again and, since
//! the room's epoch, membership and policy only change through Commits (which move the epoch),
//! gets the same refusal or a `wrongEpoch`/`epochTooOld` telling the client to catch up. Either
//! way nothing of it took effect, which is all a retrying client needs to learn. Keeping
//! refusals out also means that clients which are not members, or that send garbage, cannot
//! push out other clients' entries or grow the replicated state.
//!
//! The key covers the authenticated sender (a local client, or a peer provider and the user it
//! speaks for), so replaying someone else's bytes is a different
//! request: it goes through normal validation and never reveals the other client's verdict.
//!
//! Bounds, all deterministic (decided in apply from stamped hub time, identical on every
//! replica and in snapshots): at most [`RETRY_CACHE_CAPACITY`] entries per room, the oldest
//! evicted first; entries older than [`RETRY_WINDOW_MS`] of hub time no longer answer and are
//! dropped when the next request is accepted or at housekeeping. A resend after either bound
//! is treated as a new request; clients must tolerate duplicates of their own messages anyway
//! (MIMI.md §5.4, §7.6).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::command::HandshakeBundle;

/// Most remembered requests per room. In a busy room this covers the last 1024 accepted
/// requests, ~50 bytes each in a snapshot.
pub const RETRY_CACHE_CAPACITY: usize = 1024;

/// How long (hub time) an accepted request's verdict is replayed to a resend: long enough for a
/// client that lost its connection to come back and retry, short enough that idle rooms shed
/// the cache at the next housekeeping.
pub const RETRY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Domain separation of the digest, versioned with the encoding below.
const KEY_DOMAIN: &[u8] = b"mimid retry key v1";

/// SHA-256 over (sender, request kind, request bytes), unambiguously encoded.
pub type RequestKey = [u8; 32];

/// Which endpoint and shape a request had; part of the key, so a commit and an application
/// message with equal bytes never share an entry.
#[derive(Clone, Copy)]
enum RequestKind {
    Commit = 1,
    Proposals = 2,
    AppMessage = 3,
}

/// Builds a key: every variable-length field is preceded by its length, every optional one by
/// a presence byte, so different requests never encode to the same digest input.
struct KeyHasher(Sha256);

impl KeyHasher {
    fn new(sender: &[u8], kind: RequestKind) -> Self {
        let mut hasher = KeyHasher(Sha256::new());
        hasher.0.update(KEY_DOMAIN);
        hasher.0.update([kind as u8]);
        hasher.field(sender);
        hasher
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn optional(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.0.update([0]),
            Some(bytes) => {
                self.0.update([1]);
                self.field(bytes);
            }
        }
    }

    fn finish(self) -> RequestKey {
        self.0.finalize().into()
    }
}

/// The key of a handshake bundle (protocol-06 §5.2): for a commit the Commit, Welcome and
/// GroupInfo bytes, for proposals every proposal in order.
pub fn handshake_key(sender: &[u8], bundle: &HandshakeBundle) -> RequestKey {
    match bundle {
        HandshakeBundle::Commit {
            commit,
            welcome,
            group_info,
        } => {
            let mut hasher = KeyHasher::new(sender, RequestKind::Commit);
            hasher.field(commit);
            hasher.optional(welcome.as_deref());
            hasher.optional(group_info.as_deref());
            hasher.finish()
        }
        HandshakeBundle::Proposals { proposals } => {
            let mut hasher = KeyHasher::new(sender, RequestKind::Proposals);
            hasher.0.update((proposals.len() as u64).to_be_bytes());
            for proposal in proposals {
                hasher.field(proposal);
            }
            hasher.finish()
        }
    }
}

/// The key of an application message (protocol-06 §5.3): its MLSMessage bytes.
pub fn app_message_key(sender: &[u8], message: &[u8]) -> RequestKey {
    let mut hasher = KeyHasher::new(sender, RequestKind::AppMessage);
    hasher.field(message);
    hasher.finish()
}

/// The verdict an accepted request got: the seq of the (first) log item it produced and its
/// hub timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub seq: u64,
    pub ts_ms: u64,
}

/// Why remembered entries restored from a snapshot are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCacheError {
    TooMany,
    Duplicate,
    OutOfOrder,
}

impl RetryCacheError {
    pub fn reason(self) -> &'static str {
        match self {
            RetryCacheError::TooMany => "more remembered requests than the retry cache holds",
            RetryCacheError::Duplicate => "a request is remembered twice",
            RetryCacheError::OutOfOrder => "remembered requests are not in log order",
        }
    }
}

/// The accepted requests of one room, oldest first.
///
/// `order` holds the entries in acceptance order, which is also seq and hub-time order (both
/// are non-decreasing along the log), so evicting by count and expiring by age both pop the
/// front; `verdicts` indexes the same entries by key.
#[derive(Debug)]
pub struct RetryCache {
    capacity: usize,
    verdicts: BTreeMap<RequestKey, Accepted>,
    order: VecDeque<(RequestKey, Accepted)>,
}

impl Default for RetryCache {
    fn default() -> Self {
        RetryCache::with_capacity(RETRY_CACHE_CAPACITY)
    }
}

impl RetryCache {
    fn with_capacity(capacity: usize) -> Self {
        RetryCache {
            capacity,
            verdicts: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The original verdict of `key` if it was accepted within the window before `now_ms`.
    /// Pure: a lookup never changes the cache, so a refused request leaves no trace.
    pub fn get(&self, key: &RequestKey, now_ms: u64) -> Option<Accepted> {
        self.verdicts
            .get(key)
            .copied()
            .filter(|accepted| !expired(accepted, now_ms))
    }

    /// Remembers an accepted request (its verdict's `ts_ms` is the current hub time), dropping
    /// expired entries and then the oldest beyond the capacity. A key already present keeps
    /// its first verdict: only a miss is ever accepted, so this cannot happen in apply.
    pub fn insert(&mut self, key: RequestKey, accepted: Accepted) {
        self.expire(accepted.ts_ms);
        if self.verdicts.contains_key(&key) {
            return;
        }
        self.verdicts.insert(key, accepted);
        self.order.push_back((key, accepted));
        while self.order.len() > self.capacity {
            self.pop_oldest();
        }
    }

    /// Drops the entries that no longer answer at `now_ms` (housekeeping).
    pub fn expire(&mut self, now_ms: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, accepted)| expired(accepted, now_ms))
        {
            self.pop_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The newest remembered seq (for snapshot consistency checks).
    pub fn last_seq(&self) -> Option<u64> {
        self.order.back().map(|(_, accepted)| accepted.seq)
    }

    fn pop_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.verdicts.remove(&key);
        }
    }

    /// Restores a cache from [`RetryCache`]'s serialised form (entries oldest first), refusing
    /// anything the cache itself could not have produced.
    pub fn from_entries(entries: Vec<(RequestKey, Accepted)>) -> Result<Self, RetryCacheError> {
        Self::restore(RETRY_CACHE_CAPACITY, entries)
    }

    fn restore(
        capacity: usize,
        entries: Vec<(RequestKey, Accepted)>,
    ) -> Result<Self, RetryCacheError> {
        if entries.len() > capacity {
            return Err(RetryCacheError::TooMany);
        }
        let mut cache = RetryCache::with_capacity(capacity);
        let mut previous: Option<Accepted> = None;
        for (key, accepted) in entries {
            if previous.is_some_and(|previous| {
                accepted.seq <= previous.seq || accepted.ts_ms < previous.ts_ms
            }) {
                return Err(RetryCacheError::OutOfOrder);
            }
            if cache.verdicts.insert(key, accepted).is_some() {
                return Err(RetryCacheError::Duplicate);
            }
            cache.order.push_back((key, accepted));
            previous = Some(accepted);
        }
        Ok(cache)
    }
}

/// Serialised as the sequence of (key, verdict), oldest first: what
/// [`RetryCache::from_entries`] reads back.
impl Serialize for RetryCache {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.order)
    }
}

fn expired(accepted: &Accepted, now_ms: u64) -> bool {
    accepted.ts_ms.saturating_add(RETRY_WINDOW_MS) <= now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(uri: &str) -> Vec<u8> {
        crate::ids::ClientId::parse(uri)
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn key(n: u8) -> RequestKey {
        [n; 32]
    }

    fn accepted(seq: u64, ts_ms: u64) -> Accepted {
        Accepted { seq, ts_ms }
    }

    fn entries(cache: &RetryCache) -> Vec<(RequestKey, Accepted)> {
        postcard::from_bytes(&postcard::to_stdvec(cache).unwrap()).unwrap()
    }

    /// MIMI.md §7.6: keys separate senders, endpoints and field boundaries.
    #[test]
    fn keys_bind_sender_kind_and_every_field() {
        let alice = client("mimi://a.example/d/alice/phone");
        let bob = client("mimi://b.example/d/bob/laptop");
        let message = b"an MLSMessage".to_vec();
        assert_eq!(
            app_message_key(&alice, &message),
            app_message_key(&alice, &message)
        );
        assert_ne!(
            app_message_key(&alice, &message),
            app_message_key(&bob, &message)
        );
        let as_commit = HandshakeBundle::Commit {
            commit: message.clone(),
            welcome: None,
            group_info: None,
        };
        let as_proposal = HandshakeBundle::Proposals {
            proposals: vec![message.clone()],
        };
        let keys = [
            app_message_key(&alice, &message),
            handshake_key(&alice, &as_commit),
            handshake_key(&alice, &as_proposal),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
        assert_ne!(keys[1], keys[2]);

        // Moving bytes between fields changes the key.
        let commit = |commit: &[u8], welcome: Option<&[u8]>, group_info: Option<&[u8]>| {
            handshake_key(
                &alice,
                &HandshakeBundle::Commit {
                    commit: commit.to_vec(),
                    welcome: welcome.map(<[u8]>::to_vec),
                    group_info: group_info.map(<[u8]>::to_vec),
                },
            )
        };
        assert_ne!(
            commit(b"ab", Some(b"c"), None),
            commit(b"a", Some(b"bc"), None)
        );
        assert_ne!(
            commit(b"ab", Some(b"c"), None),
            commit(b"ab", None, Some(b"c"))
        );
        assert_ne!(commit(b"ab", None, None), commit(b"ab", Some(b""), None));
        let proposals = |proposals: &[&[u8]]| {
            handshake_key(
                &alice,
                &HandshakeBundle::Proposals {
                    proposals: proposals.iter().map(|p| p.to_vec()).collect(),
                },
            )
        };
        assert_ne!(proposals(&[b"ab", b"c"]), proposals(&[b"a", b"bc"]));
        assert_ne!(proposals(&[b"a", b"b"]), proposals(&[b"b", b"a"]));
    }

    #[test]
    fn oldest_entries_are_evicted_beyond_the_capacity() {
        let mut cache = RetryCache::with_capacity(3);
        for n in 1..=3 {
            cache.insert(key(n), accepted(u64::from(n), 100));
        }
        assert_eq!(cache.get(&key(1), 100), Some(accepted(1, 100)));
        cache.insert(key(4), accepted(4, 101));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&key(1), 101), None, "the oldest went first");
        for n in 2..=4 {
            assert_eq!(cache.get(&key(n), 101).map(|a| a.seq), Some(u64::from(n)));
        }
        // A present key keeps its first verdict and its place.
        cache.insert(key(2), accepted(9, 102));
        assert_eq!(cache.get(&key(2), 102), Some(accepted(2, 100)));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn entries_stop_answering_after_the_window_and_expire_in_order() {
        let mut cache = RetryCache::with_capacity(8);
        cache.insert(key(1), accepted(1, 1_000));
        cache.insert(key(2), accepted(2, 5_000));
        let end_of_first = 1_000 + RETRY_WINDOW_MS;
        assert_eq!(
            cache.get(&key(1), end_of_first - 1),
            Some(accepted(1, 1_000))
        );
        assert_eq!(cache.get(&key(1), end_of_first), None);
        assert_eq!(cache.len(), 2, "a lookup changes nothing");
        cache.expire(end_of_first);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key(2), end_of_first), Some(accepted(2, 5_000)));
        // Accepting a request at a later hub time drops what expired by then.
        cache.insert(key(3), accepted(3, 5_000 + RETRY_WINDOW_MS));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.last_seq(), Some(3));
    }

    #[test]
    fn serialised_entries_restore_the_same_cache_and_bad_ones_are_refused() {
        let mut cache = RetryCache::with_capacity(2);
        for n in 1..=3 {
            cache.insert(key(n), accepted(u64::from(n) * 2, 100 + u64::from(n)));
        }
        let saved = entries(&cache);
        assert_eq!(
            saved,
            vec![(key(2), accepted(4, 102)), (key(3), accepted(6, 103))]
        );
        let restored = RetryCache::restore(2, saved.clone()).unwrap();
        assert_eq!(entries(&restored), saved);
        assert_eq!(restored.get(&key(3), 103), Some(accepted(6, 103)));

        let mut too_many = saved.clone();
        too_many.push((key(4), accepted(8, 104)));
        assert_eq!(
            RetryCache::restore(2, too_many).unwrap_err(),
            RetryCacheError::TooMany
        );
        let duplicate = vec![(key(2), accepted(4, 102)), (key(2), accepted(6, 103))];
        assert_eq!(
            RetryCache::restore(2, duplicate).unwrap_err(),
            RetryCacheError::Duplicate
        );
        let reversed: Vec<_> = saved.iter().rev().copied().collect();
        assert_eq!(
            RetryCache::restore(2, reversed).unwrap_err(),
            RetryCacheError::OutOfOrder
        );
        let time_backwards = vec![(key(2), accepted(4, 102)), (key(3), accepted(6, 101))];
        assert_eq!(
            RetryCache::restore(2, time_backwards).unwrap_err(),
            RetryCacheError::OutOfOrder
        );
    }
}
