//! The endpoint directory of protocol-06 §5.1 (MIMI.md §3.2): the document we serve at
//! `/.well-known/mimi-protocol-directory`, and the parsed form of the documents peers serve.
//!
//! A directory is a JSON object mapping endpoint names to URL templates with one RFC 6570
//! variable, e.g. `"notify": "https://b.example/v1/notify/{roomId}"`. Peers' URLs are always
//! taken from their directory, never built from a hard-coded path.
//!
//! Decisions (MIMI.md §14 item 1):
//! - The draft's example omits the `/` in `update`'s template (`/v1/update{roomId}`); ours has
//!   it. A peer's template is used exactly as the peer wrote it.
//! - The draft's example is not valid JSON; ours is, and we accept only a JSON object whose
//!   every value is a string (unknown keys are allowed, for later drafts).
//! - Templates are expanded with RFC 6570 §3.2.2 simple string expansion (everything but
//!   unreserved characters percent-encoded). Only templates with exactly one simple `{var}`
//!   expression are accepted; operators, modifiers and further expressions are refused.
//! - [IMPL CHOICE] An expanded URL must be `https` and its host must be the peer's domain
//!   (ASCII case-insensitive): protocol-06 §4.1 makes `Host` name the target provider, so a
//!   template pointing elsewhere could not be authenticated as that provider. The connection
//!   goes to the address the resolver gives for the domain (`federation.peers`, else DNS
//!   `domain:443`); a port in the template is not used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::S2sEndpoint;
use crate::api::Refusal;
use crate::h3::{Handler, Request, Response};
use crate::metrics::Metrics;

/// Where a provider serves its directory (protocol-06 §5.1).
pub const DIRECTORY_PATH: &str = "/.well-known/mimi-protocol-directory";
/// The `endpoint` label of directory requests in the request metrics.
pub const DIRECTORY_METRIC_LABEL: &str = "s2s_directory";

/// RFC 6570 §1.5 unreserved characters are left as they are; everything else is encoded.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Our directory, served on the HTTP/3 listener without client authentication: peers fetch it
/// before they know which endpoint to call, and it holds nothing secret.
pub struct DirectoryDocument {
    body: Bytes,
    metrics: Arc<Metrics>,
}

/// A peer's directory: endpoint name -> URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    templates: BTreeMap<String, String>,
}

/// Why a peer's directory, or one of its templates, is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The body is not JSON.
    #[error("not JSON ({0})")]
    NotJson(String),
    /// The JSON is not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A value is not a string.
    #[error("entry {0:?} is not a string")]
    NotString(String),
    /// The endpoint is not in the directory.
    #[error("no {0} endpoint")]
    MissingEndpoint(S2sEndpoint),
    /// The endpoint's template cannot be used.
    #[error("{endpoint} template {template:?}: {reason}")]
    BadTemplate {
        /// The endpoint.
        endpoint: S2sEndpoint,
        /// The template as the peer wrote it.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DirectoryDocument {
    /// The directory of `domain`.
    pub fn new(domain: &str, metrics: Arc<Metrics>) -> Self {
        DirectoryDocument {
            body: Bytes::from(directory_json(domain)),
            metrics,
        }
    }

    fn answer(&self, req: &Request) -> Response {
        if req.method != Method::GET {
            return Refusal::method_not_allowed(DIRECTORY_PATH, Method::GET)
                .into_response(&self.metrics);
        }
        let mut response = Response::full(StatusCode::OK, self.body.clone());
        response.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl Handler for DirectoryDocument {
    fn handle(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            let started = Instant::now();
            let response = self.answer(&req);
            self.metrics.observe_request(
                DIRECTORY_METRIC_LABEL,
                response.status,
                started.elapsed(),
            );
            response
        })
    }
}

/// The directory JSON of `domain`: every endpoint of [`S2sEndpoint::ALL`] as
/// `https://{domain}/v1/<name>/{<param>}`.
pub fn directory_json(domain: &str) -> String {
    let object: serde_json::Map<String, serde_json::Value> = S2sEndpoint::ALL
        .into_iter()
        .map(|endpoint| {
            let template = format!(
                "https://{domain}/v1/{}/{{{}}}",
                endpoint.name(),
                endpoint.param_name()
            );
            (
                endpoint.name().to_owned(),
                serde_json::Value::String(template),
            )
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::Value::Object(object))
        .expect("a map of strings always serialises")
}

impl Directory {
    /// Parses a peer's directory document.
    pub fn parse(json: &[u8]) -> Result<Directory, DirectoryError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| DirectoryError::NotJson(e.to_string()))?;
        let serde_json::Value::Object(object) = value else {
            return Err(DirectoryError::NotObject);
        };
        let templates = object
            .into_iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(template) => Ok((key, template)),
                _ => Err(DirectoryError::NotString(key)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Directory { templates })
    }

    /// The template the peer declared for `endpoint`, as written.
    pub fn template(&self, endpoint: S2sEndpoint) -> Option<&str> {
        self.templates.get(endpoint.name()).map(String::as_str)
    }

    /// The path (and query) to request for `endpoint` with `param`: the template expanded and
    /// checked to be an `https` URL on `peer_domain` (see the module documentation).
    pub fn path_for(
        &self,
        endpoint: S2sEndpoint,
        param: &str,
        peer_domain: &str,
    ) -> Result<String, DirectoryError> {
        let template = self
            .template(endpoint)
            .ok_or(DirectoryError::MissingEndpoint(endpoint))?;
        let bad = |reason: String| DirectoryError::BadTemplate {
            endpoint,
            template: template.to_owned(),
            reason,
        };
        let url = expand(template, param).map_err(bad)?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| bad(format!("expands to {url:?}, which is not a URL ({e})")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("is not an https URL".into()));
        }
        let host = uri.host().unwrap_or_default();
        if !host.eq_ignore_ascii_case(peer_domain) {
            return Err(bad(format!(
                "names host {host:?}, not the provider's domain {peer_domain}"
            )));
        }
        match uri.path_and_query() {
            Some(path) if path.as_str().starts_with('/') => Ok(path.as_str().to_owned()),
            _ => Err(bad("has no path".into())),
        }
    }
}

