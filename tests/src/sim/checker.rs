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
        let body = match &item.body {
            ItemBody::Commit { message } | ItemBody::Application { message } => digest(message),
            ItemBody::Welcome { welcome, .. } => digest(welcome),
            ItemBody::Proposals { messages } => digest(&messages.concat()),
        };
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
