//! W3C trace context at the waypoint: each request continues the caller's trace (`traceparent`)
//! or starts one, gets a span of its own (a `tracing` span carrying the ids, and the access-log
//! line), and the upstream receives `traceparent` naming the waypoint's span as its parent;
//! `tracestate` passes through unchanged. Exporting spans (OTLP) is not built.
use http::{HeaderMap, HeaderValue};

/// The trace a request belongs to and the waypoint's span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span (16 hex digits), when the request carried a valid `traceparent`.
    pub parent_id: Option<String>,
    /// The waypoint's span for this request (16 hex digits).
    pub span_id: String,
    /// Trace flags (2 hex digits; `01` = sampled).
    pub flags: String,
}

fn hex(n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        s.push_str(&format!("{:016x}", fastrand::u64(1..)));
    }
    s.truncate(n);
    s
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// Reads `traceparent` (version 00); anything invalid starts a new trace, as the W3C spec says.
    pub fn from_headers(h: &HeaderMap) -> TraceContext {
        let parsed = h.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|v| {
            let parts: Vec<&str> = v.trim().split('-').collect();
            match parts.as_slice() {
                [ver, trace, parent, flags]
                    if *ver == "00" && is_hex(trace, 32) && is_hex(parent, 16) && flags.len() == 2 =>
                {
                    Some((trace.to_string(), parent.to_string(), flags.to_string()))
                }
                _ => None,
            }
        });
        match parsed {
            Some((trace_id, parent, flags)) => {
                TraceContext { trace_id, parent_id: Some(parent), span_id: hex(16), flags }
            }
            None => TraceContext { trace_id: hex(32), parent_id: None, span_id: hex(16), flags: "01".into() },
        }
    }

    /// The `traceparent` the upstream receives: this trace, the waypoint's span as parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// Sets `traceparent` on an outgoing request.
    pub fn propagate(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::try_from(self.traceparent()) {
            h.insert("traceparent", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_starts_a_trace() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("v"),
        );
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(is_hex(&t.span_id, 16) && t.span_id != "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        t.propagate(&mut out);
        assert_eq!(out["traceparent"], format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id));
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", bad.parse().expect("v"));
            let t = TraceContext::from_headers(&h);
            assert!(t.parent_id.is_none() && is_hex(&t.trace_id, 32), "{bad:?}");
        }
    }
}
