//! Phase 6, fault: a route's `fault` injection, decided for one request: a fixed delay (the
//! request is then counted `DI`) and an abort (`FI`: the route's HTTP status, or a gRPC
//! trailers-only answer with the route's gRPC status).
//!
//! Owns the decision only. Pure given the random `roll`: the driver sleeps and sets the flag; this
//! module must not touch the request, the labels or the clock.
use std::time::Duration;

use http::{HeaderValue, StatusCode, header};

use super::{Local, fires, full, local};
use crate::config::kinds::virtual_service::HttpRoute;

/// The faults that fire for one request.
#[derive(Debug, Default)]
pub struct Faults {
    /// Wait this long before going on (counted `DI`).
    pub delay: Option<Duration>,
    /// Answer this instead of going upstream (`FI`).
    pub abort: Option<Local>,
}

/// Which of `route`'s faults fire, `roll` giving numbers in `[0, 1)` for the percentages (the
/// delay's first, then the abort's).
pub fn decide(route: Option<&HttpRoute>, mut roll: impl FnMut() -> f64) -> Faults {
    let mut out = Faults::default();
    let Some(f) = route.and_then(|r| r.fault.as_ref()) else { return out };
    if let Some(d) = &f.delay
        && let Some(fixed) = &d.fixed_delay
        && fires(d.percentage.as_ref().map(|p| p.get()).or(d.percent.map(f64::from)), &mut roll)
    {
        out.delay = Some(fixed.as_std());
    }
    if let Some(a) = &f.abort
        && fires(a.percentage.as_ref().map(|p| p.get()), &mut roll)
    {
        if let Some(code) = a.http_status {
            let status = StatusCode::from_u16(code as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            out.abort = Some(local(status, "FI", "fault filter abort"));
        } else if let Some(g) = a.grpc_status.as_deref().and_then(grpc_code) {
            // A gRPC trailers-only response: 200 with the status in the headers.
            let mut resp = full(StatusCode::OK, "");
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(g));
            h.insert("grpc-message", HeaderValue::from_static("fault filter abort"));
            out.abort = Some(Local::new(resp, "FI"));
        }
    }
    out
}

/// A gRPC status by Istio's name (`UNAVAILABLE`) or number, as its numeric code.
fn grpc_code(s: &str) -> Option<u16> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| *n == s)
        .map(|i| i as u16)
        .or_else(|| s.parse::<u16>().ok().filter(|n| *n <= 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("7"), Some(7));
        assert_eq!(grpc_code("BOGUS"), None);
        assert_eq!(grpc_code("99"), None);
    }

    #[test]
    fn faults_fire_by_percentage() {
        // (row, route's fault, roll, want delay ms, want abort (status, grpc-status))
        type Row<'a> = (&'a str, &'a str, f64, Option<u64>, Option<(u16, Option<&'a str>)>);
        let rows: &[Row<'_>] = &[
            ("no_fault", "null", 0.0, None, None),
            ("delay_always", r#"{"delay": {"fixedDelay": "2s"}}"#, 0.99, Some(2000), None),
            (
                "delay_at_half_rolled_low",
                r#"{"delay": {"fixedDelay": "1s", "percentage": {"value": 50}}}"#,
                0.1,
                Some(1000),
                None,
            ),
            (
                "delay_at_half_rolled_high",
                r#"{"delay": {"fixedDelay": "1s", "percentage": {"value": 50}}}"#,
                0.9,
                None,
                None,
            ),
            (
                "delay_by_legacy_percent",
                r#"{"delay": {"fixedDelay": "1s", "percent": 10}}"#,
                0.05,
                Some(1000),
                None,
            ),
            ("http_abort", r#"{"abort": {"httpStatus": 429}}"#, 0.0, None, Some((429, None))),
            (
                "grpc_abort_is_trailers_only",
                r#"{"abort": {"grpcStatus": "UNAVAILABLE"}}"#,
                0.0,
                None,
                Some((200, Some("14"))),
            ),
            (
                "abort_never_at_zero",
                r#"{"abort": {"httpStatus": 500, "percentage": {"value": 0}}}"#,
                0.0,
                None,
                None,
            ),
            (
                "delay_and_abort",
                r#"{"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 503}}"#,
                0.0,
                Some(1000),
                Some((503, None)),
            ),
        ];
        for (name, fault, roll, delay, abort) in rows {
            let route: HttpRoute = serde_json::from_str(&format!(
                r#"{{"fault": {fault}, "route": [{{"destination": {{"host": "web"}}}}]}}"#
            ))
            .expect("route");
            let got = decide(Some(&route), || *roll);
            assert_eq!(got.delay, delay.map(Duration::from_millis), "{name}");
            match (got.abort, abort) {
                (None, None) => {}
                (Some(l), Some((status, grpc))) => {
                    assert_eq!((l.status().as_u16(), l.flag), (*status, "FI"), "{name}");
                    let g = l.resp.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                    assert_eq!(g, *grpc, "{name}");
                }
                (got, want) => panic!("{name}: abort {got:?}, want {want:?}"),
            }
        }
        assert!(decide(None, || 0.0).abort.is_none(), "no route, no fault");
    }
}
