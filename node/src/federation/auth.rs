//! Authentication of incoming peer requests (MIMI.md §3.1, §7.1 step 1, §13).
//!
//! protocol-06 §4.1 asks for mutually authenticated TLS between providers, a `From:
//! mimi@<source-domain>` header bound to the client certificate, and a `Host` naming the target
//! provider. The TLS layer ([`crate::tls::server_config`]) already verified any client
//! certificate against `tls.client_ca` during the handshake (a certificate from an unknown CA
//! never reaches this module: the handshake fails), so what is left here is the binding:
//!
//! 1. a client certificate with at least one dNSName, else 401;
//! 2. exactly one `From` header of the form `mimi@<domain>` (an RFC 5322 addr-spec whose local
//!    part is exactly `mimi`, the domain a DNS name, compared lowercased), else 400;
//! 3. one of the certificate's dNSNames equal to that domain, else 403;
//! 4. the request's authority (`:authority`, else `Host`; port ignored) equal to our domain,
//!    else 421 Misdirected Request (RFC 9110 §15.5.20): a connection whose certificate also
//!    names another domain may carry requests for it, and those are not ours.
//!
//! Name matching follows RFC 6125 §6.4 for DNS-IDs: ASCII case-insensitive, exact. Wildcard
//! certificates (`*.example`) are deliberately not matched (RFC 6125 §6.4.3 leaves it to the
//! application): a provider is one domain, and a wildcard would let every host under a
//! parent domain speak for a provider. IP addresses and URI SANs never name a provider.

use http::{HeaderMap, StatusCode, Uri};

use crate::api::Refusal;
use crate::config::check_domain;
use crate::h3::Request;

/// The fixed local part of the `From` address (protocol-06 §4.1).
pub const FROM_LOCAL_PART: &str = "mimi";

/// Checks `req` as a request from a peer provider to `our_domain` and returns the
/// authenticated peer domain (lowercase).
pub(crate) fn authenticate(req: &Request, our_domain: &str) -> Result<String, Refusal> {
    if req.peer.dns_names.is_empty() {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "client certificate required",
        ));
    }
    let from = from_domain(&req.headers).map_err(Refusal::bad_request)?;
    if !req
        .peer
        .dns_names
        .iter()
        .any(|name| dns_id_matches(name, &from))
    {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("certificate does not authenticate From domain {from}"),
        ));
    }
    let host = target_host(&req.uri, &req.headers).map_err(Refusal::bad_request)?;
    if !host.eq_ignore_ascii_case(our_domain) {
        return Err(Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("request is addressed to {host}; this provider is {our_domain}"),
        ));
    }
    Ok(from)
}

/// The peer domain of the `From` header, lowercased, or why the header is unusable.
pub fn from_domain(headers: &HeaderMap) -> Result<String, String> {
    let mut values = headers.get_all(http::header::FROM).iter();
    let value = values
        .next()
        .ok_or("missing From header (protocol-06 §4.1: From: mimi@<domain>)")?;
    if values.next().is_some() {
        return Err("more than one From header".into());
    }
    let text = value
        .to_str()
        .map_err(|_| "From header is not visible ASCII".to_string())?
        .trim();
    let (local, domain) = text
        .split_once('@')
        .ok_or_else(|| format!("From {text:?} is not an addr-spec mimi@<domain>"))?;
    if local != FROM_LOCAL_PART {
        return Err(format!(
            "From {text:?} must have the local part {FROM_LOCAL_PART}"
        ));
    }
    let domain = domain.to_ascii_lowercase();
    check_domain(&domain).map_err(|reason| format!("From {text:?}: {reason}"))?;
    Ok(domain)
}

/// Whether the certificate dNSName `cert_name` authenticates `domain` (RFC 6125 §6.4: exact,
/// ASCII case-insensitive; no wildcards, see the module documentation).
pub fn dns_id_matches(cert_name: &str, domain: &str) -> bool {
    !cert_name.contains('*') && cert_name.eq_ignore_ascii_case(domain)
}

