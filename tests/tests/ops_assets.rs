//! The operations assets in `ops/` checked against the real node (issue: observability and
//! operations).
//!
//! Dashboards and alert rules are only useful if every series they query exists: a renamed
//! metric or a misspelt label turns a panel blank and an alert silent, and nothing else
//! notices. So this test starts a real node (quinn on loopback, sled in a temporary
//! directory), drives traffic that touches every metric family, scrapes `/metrics`, and checks
//! every PromQL expression in `ops/grafana/*.json` and `ops/prometheus/alerts.yml` against the
//! scrape: metric names, label matchers and grouping labels. The other direction holds too:
//! every family the node exports is on some dashboard.
//!
//! The remaining checks tie the deployment files to the node's real interface: the example
//! configuration loads with the node's own loader (unknown keys are rejected) and names every
//! key, its TLS paths are the files `mimid cert` writes, the systemd unit writes only the data
//! directory, the Kubernetes manifests use the ports the configuration binds and the probe
//! paths the admin listener serves, every alert has a runbook and a promtool test case, and
//! every relative link in the runbooks resolves.
//!
//! YAML is read line by line (the files are ours and keep a simple shape), so the test needs no
//! YAML dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mimid_node::api::PREFIX;
use mimid_node::certs::{CA_CERT_FILE, PROVIDER_STEM};
use mimid_node::cli::{run_cert, CertCommand};
use mimid_node::client::UpdateResult;
use mimid_node::config::{Config, ConfigError, ConfigSources, TlsSettings};
use mimid_tests::{http_get, room, user, TestNode};

/// Labels Prometheus attaches to every scraped series, whatever the node exports.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Series the assets may use that come from Prometheus itself (`up`) or from the blackbox
/// exporter probing `/readyz` (`probe_success`), with the labels they carry.
const EXTERNAL_METRICS: [&str; 2] = ["up", "probe_success"];

/// The node's `limits.max_body_bytes` here: small, so one request reaches the 413 path.
const MAX_BODY: usize = 64 * 1024;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn ops() -> PathBuf {
    workspace().join("ops")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// The node's exposition

/// What one scrape of `/metrics` says: the declared families and the series seen.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name (as in `# TYPE`) to its type.
    families: BTreeMap<String, String>,
    /// Sample name (e.g. `mimid_requests_total`) to the label names of its series.
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        for line in text.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let mut words = declaration.split_whitespace();
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    panic!("malformed TYPE line: {line}");
                };
                exposition
                    .families
                    .insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line
                    .find(['{', ' '])
                    .unwrap_or_else(|| panic!("sample without a value: {line}"));
                let labels = match line[end..].strip_prefix('{') {
                    Some(rest) => label_names_of_sample(rest)
                        .unwrap_or_else(|e| panic!("sample `{line}`: {e}")),
                    None => BTreeSet::new(),
                };
                exposition
                    .samples
                    .entry(line[..end].to_string())
                    .or_default()
                    .extend(labels);
            }
        }
        exposition
    }

    /// Every sample name the declared families can produce, whether or not a series exists yet.
    fn declared_sample_names(&self) -> BTreeMap<String, String> {
        let mut names = BTreeMap::new();
        for (family, kind) in &self.families {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{family}{suffix}"), family.clone());
            }
        }
        names
    }
}

/// Label names of `a="x",b="y"}` (the text after a sample's `{`).
fn label_names_of_sample(text: &str) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with('}') {
            return Ok(names);
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        names.insert(rest[..eq].trim().to_string());
        let value = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let close = closing_quote(value, '"').ok_or("unterminated label value")?;
        rest = &value[close + 1..];
    }
}

/// Byte index of the quote that closes a string whose opening quote was just consumed.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == quote => return Some(i),
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// PromQL, as far as the checks need it

/// A vector selector: `metric{label="value", ...}`.
#[derive(Debug, PartialEq, Eq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// The series and labels one PromQL expression refers to.
#[derive(Debug, Default, PartialEq, Eq)]
struct PromQuery {
    selectors: Vec<Selector>,
    /// Labels named in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
    grouping: Vec<String>,
}

const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATOR_KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "atan2"];

