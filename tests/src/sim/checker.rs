//! The invariants of a run, checked as things happen and once more at the end
//! (research/reliability.md §5.1; STYLE.md §8).
//!
//! The room log is checked the list-append way (Elle): every replica's log, and every read a
//! client makes, must be a prefix of one reference log, which grows as replicas apply. Each
//! new reference item is checked on arrival:
//!
//! * its body was submitted by a client (nothing invented) and appears once (no duplicate);
//! * Commit items end consecutive epochs, one per epoch (RFC 9420 §14: exactly one Commit is
//!   accepted per epoch); a Welcome follows its Commit; application messages carry the epoch
//!   they were accepted in;
//! * nothing from a removed client follows the Commit that removed it (MIMI.md §5.2, §7.4);
//! * hub time never goes backwards along the log.
//!
//! Answers are checked against the log: an acknowledged item sits at the seq its answer named
//! (no acknowledged item lost), no two Commits of one epoch are acknowledged, and a body every
//! attempt of which was refused never appears. At the end: replicas converged on the reference,
//! every request was answered, and the liveness probes succeeded.
//!
//! Federation (MIMI.md §5.4) is checked the same way, against the *projection*: the reference
//! restricted to the items the follower provider is to see (`RoomState::visible_to_provider`,
//! recorded as the reference grows). The follower's mirror logs (local seqs) must each be a
//! prefix of one mirror reference, and item `n` of that reference must be projection item `n`
//! (same bytes and hub time; a Welcome addressed to exactly the follower's clients it adds), so
//! the mirror as (hub seq, body) pairs is the projection in hub order, without duplicates, at
//! every point a prefix of it. What the follower acknowledged (201) must survive its crashes;
//! the hub's durable fan-out cursor never passes what the follower acknowledged; after the
//! faults heal, every follower replica holds the whole projection.
//!
//! Membership (both providers' groups): every entry whose apply output was acknowledged must,
//! from then on, be durable on enough voters of the group's current configuration that losing
//! any minority of them cannot lose it ([`survives_minority_loss`]); a replica removed from
//! the configuration no longer counts, and its data may be deleted. A replica that applied its
//! own removal never takes a proposal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mimid_actors::ids::ClientId;
use mimid_actors::room::log::{ItemBody, LogItem};
use sha2::{Digest, Sha256};

use crate::sim::trace::{Event, Trace};

/// SHA-256 of an item body's bytes: how items are matched to what clients submitted.
pub type BodyDigest = [u8; 32];

pub fn digest(bytes: &[u8]) -> BodyDigest {
    Sha256::digest(bytes).into()
}

/// The digest an item is known by: of its MLS message (a Welcome's `to` and tree aside).
pub fn body_digest(body: &ItemBody) -> BodyDigest {
    match body {
        ItemBody::Commit { message } | ItemBody::Application { message } => digest(message),
        ItemBody::Welcome { welcome, .. } => digest(welcome),
        ItemBody::Proposals { messages } => digest(&messages.concat()),
    }
}

/// Whether `got` (a follower's mirror item) is hub item `hub` as follower `follower` receives
/// it: the same bytes, and a Welcome addressed to exactly the follower's clients among those it
/// adds. The epoch of a Welcome is the edge's guess, so epochs are not compared.
///
/// Time: a mirrored item keeps the hub's accepted time exactly (the hub's log never goes
/// backwards, and a mirror has no clock of its own to raise it with).
fn mirrors(hub: &LogItem, got: &LogItem, follower: &str) -> bool {
    if got.ts_ms != hub.ts_ms {
        return false;
    }
    match (&hub.body, &got.body) {
        (ItemBody::Commit { message: a }, ItemBody::Commit { message: b })
        | (ItemBody::Application { message: a }, ItemBody::Application { message: b }) => a == b,
        (ItemBody::Proposals { messages: a }, ItemBody::Proposals { messages: b }) => a == b,
        (
            ItemBody::Welcome {
                welcome: w1,
                ratchet_tree: t1,
                to: to1,
            },
            ItemBody::Welcome {
                welcome: w2,
                ratchet_tree: t2,
                to: to2,
            },
        ) => {
            let routed: Vec<&ClientId> = to1
                .iter()
                .filter(|client| client.domain() == follower)
                .collect();
            w1 == w2 && t1 == t2 && to2.iter().eq(routed)
        }
        _ => false,
    }
}

