//! Header helpers shared by the phases: a route's header operations, hop-by-hop removal, cookies.
//!
//! Owns only functions over a [`HeaderMap`]; it must not decide anything about a request (which
//! operations apply is the caller's choice).
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::config::kinds::virtual_service::HeaderOperations;

/// Applies `set`, then `add`, then `remove` of `ops` (names or values that are not valid HTTP are
/// skipped).
pub(crate) fn apply_ops(h: &mut HeaderMap, ops: Option<&HeaderOperations>) {
    let Some(ops) = ops else { return };
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            h.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            h.append(k, v);
        }
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

/// Removes hop-by-hop headers (and those `Connection` names) before a message crosses the
/// waypoint; `Connection: upgrade` and `Upgrade: websocket` stay for a WebSocket handshake.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, websocket: bool) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(t.is_empty() || websocket && t == "upgrade"))
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "http2-settings",
        "trailer",
    ] {
        h.remove(n);
    }
    if !websocket {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    // `te: trailers` is the one TE value HTTP/2 (and gRPC) allows; anything else is hop-by-hop.
    if h.get(header::TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        h.remove(header::TE);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; session=abc; b=2".parse().expect("v"));
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "none"), None);
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross_and_only_websocket_upgrades() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-app", "ok"),
        ] {
            h.append(k, v.parse().expect("value"));
        }
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-app"]);
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, "Upgrade".parse().expect("v"));
        ws.insert(header::UPGRADE, "websocket".parse().expect("v"));
        strip_hop_by_hop(&mut ws, true);
        assert!(ws.contains_key(header::UPGRADE) && ws.contains_key(header::CONNECTION));
    }

    #[test]
    fn header_operations_set_then_add_then_remove() {
        let ops: HeaderOperations =
            serde_json::from_str(r#"{"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]}"#)
                .expect("ops");
        let mut h = HeaderMap::new();
        h.insert("x-a", "0".parse().expect("v"));
        h.insert("x-b", "1".parse().expect("v"));
        h.insert("x-c", "1".parse().expect("v"));
        apply_ops(&mut h, Some(&ops));
        assert_eq!(h.get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-c"));
        apply_ops(&mut h, None);
        assert_eq!(h.len(), 3);
    }
}