/// Extracts selectors and grouping labels from a PromQL expression. Not a full parser: it skips
/// strings, range and subquery brackets, numbers, Grafana variables (`$job`, `${x}`) and
/// `offset` durations, and treats an identifier followed by `(` as a function. Selectors
/// without a metric name (`{__name__=...}`) are refused, because their series cannot be
/// checked.
fn parse_promql(expr: &str) -> Result<PromQuery, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut query = PromQuery::default();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if matches!(c, '"' | '\'' | '`') {
            let rest: String = chars[i + 1..].iter().collect();
            let close =
                closing_quote(&rest, c).ok_or_else(|| format!("unterminated string in {expr}"))?;
            i += 1 + rest[..close].chars().count() + 1;
        } else if c == '[' {
            let close = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .ok_or_else(|| format!("unterminated range in {expr}"))?;
            i += close + 1;
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            return Err(format!("selector without a metric name in {expr}"));
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let keyword = ident.to_ascii_lowercase();
            let after = next_non_space(i);
            if GROUPING_KEYWORDS.contains(&keyword.as_str()) {
                if chars.get(after) == Some(&'(') {
                    let close = chars[after..]
                        .iter()
                        .position(|&c| c == ')')
                        .ok_or_else(|| format!("unterminated label list in {expr}"))?;
                    let list: String = chars[after + 1..after + close].iter().collect();
                    query.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|label| !label.is_empty())
                            .map(str::to_string),
                    );
                    i = after + close + 1;
                }
            } else if keyword == "offset" {
                // Skip the duration that follows.
                i = after;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '-') {
                    i += 1;
                }
            } else if OPERATOR_KEYWORDS.contains(&keyword.as_str())
                || AGGREGATIONS.contains(&keyword.as_str())
                || chars.get(after) == Some(&'(')
            {
                // An operator, an aggregation (its `by` clause and parenthesis follow) or a
                // function call.
            } else {
                let mut labels = Vec::new();
                if chars.get(after) == Some(&'{') {
                    let body: String = chars[after + 1..].iter().collect();
                    let (names, consumed) = matcher_names(&body)
                        .map_err(|e| format!("selector {ident} in {expr}: {e}"))?;
                    labels = names;
                    i = after + 1 + consumed;
                }
                query.selectors.push(Selector {
                    metric: ident,
                    labels,
                });
            }
        } else {
            i += 1;
        }
    }
    Ok(query)
}

/// Label names of the matchers in `a="x", b=~"y"}` and how many characters were read through
/// the closing brace.
fn matcher_names(body: &str) -> Result<(Vec<String>, usize), String> {
    let mut names = Vec::new();
    let mut rest = body;
    loop {
        let trimmed = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if let Some(after) = trimmed.strip_prefix('}') {
            return Ok((names, body.chars().count() - after.chars().count()));
        }
        let name_end = trimmed
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated matcher")?;
        if name_end == 0 {
            return Err(format!("matcher without a label name at `{trimmed}`"));
        }
        names.push(trimmed[..name_end].to_string());
        let operator_and_value = trimmed[name_end..].trim_start();
        let value = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| operator_and_value.strip_prefix(op))
            .ok_or("matcher without an operator")?
            .trim_start();
        let quote = value.chars().next().ok_or("matcher without a value")?;
        if !matches!(quote, '"' | '\'' | '`') {
            return Err("matcher value not quoted".into());
        }
        let close = closing_quote(&value[1..], quote).ok_or("unterminated matcher value")?;
        rest = &value[1 + close + 1..];
    }
}

// ---------------------------------------------------------------------------------------------
// The assets

/// One PromQL expression and where it comes from.
struct Expression {
    origin: String,
    expr: String,
}

struct Dashboard {
    path: PathBuf,
    json: serde_json::Value,
}

fn dashboards() -> Vec<Dashboard> {
    let paths = files_with_extension(&ops().join("grafana"), "json");
    assert!(paths.len() >= 3, "dashboards missing: {paths:?}");
    paths
        .into_iter()
        .map(|path| {
            let json = serde_json::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            Dashboard { path, json }
        })
        .collect()
}

fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut pending: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|panels| panels.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = pending.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            pending.extend(nested);
        }
        out.push(panel);
    }
    out
}

/// Panel queries and template-variable queries of every dashboard. `label_values(selector,
/// label)` becomes the selector plus a `by (label)` so that the label is checked too.
fn dashboard_expressions(dashboards: &[Dashboard]) -> Vec<Expression> {
    let mut out = Vec::new();
    for dashboard in dashboards {
        let file = dashboard.path.file_name().unwrap().to_string_lossy();
        for panel in panels(&dashboard.json) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!(
                        "{file}: panel {:?} has a target without expr",
                        panel["title"]
                    )
                });
                out.push(Expression {
                    origin: format!("{file} panel {}", panel["title"]),
                    expr: expr.to_string(),
                });
            }
        }
        for variable in dashboard.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["type"] != "query" {
                continue;
            }
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .unwrap_or_else(|| panic!("{file}: variable {} has no query", variable["name"]));
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!("{file}: variable query `{query}` is not label_values(...)")
                });
            let (selector, label) = inner
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("{file}: `{query}` names no label"));
            out.push(Expression {
                origin: format!("{file} variable {}", variable["name"]),
                expr: format!("count by ({}) ({selector})", label.trim()),
            });
        }
    }
    out
}

/// One rule of `alerts.yml`.
#[derive(Debug)]
struct AlertRule {
    name: String,
    expr: String,
    severity: Option<String>,
    runbook: Option<String>,
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
        .to_string()
}

