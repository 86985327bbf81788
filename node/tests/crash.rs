//! Crash durability on the real stack (issue: reliability, item 3): a real `mimid` process is
//! killed with SIGKILL at a random moment under load, again and again, on one data directory;
//! after every restart, and at the end, no acknowledged message is missing and none is
//! duplicated (DESIGN.md §2: acknowledged means Raft-committed and fsynced).
//!
//! CI runs `MIMID_CRASH_CYCLES` cycles (default 24); the documented long run sets it to 1000.
//! `MIMID_CRASH_SEED` fixes the kill delays.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{env_or, roots, spawn_listening, wait_ready, WAIT};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::client::{Endpoint, Event, MimiClient, SubmitResult};
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

struct Running {
    child: Child,
    endpoint: Endpoint,
}

/// Starts `mimid dev` on `dir` with OS-chosen loopback ports and waits until it is ready.
async fn start(dir: &Path) -> Running {
    let listening = spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_mimid"))
            .args(["dev", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stderr(Stdio::null()),
    )
    .await
    .unwrap_or_else(|reason| panic!("{reason}"));
    wait_ready(listening.admin, "mimid").await;
    Running {
        child: listening.child,
        endpoint: Endpoint {
            addr: listening.quic,
            server_name: "localhost".into(),
            roots: roots(&dir.join("certs").join(mimid_node::certs::CA_CERT_FILE)),
        },
    }
}

/// Reads `bob`'s stream until it has delivered `last` (the newest acknowledged message, if any),
/// acknowledging as it goes; returns the message texts in order. A message appended after `last`
/// whose answer the crash lost may come now or at the start of the next drain: either way it
/// precedes every later message. A stream the node closed (its queue filled while replaying) is
/// reopened from the acknowledged cursor.
async fn drain(bob: &mut MimiClient, endpoint: &Endpoint, last: Option<&str>) -> Vec<String> {
    let mut texts = Vec::new();
    let Some(last) = last else {
        return texts;
    };
    let give_up = tokio::time::Instant::now() + WAIT;
    while texts
        .last()
        .is_none_or(|text: &String| text.as_str() < last)
    {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{last} was not delivered within {WAIT:?} of the restart"
        );
        match bob.next_event(Duration::from_millis(500)).await {
            Ok(Some(Event::Message { content, .. })) => {
                texts.push(content.text().expect("text/plain").to_string());
            }
            Ok(Some(_)) | Ok(None) => {}
            Err(_) => {
                bob.ack().await.expect("bob acknowledges");
                bob.reconnect(endpoint.clone())
                    .await
                    .expect("bob reconnects");
            }
        }
    }
    bob.ack().await.expect("bob acknowledges");
    texts
}

/// Every acknowledged message is in `seen`, once, and `seen` is in send order (a message whose
/// answer was lost in the crash may or may not be there).
fn check(seen: &[String], acknowledged: &[String], cycle: usize) {
    let numbers: Vec<u64> = seen
        .iter()
        .map(|text| {
            text.trim_start_matches("m")
                .parse()
                .expect("a numbered message")
        })
        .collect();
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "cycle {cycle}: delivered out of order or twice: {numbers:?}"
    );
    // Both lists are in send order, so one merge pass finds every acknowledged message.
    let mut delivered = seen.iter().peekable();
    for text in acknowledged {
        while delivered.next_if(|seen| *seen < text).is_some() {}
        assert!(
            delivered.next_if(|seen| *seen == text).is_some(),
            "cycle {cycle}: acknowledged {text} is missing after the crash"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_in_a_loop() {
    let cycles: usize = env_or("MIMID_CRASH_CYCLES", 24);
    let seed: u64 = env_or("MIMID_CRASH_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temporary directory");
    let room = RoomId::parse("mimi://localhost/r/crash").unwrap();

    let mut node = start(dir.path()).await;
    let alice_id = ClientId::parse("mimi://localhost/d/alice/phone").unwrap();
    let bob_id = ClientId::parse("mimi://localhost/d/bob/phone").unwrap();
    let mut alice = MimiClient::register(node.endpoint.clone(), alice_id)
        .await
        .expect("alice registers");
    let mut bob = MimiClient::register(node.endpoint.clone(), bob_id)
        .await
        .expect("bob registers");
    bob.publish_key_packages(1).await.expect("bob publishes");
    bob.connect_stream().await.expect("bob's stream");
    alice.create_room(&room).await.expect("room created");
    alice
        .add_users(&room, &[UserId::parse("mimi://localhost/u/bob").unwrap()])
        .await
        .expect("bob added");
    match bob.next_event(WAIT).await.expect("stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("bob expected the Welcome, got {other:?}"),
    }

    let mut acknowledged: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut next = 0u64;
    for cycle in 0..cycles {
        // Load until the kill: every answered message is acknowledged (durable).
        let kill_after = Duration::from_millis(rng.gen_range(30..300));
        let load = async {
            loop {
                let text = format!("m{next:08}");
                next += 1;
                match alice.send_text(&room, &text).await {
                    Ok(SubmitResult::Accepted { .. }) => acknowledged.push(text),
                    Ok(other) => panic!("cycle {cycle}: {text} refused: {other:?}"),
                    Err(_) => return, // the node is gone
                }
            }
        };
        tokio::select! {
            () = load => {}
            () = tokio::time::sleep(kill_after) => {}
        }
        node.child.start_kill().expect("SIGKILL sent");
        node.child.wait().await.expect("mimid reaped");

        node = start(dir.path()).await;
        alice
            .reconnect(node.endpoint.clone())
            .await
            .expect("alice reconnects");
        bob.reconnect(node.endpoint.clone())
            .await
            .expect("bob reconnects");
        // Bob's client drops what it processed before by (room, seq), so a message appended
        // twice would show up again here under a new seq.
        seen.extend(
            drain(
                &mut bob,
                &node.endpoint,
                acknowledged.last().map(String::as_str),
            )
            .await,
        );
        check(&seen, &acknowledged, cycle);
        if (cycle + 1) % 50 == 0 {
            eprintln!(
                "crash harness: {} of {cycles} cycles, {} messages acknowledged",
                cycle + 1,
                acknowledged.len()
            );
        }
    }
    assert!(
        acknowledged.len() >= cycles,
        "the load acknowledged only {} messages in {cycles} cycles",
        acknowledged.len()
    );
    assert!(seen.len() >= acknowledged.len());
    eprintln!(
        "crash harness: seed {seed}, {cycles} SIGKILL cycles, {} messages acknowledged, {} \
         delivered, none lost or duplicated",
        acknowledged.len(),
        seen.len()
    );
    node.child.start_kill().ok();
    let _ = node.child.wait().await;
}