/// The host the request is addressed to: the `:authority` of the target URI, else the `Host`
/// header (RFC 9114 §4.3.1); the port and one trailing dot are ignored.
pub fn target_host(uri: &Uri, headers: &HeaderMap) -> Result<String, String> {
    let host = match uri.authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let value = headers
                .get(http::header::HOST)
                .ok_or("request names no authority (neither :authority nor Host)")?;
            let authority = value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<http::uri::Authority>().ok())
                .ok_or("Host header is not an authority")?;
            authority.host().to_owned()
        }
    };
    Ok(host.strip_suffix('.').unwrap_or(&host).to_owned())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::HeaderValue;

    use super::*;
    use crate::h3::PeerInfo;

    fn request(names: &[&str], from: Option<&str>, uri: &str) -> Request {
        let mut headers = HeaderMap::new();
        if let Some(from) = from {
            headers.insert(http::header::FROM, HeaderValue::from_str(from).unwrap());
        }
        Request {
            method: http::Method::POST,
            uri: uri.parse().unwrap(),
            headers,
            body: Bytes::new(),
            peer: PeerInfo {
                remote: SocketAddr::from(([127, 0, 0, 1], 5000)),
                dns_names: names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .into(),
            },
        }
    }

    fn check(names: &[&str], from: Option<&str>, uri: &str) -> Result<String, (u16, String)> {
        authenticate(&request(names, from, uri), "b.example")
            .map_err(|refusal| (refusal.status.as_u16(), refusal.reason))
    }

    #[test]
    fn a_peer_named_by_its_certificate_is_authenticated_mimi_md_3_1() {
        let uri = "https://b.example:4433/v1/update/x";
        assert_eq!(
            check(&["a.example"], Some("mimi@a.example"), uri),
            Ok("a.example".into())
        );
        // Case-insensitive on both sides, result lowercased; other SANs do not hurt.
        assert_eq!(
            check(
                &["node1.a.example", "A.Example"],
                Some(" mimi@A.EXAMPLE "),
                "https://B.EXAMPLE./v1/update/x"
            ),
            Ok("a.example".into())
        );
    }

    #[test]
    fn each_failed_check_has_its_status_and_reason_mimi_md_3_1() {
        let uri = "https://b.example/v1/update/x";
        assert_eq!(
            check(&[], Some("mimi@a.example"), uri),
            Err((401, "client certificate required".into()))
        );
        let (status, reason) = check(&["a.example"], None, uri).unwrap_err();
        assert_eq!(status, 400);
        assert!(reason.starts_with("missing From header"), "{reason}");
        for (from, expected) in [
            ("alice@a.example", "must have the local part mimi"),
            ("MIMI@a.example", "must have the local part mimi"),
            ("a.example", "is not an addr-spec"),
            ("<mimi@a.example>", "must have the local part mimi"),
            ("mimi@", "is not a valid DNS name"),
            ("mimi@a..example", "is not a valid DNS name"),
            ("mimi@a.example@c.example", "is not a valid DNS name"),
            ("mimi@127.0.0.1", "is an IP address"),
        ] {
            let (status, reason) = check(&["a.example"], Some(from), uri).unwrap_err();
            assert_eq!(status, 400, "{from}");
            assert!(reason.contains(expected), "{from}: {reason}");
        }
        assert_eq!(
            check(&["c.example"], Some("mimi@a.example"), uri),
            Err((
                403,
                "certificate does not authenticate From domain a.example".into()
            ))
        );
        assert_eq!(
            check(&["*.example"], Some("mimi@a.example"), uri),
            Err((
                403,
                "certificate does not authenticate From domain a.example".into()
            )),
            "wildcards are not matched"
        );
        assert_eq!(
            check(
                &["a.example"],
                Some("mimi@a.example"),
                "https://c.example:4433/v1/update/x"
            ),
            Err((
                421,
                "request is addressed to c.example; this provider is b.example".into()
            ))
        );
    }

    #[test]
    fn two_from_headers_are_refused() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::FROM,
            HeaderValue::from_static("mimi@a.example"),
        );
        headers.append(
            http::header::FROM,
            HeaderValue::from_static("mimi@c.example"),
        );
        assert_eq!(
            from_domain(&headers),
            Err("more than one From header".into())
        );
    }

    #[test]
    fn the_host_header_stands_in_for_a_missing_authority() {
        let mut headers = HeaderMap::new();
        let path_only: Uri = "/v1/update/x".parse().unwrap();
        assert!(target_host(&path_only, &headers)
            .unwrap_err()
            .contains("names no authority"));
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("b.example:443"),
        );
        assert_eq!(target_host(&path_only, &headers), Ok("b.example".into()));
        headers.insert(http::header::HOST, HeaderValue::from_static("b example"));
        assert_eq!(
            target_host(&path_only, &headers),
            Err("Host header is not an authority".into())
        );
    }
}
