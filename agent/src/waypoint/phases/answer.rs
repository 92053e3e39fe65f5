//! Phase 5, answer: what the waypoint answers itself for a route, without an upstream: an allowed
//! CORS preflight, a `directResponse`, a `redirect`. An allowed actual CORS request goes on, with
//! the headers to add to its response.
//!
//! Owns these three answers. Pure: it reads the route and the request head and must not change
//! the request; these answers carry no response flag (they are the route's, not failures).
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};

use super::{full, route::Routed};
use crate::waypoint::{
    cors::{self, Cors},
    routes::{self, RegexCache},
    upstream::Body,
};

/// What the route does before any upstream.
pub enum Answer {
    /// The waypoint answers this (no flag).
    Respond(http::Response<Body>),
    /// On to the upstream; `cors` are the CORS headers its response gets.
    Forward { cors: Option<HeaderMap> },
}

/// The answer the route makes itself, if any, in Istio's order: CORS preflight, then
/// `directResponse`, then `redirect`.
pub fn answer<B>(routed: &Routed<'_>, req: &Request<B>, authority: &str, regexes: &RegexCache) -> Answer {
    let Some(r) = routed.route else { return Answer::Forward { cors: None } };
    let mut cors_headers = None;
    if let Some(p) = &r.cors_policy {
        match cors::evaluate(p, req.method(), req.headers(), regexes) {
            Cors::Preflight(h) => {
                let mut resp = full(StatusCode::OK, "");
                resp.headers_mut().extend(h);
                return Answer::Respond(resp);
            }
            Cors::Actual(h) => cors_headers = Some(h),
            Cors::None => {}
        }
    }
    if let Some(d) = &r.direct_response {
        let body = d.body.as_ref().and_then(|b| b.string.clone()).unwrap_or_default();
        let status = StatusCode::from_u16(d.status as u16).unwrap_or(StatusCode::OK);
        return Answer::Respond(full(status, body));
    }
    if let Some(rd) = &r.redirect {
        let host = rd.authority.clone().unwrap_or_else(|| authority.to_string());
        let scheme = rd.scheme.clone().unwrap_or_else(|| "http".into());
        let path = match (&rd.uri, &rd.prefix_rewrite) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => routes::rewrite_path(req.uri().path(), routed.matched, p),
            (None, None) => req.uri().path().to_string(),
        };
        let host = match rd.port {
            Some(p) => format!("{}:{p}", host.split(':').next().unwrap_or(&host)),
            None => host,
        };
        let code = rd
            .redirect_code
            .and_then(|c| StatusCode::from_u16(c as u16).ok())
            .unwrap_or(StatusCode::MOVED_PERMANENTLY);
        let mut resp = full(code, "");
        if let Ok(v) = HeaderValue::try_from(format!("{scheme}://{host}{path}")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Answer::Respond(resp);
    }
    Answer::Forward { cors: cors_headers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::kinds::virtual_service::{HttpMatchRequest, HttpRoute};

    fn route(json: &str) -> HttpRoute {
        serde_json::from_str(json).expect("route")
    }

    #[test]
    fn answers_without_an_upstream() {
        let prefix: HttpMatchRequest =
            serde_json::from_str(r#"{"uri": {"prefix": "/old/"}}"#).expect("match");
        let cors = r#"{"corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}], "allowMethods": ["GET"]}, "route": [{"destination": {"host": "web"}}]}"#;
        // (row, route, its match, method, path, origin, want: None = forwarded, Some((status, Location)))
        type Row<'a> = (
            &'a str,
            &'a str,
            Option<&'a HttpMatchRequest>,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<(u16, Option<&'a str>)>,
        );
        let rows: &[Row<'_>] = &[
            (
                "plain_route_forwards",
                r#"{"route": [{"destination": {"host": "web"}}]}"#,
                None,
                "GET",
                "/",
                None,
                None,
            ),
            (
                "direct_response",
                r#"{"directResponse": {"status": 418, "body": {"string": "tea"}}}"#,
                None,
                "GET",
                "/",
                None,
                Some((418, None)),
            ),
            (
                "redirect_defaults_to_301_same_host",
                r#"{"redirect": {"uri": "/new"}}"#,
                None,
                "GET",
                "/x",
                None,
                Some((301, Some("http://web:80/new"))),
            ),
            (
                "redirect_prefix_rewrite_and_port",
                r#"{"redirect": {"prefixRewrite": "/v2/", "authority": "api", "port": 8080, "scheme": "https", "redirectCode": 302}}"#,
                Some(&prefix),
                "GET",
                "/old/a",
                None,
                Some((302, Some("https://api:8080/v2/a"))),
            ),
            (
                "allowed_preflight_is_answered",
                cors,
                None,
                "OPTIONS",
                "/",
                Some("https://a.example"),
                Some((200, None)),
            ),
            ("actual_cors_request_forwards", cors, None, "GET", "/", Some("https://a.example"), None),
        ];
        let re = RegexCache::default();
        for (name, json, matched, method, path, origin, want) in rows {
            let r = route(json);
            let routed = Routed { route: Some(&r), matched: *matched, namespace: "shop" };
            let mut b = Request::builder().method(*method).uri(*path);
            if let Some(o) = origin {
                b = b.header(header::ORIGIN, *o).header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET");
            }
            let req = b.body(()).expect("request");
            match (answer(&routed, &req, "web:80", &re), want) {
                (Answer::Forward { .. }, None) => {}
                (Answer::Respond(resp), Some((status, location))) => {
                    assert_eq!(resp.status().as_u16(), *status, "{name}");
                    let got = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok());
                    assert_eq!(got, *location, "{name}");
                }
                (Answer::Forward { .. }, Some(_)) => panic!("{name}: forwarded"),
                (Answer::Respond(r), None) => panic!("{name}: answered {}", r.status()),
            }
        }
    }

    #[test]
    fn an_actual_cors_request_carries_the_allow_headers_on() {
        let r = route(
            r#"{"corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}]}, "route": [{"destination": {"host": "web"}}]}"#,
        );
        let routed = Routed { route: Some(&r), matched: None, namespace: "shop" };
        let req = Request::builder()
            .uri("/")
            .header(header::ORIGIN, "https://a.example")
            .body(())
            .expect("request");
        let Answer::Forward { cors: Some(h) } = answer(&routed, &req, "web", &RegexCache::default()) else {
            panic!("forwarded with CORS headers")
        };
        assert!(h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn no_route_forwards_without_cors() {
        let routed = Routed { route: None, matched: None, namespace: "shop" };
        let req = Request::builder().uri("/").body(()).expect("request");
        assert!(matches!(
            answer(&routed, &req, "web", &RegexCache::default()),
            Answer::Forward { cors: None }
        ));
    }
}
