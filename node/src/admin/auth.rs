//! Bearer-token authentication of the admin listener's operator routes (issue 6).
//!
//! The admin listener serves two kinds of routes. The probes and the scrape (`GET /healthz`,
//! `/readyz`, `/metrics`: [`OPEN_PATHS`]) carry no user data and must stay reachable by
//! kubelets, load balancers and Prometheus without a credential. Everything else is an operator
//! route: a backup holds the provider's private keys and every room (ARCHITECTURE.md "Provider
//! keys"), abuse reports hold message contents, blocks decide who may use the provider, and the
//! cluster routes drain and decommission nodes. With `admin_token_file` configured every request
//! that is not a probe or the scrape, unknown paths included (fail closed), must carry
//! `Authorization: Bearer <token>` (RFC 6750 §2.1):
//!
//! - no `Authorization` header, or another scheme: 401 with `WWW-Authenticate: Bearer`
//!   (RFC 6750 §3: no error code when the request has no credential);
//! - a bearer token that is not the node's: 403;
//! - the node's token: the route answers.
//!
//! Every operator request is counted in `mimid_admin_requests_total{outcome}`, a family of the
//! node's one registry ([`Metrics::count_admin_request`]), and every refusal is logged (method,
//! path, peer address, never the token presented).
//!
//! The comparison is constant-time: the node keeps only the SHA-256 of its token and compares
//! the SHA-256 of the presented one with [`digests_equal`], which looks at every byte whatever
//! differs, so neither the position of the first wrong byte nor the token's length shows in the
//! answer's timing.
//!
//! Without `admin_token_file` the operator routes are open (outcome `open`): `Config::validate`
//! and [`AdminAuth::from_config`] allow that only on a loopback `admin_listen`, where only users
//! of the machine reach them; `mimid start` logs a warning, `mimid dev` always has a token
//! (`data_dir/admin.token`, generated on first start).
//!
//! What it does not do: per-operator identities, token rotation without a restart (the file is
//! read at start), or TLS on the admin listener (keep it on loopback or a private network; the
//! token crosses it in clear text like a Prometheus scrape).

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::metrics::Metrics;

/// Paths answered without a token, to `GET` and `HEAD` only: the probes and the scrape.
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// The token file's name in a `mimid dev` data directory ([`crate::config::dev_admin_token_file`]).
pub const ADMIN_TOKEN_FILE_NAME: &str = "admin.token";
/// The environment variable the admin commands read the token file's path from when neither
/// `--token-file` nor `--data-dir` is given. It is also the environment form of the
/// configuration key `admin_token_file`, so one variable serves a node and its operator.
pub const ADMIN_TOKEN_FILE_ENV: &str = "MIMID_ADMIN_TOKEN_FILE";
/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;
/// Fewest characters of a token: 32 bytes in base64 without padding.
pub const MIN_TOKEN_CHARS: usize = 43;
/// Most characters of a token (and so of its file, give or take a line break).
const MAX_TOKEN_CHARS: usize = 1024;
/// Token files are owner-only; so is a directory created for one.
const TOKEN_FILE_MODE: u32 = 0o600;
const TOKEN_DIR_MODE: u32 = 0o700;