/// Whether an entry durable on `holders` of a configuration's `voters` voters survives the
/// loss of any minority of them: the voters without it cannot form a quorum (Raft's leader
/// completeness, so every future leader has it).
pub fn survives_minority_loss(voters: usize, holders: usize) -> bool {
    let quorum = voters / 2 + 1;
    voters.saturating_sub(holders) < quorum
}

/// What kind of invariant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// A replica's log (or a client's read) is not a prefix of the one log.
    LogDivergence,
    /// A Commit does not end the next epoch: a second Commit in an epoch, or a gap.
    CommitEpoch,
    /// An application message or Welcome carries the wrong epoch, or a Welcome has no Commit.
    ItemEpoch,
    /// Hub time went backwards along the log.
    TimeWentBackwards,
    /// An item nobody submitted.
    UnknownItem,
    /// The same body twice in the log.
    DuplicateItem,
    /// An item from a client after the Commit that removed it.
    AcceptedFromRemoved,
    /// An acknowledged item is not at the seq its answer named.
    AckedItemLost,
    /// Two different Commits were acknowledged for the same epoch.
    TwoCommitsAcked,
    /// An item every submission of which was refused is in the log anyway.
    RefusedItemInLog,
    /// A request never got an answer.
    UnansweredRequest,
    /// A verdict a correct hub never gives to this workload.
    UnexpectedVerdict,
    /// A member could not process an item the hub accepted (or build its next request from
    /// the state that processing left).
    ClientCannotProcess,
    /// A member decrypted something else than the sender sent.
    WrongPlaintext,
    /// A replica failed (storage fault, Raft error).
    ReplicaFailed,
    /// Replicas did not converge on one log after the faults healed.
    NotConverged,
    /// A member could not write within the settle time after the faults healed.
    Liveness,
    /// The run hit its event bound.
    EventBound,
    /// A follower's mirror is not a prefix of the hub's log restricted to what the follower is
    /// to see (another item, a gap, an item the hub never fanned out, a misrouted Welcome).
    MirrorDivergence,
    /// A follower's mirror holds a hub item twice (MIMI.md §5.4: resends are absorbed).
    MirrorDuplicate,
    /// Items the follower acknowledged (201) are missing from its mirror at the end.
    NotifiedItemLost,
    /// The hub's durable fan-out cursor moved past what the follower acknowledged.
    FanoutCursorAhead,
    /// An acknowledged entry is durable on too few voters of the current configuration: the
    /// voters without it form a quorum (a removed replica counted, or data lost).
    QuorumLost,
    /// A replica removed from its group took a proposal.
    RemovedReplicaServed,
    /// A membership change the simulated operator started did not finish after the faults
    /// healed.
    MembershipStuck,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// Who submitted a body and what it does.
#[derive(Debug, Clone)]
pub struct Submission {
    pub sender: ClientId,
    /// Clients a Commit removes from the group.
    pub removes: Vec<ClientId>,
    /// The plaintext of an application message.
    pub plaintext: Option<Vec<u8>>,
    /// The Commit a Welcome belongs to.
    pub welcome_of: Option<BodyDigest>,
}

/// How one attempt to submit a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Acknowledged at this seq.
    Acked(u64),
    /// Definitely not appended (refused before proposing, or a negative verdict from apply).
    Refused,
    /// Unknown (dropped or crashed): may be in the log, at most once.
    Unknown,
}

#[derive(Default)]
pub struct Checker {
    reference: Vec<LogItem>,
    digests: Vec<BodyDigest>,
    positions: BTreeMap<BodyDigest, u64>,
    /// The group's epoch after the last reference item.
    epoch: u64,
    submissions: BTreeMap<BodyDigest, Submission>,
    attempts: BTreeMap<BodyDigest, Vec<Attempt>>,
    removed: BTreeSet<ClientId>,
    /// Commits acknowledged, by the epoch they were built in.
    acked_commits: BTreeMap<u64, BodyDigest>,
    /// Hub seqs of the reference items the follower is to see, in order.
    projection: Vec<u64>,
    /// Reference items classified for the projection so far (a prefix of the reference).
    classified: u64,
    /// The follower's mirror log, by local seq: grows as follower replicas apply.
    mirror: Vec<LogItem>,
    mirror_digests: BTreeSet<BodyDigest>,
    /// The furthest hub seq the follower acknowledged with a 201.
    follower_acked: u64,
    violations: Vec<Violation>,
}

