//! Exactly-once completion of proposals.
//!
//! A [`Reply`] owns the caller's [`Done`] callback from the moment `propose` accepts a proposal.
//! It is answered explicitly on every path the driver knows about; if it is ever dropped
//! unanswered (the driver stopped, or a shard group or the driver thread panicked), its `Drop`
//! answers `Err(Stopped)`, so "`done` is called exactly once" holds by construction rather than by
//! auditing every exit path.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Done, ProposeError};

/// The pending answer to one accepted proposal.
pub(crate) struct Reply<O> {
    done: Option<Done<O>>,
}

impl<O> Reply<O> {
    pub(crate) fn new(done: Done<O>) -> Self {
        Reply { done: Some(done) }
    }

    /// Answers the proposal.
    pub(crate) fn send(mut self, result: Result<O, ProposeError>) {
        if let Some(done) = self.done.take() {
            invoke(done, result);
        }
    }

    /// Discards the callback without calling it: only for proposals that `propose` itself
    /// rejected with an `Err`, whose contract is that `done` is never called.
    pub(crate) fn disarm(mut self) {
        self.done = None;
    }
}

impl<O> Drop for Reply<O> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            invoke(done, Err(ProposeError::Stopped));
        }
    }
}

/// Calls a caller-supplied callback, containing its panics: a bug in one caller's callback must
/// not stop the shard group (or the driver) that happens to run it.
fn invoke<O>(done: Done<O>, result: Result<O, ProposeError>) {
    if catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
        tracing::error!("proposal completion callback panicked");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn recording() -> (Reply<u32>, mpsc::Receiver<Result<u32, ProposeError>>) {
        let (tx, rx) = mpsc::channel();
        let reply = Reply::new(Box::new(move |result| {
            tx.send(result).expect("receiver alive")
        }));
        (reply, rx)
    }

    #[test]
    fn send_answers_once() {
        let (reply, rx) = recording();
        reply.send(Ok(7));
        assert_eq!(rx.try_recv(), Ok(Ok(7)));
        assert!(rx.try_recv().is_err(), "answered twice");
    }

    #[test]
    fn dropping_unanswered_reply_answers_stopped() {
        let (reply, rx) = recording();
        drop(reply);
        assert_eq!(rx.try_recv(), Ok(Err(ProposeError::Stopped)));
    }

    #[test]
    fn disarmed_reply_never_answers() {
        let (reply, rx) = recording();
        reply.disarm();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn panicking_callback_is_contained() {
        let reply: Reply<u32> = Reply::new(Box::new(|_| panic!("callback bug")));
        reply.send(Ok(1));
    }
}