/// The admin listener's bearer token: at least [`MIN_TOKEN_CHARS`] characters of the RFC 6750
/// `b64token` alphabet (base64 or base64url). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A new token: 32 bytes from the operating system's random source, base64url.
    pub fn generate() -> AdminToken {
        let mut secret = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        AdminToken(URL_SAFE_NO_PAD.encode(secret))
    }

    /// The token in `text` (surrounding whitespace, such as a file's final line break, is
    /// ignored), or why it is not one.
    pub fn parse(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the admin token has {} characters, fewer than {MIN_TOKEN_CHARS} (32 random \
                 bytes in base64: `mimid admin-token --out FILE` or `head -c 32 /dev/urandom | \
                 base64`)",
                token.len()
            ));
        }
        if token.len() > MAX_TOKEN_CHARS {
            return Err(format!(
                "the admin token has {} characters, more than {MAX_TOKEN_CHARS}",
                token.len()
            ));
        }
        if !is_b64token(token) {
            return Err(
                "the admin token holds a character outside base64 and base64url \
                        (A-Z a-z 0-9 - . _ ~ + /, then = padding; RFC 6750 b64token) on one line"
                    .into(),
            );
        }
        Ok(AdminToken(token.to_owned()))
    }

    /// Reads the token from `path`. A file every user of the machine may read is used, with a
    /// warning (owner and group only, e.g. root:mimid 0640 or a Kubernetes Secret's 0440, is the
    /// way to share it with the service's group).
    pub fn load(path: &Path) -> anyhow::Result<AdminToken> {
        let file = File::open(path)
            .with_context(|| format!("reading the admin token file {}", path.display()))?;
        let mode = file.metadata().map(|m| m.permissions().mode()).unwrap_or(0);
        let mut text = String::new();
        file.take(MAX_TOKEN_CHARS as u64 + 2)
            .read_to_string(&mut text)
            .with_context(|| format!("reading the admin token file {}", path.display()))?;
        let token = AdminToken::parse(&text)
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
        if mode & 0o004 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the admin token file is readable by every user of the machine (chmod o-r it)"
            );
        }
        Ok(token)
    }

    /// Writes a new token to `path` (mode 0600; a missing parent directory is created with mode
    /// 0700) and returns it. An existing file is left alone and is an error: replacing a token
    /// locks out whoever uses it, so remove the file first on purpose.
    pub fn create(path: &Path) -> anyhow::Result<AdminToken> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(TOKEN_DIR_MODE)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let token = AdminToken::generate();
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TOKEN_FILE_MODE)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} exists already (remove it first to replace the token)",
                path.display()
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating the admin token file {}", path.display()))
            }
        };
        file.write_all(format!("{}\n", token.0).as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing the admin token file {}", path.display()))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .with_context(|| format!("syncing {}", parent.display()))?;
        }
        Ok(token)
    }

    /// The token in `path`, created there first when the file is missing (`mimid dev`);
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(AdminToken, bool)> {
        if path.exists() {
            return Ok((AdminToken::load(path)?, false));
        }
        Ok((AdminToken::create(path)?, true))
    }

    /// The token itself, for an `Authorization: Bearer` header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The header line that carries it on a hand-written HTTP/1.1 request.
    pub fn header_line(&self) -> String {
        format!("Authorization: Bearer {}\r\n", self.0)
    }
}

/// What the admin listener decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminOutcome {
    /// A probe or the scrape (not counted).
    Probe,
    /// An operator route with the right token.
    Authorized,
    /// An operator route on a node without `admin_token_file` (loopback only).
    Open,
    /// No bearer token: 401.
    MissingToken,
    /// A bearer token that is not the node's: 403.
    WrongToken,
}

impl AdminOutcome {
    /// The counted outcomes, in a fixed order.
    pub const COUNTED: [AdminOutcome; 4] = [
        AdminOutcome::Authorized,
        AdminOutcome::Open,
        AdminOutcome::MissingToken,
        AdminOutcome::WrongToken,
    ];

    /// The label value of `mimid_admin_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminOutcome::Probe => "probe",
            AdminOutcome::Authorized => "authorized",
            AdminOutcome::Open => "open",
            AdminOutcome::MissingToken => "missing_token",
            AdminOutcome::WrongToken => "wrong_token",
        }
    }

    /// Whether the request goes on to its route.
    pub fn is_allowed(self) -> bool {
        matches!(
            self,
            AdminOutcome::Probe | AdminOutcome::Authorized | AdminOutcome::Open
        )
    }
}

impl EncodeLabelValue for AdminOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The admin listener's gate: the SHA-256 of the node's token, or none. What it decides is
/// counted in the node's registry ([`AdminAuth::admit`]).
#[derive(Debug)]
pub struct AdminAuth {
    expected: Option<[u8; 32]>,
}

/// What the gate middleware ([`require_token`]) holds: the gate and the node's metrics, which
/// count its decisions.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The token check.
    pub auth: Arc<AdminAuth>,
    /// The node's registry, with `mimid_admin_requests_total`.
    pub metrics: Arc<Metrics>,
}

impl AdminAuth {
    /// A gate that asks for `token` on every operator route, or lets every request through
    /// without one.
    pub fn new(token: Option<&AdminToken>) -> AdminAuth {
        AdminAuth {
            expected: token.map(|token| digest(token.secret().as_bytes())),
        }
    }

    /// The gate a node runs with `config`: its `admin_token_file`, read now; without one only
    /// on a loopback `admin_listen`.
    pub fn from_config(config: &Config) -> anyhow::Result<AdminAuth> {
        match &config.admin_token_file {
            Some(path) => {
                let token = AdminToken::load(path).context("admin_token_file")?;
                Ok(AdminAuth::new(Some(&token)))
            }
            None if config.admin_listen.ip().is_loopback() => Ok(AdminAuth::new(None)),
            None => bail!(
                "admin_token_file: {}",
                crate::config::admin_token_required(config.admin_listen)
            ),
        }
    }

    /// Whether operator routes need the token.
    pub fn requires_token(&self) -> bool {
        self.expected.is_some()
    }

