//! A VirtualService route's `corsPolicy`, as Envoy's CORS filter applies it: a preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed origin is answered
//! by the waypoint; an actual request from an allowed origin gets the `Access-Control-Allow-*`
//! response headers. Requests from other origins pass through untouched (the browser enforces).
use http::{HeaderMap, HeaderValue, Method, header};

use super::routes::{RegexCache, string_match};
use crate::config::kinds::virtual_service::{CorsPolicy, UnmatchedPreflights};

/// What the policy does with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cors {
    /// Not a CORS request, or an origin the policy does not allow: nothing to do.
    None,
    /// An allowed preflight: answer it with these headers (200, no upstream).
    Preflight(HeaderMap),
    /// An allowed actual request: add these headers to the response.
    Actual(HeaderMap),
}

fn origin_allowed(p: &CorsPolicy, origin: &str, re: &RegexCache) -> bool {
    p.allow_origins.iter().any(|m| string_match(m, Some(origin), false, re))
        || p.allow_origin.iter().any(|o| o == "*" || o == origin)
}

fn put(h: &mut HeaderMap, name: header::HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}

/// Decides what `p` does with a request of `method` carrying `headers`.
pub fn evaluate(p: &CorsPolicy, method: &Method, headers: &HeaderMap, re: &RegexCache) -> Cors {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Cors::None;
    };
    let preflight = method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !origin_allowed(p, origin, re) {
        // Istio's `unmatchedPreflights: IGNORE` answers a preflight from another origin itself
        // (without CORS headers) instead of forwarding it.
        if preflight && p.unmatched_preflights == Some(UnmatchedPreflights::Ignore) {
            return Cors::Preflight(HeaderMap::new());
        }
        return Cors::None;
    }
    let mut h = HeaderMap::new();
    put(&mut h, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if p.allow_credentials == Some(true) {
        put(&mut h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if preflight {
        if !p.allow_methods.is_empty() {
            put(&mut h, header::ACCESS_CONTROL_ALLOW_METHODS, &p.allow_methods.join(","));
        }
        if !p.allow_headers.is_empty() {
            put(&mut h, header::ACCESS_CONTROL_ALLOW_HEADERS, &p.allow_headers.join(","));
        }
        if let Some(age) = &p.max_age {
            put(&mut h, header::ACCESS_CONTROL_MAX_AGE, &age.as_std().as_secs().to_string());
        }
        Cors::Preflight(h)
    } else {
        if !p.expose_headers.is_empty() {
            put(&mut h, header::ACCESS_CONTROL_EXPOSE_HEADERS, &p.expose_headers.join(","));
        }
        Cors::Actual(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        serde_json::from_str(
            r#"{"allowOrigins": [{"exact": "https://shop.example"}, {"regex": "https://.*\\.dev\\.example"}],
                "allowMethods": ["GET", "POST"], "allowHeaders": ["x-token"], "exposeHeaders": ["x-trace"],
                "maxAge": "24h", "allowCredentials": true}"#,
        )
        .expect("corsPolicy")
    }

    fn req(origin: Option<&str>, preflight: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().expect("origin"));
        }
        if preflight {
            h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, "POST".parse().expect("method"));
        }
        h
    }

    #[test]
    fn allowed_origins_get_preflights_answered_and_headers_added() {
        let (p, re) = (policy(), RegexCache::default());
        let Cors::Preflight(h) =
            evaluate(&p, &Method::OPTIONS, &req(Some("https://shop.example"), true), &re)
        else {
            panic!("a preflight from an allowed origin is answered");
        };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://shop.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "86400");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let Cors::Actual(h) = evaluate(&p, &Method::GET, &req(Some("https://a.dev.example"), false), &re)
        else {
            panic!("an actual request from a regex-allowed origin gets headers");
        };
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-trace");
        assert_eq!(evaluate(&p, &Method::OPTIONS, &req(Some("https://evil.example"), true), &re), Cors::None);
        assert_eq!(evaluate(&p, &Method::GET, &req(None, false), &re), Cors::None, "no Origin, no CORS");
        let mut ignore = policy();
        ignore.unmatched_preflights = Some(UnmatchedPreflights::Ignore);
        assert_eq!(
            evaluate(&ignore, &Method::OPTIONS, &req(Some("https://evil.example"), true), &re),
            Cors::Preflight(HeaderMap::new())
        );
    }
}
