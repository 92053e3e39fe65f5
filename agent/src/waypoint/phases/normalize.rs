//! Phase 1, normalize: one authority and one normalized path for the request, which policy,
//! routing and the upstream all see; hop-by-hop headers removed.
//!
//! Owns the request head's authority (`Host`), path and hop-by-hop headers. Pure: it must not
//! read the snapshot, the connection or anything beyond the request head, and must not look at
//! the body.
use http::{HeaderValue, Request, StatusCode, Uri, Version, header};

use super::{Local, headers::strip_hop_by_hop, local};

/// Whether the request is a WebSocket handshake, the one HTTP/1.1 upgrade joined end to end: any
/// other upgrade (h2c among them) would turn the connection into a tunnel that later requests
/// cross without L7 policy.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() < Version::HTTP_2
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Removes hop-by-hop headers, sets `Host` to the request's one authority and the URI's path to
/// its normalized form (the query kept). Returns the authority; 400 (no flag) when the request
/// has no single authority or a path that cannot be normalized.
pub fn normalize<B>(req: &mut Request<B>, websocket: bool) -> Result<String, Local> {
    strip_hop_by_hop(req.headers_mut(), websocket);
    let authority =
        authority_of(req).map_err(|why| local(StatusCode::BAD_REQUEST, "-", format!("{why}\n")))?;
    if let Ok(v) = HeaderValue::try_from(authority.as_str()) {
        req.headers_mut().insert(header::HOST, v);
    }
    let path = normalize_path(req.uri().path())
        .ok_or_else(|| local(StatusCode::BAD_REQUEST, "-", "the request path cannot be normalized\n"))?;
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = pq.parse().ok();
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    Ok(authority)
}

/// The request's authority: the URI's (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target)
/// else its one `Host` header. Several `Host` headers, none at all, or one that differs from the
/// URI's authority are refused (400): policy and routing must see what the upstream will see.
fn authority_of<B>(req: &Request<B>) -> Result<String, &'static str> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header");
    }
    let host = hosts.first().map(|h| h.to_str().map_err(|_| "the Host header is not text")).transpose()?;
    match (req.uri().authority().map(|a| a.as_str()), host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            Err("the Host header differs from the request's authority")
        }
        (Some(a), _) => Ok(a.to_string()),
        (None, Some(h)) if !h.is_empty() => Ok(h.to_string()),
        _ => Err("the request has no authority (Host header)"),
    }
}

/// Normalizes a request path as Istio's default (RFC 3986: percent-encoded unreserved characters
/// decoded, `.` and `..` segments removed) and merges repeated slashes, so `/a/../admin`,
/// `//admin` and `/%61dmin` are all `/admin` to policy and routing. None for a path that encodes
/// a slash or backslash, a control character or invalid percent-encoding.
pub(crate) fn normalize_path(p: &str) -> Option<String> {
    let mut decoded = String::with_capacity(p.len());
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = p.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            match v {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    decoded.push(v as char)
                }
                b'/' | b'\\' | 0..=0x1f | 0x7f => return None,
                _ => decoded.push_str(&p[i..i + 3].to_ascii_uppercase()),
            }
            i += 3;
        } else {
            let c = p[i..].chars().next()?;
            if c == '\\' || c.is_control() {
                return None;
            }
            decoded.push(c);
            i += c.len_utf8();
        }
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing =
        (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..")) && !out.is_empty();
    let mut norm = format!("/{}", out.join("/"));
    if trailing {
        norm.push('/');
    }
    Some(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn paths_are_normalized_as_istio_does_and_tricks_refused() {
        let rows = [
            ("/admin", Some("/admin")),
            ("/a/../admin", Some("/admin")),
            ("/./admin", Some("/admin")),
            ("//admin//x", Some("/admin/x")),
            ("/%61dmin", Some("/admin")),
            ("/x/%2e%2e/admin", Some("/admin")),
            ("/../../etc", Some("/etc")),
            ("/dir/", Some("/dir/")),
            ("/a%20b", Some("/a%20b")),
            ("/", Some("/")),
            ("/a%2Fb", None),
            ("/a%5cb", None),
            ("/a%zz", None),
            ("/a%2", None),
        ];
        for (input, want) in rows {
            assert_eq!(normalize_path(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn one_authority_or_a_refusal() {
        assert_eq!(authority_of(&req("/x", &["shop"])).ok().as_deref(), Some("shop"));
        assert_eq!(authority_of(&req("http://shop/x", &["SHOP"])).ok().as_deref(), Some("shop"));
        for (uri, hosts) in [("/x", vec![]), ("/x", vec!["a", "b"]), ("http://public/x", vec!["admin"])] {
            assert!(authority_of(&req(uri, &hosts)).is_err(), "{uri} {hosts:?}");
        }
    }

    /// The whole phase: what the later phases see (authority, Host, path and query), or the 400.
    #[test]
    fn the_phase_hands_on_one_authority_and_path_or_answers_400() {
        type Row<'a> = (&'a str, &'a str, &'a [&'a str], Result<(&'a str, &'a str), &'a str>);
        let rows: &[Row<'_>] = &[
            ("host_header_is_the_authority", "/x", &["shop"], Ok(("shop", "/x"))),
            ("uri_authority_wins_and_sets_host", "http://shop:80/x", &[], Ok(("shop:80", "/x"))),
            ("dot_segments_removed_query_kept", "/a/../admin?q=1", &["shop"], Ok(("shop", "/admin?q=1"))),
            ("encoded_slash_is_400", "/a%2Fb", &["shop"], Err("the request path cannot be normalized\n")),
            ("no_authority_is_400", "/x", &[], Err("the request has no authority (Host header)\n")),
            ("two_hosts_are_400", "/x", &["a", "b"], Err("more than one Host header\n")),
            (
                "host_differing_from_uri_is_400",
                "http://public/x",
                &["admin"],
                Err("the Host header differs from the request's authority\n"),
            ),
        ];
        for (name, uri, hosts, want) in rows {
            let mut r = req(uri, hosts);
            match (normalize(&mut r, false), want) {
                (Ok(a), Ok((authority, pq))) => {
                    assert_eq!(a, *authority, "{name}");
                    assert_eq!(
                        r.headers().get(header::HOST).map(|h| h.as_bytes()),
                        Some(authority.as_bytes()),
                        "{name}"
                    );
                    assert_eq!(r.uri().path_and_query().map(|p| p.as_str()), Some(*pq), "{name}");
                }
                (Err(l), Err(why)) => {
                    assert_eq!((l.status(), l.flag), (StatusCode::BAD_REQUEST, "-"), "{name}");
                    assert_eq!(super::super::body_text(*l.resp), *why, "{name}");
                }
                (got, _) => panic!("{name}: got {got:?}"),
            }
        }
    }

    #[test]
    fn only_http1_websocket_is_an_upgrade() {
        let rows: &[(&str, Version, Option<&str>, bool)] = &[
            ("websocket_over_http1", Version::HTTP_11, Some("WebSocket"), true),
            ("h2c_is_not_joined", Version::HTTP_11, Some("h2c"), false),
            ("no_upgrade_header", Version::HTTP_11, None, false),
            ("http2_never_upgrades", Version::HTTP_2, Some("websocket"), false),
        ];
        for (name, version, upgrade, want) in rows {
            let mut b = Request::builder().version(*version).uri("/");
            if let Some(u) = upgrade {
                b = b.header(header::UPGRADE, *u);
            }
            assert_eq!(is_websocket(&b.body(()).expect("request")), *want, "{name}");
        }
    }
}
