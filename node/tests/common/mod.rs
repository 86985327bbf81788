//! What the SIGKILL harnesses on the real binary share (`crash.rs`: one node, `crash_cluster.rs`:
//! three nodes of one provider): starting a `mimid` process and reading the addresses it
//! printed, a minimal HTTP/1.1 client for the admin listener, readiness polls, the client's
//! trust anchors and numeric settings from the environment.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Longest wait for a start, a readiness check or a message.
pub const WAIT: Duration = Duration::from_secs(30);

/// A started `mimid` process and the addresses it printed.
pub struct Listening {
    pub child: Child,
    /// The HTTP/3 listener (clients and peer providers).
    pub quic: SocketAddr,
    /// The admin HTTP listener.
    pub admin: SocketAddr,
}

/// Spawns `command` (a `mimid dev` or `mimid start`; stdout piped, killed when dropped) and
/// reads its stdout until the `mimid listening: quic=… admin=http://…` line. Stdout is read
/// on afterwards, so the child never blocks on a full pipe. `Err` says why there is no such
/// line: the process could not be spawned, exited first (a bind failure, a bad
/// configuration), or took longer than [`WAIT`].
///
/// The harnesses' own settings (`MIMID_CRASH_*`) are removed from the child's environment:
/// `mimid` reads every `MIMID_*` variable as configuration and refuses unknown keys.
pub async fn spawn_listening(command: &mut Command) -> Result<Listening, String> {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MIMID_CRASH_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("mimid does not start: {err}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let addresses = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("mimid listening: quic=") {
                let (quic, admin) = rest.split_once(" admin=http://").expect("both addresses");
                return Some((
                    quic.parse::<SocketAddr>().expect("quic address"),
                    admin.parse::<SocketAddr>().expect("admin address"),
                ));
            }
        }
        None
    })
    .await;
    let (quic, admin) = match addresses {
        Ok(Some(addresses)) => addresses,
        Ok(None) => return Err("mimid exited before listening".into()),
        Err(_) => return Err(format!("mimid did not listen within {WAIT:?}")),
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Listening { child, quic, admin })
}

/// `METHOD path` on the admin listener `admin` (HTTP/1.1, one request per connection), with
/// the admin bearer `token` if given (operator routes need it, the probes do not): the status
/// and the body, or `None` when the listener does not answer.
pub async fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Content-Length: \
         0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..split]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &response[split + 4..];
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, body))
}

/// The payload of a `Transfer-Encoding: chunked` body, or `None` if it is malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The status of `GET /readyz`, or `None` when the admin port does not answer.
pub async fn readyz(admin: SocketAddr) -> Option<u16> {
    http(admin, "GET", "/readyz", None)
        .await
        .map(|(status, _)| status)
}

/// Polls `/readyz` on `admin` every 20 ms until it answers 200; panics after [`WAIT`].
pub async fn wait_ready(admin: SocketAddr, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while readyz(admin).await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not ready in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The trust anchors in the PEM file `ca` (what clients verify the provider's certificate
/// against).
pub fn roots(ca: &Path) -> Arc<RootCertStore> {
    let pem = std::fs::read(ca).unwrap_or_else(|err| panic!("{}: {err}", ca.display()));
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("PEM")).expect("CA");
    }
    Arc::new(roots)
}

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