    /// The decision for a request of `method` to `path` with the `Authorization` header's
    /// value `authorization` (not counted: [`AdminAuth::admit`] counts).
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> AdminOutcome {
        if (method == Method::GET || method == Method::HEAD) && OPEN_PATHS.contains(&path) {
            return AdminOutcome::Probe;
        }
        match &self.expected {
            None => AdminOutcome::Open,
            Some(expected) => match authorization.and_then(bearer) {
                None => AdminOutcome::MissingToken,
                Some(presented) if digests_equal(&digest(presented), expected) => {
                    AdminOutcome::Authorized
                }
                Some(_) => AdminOutcome::WrongToken,
            },
        }
    }

    /// [`AdminAuth::check`], with an operator request's outcome counted in `metrics`
    /// (`mimid_admin_requests_total{outcome}`).
    pub fn admit(
        &self,
        metrics: &Metrics,
        method: &Method,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> AdminOutcome {
        let outcome = self.check(method, path, authorization);
        metrics.count_admin_request(outcome);
        outcome
    }
}

/// The middleware in front of every admin route ([`crate::admin::router`]): probes pass,
/// operator routes need the token when the node has one.
///
/// Cancel safety: cancel safe (the check keeps nothing; the route's own safety applies).
pub async fn require_token(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let outcome = gate.auth.admit(
        &gate.metrics,
        request.method(),
        request.uri().path(),
        request.headers().get(header::AUTHORIZATION),
    );
    if outcome.is_allowed() {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.to_string());
    tracing::warn!(
        method = %request.method(),
        path = %request.uri().path(),
        peer = peer.as_deref().unwrap_or("unknown"),
        outcome = outcome.as_str(),
        "admin request refused"
    );
    refusal(outcome)
}

/// The answer to a refused request.
fn refusal(outcome: AdminOutcome) -> Response {
    match outcome {
        AdminOutcome::WrongToken => (
            StatusCode::FORBIDDEN,
            "the admin token is wrong: send the one in the node's admin_token_file\n",
        )
            .into_response(),
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"mimid-admin\"")],
            "this admin route needs the node's admin token: send `Authorization: Bearer \
             <token>` with the token in the node's admin_token_file\n",
        )
            .into_response(),
    }
}

/// The error an admin command reports for a status other than the one it wanted, with what
/// to do about a refused token.
pub fn node_answered(status: u16, body: &[u8]) -> anyhow::Error {
    let reason = String::from_utf8_lossy(body);
    let reason = reason.trim();
    match status {
        401 => anyhow::anyhow!(
            "the node answered 401: {reason}\nGive the admin token with --token-file FILE (or \
             {ADMIN_TOKEN_FILE_ENV}=FILE), or --data-dir DIR for a `mimid dev` node (its \
             DIR/{ADMIN_TOKEN_FILE_NAME})"
        ),
        403 => anyhow::anyhow!(
            "the node answered 403: {reason}\nThe token given is not the one in the node's \
             admin_token_file"
        ),
        _ => anyhow::anyhow!("the node answered {status}: {reason}"),
    }
}

/// Which token file an admin command uses: `--token-file`, else `--data-dir`'s
/// `admin.token`, else `$MIMID_ADMIN_TOKEN_FILE` from `env`; `None` when none is given.
pub fn token_file_for(
    token_file: Option<&Path>,
    data_dir: Option<&Path>,
    env: &[(String, String)],
) -> Option<PathBuf> {
    token_file
        .map(Path::to_owned)
        .or_else(|| data_dir.map(crate::config::dev_admin_token_file))
        .or_else(|| {
            env.iter()
                .find(|(name, value)| name == ADMIN_TOKEN_FILE_ENV && !value.is_empty())
                .map(|(_, value)| PathBuf::from(value))
        })
}