impl Checker {
    pub fn reference(&self) -> &[LogItem] {
        &self.reference
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn into_violations(self) -> Vec<Violation> {
        self.violations
    }

    pub fn violation(&mut self, kind: ViolationKind, detail: impl Into<String>) {
        self.violations.push(Violation {
            kind,
            detail: detail.into(),
        });
    }

    /// Records what a client is about to submit (idempotent for retries of the same bytes).
    pub fn register(&mut self, body: BodyDigest, submission: Submission) {
        self.submissions.entry(body).or_insert(submission);
    }

    /// The plaintext a member decrypted from the item with `body` must be what was sent.
    pub fn check_plaintext(&mut self, client: &ClientId, seq: u64, body: &BodyDigest, got: &[u8]) {
        let sent = self
            .submissions
            .get(body)
            .and_then(|submission| submission.plaintext.as_deref());
        if sent != Some(got) {
            self.violation(
                ViolationKind::WrongPlaintext,
                format!("{client} decrypted unexpected plaintext at seq {seq}"),
            );
        }
    }

    /// Records the outcome of one attempt; acknowledgements are checked against the log.
    pub fn on_attempt(&mut self, request: u64, body: BodyDigest, attempt: Attempt) {
        self.attempts.entry(body).or_default().push(attempt);
        if let Attempt::Acked(seq) = attempt {
            self.check_ack(request, &body, seq);
        }
    }

    /// A Commit built in `epoch` was acknowledged; no other may be for that epoch.
    pub fn on_commit_acked(&mut self, epoch: u64, body: BodyDigest) {
        let first = *self.acked_commits.entry(epoch).or_insert(body);
        if first != body {
            self.violation(
                ViolationKind::TwoCommitsAcked,
                format!("two different Commits acknowledged for epoch {epoch}"),
            );
        }
    }

    /// Compares `items` (a replica's log from seq `items[0].seq`) with the reference,
    /// extending it with what is new. Stops at the first difference.
    pub fn observe_log(&mut self, node: u64, items: &[LogItem], trace: &mut Trace, now: u64) {
        for item in items {
            let known = self.reference.len() as u64;
            if item.seq <= known {
                let expected = &self.reference[(item.seq - 1) as usize];
                if expected != item {
                    self.violation(
                        ViolationKind::LogDivergence,
                        format!(
                            "replica {node} has a different item at seq {} (epoch {} vs {})",
                            item.seq, item.epoch, expected.epoch
                        ),
                    );
                    return;
                }
            } else if item.seq == known + 1 {
                self.extend(item.clone(), trace, now);
            } else {
                self.violation(
                    ViolationKind::LogDivergence,
                    format!(
                        "replica {node} has seq {} right after seq {known}",
                        item.seq
                    ),
                );
                return;
            }
        }
    }

    /// A client read `items` from a replica: each must be the reference item at its seq.
    pub fn check_read(&mut self, client: &ClientId, items: &[LogItem]) -> bool {
        for item in items {
            let matches = usize::try_from(item.seq)
                .ok()
                .and_then(|seq| seq.checked_sub(1))
                .and_then(|index| self.reference.get(index))
                .is_some_and(|expected| expected == item);
            if !matches {
                self.violation(
                    ViolationKind::LogDivergence,
                    format!(
                        "{client} read an item at seq {} that is not in the log",
                        item.seq
                    ),
                );
                return false;
            }
        }
        true
    }

    /// The body digest of the reference item at `seq`.
    pub fn body_at(&self, seq: u64) -> Option<&BodyDigest> {
        usize::try_from(seq)
            .ok()
            .and_then(|seq| seq.checked_sub(1))
            .and_then(|index| self.digests.get(index))
    }

    /// End-of-run checks once replicas should have converged: `logs` are the full room logs of
    /// the replicas that are up, by node id.
    pub fn finish(&mut self, logs: &[(u64, Vec<LogItem>)], trace: &mut Trace, now: u64) {
        for (node, log) in logs {
            self.observe_log(*node, log, trace, now);
            if log.len() != self.reference.len() {
                let detail = format!(
                    "replica {node} has {} room log items, the log has {}",
                    log.len(),
                    self.reference.len()
                );
                self.violation(ViolationKind::NotConverged, detail);
            }
        }
        let mut refused_in_log = Vec::new();
        for (body, attempts) in &self.attempts {
            let only_refused = attempts.iter().all(|attempt| *attempt == Attempt::Refused);
            if let (true, Some(seq)) = (only_refused, self.positions.get(body)) {
                refused_in_log.push(*seq);
            }
        }
        for seq in refused_in_log {
            self.violation(
                ViolationKind::RefusedItemInLog,
                format!("seq {seq} holds a body every submission of which was refused"),
            );
        }
    }

    // Federation.

    /// Reference items not yet classified for the projection: from this seq on.
    pub fn unclassified(&self) -> u64 {
        self.classified + 1
    }

    /// Classifies reference items from seq `from` on: `visible[i]` says whether the follower is
    /// to see item `from + i`, as the hub's state decides it. Items classified already are
    /// skipped; visibility of an item never changes once it is in the log.
    pub fn classify(&mut self, from: u64, visible: &[bool]) {
        for (offset, &visible) in visible.iter().enumerate() {
            let seq = from + offset as u64;
            if seq != self.classified + 1 || seq > self.reference.len() as u64 {
                continue;
            }
            self.classified = seq;
            if visible {
                self.projection.push(seq);
            }
        }
    }

    /// How many items the follower is to see so far.
    pub fn projection_len(&self) -> usize {
        self.projection.len()
    }

    /// The follower's mirror as far as any of its replicas applied it.
    pub fn mirror(&self) -> &[LogItem] {
        &self.mirror
    }

    /// The follower answered 201 to a notify whose last item is hub seq `last`: it promised
    /// (durably) every item for it up to there.
    pub fn on_notify_acked(&mut self, last: u64) {
        self.follower_acked = self.follower_acked.max(last);
    }

    /// How many projection items the follower acknowledged.
    fn acked_projection(&self) -> usize {
        self.projection
            .partition_point(|&seq| seq <= self.follower_acked)
    }

    /// A hub replica's durable fan-out cursor for the follower may not pass its 201s.
    pub fn check_cursor(&mut self, node: u64, cursor: u64) {
        if cursor > self.follower_acked {
            self.violation(
                ViolationKind::FanoutCursorAhead,
                format!(
                    "replica {node} records the follower at seq {cursor}, acknowledged up to {}",
                    self.follower_acked
                ),
            );
        }
    }

    /// Compares `items` (follower replica `node`'s mirror from local seq `items[0].seq`) with
    /// the mirror reference, extending it with what is new, each new item checked against the
    /// projection. Stops at the first difference.
    pub fn observe_mirror(
        &mut self,
        node: u64,
        items: &[LogItem],
        follower: &str,
        trace: &mut Trace,
        now: u64,
    ) {
        for item in items {
            let known = self.mirror.len() as u64;
            if item.seq <= known {
                if self.mirror[(item.seq - 1) as usize] != *item {
                    self.violation(
                        ViolationKind::MirrorDivergence,
                        format!(
                            "follower replica {node} has a different item at local seq {}",
                            item.seq
                        ),
                    );
                    return;
                }
                continue;
            }
            if item.seq != known + 1 {
                self.violation(
                    ViolationKind::MirrorDivergence,
                    format!(
                        "follower replica {node} has local seq {} right after {known}",
                        item.seq
                    ),
                );
                return;
            }
            let body = body_digest(&item.body);
            let expected = self.projection.get(known as usize).copied();
            if self.mirror_digests.contains(&body) {
                let hub_seq = self.positions.get(&body).copied().unwrap_or(0);
                self.violation(
                    ViolationKind::MirrorDuplicate,
                    format!(
                        "follower replica {node} repeats hub seq {hub_seq} at local seq {}",
                        item.seq
                    ),
                );
                return;
            }
            let Some(hub_seq) = expected else {
                self.violation(
                    ViolationKind::MirrorDivergence,
                    format!(
                        "follower replica {node} holds local seq {}, beyond the {known} items the hub has for it",
                        item.seq
                    ),
                );
                return;
            };
            let hub_item = &self.reference[(hub_seq - 1) as usize];
            if !mirrors(hub_item, item, follower) {
                self.violation(
                    ViolationKind::MirrorDivergence,
                    format!(
                        "follower replica {node} holds at local seq {} something else than hub seq {hub_seq}",
                        item.seq
                    ),
                );
                return;
            }
            trace.record(
                now,
                Event::MirrorItem {
                    seq: item.seq,
                    hub_seq,
                },
            );
            self.mirror_digests.insert(body);
            self.mirror.push(item.clone());
        }
    }

    /// A follower's client read `items` from a follower replica: each must be the mirror
    /// reference item at its local seq.
    pub fn check_mirror_read(&mut self, client: &ClientId, items: &[LogItem]) -> bool {
        for item in items {
            let matches = usize::try_from(item.seq)
                .ok()
                .and_then(|seq| seq.checked_sub(1))
                .and_then(|index| self.mirror.get(index))
                .is_some_and(|expected| expected == item);
            if !matches {
                self.violation(
                    ViolationKind::MirrorDivergence,
                    format!(
                        "{client} read an item at local seq {} that is not in the mirror",
                        item.seq
                    ),
                );
                return false;
            }
        }
        true
    }

    /// End-of-run checks of the follower: `logs` are the full mirrors of its replicas that are
    /// up, by node id; each must hold the whole projection, and at least what was acknowledged.
    pub fn finish_mirror(
        &mut self,
        logs: &[(u64, Vec<LogItem>)],
        follower: &str,
        trace: &mut Trace,
        now: u64,
    ) {
        let acked = self.acked_projection();
        for (node, log) in logs {
            self.observe_mirror(*node, log, follower, trace, now);
            if log.len() < acked {
                self.violation(
                    ViolationKind::NotifiedItemLost,
                    format!(
                        "follower replica {node} mirrors {} items but acknowledged {acked}",
                        log.len()
                    ),
                );
            }
            if log.len() != self.projection.len() {
                self.violation(
                    ViolationKind::NotConverged,
                    format!(
                        "follower replica {node} mirrors {} of the {} items the hub has for it",
                        log.len(),
                        self.projection.len()
                    ),
                );
            }
        }
    }

    fn check_ack(&mut self, request: u64, body: &BodyDigest, seq: u64) {
        // Not yet in the reference: checked again at the end by `recheck_acks`.
        if let Some(at) = self.body_at(seq) {
            if at != body {
                self.violation(
                    ViolationKind::AckedItemLost,
                    format!(
                        "request {request} was acknowledged at seq {seq}, which holds another item"
                    ),
                );
            }
        }
    }

    /// Every acknowledgement must name the seq its body sits at in the final log.
    pub fn recheck_acks(&mut self) {
        let mut lost = Vec::new();
        for (body, attempts) in &self.attempts {
            for attempt in attempts {
                if let Attempt::Acked(seq) = attempt {
                    if self.body_at(*seq) != Some(body) {
                        lost.push(*seq);
                    }
                }
            }
        }
        for seq in lost {
            self.violation(
                ViolationKind::AckedItemLost,
                format!("an item acknowledged at seq {seq} is not there in the final log"),
            );
        }
    }

    fn extend(&mut self, item: LogItem, trace: &mut Trace, now: u64) {
        let seq = item.seq;
        let body = body_digest(&item.body);
        trace.record(
            now,
            Event::Item {
                seq,
                epoch: item.epoch,
                body,
            },
        );
        if let Some(previous) = self.reference.last() {
            if item.ts_ms < previous.ts_ms {
                self.violation(
                    ViolationKind::TimeWentBackwards,
                    format!("seq {seq} is stamped before seq {}", previous.seq),
                );
            }
        }
        if let Some(first) = self.positions.insert(body, seq) {
            self.violation(
                ViolationKind::DuplicateItem,
                format!("seq {seq} repeats seq {first}"),
            );
        }
        match self.submissions.get(&body).cloned() {
            None => self.violation(
                ViolationKind::UnknownItem,
                format!("seq {seq} holds an item no client submitted"),
            ),
            Some(submission) => self.check_item(&item, &submission),
        }
        self.reference.push(item);
        self.digests.push(body);
    }

    fn check_item(&mut self, item: &LogItem, submission: &Submission) {
        let seq = item.seq;
        if self.removed.contains(&submission.sender) && submission.welcome_of.is_none() {
            self.violation(
                ViolationKind::AcceptedFromRemoved,
                format!(
                    "seq {seq} was accepted from {}, removed earlier",
                    submission.sender
                ),
            );
        }
        match &item.body {
            ItemBody::Commit { .. } => {
                if item.epoch != self.epoch {
                    self.violation(
                        ViolationKind::CommitEpoch,
                        format!(
                            "the Commit at seq {seq} ends epoch {} but the group is in epoch {}",
                            item.epoch, self.epoch
                        ),
                    );
                }
                self.epoch = item.epoch + 1;
                self.removed.extend(submission.removes.iter().cloned());
            }
            ItemBody::Welcome { .. } => {
                let after_its_commit = self
                    .digests
                    .last()
                    .is_some_and(|previous| Some(*previous) == submission.welcome_of);
                if !after_its_commit || item.epoch != self.epoch {
                    self.violation(
                        ViolationKind::ItemEpoch,
                        format!("the Welcome at seq {seq} does not follow its Commit"),
                    );
                }
            }
            ItemBody::Application { .. } | ItemBody::Proposals { .. } => {
                if item.epoch != self.epoch {
                    self.violation(
                        ViolationKind::ItemEpoch,
                        format!(
                            "seq {seq} was accepted in epoch {} while the group is in epoch {}",
                            item.epoch, self.epoch
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> ClientId {
        ClientId::parse(&format!("mimi://a.example/d/{name}/phone")).unwrap()
    }

    fn submit(checker: &mut Checker, sender: &str, bytes: &[u8], removes: &[&str]) {
        checker.register(
            digest(bytes),
            Submission {
                sender: client(sender),
                removes: removes.iter().map(|name| client(name)).collect(),
                plaintext: None,
                welcome_of: None,
            },
        );
    }

    fn commit(seq: u64, epoch: u64, bytes: &[u8]) -> LogItem {
        LogItem {
            seq,
            ts_ms: seq,
            epoch,
            body: ItemBody::Commit {
                message: bytes.to_vec(),
            },
        }
    }

    fn message(seq: u64, epoch: u64, bytes: &[u8]) -> LogItem {
        LogItem {
            seq,
            ts_ms: seq,
            epoch,
            body: ItemBody::Application {
                message: bytes.to_vec(),
            },
        }
    }

    fn kinds(checker: &Checker) -> Vec<ViolationKind> {
        checker.violations().iter().map(|v| v.kind).collect()
    }

    #[test]
    fn prefixes_of_one_log_pass_and_a_divergent_item_is_reported() {
        let mut checker = Checker::default();
        let mut trace = Trace::new(false);
        submit(&mut checker, "alice", b"c0", &[]);
        submit(&mut checker, "bob", b"m1", &[]);
        let log = vec![commit(1, 0, b"c0"), message(2, 1, b"m1")];
        checker.observe_log(1, &log[..1], &mut trace, 0);
        checker.observe_log(2, &log, &mut trace, 0);
        checker.observe_log(3, &log[1..], &mut trace, 0);
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );
        submit(&mut checker, "bob", b"other", &[]);
        checker.observe_log(3, &[message(2, 1, b"other")], &mut trace, 0);
        assert_eq!(kinds(&checker), vec![ViolationKind::LogDivergence]);
    }

    #[test]
    fn rfc9420_14_a_second_commit_for_an_epoch_is_reported() {
        let mut checker = Checker::default();
        let mut trace = Trace::new(false);
        submit(&mut checker, "alice", b"a", &[]);
        submit(&mut checker, "bob", b"b", &[]);
        checker.observe_log(1, &[commit(1, 0, b"a"), commit(2, 0, b"b")], &mut trace, 0);
        assert_eq!(kinds(&checker), vec![ViolationKind::CommitEpoch]);
    }

    #[test]
    fn mimi_7_4_nothing_is_accepted_from_a_removed_client() {
        let mut checker = Checker::default();
        let mut trace = Trace::new(false);
        submit(&mut checker, "alice", b"remove cathy", &["cathy"]);
        submit(&mut checker, "cathy", b"late", &[]);
        checker.observe_log(
            1,
            &[commit(1, 0, b"remove cathy"), message(2, 1, b"late")],
            &mut trace,
            0,
        );
        assert_eq!(kinds(&checker), vec![ViolationKind::AcceptedFromRemoved]);
    }

    #[test]
    fn acknowledged_items_must_stay_where_their_answer_put_them() {
        let mut checker = Checker::default();
        let mut trace = Trace::new(false);
        submit(&mut checker, "alice", b"c0", &[]);
        submit(&mut checker, "bob", b"m1", &[]);
        submit(&mut checker, "bob", b"m2", &[]);
        checker.on_attempt(1, digest(b"m1"), Attempt::Acked(2));
        checker.on_attempt(2, digest(b"m2"), Attempt::Refused);
        checker.observe_log(
            1,
            &[commit(1, 0, b"c0"), message(2, 1, b"m2")],
            &mut trace,
            0,
        );
        checker.recheck_acks();
        checker.finish(&[], &mut trace, 0);
        assert_eq!(
            kinds(&checker),
            vec![
                ViolationKind::AckedItemLost,
                ViolationKind::RefusedItemInLog
            ]
        );
    }

    fn welcome(seq: u64, epoch: u64, bytes: &[u8], to: &[ClientId]) -> LogItem {
        LogItem {
            seq,
            ts_ms: seq,
            epoch,
            body: ItemBody::Welcome {
                welcome: bytes.to_vec(),
                ratchet_tree: vec![9],
                to: to.to_vec(),
            },
        }
    }

    fn remote(name: &str) -> ClientId {
        ClientId::parse(&format!("mimi://b.example/d/{name}/laptop")).unwrap()
    }

    /// A hub log of four items of which the follower is to see 2-4, and the checker that
    /// knows it; the Welcome adds Cathy (hub) and Bob (follower).
    fn federated() -> (Checker, Trace, Vec<LogItem>) {
        let mut checker = Checker::default();
        let mut trace = Trace::new(false);
        submit(&mut checker, "alice", b"c0", &[]);
        checker.register(
            digest(b"w"),
            Submission {
                sender: client("alice"),
                removes: Vec::new(),
                plaintext: None,
                welcome_of: Some(digest(b"c0")),
            },
        );
        submit(&mut checker, "alice", b"m1", &[]);
        submit(&mut checker, "cathy", b"m2", &[]);
        let hub = vec![
            commit(1, 0, b"c0"),
            welcome(2, 1, b"w", &[client("cathy"), remote("bob")]),
            message(3, 1, b"m1"),
            message(4, 1, b"m2"),
        ];
        checker.observe_log(1, &hub, &mut trace, 0);
        checker.classify(1, &[false, true, true, true]);
        (checker, trace, hub)
    }

    /// The follower's item `local` made of hub item `hub` as the edge would store it.
    fn mirrored(hub: &LogItem, local: u64) -> LogItem {
        let body = match &hub.body {
            ItemBody::Welcome {
                welcome,
                ratchet_tree,
                to,
            } => ItemBody::Welcome {
                welcome: welcome.clone(),
                ratchet_tree: ratchet_tree.clone(),
                to: to
                    .iter()
                    .filter(|client| client.domain() == "b.example")
                    .cloned()
                    .collect(),
            },
            other => other.clone(),
        };
        LogItem {
            seq: local,
            ts_ms: hub.ts_ms,
            epoch: hub.epoch,
            body,
        }
    }

    /// MIMI.md §5.4: prefixes of the projection pass wherever they start; a read must match.
    #[test]
    fn mimi_5_4_mirror_prefixes_of_the_projection_pass() {
        let (mut checker, mut trace, hub) = federated();
        let mirror: Vec<LogItem> = hub[1..]
            .iter()
            .zip(1..)
            .map(|(item, local)| mirrored(item, local))
            .collect();
        checker.observe_mirror(4, &mirror[..1], "b.example", &mut trace, 0);
        checker.observe_mirror(5, &mirror, "b.example", &mut trace, 0);
        checker.observe_mirror(6, &mirror[2..], "b.example", &mut trace, 0);
        assert!(checker.check_mirror_read(&remote("bob"), &mirror[1..]));
        checker.on_notify_acked(4);
        checker.check_cursor(1, 4);
        checker.finish_mirror(&[(4, mirror.clone())], "b.example", &mut trace, 0);
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );
        assert_eq!(checker.mirror().len(), 3);
    }

    /// A resend appended again (a follower deduplicating by body hash only) is reported.
    #[test]
    fn mimi_5_4_a_hub_item_mirrored_twice_is_reported() {
        let (mut checker, mut trace, hub) = federated();
        let mirror = vec![
            mirrored(&hub[1], 1),
            mirrored(&hub[2], 2),
            mirrored(&hub[2], 3),
        ];
        checker.observe_mirror(4, &mirror, "b.example", &mut trace, 0);
        assert_eq!(kinds(&checker), vec![ViolationKind::MirrorDuplicate]);
    }

    /// A skipped item, an item the follower is not to see, and a Welcome routed to a client
    /// of another provider are each reported; a read of an unknown item too.
    #[test]
    fn mimi_5_4_gaps_invisible_items_and_misrouted_welcomes_are_reported() {
        let (mut checker, mut trace, hub) = federated();
        checker.observe_mirror(
            4,
            &[mirrored(&hub[1], 1), mirrored(&hub[3], 2)],
            "b.example",
            &mut trace,
            0,
        );
        let (mut other, mut trace2, hub2) = federated();
        other.observe_mirror(4, &[mirrored(&hub2[0], 1)], "b.example", &mut trace2, 0);
        let (mut third, mut trace3, hub3) = federated();
        let mut misrouted = mirrored(&hub3[1], 1);
        if let ItemBody::Welcome { to, .. } = &mut misrouted.body {
            to.push(client("cathy"));
        }
        third.observe_mirror(4, &[misrouted.clone()], "b.example", &mut trace3, 0);
        assert!(!third.check_mirror_read(&remote("bob"), &[misrouted]));
        assert_eq!(kinds(&checker), vec![ViolationKind::MirrorDivergence]);
        assert_eq!(kinds(&other), vec![ViolationKind::MirrorDivergence]);
        assert_eq!(
            kinds(&third),
            vec![
                ViolationKind::MirrorDivergence,
                ViolationKind::MirrorDivergence
            ]
        );
    }

    /// Mirrored items keep the hub's accepted times exactly; the follower's clock changes none.
    #[test]
    fn mirror_times_are_the_hubs() {
        let (mut checker, mut trace, hub) = federated();
        let first = mirrored(&hub[1], 1);
        let second = mirrored(&hub[2], 2);
        checker.observe_mirror(4, &[first, second], "b.example", &mut trace, 0);
        assert!(checker.violations().is_empty());
        let mut late = mirrored(&hub[3], 3);
        late.ts_ms += 1;
        checker.observe_mirror(4, &[late], "b.example", &mut trace, 0);
        assert_eq!(kinds(&checker), vec![ViolationKind::MirrorDivergence]);
    }

    /// What the follower acknowledged must be in every replica's final mirror, and the hub's
    /// durable cursor may not pass it; a follower behind the projection has not converged.
    #[test]
    fn acknowledged_notifies_and_cursors_are_checked() {
        let (mut checker, mut trace, hub) = federated();
        checker.on_notify_acked(3);
        checker.check_cursor(2, 4);
        checker.finish_mirror(
            &[(4, vec![mirrored(&hub[1], 1)])],
            "b.example",
            &mut trace,
            0,
        );
        assert_eq!(
            kinds(&checker),
            vec![
                ViolationKind::FanoutCursorAhead,
                ViolationKind::NotifiedItemLost,
                ViolationKind::NotConverged
            ]
        );
    }

    /// A committed entry must survive the loss of any minority of the voters: on 2 of 3, 2 of
    /// 4 and 1 of 2 it does; on 1 of 3 or 1 of 4 (the others a quorum) it does not.
    #[test]
    fn raft_an_acknowledged_entry_survives_any_minority() {
        assert!(survives_minority_loss(3, 2));
        assert!(survives_minority_loss(3, 3));
        assert!(!survives_minority_loss(3, 1));
        assert!(survives_minority_loss(4, 2));
        assert!(!survives_minority_loss(4, 1));
        assert!(survives_minority_loss(2, 1));
        assert!(!survives_minority_loss(2, 0));
        assert!(survives_minority_loss(1, 1));
        assert!(!survives_minority_loss(5, 2));
        assert!(survives_minority_loss(5, 3));
    }

    #[test]
    fn duplicates_unknown_items_and_two_acked_commits_are_reported() {
        let mut checker = Checker::default();
        let mut trace = Trace::new(false);
        submit(&mut checker, "alice", b"c0", &[]);
        submit(&mut checker, "bob", b"m", &[]);
        checker.observe_log(
            1,
            &[
                commit(1, 0, b"c0"),
                message(2, 1, b"m"),
                message(3, 1, b"m"),
                message(4, 1, b"?"),
            ],
            &mut trace,
            0,
        );
        checker.on_commit_acked(3, digest(b"x"));
        checker.on_commit_acked(3, digest(b"x"));
        checker.on_commit_acked(3, digest(b"y"));
        assert_eq!(
            kinds(&checker),
            vec![
                ViolationKind::DuplicateItem,
                ViolationKind::UnknownItem,
                ViolationKind::TwoCommitsAcked
            ]
        );
    }
}