/// RFC 6570 §3.2.2 simple string expansion of a template with exactly one `{var}` expression.
pub fn expand(template: &str, value: &str) -> Result<String, String> {
    let open = template.find('{').ok_or("has no {variable} expression")?;
    let close = template[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or("has an unclosed expression")?;
    let (prefix, rest) = (&template[..open], &template[close + 1..]);
    if prefix.contains('}') || rest.contains('{') || rest.contains('}') {
        return Err("must have exactly one expression".into());
    }
    let variable = &template[open + 1..close];
    if !is_varname(variable) {
        return Err(format!(
            "expression {{{variable}}} is not a simple variable (RFC 6570 level 1)"
        ));
    }
    Ok(format!(
        "{prefix}{}{rest}",
        utf8_percent_encode(value, NOT_UNRESERVED)
    ))
}

/// RFC 6570 §2.3 `varname` (ALPHA / DIGIT / `_` / pct-encoded, dots between).
fn is_varname(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'%')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_directory_has_the_ten_endpoints_of_mimi_md_3_2_with_the_update_slash() {
        let json = directory_json("b.example");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 10);
        assert_eq!(
            object["update"], "https://b.example/v1/update/{roomId}",
            "MIMI.md §14 item 1: the draft's missing slash is fixed"
        );
        assert_eq!(
            object["keyMaterial"],
            "https://b.example/v1/keyMaterial/{targetUser}"
        );
        assert_eq!(
            object["proxyDownload"],
            "https://b.example/v1/proxyDownload/{downloadUrl}"
        );
        let parsed = Directory::parse(json.as_bytes()).unwrap();
        for endpoint in S2sEndpoint::ALL {
            let path = parsed
                .path_for(endpoint, "mimi://b.example/r/club house", "b.example")
                .unwrap();
            assert_eq!(
                path,
                format!(
                    "/v1/{}/mimi%3A%2F%2Fb.example%2Fr%2Fclub%20house",
                    endpoint.name()
                )
            );
        }
    }

    #[test]
    fn simple_expansion_encodes_all_but_unreserved_rfc6570_3_2_2() {
        assert_eq!(
            expand("https://b.example/v1/x/{v}", "a-Z_0.9~"),
            Ok("https://b.example/v1/x/a-Z_0.9~".into())
        );
        assert_eq!(
            expand("https://b.example/v1/x/{v}?q=1", "é/?#%"),
            Ok("https://b.example/v1/x/%C3%A9%2F%3F%23%25?q=1".into())
        );
        // The draft's update template, used as written.
        assert_eq!(
            expand("https://b.example/v1/update{roomId}", "r"),
            Ok("https://b.example/v1/updater".into())
        );
        for bad in [
            "https://b.example/v1/x",
            "https://b.example/v1/x/{v",
            "https://b.example/v1/{a}/{b}",
            "https://b.example/v1/x/{+v}",
            "https://b.example/v1/x/{v*}",
            "https://b.example/v1/x/{v:3}",
            "https://b.example/v1/x/{}",
            "https://b.example/}/v1/x/{v}",
        ] {
            assert!(expand(bad, "p").is_err(), "{bad}");
        }
    }

    #[test]
    fn unusable_directories_are_refused_with_a_reason() {
        assert!(matches!(
            Directory::parse(b"{\"update\": "),
            Err(DirectoryError::NotJson(_))
        ));
        assert_eq!(
            Directory::parse(b"[\"https://b.example/v1/update/{roomId}\"]"),
            Err(DirectoryError::NotObject)
        );
        assert_eq!(
            Directory::parse(b"{\"update\": \"https://b.example/v1/update/{roomId}\", \"x\": 5}"),
            Err(DirectoryError::NotString("x".into()))
        );
        let directory = Directory::parse(
            br#"{"update": "https://c.example/v1/update/{roomId}",
                 "notify": "http://b.example/v1/notify/{roomId}",
                 "groupInfo": "https://B.EXAMPLE:8443/v1/groupInfo/{roomId}",
                 "futureEndpoint": "https://b.example/v2/x/{y}"}"#,
        )
        .unwrap();
        assert_eq!(
            directory.path_for(S2sEndpoint::KeyMaterial, "u", "b.example"),
            Err(DirectoryError::MissingEndpoint(S2sEndpoint::KeyMaterial))
        );
        let err = directory
            .path_for(S2sEndpoint::Update, "r", "b.example")
            .unwrap_err();
        assert!(
            err.to_string().contains("names host \"c.example\""),
            "{err}"
        );
        let err = directory
            .path_for(S2sEndpoint::Notify, "r", "b.example")
            .unwrap_err();
        assert!(err.to_string().contains("is not an https URL"), "{err}");
        assert_eq!(
            directory.path_for(S2sEndpoint::GroupInfo, "r", "b.example"),
            Ok("/v1/groupInfo/r".into()),
            "host compared case-insensitively; the port is not used"
        );
    }
}