/// The presented token of an `Authorization` value, when it is `Bearer <token>` (the scheme
/// is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether two digests are equal, in time independent of where they differ: every byte is
/// looked at, and the folded difference goes through `black_box` so the compiler cannot turn
/// the loop into an early exit.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(difference) == 0
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> AdminToken {
        AdminToken::parse(&"t".repeat(MIN_TOKEN_CHARS)).unwrap()
    }

    fn value(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn generated_tokens_are_long_random_and_parse_back() {
        let first = AdminToken::generate();
        let second = AdminToken::generate();
        assert_ne!(first, second);
        assert_eq!(first.secret().len(), MIN_TOKEN_CHARS);
        assert_eq!(AdminToken::parse(first.secret()), Ok(first.clone()));
        assert_eq!(
            AdminToken::parse(&format!("  {}\n", first.secret())),
            Ok(first.clone())
        );
        assert!(!format!("{first:?}").contains(first.secret()));
    }

    /// `head -c 32 /dev/urandom | base64` (standard alphabet, padded) is a token too.
    #[test]
    fn tokens_are_b64token_of_at_least_32_bytes() {
        let standard = base64::engine::general_purpose::STANDARD.encode([0xfb; 32]);
        assert!(
            standard.contains('+') || standard.contains('/'),
            "{standard}"
        );
        assert!(standard.ends_with('='));
        assert!(AdminToken::parse(&standard).is_ok());
        for (bad, words) in [
            ("", "0 characters"),
            (&"a".repeat(MIN_TOKEN_CHARS - 1) as &str, "fewer than 43"),
            (&"a".repeat(MAX_TOKEN_CHARS + 1), "more than"),
            (
                &format!("{} {}", "a".repeat(30), "b".repeat(30)),
                "b64token",
            ),
            (
                &format!("{}\n{}", "a".repeat(30), "b".repeat(30)),
                "b64token",
            ),
            (&format!("{}é", "a".repeat(50)), "b64token"),
            (&format!("={}", "a".repeat(50)), "b64token"),
            (&"=".repeat(50), "b64token"),
        ] {
            let err = AdminToken::parse(bad).expect_err(bad);
            assert!(err.contains(words), "{bad:?}: {err}");
        }
    }

    #[test]
    fn token_files_are_created_once_owner_only_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("admin.token");
        let created = AdminToken::create(&path).expect("created");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(AdminToken::load(&path).unwrap(), created);

        let err = AdminToken::create(&path).expect_err("exists");
        assert!(format!("{err:#}").contains("exists already"), "{err:#}");
        assert_eq!(AdminToken::load(&path).unwrap(), created, "left alone");
        assert_eq!(
            AdminToken::load_or_create(&path).unwrap(),
            (created.clone(), false)
        );
        let other = dir.path().join("other.token");
        let (fresh, was_created) = AdminToken::load_or_create(&other).unwrap();
        assert!(was_created);
        assert_ne!(fresh, created);

        std::fs::write(&other, "short\n").unwrap();
        let err = AdminToken::load(&other).expect_err("too short");
        let message = format!("{err:#}");
        assert!(
            message.contains("other.token") && message.contains("fewer than"),
            "{message}"
        );
        let err = AdminToken::load(&dir.path().join("absent")).expect_err("missing");
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
    }

    /// RFC 6750 §2.1 and §3: no credential is 401, a wrong one 403, the right one passes;
    /// probes and the scrape pass either way; every operator request is counted.
    #[test]
    fn operator_routes_need_the_bearer_token_rfc_6750() {
        let auth = AdminAuth::new(Some(&token()));
        let metrics = Metrics::new();
        assert!(auth.requires_token());
        let right = value(&format!("Bearer {}", token().secret()));
        let cases: &[(&Method, &str, Option<&HeaderValue>, AdminOutcome)] = &[
            (&Method::GET, "/healthz", None, AdminOutcome::Probe),
            (&Method::HEAD, "/readyz", None, AdminOutcome::Probe),
            (&Method::GET, "/metrics", None, AdminOutcome::Probe),
            (&Method::POST, "/metrics", None, AdminOutcome::MissingToken),
            (&Method::GET, "/metrics/", None, AdminOutcome::MissingToken),
            (
                &Method::POST,
                "/admin/backup",
                None,
                AdminOutcome::MissingToken,
            ),
            (&Method::GET, "/nowhere", None, AdminOutcome::MissingToken),
            (
                &Method::POST,
                "/admin/backup",
                Some(&right),
                AdminOutcome::Authorized,
            ),
            (&Method::GET, "/metrics", Some(&right), AdminOutcome::Probe),
        ];
        for (method, path, header, expected) in cases {
            assert_eq!(
                auth.admit(&metrics, method, path, *header),
                *expected,
                "{method} {path}"
            );
        }
        let wrong = [
            format!("Bearer {}x", token().secret()),
            format!("Bearer x{}", token().secret()),
            format!("Bearer {}", &token().secret()[1..]),
            format!("Bearer {}", AdminToken::generate().secret()),
        ];
        for header in &wrong {
            let outcome = auth.admit(
                &metrics,
                &Method::POST,
                "/admin/backup",
                Some(&value(header)),
            );
            assert_eq!(outcome, AdminOutcome::WrongToken, "{header}");
        }
        for header in [
            format!("Basic {}", token().secret()),
            "Bearer".to_owned(),
            "Bearer    ".to_owned(),
            token().secret().to_owned(),
        ] {
            let outcome = auth.admit(
                &metrics,
                &Method::POST,
                "/admin/backup",
                Some(&value(&header)),
            );
            assert_eq!(outcome, AdminOutcome::MissingToken, "{header}");
        }
        // The scheme is case-insensitive; spaces around the token do not matter.
        let lower = value(&format!("bearer  {} ", token().secret()));
        assert_eq!(
            auth.admit(&metrics, &Method::POST, "/admin/backup", Some(&lower)),
            AdminOutcome::Authorized
        );
        // `check` decides the same without counting.
        assert_eq!(
            auth.check(&Method::POST, "/admin/backup", None),
            AdminOutcome::MissingToken
        );

        let text = metrics.encode();
        for (outcome, count) in [
            ("authorized", 2),
            ("open", 0),
            ("missing_token", 8),
            ("wrong_token", 4),
        ] {
            let series = format!("mimid_admin_requests_total{{outcome=\"{outcome}\"}} {count}");
            assert!(text.contains(&series), "{series}\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn without_a_token_operator_routes_are_open_and_counted() {
        let auth = AdminAuth::new(None);
        let metrics = Metrics::new();
        assert!(!auth.requires_token());
        assert_eq!(
            auth.admit(&metrics, &Method::POST, "/admin/backup", None),
            AdminOutcome::Open
        );
        assert_eq!(
            auth.admit(&metrics, &Method::GET, "/healthz", None),
            AdminOutcome::Probe
        );
        let text = metrics.encode();
        assert!(
            text.contains("mimid_admin_requests_total{outcome=\"open\"} 1"),
            "{text}"
        );
    }

    /// The comparison: equal digests only, whichever byte differs (first, middle, last).
    #[test]
    fn digests_are_compared_whole() {
        let a = digest(b"the admin token");
        assert!(digests_equal(&a, &a.clone()));
        for index in [0, 15, 31] {
            let mut b = a;
            b[index] ^= 0x01;
            assert!(!digests_equal(&a, &b), "byte {index}");
        }
        assert!(!digests_equal(&a, &digest(b"the admin token ")));
    }

    #[test]
    fn from_config_reads_the_file_or_allows_none_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        assert!(!AdminAuth::from_config(&config).unwrap().requires_token());
        config.admin_listen = "[::1]:9090".parse().unwrap();
        assert!(!AdminAuth::from_config(&config).unwrap().requires_token());
        config.admin_listen = "0.0.0.0:9090".parse().unwrap();
        let err = AdminAuth::from_config(&config).expect_err("public without a token");
        assert!(format!("{err:#}").contains("admin_token_file"), "{err:#}");
        let path = dir.path().join("admin.token");
        config.admin_token_file = Some(path.clone());
        let err = AdminAuth::from_config(&config).expect_err("missing file");
        let message = format!("{err:#}");
        assert!(message.contains("admin_token_file") && message.contains("admin.token"));
        AdminToken::create(&path).unwrap();
        assert!(AdminAuth::from_config(&config).unwrap().requires_token());
    }

    #[test]
    fn admin_commands_find_the_token_file_in_order() {
        let env = vec![(ADMIN_TOKEN_FILE_ENV.to_owned(), "/env/token".to_owned())];
        let (flag, dir) = (Path::new("/flag/token"), Path::new("/data"));
        assert_eq!(
            token_file_for(Some(flag), Some(dir), &env),
            Some(flag.to_owned())
        );
        assert_eq!(
            token_file_for(None, Some(dir), &env),
            Some(dir.join(ADMIN_TOKEN_FILE_NAME))
        );
        assert_eq!(
            token_file_for(None, None, &env),
            Some(PathBuf::from("/env/token"))
        );
        let empty = vec![(ADMIN_TOKEN_FILE_ENV.to_owned(), String::new())];
        assert_eq!(token_file_for(None, None, &empty), None);
        assert_eq!(token_file_for(None, None, &[]), None);
    }

    #[test]
    fn refusals_tell_the_operator_what_to_pass() {
        let missing = format!("{:#}", node_answered(401, b"needs the token\n"));
        assert!(
            missing.contains("401") && missing.contains("--token-file"),
            "{missing}"
        );
        assert!(missing.contains(ADMIN_TOKEN_FILE_ENV), "{missing}");
        let wrong = format!("{:#}", node_answered(403, b"wrong\n"));
        assert!(
            wrong.contains("403") && wrong.contains("admin_token_file"),
            "{wrong}"
        );
        let other = format!("{:#}", node_answered(409, b"busy\n"));
        assert_eq!(other, "the node answered 409: busy");
    }
}