/// Reads the alerting rules line by line: `- alert:` opens a rule; `expr:` is inline or a
/// block scalar (`|`, `>`) whose more-indented lines follow.
fn parse_alert_rules(text: &str) -> Vec<AlertRule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<AlertRule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(name) = trimmed.strip_prefix("alert:") {
            rules.push(AlertRule {
                name: unquote(name),
                expr: String::new(),
                severity: None,
                runbook: None,
            });
        } else if let (Some(rule), Some(value)) = (rules.last_mut(), trimmed.strip_prefix("expr:"))
        {
            let value = value.trim();
            if matches!(value, "|" | "|-" | ">" | ">-") {
                let indent = indentation(line);
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indentation(lines[i + 1]) > indent)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                rule.expr = block.join("\n");
            } else {
                rule.expr = unquote(value);
            }
        } else if let (Some(rule), Some(value)) =
            (rules.last_mut(), trimmed.strip_prefix("severity:"))
        {
            rule.severity = Some(unquote(value));
        } else if let (Some(rule), Some(value)) =
            (rules.last_mut(), trimmed.strip_prefix("runbook_url:"))
        {
            rule.runbook = Some(unquote(value));
        }
        i += 1;
    }
    rules
}

fn alert_rules() -> Vec<AlertRule> {
    let rules = parse_alert_rules(&read(&ops().join("prometheus/alerts.yml")));
    assert!(rules.len() >= 6, "alert rules missing: {rules:?}");
    rules
}

fn alert_expressions(rules: &[AlertRule]) -> Vec<Expression> {
    rules
        .iter()
        .map(|rule| Expression {
            origin: format!("alerts.yml {}", rule.name),
            expr: rule.expr.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Line-based YAML and INI helpers for our own manifests

/// The first line whose key (after an optional list dash) is `key`, and its value.
fn yaml_scalar<'a>(lines: &[&'a str], key: &str) -> Option<(usize, &'a str)> {
    lines.iter().enumerate().find_map(|(n, line)| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let value = trimmed.strip_prefix(key)?.strip_prefix(':')?;
        Some((n, value.trim()))
    })
}

/// The lines nested under the first `key:` line.
fn yaml_block<'a>(lines: &[&'a str], key: &str) -> Vec<&'a str> {
    let Some((start, _)) = yaml_scalar(lines, key) else {
        return Vec::new();
    };
    let indent = indentation(lines[start]);
    lines[start + 1..]
        .iter()
        .take_while(|line| line.trim().is_empty() || indentation(line) > indent)
        .copied()
        .collect()
}

/// The items of a YAML list block, each as its lines.
fn yaml_items<'a>(block: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut items: Vec<Vec<&str>> = Vec::new();
    let dash_indent = block
        .iter()
        .filter(|line| line.trim_start().starts_with("- "))
        .map(|line| indentation(line))
        .min();
    for line in block {
        if Some(indentation(line)) == dash_indent && line.trim_start().starts_with("- ") {
            items.push(vec![line]);
        } else if let Some(item) = items.last_mut() {
            item.push(line);
        }
    }
    items
}

fn yaml_value(lines: &[&str], key: &str) -> String {
    yaml_scalar(lines, key)
        .map(|(_, value)| unquote(value))
        .unwrap_or_else(|| panic!("no `{key}:` in\n{}", lines.join("\n")))
}

/// Name, port number and protocol of each item of a `ports:` list.
fn yaml_ports(lines: &[&str], port_key: &str) -> BTreeMap<String, (String, String)> {
    yaml_items(&yaml_block(lines, "ports"))
        .iter()
        .map(|item| {
            (
                yaml_value(item, "name"),
                (yaml_value(item, port_key), yaml_value(item, "protocol")),
            )
        })
        .collect()
}

/// `Key=Value` lines of a systemd unit; a key given several times keeps every value.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            settings
                .entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    settings
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_else(|| panic!("{} has no UTF-8 file name", path.display()))
}

