//! `mimid demo` (node/src/demo.rs) end to end: two real providers on loopback, real openmls
//! clients, and the transcript a newcomer reads (MIMI.md §6.1, §6.2, §6.4, §6.5).

use std::path::PathBuf;

use mimid_node::demo::{run_demo, DemoFailure, DemoOptions, STEPS};

/// Runs the demo and returns its outcome and transcript.
async fn demo(options: DemoOptions) -> (Result<(), DemoFailure>, Vec<String>) {
    let mut lines = Vec::new();
    let outcome = run_demo(&options, &mut |line| lines.push(line.to_owned())).await;
    (outcome, lines)
}

/// The line of step `number` (1-based): it starts with `[ n/16] <title>:`.
fn step_line(lines: &[String], number: usize) -> &str {
    let prefix = format!("[{number:>2}/{}] {}:", STEPS.len(), STEPS[number - 1]);
    let found: Vec<&String> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(
        found.len(),
        1,
        "one line for {prefix}\n{}",
        lines.join("\n")
    );
    found[0]
}

/// Every step of [`STEPS`] has its line, in order.
fn assert_names_every_step(lines: &[String]) {
    let mut last = 0;
    for number in 1..=STEPS.len() {
        let line = step_line(lines, number);
        let at = lines.iter().position(|l| l == line).expect("present");
        assert!(
            at > last,
            "step {number} is printed after step {}",
            number - 1
        );
        last = at;
    }
}

/// The demo passes, names every step, and each line shows the server-to-server request the
/// step caused as the receiving provider counted it, with its status and MIMI code
/// (protocol-06 §5.1 keyMaterial, §5.3 submitMessage, §5.4 notify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_walks_alice_and_bob_through_a_federated_room_mimi_md_6() {
    let (outcome, lines) = demo(DemoOptions::default()).await;
    let transcript = lines.join("\n");
    assert_eq!(outcome, Ok(()), "{transcript}");
    assert_names_every_step(&lines);
    assert!(
        !transcript.contains("FAILED") && !transcript.contains("skipped"),
        "{transcript}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("demo passed: all 16 steps did what they should")
    );

    let expectations: [(usize, &[&str]); 10] = [
        (4, &["POST /client/v1/rooms -> a.example 201", "epoch 0"]),
        (
            5,
            &["POST /client/v1/keyMaterial -> a.example -> b.example POST /v1/keyMaterial 200"],
        ),
        (6, &["-> a.example 200 success", "epoch 1"]),
        (
            7,
            &[
                "a.example -> b.example POST /v1/notify 201",
                "bob@b received the Welcome",
                "epoch 1)",
            ],
        ),
        (
            8,
            &[
                "-> a.example 200 accepted",
                "a.example -> b.example POST /v1/notify 201",
                "bob@b received \"hello bob\"",
            ],
        ),
        (
            9,
            &[
                "-> b.example -> a.example POST /v1/submitMessage 200 accepted",
                "alice@a received \"hi alice\"",
            ],
        ),
        (12, &["bob@b received \"one more from a\""]),
        (13, &["alice@a received \"one more from b\""]),
        (
            14,
            &[
                "-> a.example 200 success",
                "epoch 2",
                "bob@b received his removal",
            ],
        ),
        (
            15,
            &["-> b.example -> a.example POST /v1/submitMessage 200 notAllowed"],
        ),
    ];
    for (number, needles) in expectations {
        let line = step_line(&lines, number);
        for needle in needles {
            assert!(line.contains(needle), "step {number}: {needle:?} in {line}");
        }
    }

    // The temporary data directory named in step 1 is gone.
    let first = step_line(&lines, 1);
    let data = first
        .rsplit_once("data in ")
        .map(|(_, dir)| PathBuf::from(dir))
        .expect("step 1 names the data directory");
    assert!(data.is_absolute(), "{first}");
    assert!(!data.exists(), "{} was removed", data.display());
}

/// With `--data-dir`, each provider's sled data and certificates stay there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keeps_the_data_of_a_given_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let kept = dir.path().join("demo");
    let (outcome, lines) = demo(DemoOptions {
        data_dir: Some(kept.clone()),
        ..DemoOptions::default()
    })
    .await;
    assert_eq!(outcome, Ok(()), "{}", lines.join("\n"));
    assert!(step_line(&lines, 16).contains(&format!("data kept in {}", kept.display())));
    for domain in ["a.example", "b.example"] {
        let provider = kept.join(domain);
        assert!(provider.join("data").is_dir(), "{domain}: sled data kept");
        assert!(provider.join("tls/provider.pem").is_file(), "{domain}");
    }
    assert!(kept.join("ca/ca.pem").is_file());
}

/// A directory that is not empty is refused before anything starts: the demo fails at step 1
/// with the reason, still names every step (as skipped), and leaves the directory alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fails_at_the_first_step_on_a_used_directory_and_says_why() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("notes.txt"), b"mine").expect("write");
    let (outcome, lines) = demo(DemoOptions {
        data_dir: Some(dir.path().to_owned()),
        ..DemoOptions::default()
    })
    .await;
    let failure = outcome.expect_err("the demo fails");
    assert_eq!((failure.number, failure.title), (1, STEPS[0]));
    assert!(
        failure.reason.contains("is not empty"),
        "{}",
        failure.reason
    );
    assert_names_every_step(&lines);
    assert!(step_line(&lines, 1).contains("FAILED"));
    for number in 2..=STEPS.len() {
        assert!(step_line(&lines, number).ends_with("skipped after the failure"));
    }
    assert_eq!(lines.last(), Some(&failure.to_string()));
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readable")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("notes.txt")]);
}
