//! Phase 11, respond: the upstream's response as the client receives it: the route's, then the
//! destination's response header operations, then the CORS headers [`super::answer`] found.
//!
//! Owns the response headers only. Pure: it must not change the status or the body, and never
//! answers itself (metrics and the access-log line are the driver's caller's).
use http::{HeaderMap, Response};

use super::headers::apply_ops;
use crate::config::kinds::virtual_service::{Headers, HttpRoute};

/// Applies the response header operations of `route` and of the destination (`dest_headers`),
/// then adds `cors`.
pub fn respond<B>(
    resp: &mut Response<B>,
    route: Option<&HttpRoute>,
    dest_headers: Option<&Headers>,
    cors: Option<HeaderMap>,
) {
    apply_ops(resp.headers_mut(), route.and_then(|r| r.headers.as_ref()).and_then(|h| h.response.as_ref()));
    apply_ops(resp.headers_mut(), dest_headers.and_then(|h| h.response.as_ref()));
    if let Some(h) = cors {
        resp.headers_mut().extend(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_headers_route_then_destination_then_cors() {
        let mut cors = HeaderMap::new();
        cors.insert("access-control-allow-origin", "https://a.example".parse().expect("v"));
        // (row, route headers, destination headers, CORS, want x-by, want allow-origin, want server kept)
        type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, bool, Option<&'a str>, bool, bool);
        let rows: &[Row<'_>] = &[
            ("untouched", None, None, false, None, false, true),
            (
                "route_sets",
                Some(r#"{"response": {"set": {"x-by": "route"}}}"#),
                None,
                false,
                Some("route"),
                false,
                true,
            ),
            (
                "destination_after_route",
                Some(r#"{"response": {"set": {"x-by": "route"}}}"#),
                Some(r#"{"response": {"set": {"x-by": "dest"}}}"#),
                false,
                Some("dest"),
                false,
                true,
            ),
            (
                "route_removes",
                Some(r#"{"response": {"remove": ["server"]}}"#),
                None,
                false,
                None,
                false,
                false,
            ),
            (
                "request_ops_do_not_apply",
                Some(r#"{"request": {"set": {"x-by": "route"}}}"#),
                None,
                false,
                None,
                false,
                true,
            ),
            ("cors_added", None, None, true, None, true, true),
        ];
        for (name, route, dest, with_cors, by, allow, server) in rows {
            let route: Option<HttpRoute> =
                route.map(|h| serde_json::from_str(&format!(r#"{{"headers": {h}}}"#)).expect("route"));
            let dest: Option<Headers> = dest.map(|h| serde_json::from_str(h).expect("headers"));
            let mut resp = Response::builder().header("server", "up").body(()).expect("response");
            respond(&mut resp, route.as_ref(), dest.as_ref(), with_cors.then(|| cors.clone()));
            let h = resp.headers();
            assert_eq!(h.get("x-by").and_then(|v| v.to_str().ok()), *by, "{name}");
            assert_eq!(h.contains_key("access-control-allow-origin"), *allow, "{name}");
            assert_eq!(h.contains_key("server"), *server, "{name}");
        }
    }
}
