//! Requests between nodes (e.g. forwarding a proposal to a shard's leader): one bidirectional
//! stream per call on the dialler's connection, opened after the hello.
//!
//! ```text
//! request:  body                          (then FIN; at most cluster.max_frame_bytes)
//! answer:   0x00 | body                   (handled; body at most cluster.max_frame_bytes)
//!           0x01 | reason (UTF-8)         (refused by the transport, e.g. a request too large)
//! ```
//!
//! The length of each side is its stream's length, so no prefix is needed; both sides read
//! with a limit. The handler's answer is opaque: an application-level "no" is the handler's
//! own encoding inside a `0x00` answer.

use std::sync::Arc;
use std::time::Duration;

use mimid_cluster::NodeId;

use super::{CallError, RpcHandler};
use crate::metrics::RpcOutcome;

/// The answer's first byte: the handler answered.
const ANSWERED: u8 = 0;
/// The answer's first byte: the transport refused the request; a UTF-8 reason follows.
const REFUSED: u8 = 1;

/// Application error code for stopping a request stream whose body is too large.
const STOP_TOO_LARGE: quinn::VarInt = quinn::VarInt::from_u32(1);

/// Sends `body` on a new stream of `conn` and reads the answer, both within `max_bytes`.
///
/// Cancel safety: safe to drop; dropping resets the stream and the peer's handler result is
/// discarded.
pub(crate) async fn call_on(
    conn: &quinn::Connection,
    body: Vec<u8>,
    max_bytes: usize,
) -> Result<Vec<u8>, CallError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| CallError::Closed)?;
    // A peer with a smaller limit stops reading and answers with a refusal, so a failed write
    // is not the end: the answer says why.
    let written = send.write_all(&body).await;
    drop(body);
    if written.is_ok() {
        // Only fails if the stream is already closed, which the read below reports.
        let _ = send.finish();
    }
    let answer = match recv.read_to_end(max_bytes.saturating_add(1)).await {
        Ok(answer) => answer,
        Err(quinn::ReadToEndError::TooLong) => return Err(CallError::TooLarge),
        Err(quinn::ReadToEndError::Read(_)) => return Err(CallError::Closed),
    };
    decode_answer(answer)
}

/// Serves one incoming call from `from`: reads the request within `max_bytes`, runs the
/// handler, answers, after `answer_delay` when the link to `from` is delayed (fault
/// injection, module `delay`).
///
/// Cancel safety: safe to drop (the connection's task set aborts calls when the connection
/// ends); the stream is then reset.
pub(crate) async fn serve_call(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    from: NodeId,
    handler: Arc<dyn RpcHandler>,
    max_bytes: usize,
    answer_delay: Option<Duration>,
) {
    let answer = match recv.read_to_end(max_bytes).await {
        Ok(body) => {
            // A caller that gave up (its timeout, or a relay whose stream closed) stops the
            // stream when it drops it: the handler is dropped then, instead of holding a task
            // and one of the connection's RPC streams until it ends by itself.
            let gone = send.stopped();
            let answer = tokio::select! {
                answer = handler.handle(from, body) => answer,
                _ = gone => {
                    tracing::debug!(from, "RPC caller gave up; handler dropped");
                    return;
                }
            };
            if answer.len() > max_bytes {
                tracing::warn!(
                    from,
                    bytes = answer.len(),
                    max_bytes,
                    "RPC answer exceeds cluster.max_frame_bytes; refusing the call instead"
                );
                refused(&format!(
                    "the answer of {} bytes exceeds cluster.max_frame_bytes ({max_bytes})",
                    answer.len()
                ))
            } else {
                let mut framed = Vec::with_capacity(answer.len() + 1);
                framed.push(ANSWERED);
                framed.extend_from_slice(&answer);
                framed
            }
        }
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = recv.stop(STOP_TOO_LARGE);
            refused(&format!(
                "the request exceeds cluster.max_frame_bytes ({max_bytes})"
            ))
        }
        Err(quinn::ReadToEndError::Read(err)) => {
            tracing::debug!(from, %err, "RPC request stream failed");
            return;
        }
    };
    if let Some(delay) = answer_delay {
        tokio::time::sleep(delay).await;
    }
    if send.write_all(&answer).await.is_ok() {
        let _ = send.finish();
    }
    // Wait until the caller has read the answer (or gone): dropping the stream right after
    // `finish` is fine for quinn, but the connection's task set would abort this task (and
    // reset the stream) if the connection ended first.
    let _ = send.stopped().await;
}

/// The metric label of a call's result.
pub(crate) fn outcome(result: &Result<Vec<u8>, CallError>) -> RpcOutcome {
    match result {
        Ok(_) => RpcOutcome::Answered,
        Err(CallError::Unreachable) => RpcOutcome::Unreachable,
        Err(CallError::Timeout) => RpcOutcome::Timeout,
        Err(CallError::Refused(_)) => RpcOutcome::Refused,
        Err(CallError::TooLarge) => RpcOutcome::TooLarge,
        Err(CallError::Closed) => RpcOutcome::Closed,
    }
}

fn refused(reason: &str) -> Vec<u8> {
    let mut framed = Vec::with_capacity(reason.len() + 1);
    framed.push(REFUSED);
    framed.extend_from_slice(reason.as_bytes());
    framed
}

fn decode_answer(mut answer: Vec<u8>) -> Result<Vec<u8>, CallError> {
    match answer.first() {
        Some(&ANSWERED) => {
            answer.remove(0);
            Ok(answer)
        }
        Some(&REFUSED) => Err(CallError::Refused(
            String::from_utf8_lossy(&answer[1..]).into_owned(),
        )),
        // An empty or unknown answer: the peer speaks something else; treat the call as lost.
        _ => Err(CallError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_into_bodies_refusals_and_lost_calls() {
        assert_eq!(decode_answer(vec![ANSWERED, 7, 8]), Ok(vec![7, 8]));
        assert_eq!(decode_answer(vec![ANSWERED]), Ok(vec![]));
        assert_eq!(
            decode_answer(refused("too big")),
            Err(CallError::Refused("too big".into()))
        );
        assert_eq!(
            decode_answer(vec![REFUSED, 0xff]),
            Err(CallError::Refused("\u{fffd}".into()))
        );
        assert_eq!(decode_answer(vec![]), Err(CallError::Closed));
        assert_eq!(decode_answer(vec![9, 1]), Err(CallError::Closed));
    }
}
