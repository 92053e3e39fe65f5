//! Phase 8, rewrite: the request head the upstream receives: the route's `rewrite` (`uri`,
//! prefix-aware; `uriRegexRewrite`; `authority`), then the route's and the destination's request
//! header operations.
//!
//! Owns the upstream request head's path, authority and headers. Pure: it must not read the body,
//! decide anything about policy or routing, or answer the request.
use http::{HeaderValue, Uri, header, request::Parts};

use super::{headers::apply_ops, route::Routed};
use crate::{config::kinds::virtual_service::Headers, waypoint::routes};

/// Rewrites `parts` as the route and its chosen destination (`dest_headers`) say.
pub fn rewrite(parts: &mut Parts, routed: &Routed<'_>, dest_headers: Option<&Headers>) {
    if let Some(r) = routed.route {
        if let Some(rw) = &r.rewrite {
            let path = parts.uri.path().to_string();
            let new_path = match (&rw.uri, &rw.uri_regex_rewrite) {
                (Some(u), _) => Some(routes::rewrite_path(&path, routed.matched, u)),
                (None, Some(rr)) => match (&rr.pattern, &rr.rewrite) {
                    (Some(p), Some(w)) => {
                        regex::Regex::new(p).ok().map(|re| re.replace_all(&path, w.as_str()).into_owned())
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some(np) = new_path {
                let pq = match parts.uri.query() {
                    Some(q) => format!("{np}?{q}"),
                    None => np,
                };
                if let Ok(u) = pq.parse::<Uri>() {
                    parts.uri = u;
                }
            }
            if let Some(a) = &rw.authority
                && let Ok(v) = HeaderValue::try_from(a.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
        }
        apply_ops(&mut parts.headers, r.headers.as_ref().and_then(|h| h.request.as_ref()));
    }
    apply_ops(&mut parts.headers, dest_headers.and_then(|h| h.request.as_ref()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::kinds::virtual_service::{HttpMatchRequest, HttpRoute};

    #[test]
    fn the_upstream_sees_the_rewritten_head() {
        let prefix: HttpMatchRequest =
            serde_json::from_str(r#"{"uri": {"prefix": "/old/"}}"#).expect("match");
        // (row, route (None: no route), its match, destination headers, request, want path+query, Host, x-added)
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a HttpMatchRequest>,
            Option<&'a str>,
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
        );
        let rows: &[Row<'_>] = &[
            ("no_route_leaves_it", None, None, None, "/a?q=1", "/a?q=1", "web", None),
            (
                "uri_rewrite_keeps_the_query",
                Some(r#"{"rewrite": {"uri": "/b"}}"#),
                None,
                None,
                "/a?q=1",
                "/b?q=1",
                "web",
                None,
            ),
            (
                "prefix_rewrite",
                Some(r#"{"rewrite": {"uri": "/new/"}}"#),
                Some(&prefix),
                None,
                "/old/x",
                "/new/x",
                "web",
                None,
            ),
            (
                "regex_rewrite",
                Some(
                    r#"{"rewrite": {"uriRegexRewrite": {"match": "^/v([0-9])/", "rewrite": "/version$1/"}}}"#,
                ),
                None,
                None,
                "/v2/x",
                "/version2/x",
                "web",
                None,
            ),
            (
                "authority_rewrite",
                Some(r#"{"rewrite": {"authority": "api"}}"#),
                None,
                None,
                "/",
                "/",
                "api",
                None,
            ),
            (
                "route_header_ops",
                Some(r#"{"headers": {"request": {"set": {"x-added": "route"}}}}"#),
                None,
                None,
                "/",
                "/",
                "web",
                Some("route"),
            ),
            (
                "destination_ops_apply_last",
                Some(r#"{"headers": {"request": {"set": {"x-added": "route"}}}}"#),
                None,
                Some(r#"{"request": {"set": {"x-added": "dest"}}}"#),
                "/",
                "/",
                "web",
                Some("dest"),
            ),
        ];
        for (name, route, matched, dest, uri, want_pq, want_host, want_added) in rows {
            let route: Option<HttpRoute> = route.map(|j| serde_json::from_str(j).expect("route"));
            let dest: Option<Headers> = dest.map(|j| serde_json::from_str(j).expect("headers"));
            let routed = Routed { route: route.as_ref(), matched: *matched, namespace: "shop" };
            let (mut parts, ()) = http::Request::builder()
                .uri(*uri)
                .header(header::HOST, "web")
                .body(())
                .expect("request")
                .into_parts();
            rewrite(&mut parts, &routed, dest.as_ref());
            assert_eq!(parts.uri.path_and_query().map(|p| p.as_str()), Some(*want_pq), "{name}");
            assert_eq!(
                parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()),
                Some(*want_host),
                "{name}"
            );
            assert_eq!(parts.headers.get("x-added").and_then(|v| v.to_str().ok()), *want_added, "{name}");
        }
    }
}