fn load_config(path: &Path) -> Config {
    Config::load(&ConfigSources {
        file: Some(path.to_path_buf()),
        ..ConfigSources::default()
    })
    .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn promql_extraction_finds_selectors_labels_and_grouping() {
    let query = parse_promql(
        r#"sum by (job, le) (rate(mimid_x_bucket{job=~"$job", endpoint!~"a,}b"}[$__rate_interval] offset 5m))
           > 0.5 and on (instance) up == 0 or absent(probe_success{job='p'}) * 1e3"#,
    )
    .expect("parses");
    assert_eq!(
        query.selectors,
        vec![
            Selector {
                metric: "mimid_x_bucket".into(),
                labels: vec!["job".into(), "endpoint".into()],
            },
            Selector {
                metric: "up".into(),
                labels: vec![],
            },
            Selector {
                metric: "probe_success".into(),
                labels: vec!["job".into()],
            },
        ]
    );
    assert_eq!(query.grouping, vec!["job", "le", "instance"]);
    assert!(parse_promql(r#"sum({__name__="mimid_x"})"#).is_err());
    assert!(parse_promql(r#"mimid_x{job="unterminated}"#).is_err());
    assert!(parse_promql(r#"mimid_x{="value"}"#).is_err());
}

#[test]
fn exposition_parsing_declares_suffixes_by_type() {
    let exposition = Exposition::parse(
        "# TYPE mimid_requests counter\n\
         mimid_requests_total{endpoint=\"a\",status=\"200\"} 1\n\
         # TYPE mimid_request_duration_seconds histogram\n\
         mimid_request_duration_seconds_bucket{le=\"0.5\",endpoint=\"a\\\"b\"} 1\n\
         # TYPE mimid_rooms_active gauge\n\
         mimid_rooms_active 0\n\
         # EOF\n",
    );
    let declared = exposition.declared_sample_names();
    for name in [
        "mimid_requests_total",
        "mimid_request_duration_seconds_bucket",
        "mimid_request_duration_seconds_count",
        "mimid_rooms_active",
    ] {
        assert!(declared.contains_key(name), "{name}");
    }
    assert!(!declared.contains_key("mimid_requests"));
    assert_eq!(
        exposition.samples["mimid_request_duration_seconds_bucket"],
        BTreeSet::from(["le".to_string(), "endpoint".to_string()])
    );
}

/// The heart of the file: every series the dashboards and alerts query exists on a real node,
/// with the labels they match and group by, and every family the node exports is charted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_only_what_the_node_exports() {
    let node = TestNode::start_with(|config| config.limits.max_body_bytes = MAX_BODY).await;
    let admin = format!("http://{}", node.node().admin_addr());

    // Traffic that gives every labelled family a series: requests of several endpoints and
    // statuses, a Commit (protocol-06 §5.2), an application message (§5.3), a push stream and
    // a limit hit (413 over limits.max_body_bytes).
    let clubhouse = room("ops-clubhouse");
    let mut alice = node.client("alice", "phone", 1).await;
    let _bob = node.client("bob", "phone", 1).await;
    alice.connect_stream().await.expect("push stream opens");
    alice.create_room(&clubhouse).await.expect("room created");
    let added = alice
        .add_users(&clubhouse, &[user("bob")])
        .await
        .expect("add answered");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    alice
        .send_text(&clubhouse, "metrics, please")
        .await
        .expect("message answered");
    let (status, _) = alice
        .post_raw(&format!("{PREFIX}keyPackages"), vec![0; MAX_BODY + 1])
        .await
        .expect("oversized request answered");
    assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = alice
        .post_raw(&format!("{PREFIX}noSuchEndpoint"), Vec::new())
        .await
        .expect("unknown path answered");
    assert_eq!(status, http::StatusCode::NOT_FOUND);

    let (status, text) = http_get(&format!("{admin}/metrics"))
        .await
        .expect("metrics scrape");
    assert_eq!(status, 200);
    let exposition = Exposition::parse(&text);
    let declared = exposition.declared_sample_names();
    assert!(
        declared.contains_key("mimid_requests_total")
            && declared.contains_key("mimid_raft_flushes_total"),
        "unexpected exposition:\n{text}"
    );

    let dashboards = dashboards();
    let rules = alert_rules();
    let dashboard_exprs = dashboard_expressions(&dashboards);
    let alert_exprs = alert_expressions(&rules);
    let all_exprs = dashboard_exprs
        .iter()
        .map(|e| (true, e))
        .chain(alert_exprs.iter().map(|e| (false, e)));

    let every_label: BTreeSet<String> = exposition
        .samples
        .iter()
        .filter(|(name, _)| name.starts_with("mimid_"))
        .flat_map(|(_, labels)| labels.iter().cloned())
        .chain(TARGET_LABELS.iter().map(|l| l.to_string()))
        .collect();
    let mut problems = Vec::new();
    let mut charted_families = BTreeSet::new();
    for (on_dashboard, expression) in all_exprs {
        let query = match parse_promql(&expression.expr) {
            Ok(query) => query,
            Err(e) => {
                problems.push(format!("{}: {e}", expression.origin));
                continue;
            }
        };
        for selector in &query.selectors {
            let allowed_labels: BTreeSet<String> =
                if EXTERNAL_METRICS.contains(&selector.metric.as_str()) {
                    TARGET_LABELS.iter().map(|l| l.to_string()).collect()
                } else if let Some(family) = declared.get(&selector.metric) {
                    if on_dashboard {
                        charted_families.insert(family.clone());
                    }
                    match exposition.samples.get(&selector.metric) {
                        Some(labels) => labels
                            .iter()
                            .cloned()
                            .chain(TARGET_LABELS.iter().map(|l| l.to_string()))
                            .collect(),
                        None if selector
                            .labels
                            .iter()
                            .all(|l| TARGET_LABELS.contains(&l.as_str())) =>
                        {
                            BTreeSet::new()
                        }
                        None => {
                            problems.push(format!(
                                "{}: {} has no series after the test traffic, so its labels {:?} \
                             cannot be checked: extend the traffic in this test",
                                expression.origin, selector.metric, selector.labels
                            ));
                            continue;
                        }
                    }
                } else {
                    problems.push(format!(
                        "{}: {} is not exported by the node (declared: {:?})",
                        expression.origin,
                        selector.metric,
                        declared.keys().collect::<Vec<_>>()
                    ));
                    continue;
                };
            for label in &selector.labels {
                if !allowed_labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "{}: {} has no label {label} (it has {allowed_labels:?})",
                        expression.origin, selector.metric
                    ));
                }
            }
        }
        for label in &query.grouping {
            if !every_label.contains(label) {
                problems.push(format!(
                    "{}: groups by {label}, which no exported series carries",
                    expression.origin
                ));
            }
        }
    }
    for family in exposition.families.keys() {
        if family.starts_with("mimid_") && !charted_families.contains(family) {
            problems.push(format!(
                "{family} is exported but on no dashboard in ops/grafana"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The paths the probes, scrape configurations and annotations use are served.
    let statefulset = read(&ops().join("kubernetes/statefulset.yaml"));
    let lines: Vec<&str> = statefulset.lines().collect();
    let mut paths: BTreeSet<String> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .map(|probe| yaml_value(&yaml_block(&lines, probe), "path"))
        .collect();
    paths.insert(yaml_value(&lines, "prometheus.io/path"));
    let scrape = read(&ops().join("prometheus/prometheus.yml"));
    let scrape_lines: Vec<&str> = scrape.lines().collect();
    paths.insert(yaml_value(&scrape_lines, "metrics_path"));
    let probe_target = yaml_scalar(&scrape_lines, "replacement")
        .map(|(_, value)| unquote(value))
        .expect("the readiness probe target");
    paths.insert(
        probe_target
            .rsplit_once('}')
            .map(|(_, path)| path.to_string())
            .expect("replacement is http://${1}/<path>"),
    );
    assert_eq!(
        paths,
        BTreeSet::from(["/healthz", "/readyz", "/metrics"].map(String::from))
    );
    for path in &paths {
        let (status, _) = http_get(&format!("{admin}{path}"))
            .await
            .expect("admin answers");
        assert_eq!(status, 200, "{path}");
    }

    alice.close().await;
    node.shutdown().await;
}

#[test]
fn dashboards_are_grafana_json_on_a_prometheus_datasource_variable() {
    let mut uids = BTreeSet::new();
    for dashboard in dashboards() {
        let json = &dashboard.json;
        let file = dashboard.path.display();
        let uid = json["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(
            json["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("mimid")),
            "{file}: title"
        );
        assert!(
            json["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion"
        );
        assert!(
            json["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|t| t == "mimid")),
            "{file}: tag mimid (the dashboards link each other by it)"
        );
        let variables = json["templating"]["list"]
            .as_array()
            .expect("templating list");
        assert!(
            variables.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{file}: no Prometheus datasource variable"
        );
        let datasource = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
        for variable in variables.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                variable["datasource"], datasource,
                "{file}: variable {}",
                variable["name"]
            );
        }
        let mut ids = BTreeSet::new();
        let mut queries = 0;
        for panel in panels(json) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel without id"));
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            let grid = &panel["gridPos"];
            let (x, w) = (
                grid["x"].as_u64().unwrap_or(99),
                grid["w"].as_u64().unwrap_or(99),
            );
            assert!(
                x + w <= 24 && grid["h"].as_u64().is_some(),
                "{file}: panel {id} gridPos"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(
                panel["title"].as_str().is_some_and(|t| !t.is_empty()),
                "{file}: panel {id}"
            );
            assert_eq!(
                panel["datasource"], datasource,
                "{file}: panel {}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().expect("panel targets");
            assert!(
                !targets.is_empty(),
                "{file}: panel {} has no query",
                panel["title"]
            );
            for target in targets {
                assert_eq!(
                    target["datasource"], datasource,
                    "{file}: panel {}",
                    panel["title"]
                );
                assert!(target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()));
                queries += 1;
            }
        }
        assert!(queries >= 8, "{file}: only {queries} queries");
    }
}

#[test]
fn every_alert_has_a_severity_a_runbook_and_a_promtool_case() {
    let rules = alert_rules();
    let promtool_cases = read(&ops().join("prometheus/alerts_test.yml"));
    let mut names = BTreeSet::new();
    let mut runbooks = BTreeSet::new();
    for rule in &rules {
        assert!(
            names.insert(rule.name.clone()),
            "alert {} defined twice",
            rule.name
        );
        assert!(rule.name.starts_with("Mimid"), "{}", rule.name);
        assert!(!rule.expr.trim().is_empty(), "{} has no expr", rule.name);
        assert!(
            matches!(rule.severity.as_deref(), Some("critical" | "warning")),
            "{}: severity {:?}",
            rule.name,
            rule.severity
        );
        let runbook = rule
            .runbook
            .as_deref()
            .unwrap_or_else(|| panic!("{} has no runbook_url", rule.name));
        assert!(
            runbook.starts_with("ops/runbooks/"),
            "{}: {runbook}",
            rule.name
        );
        let text = read(&workspace().join(runbook));
        assert_eq!(
            text.lines().next(),
            Some(format!("# {}", rule.name).as_str()),
            "{runbook} is titled after its alert"
        );
        runbooks.insert(workspace().join(runbook));
        assert!(
            promtool_cases.contains(&format!("alertname: {}", rule.name)),
            "{} has no case in alerts_test.yml",
            rule.name
        );
    }
    let pages: BTreeSet<PathBuf> = files_with_extension(&ops().join("runbooks/alerts"), "md")
        .into_iter()
        .collect();
    assert_eq!(pages, runbooks, "every alert runbook belongs to an alert");
}

/// How `promtool` (Prometheus' own checker) judged one file.
struct PromtoolRun {
    ok: bool,
    output: String,
}

/// Runs `promtool ARGS` in `dir`; `None` when there is no promtool on `PATH` (or at
/// `$PROMTOOL`). Under `CI` a missing promtool fails the test: `.ci/run` installs it.
fn promtool(dir: &Path, args: &[&str]) -> Option<PromtoolRun> {
    let program = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    match std::process::Command::new(&program)
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(output) => Some(PromtoolRun {
            ok: output.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !ci,
                "promtool is not installed ({program:?} not found) and CI is set: .ci/run \
                 installs it (Debian package prometheus)"
            );
            None
        }
        Err(e) => panic!("running {program:?}: {e}"),
    }
}

/// What a YAML file under `ops/` is to Prometheus, by its top-level keys: rule files
/// (`groups:`), rule unit tests (`tests:`, run by `promtool test rules`) and scrape
/// configurations (`scrape_configs:`); anything else (Kubernetes manifests) is not its.
fn prometheus_files() -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let (mut rules, mut tests, mut configs) = (Vec::new(), Vec::new(), Vec::new());
    let mut files = files_with_extension(&ops(), "yml");
    files.extend(files_with_extension(&ops(), "yaml"));
    for file in files {
        let text = read(&file);
        let top = |key: &str| text.lines().any(|line| line.trim_end() == key);
        if top("tests:") {
            tests.push(file);
        } else if top("groups:") {
            rules.push(file);
        } else if top("scrape_configs:") {
            configs.push(file);
        }
    }
    (rules, tests, configs)
}

/// Every Prometheus file under `ops/` passes promtool: the alert rules parse and their PromQL
/// type-checks (`check rules`), every promtool case in the rule tests holds (`test rules`:
/// each alert fires when it should and stays silent nearby), and the scrape configuration is
/// valid (`check config`). A broken rule is refused, so the check can fail. Without promtool
/// the test says so and passes, except under `CI`, where `.ci/run` installs it.
#[test]
fn promtool_checks_the_rules_runs_their_tests_and_the_scrape_config() {
    let (rules, tests, configs) = prometheus_files();
    assert!(
        rules.iter().any(|f| file_name(f) == "alerts.yml"),
        "{rules:?}"
    );
    assert!(
        tests.iter().any(|f| file_name(f) == "alerts_test.yml"),
        "{tests:?}"
    );
    assert!(
        configs.iter().any(|f| file_name(f) == "prometheus.yml"),
        "{configs:?}"
    );
    let dir = |file: &Path| file.parent().expect("a file's directory").to_path_buf();
    let Some(version) = promtool(&ops(), &["--version"]) else {
        eprintln!("promtool not installed: the alert rules were not checked by promtool");
        return;
    };
    assert!(version.ok, "promtool --version: {}", version.output);
    for (command, files) in [
        (&["check", "rules"][..], &rules),
        (&["test", "rules"][..], &tests),
        (&["check", "config"][..], &configs),
    ] {
        for file in files {
            let mut args = command.to_vec();
            args.push(file_name(file));
            let run = promtool(&dir(file), &args).expect("promtool ran before");
            assert!(
                run.ok,
                "promtool {} {}:\n{}",
                command.join(" "),
                file.display(),
                run.output
            );
        }
    }

    // The checks can fail: a rule with broken PromQL and a case expecting an alert that never
    // fires are refused.
    let scratch = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        scratch.path().join("broken.yml"),
        "groups:\n  - name: broken\n    rules:\n      - alert: MimidBroken\n        \
         expr: rate(mimid_requests_total[5m) > 1\n",
    )
    .unwrap();
    let run = promtool(scratch.path(), &["check", "rules", "broken.yml"]).expect("promtool");
    assert!(!run.ok, "a broken rule passed: {}", run.output);
    std::fs::write(
        scratch.path().join("silent.yml"),
        "groups:\n  - name: silent\n    rules:\n      - alert: MimidNever\n        \
         expr: vector(1) < 0\n",
    )
    .unwrap();
    std::fs::write(
        scratch.path().join("silent_test.yml"),
        "rule_files:\n  - silent.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    \
         input_series: []\n    alert_rule_test:\n      - eval_time: 1m\n        \
         alertname: MimidNever\n        exp_alerts:\n          - exp_labels: {}\n",
    )
    .unwrap();
    let run = promtool(scratch.path(), &["test", "rules", "silent_test.yml"]).expect("promtool");
    assert!(
        !run.ok,
        "a case expecting a silent alert passed: {}",
        run.output
    );
}

#[test]
fn runbook_and_readme_links_resolve() {
    let mut broken = Vec::new();
    for page in files_with_extension(&ops(), "md") {
        let text = read(&page);
        for (start, _) in text.match_indices("](") {
            let rest = &text[start + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or(target);
            let resolved = page.parent().expect("page directory").join(file);
            if !resolved.exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The example configuration loads with the node's own loader, names every key the node has,
/// and its TLS paths are the file names `mimid cert create-provider` writes for its domain.
#[test]
fn example_config_is_complete_and_matches_mimid_cert_output() {
    let path = ops().join("config/mimid.toml");
    let config = load_config(&path);
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/mimid"));
    assert!(
        config.listen.port() >= 1024 && config.admin_listen.port() >= 1024,
        "the unit has no capabilities: unprivileged ports only"
    );
    assert!(config.cluster.fsync, "production example keeps fsync on");

    // Every key of a fully populated configuration appears, set or commented out, in its
    // section of the example.
    let mut full = Config {
        tls: TlsSettings {
            cert: Some("c".into()),
            key: Some("k".into()),
            client_ca: Some("a".into()),
        },
        ..Config::default()
    };
    full.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318".into());
    let example = read(&path);
    let mut missing = Vec::new();
    let mut expected_section = String::new();
    for line in full.to_toml().expect("renders").lines() {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            expected_section = section.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let mut section = String::new();
            let found = example.lines().any(|l| {
                if let Some(s) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = s.to_string();
                }
                let l = l.trim_start_matches("# ");
                section == expected_section && l.starts_with(&format!("{key} = "))
            });
            if !found {
                missing.push(format!("[{expected_section}] {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from ops/config/mimid.toml: {missing:?}"
    );

    // The files `mimid cert` writes are the ones the example names.
    let tls = config
        .tls
        .files()
        .expect("complete")
        .expect("TLS configured");
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_dir = dir.path().join("ca");
    let provider_dir = dir.path().join("provider");
    let now = std::time::SystemTime::now();
    run_cert(
        CertCommand::CreateCa {
            out: ca_dir.clone(),
            days: 1,
        },
        now,
    )
    .expect("create-ca");
    run_cert(
        CertCommand::CreateProvider {
            domain: config.domain.clone(),
            ca: ca_dir.clone(),
            out: provider_dir.clone(),
            days: 1,
        },
        now,
    )
    .expect("create-provider accepts the example domain");
    assert_eq!(file_name(&tls.cert), format!("{PROVIDER_STEM}.pem"));
    assert_eq!(file_name(&tls.key), format!("{PROVIDER_STEM}.key.pem"));
    assert_eq!(file_name(&tls.client_ca), CA_CERT_FILE);
    let mut installed = config.clone();
    installed.data_dir = dir.path().join("data");
    installed.tls = TlsSettings {
        cert: Some(provider_dir.join(file_name(&tls.cert))),
        key: Some(provider_dir.join(file_name(&tls.key))),
        client_ca: Some(ca_dir.join(file_name(&tls.client_ca))),
    };
    installed
        .validate()
        .expect("valid once the certificate files exist");

    // Where they do not exist (here), the only problems are the TLS files.
    match config.validate() {
        Ok(()) => {}
        Err(ConfigError::Invalid(problems)) => {
            assert!(
                problems.iter().all(|p| p.key.starts_with("tls.")),
                "{problems:?}"
            )
        }
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn systemd_unit_is_hardened_and_writes_only_the_data_dir() {
    let unit = unit_settings(&read(&ops().join("systemd/mimid.service")));
    let one = |key: &str| -> &str {
        match unit.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{key}: expected one value, got {other:?}"),
        }
    };
    let config = load_config(&ops().join("config/mimid.toml"));

    let exec = one("ExecStart");
    let (binary, args) = exec.split_once(' ').expect("ExecStart has arguments");
    assert!(binary.ends_with("/mimid"), "{exec}");
    let config_path = args
        .strip_prefix("start --config ")
        .unwrap_or_else(|| panic!("ExecStart runs `mimid start --config FILE`: {exec}"));
    assert_eq!(file_name(Path::new(config_path)), "mimid.toml");

    assert_eq!(one("User"), "mimid");
    assert_eq!(one("Group"), "mimid");
    assert_eq!(
        Path::new("/var/lib").join(one("StateDirectory")),
        config.data_dir,
        "StateDirectory= is the configured data_dir"
    );
    assert_eq!(one("ReadWritePaths"), config.data_dir.to_str().unwrap());
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("AmbientCapabilities"), "");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert!(one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 65536));
    for tls_file in [&config.tls.cert, &config.tls.key, &config.tls.client_ca] {
        let tls_file = tls_file.as_ref().expect("TLS configured");
        assert!(
            !tls_file.starts_with(&config.data_dir),
            "TLS material stays out of the data directory: {}",
            tls_file.display()
        );
    }
    let sysusers = read(&ops().join("systemd/mimid.sysusers.conf"));
    assert!(
        sysusers.lines().any(|l| l.starts_with("u mimid ")),
        "sysusers creates the unit's user"
    );
}

/// The manifests use the ports the ConfigMap's configuration binds, mount the data directory
/// and TLS files where it expects them, and keep the pitfalls closed.
#[test]
fn kubernetes_manifests_match_the_config_they_ship() {
    let dir = ops().join("kubernetes");
    let configmap = read(&dir.join("configmap.yaml"));
    let configmap_lines: Vec<&str> = configmap.lines().collect();
    let embedded: Vec<&str> = yaml_block(&configmap_lines, "mimid.toml");
    let indent = embedded
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indentation(l))
        .min()
        .expect("mimid.toml in the ConfigMap");
    let toml: String = embedded
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    let temp = tempfile::tempdir().expect("temporary directory");
    let toml_path = temp.path().join("mimid.toml");
    std::fs::write(&toml_path, toml).expect("write");
    let config = load_config(&toml_path);
    assert!(
        config.admin_listen.ip().is_unspecified(),
        "kubelet probes and Prometheus reach the admin listener on the pod IP"
    );

    let statefulset = read(&dir.join("statefulset.yaml"));
    let lines: Vec<&str> = statefulset.lines().collect();
    assert_eq!(
        yaml_value(&lines, "replicas"),
        "1",
        "single-node providers until clustering"
    );
    assert_eq!(
        yaml_value(&lines, "enableServiceLinks"),
        "false",
        "MIMID_* service-link variables would be read as configuration"
    );
    let ports = yaml_ports(&lines, "containerPort");
    assert_eq!(
        ports.get("quic"),
        Some(&(config.listen.port().to_string(), "UDP".to_string()))
    );
    assert_eq!(
        ports.get("admin"),
        Some(&(config.admin_listen.port().to_string(), "TCP".to_string()))
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let block = yaml_block(&lines, probe);
        assert_eq!(yaml_value(&block, "port"), "admin", "{probe}");
    }
    assert_eq!(
        yaml_value(&yaml_block(&lines, "readinessProbe"), "path"),
        "/readyz"
    );
    assert_eq!(
        yaml_value(&yaml_block(&lines, "livenessProbe"), "path"),
        "/healthz"
    );
    assert_eq!(
        yaml_value(&lines, "prometheus.io/port"),
        config.admin_listen.port().to_string()
    );

    let mounts: BTreeMap<String, String> = yaml_items(&yaml_block(&lines, "volumeMounts"))
        .iter()
        .map(|item| (yaml_value(item, "name"), yaml_value(item, "mountPath")))
        .collect();
    assert_eq!(Path::new(&mounts["data"]), config.data_dir);
    let tls = config
        .tls
        .files()
        .expect("complete")
        .expect("TLS configured");
    for file in [&tls.cert, &tls.key, &tls.client_ca] {
        assert_eq!(
            file.parent().unwrap(),
            Path::new(&mounts["tls"]),
            "{}",
            file.display()
        );
    }
    let command: Vec<String> = yaml_items(&yaml_block(&lines, "command"))
        .iter()
        .map(|item| unquote(item[0].trim_start().trim_start_matches("- ")))
        .collect();
    assert_eq!(command[1..3], ["start", "--config"]);
    assert_eq!(
        Path::new(&command[3]),
        Path::new(&mounts["config"]).join("mimid.toml"),
        "the command reads the mounted ConfigMap"
    );
    assert_eq!(yaml_value(&lines, "secretName"), "mimid-tls");
    assert_eq!(
        yaml_value(&yaml_block(&lines, "configMap"), "name"),
        "mimid-config"
    );

    let headless = read(&dir.join("service.yaml"));
    let headless_lines: Vec<&str> = headless.lines().collect();
    assert_eq!(yaml_value(&headless_lines, "clusterIP"), "None");
    let service_ports = yaml_ports(&headless_lines, "targetPort");
    assert_eq!(
        service_ports
            .get("quic")
            .map(|(t, p)| (t.as_str(), p.as_str())),
        Some(("quic", "UDP"))
    );
    assert_eq!(
        service_ports
            .get("admin")
            .map(|(t, p)| (t.as_str(), p.as_str())),
        Some(("admin", "TCP"))
    );
    let public = read(&dir.join("service-quic.yaml"));
    let public_lines: Vec<&str> = public.lines().collect();
    let public_ports = yaml_ports(&public_lines, "targetPort");
    assert_eq!(public_ports.len(), 1, "the admin port is never published");
    assert_eq!(
        public_ports
            .get("quic")
            .map(|(t, p)| (t.as_str(), p.as_str())),
        Some(("quic", "UDP"))
    );
    assert_eq!(yaml_value(&public_lines, "port"), "443");

    let pdb = read(&dir.join("pdb.yaml"));
    assert!(pdb.contains("kind: PodDisruptionBudget") && pdb.contains("maxUnavailable: 1"));

    // The kustomization lists exactly the manifests in the folder.
    let kustomization = read(&dir.join("kustomization.yaml"));
    let kustomization_lines: Vec<&str> = kustomization.lines().collect();
    let listed: BTreeSet<String> = yaml_items(&yaml_block(&kustomization_lines, "resources"))
        .iter()
        .map(|item| unquote(item[0].trim_start().trim_start_matches("- ")))
        .collect();
    let present: BTreeSet<String> = files_with_extension(&dir, "yaml")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}
