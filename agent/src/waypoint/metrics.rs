//! The waypoint's Prometheus registry: Istio's standard HTTP metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`) with
//! Istio's labels and `reporter="waypoint"`, so
//! existing Istio dashboards read them unchanged.
use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::telemetry::metrics::{ConnLabels, TCP_LABELS};

/// Istio's HTTP metric labels: the TCP ones (the same peers and flags) plus the response's.
const RESPONSE_LABELS: [&str; 2] = ["response_code", "grpc_response_status"];

fn http_labels() -> Vec<&'static str> {
    TCP_LABELS.iter().copied().chain(RESPONSE_LABELS).collect()
}

/// Label values of one request: the connection-level labels the node proxy also reports
/// (`reporter="waypoint"`, `connection_security_policy="mutual_tls"`) plus the response's.
#[derive(Clone, Debug)]
pub struct RequestLabels {
    pub conn: ConnLabels,
    pub response_code: u16,
    pub grpc_response_status: String,
}

impl RequestLabels {
    /// Everything `unknown` for a request to `target`, over mutual TLS, protocol `http`.
    pub fn new(target: std::net::SocketAddr) -> RequestLabels {
        let mut conn = ConnLabels::new("waypoint", target);
        conn.connection_security_policy = "mutual_tls";
        conn.request_protocol = "http";
        RequestLabels { conn, response_code: 0, grpc_response_status: String::new() }
    }

    /// Calls `f` with the values in [`http_labels`] order.
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        let code = self.response_code.to_string();
        self.conn.with_values(|tcp| {
            let mut v: Vec<&str> = Vec::with_capacity(tcp.len() + RESPONSE_LABELS.len());
            v.extend_from_slice(tcp);
            v.push(&code);
            v.push(&self.grpc_response_status);
            f(&v)
        })
    }
}

pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("istio_requests_total", "Requests handled by the waypoint"),
            &http_labels(),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        // Istio's default buckets for request durations (milliseconds).
        let buckets = vec![
            0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
            60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
        ];
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "istio_request_duration_milliseconds",
                "Time to the response, in milliseconds",
            )
            .buckets(buckets),
            &http_labels(),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        // Istio's size buckets: powers of ten from 1 byte to 100 MB.
        let sizes: Vec<f64> = (0..9).map(|e| 10f64.powi(e)).collect();
        let bytes = |name: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(sizes.clone()), &http_labels())
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
        };
        let request_bytes = bytes("istio_request_bytes", "Request sizes (headers' Content-Length), in bytes");
        let response_bytes =
            bytes("istio_response_bytes", "Response sizes (headers' Content-Length), in bytes");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
        ] {
            let _ = registry.register(c);
        }
        HttpMetrics { registry, requests, duration, request_bytes, response_bytes }
    }

    /// Records one finished request: its duration and, where known, its sizes.
    pub fn request(&self, l: &RequestLabels, millis: f64, sizes: (Option<u64>, Option<u64>)) {
        l.with_values(|refs| {
            self.requests.with_label_values(refs).inc();
            self.duration.with_label_values(refs).observe(millis);
            if let Some(n) = sizes.0 {
                self.request_bytes.with_label_values(refs).observe(n as f64);
            }
            if let Some(n) = sizes.1 {
                self.response_bytes.with_label_values(refs).observe(n as f64);
            }
        });
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_with_istio_names_and_labels() {
        let m = HttpMetrics::new();
        let mut l = RequestLabels::new("10.0.0.1:80".parse().expect("addr"));
        l.response_code = 503;
        l.conn.response_flags = "UH";
        m.request(&l, 3.0, (Some(10), Some(2000)));
        m.request(&l, 7.0, (None, None));
        let text = m.render();
        let line = text.lines().find(|l| l.starts_with("istio_requests_total{")).expect("counter");
        assert!(line.contains(r#"reporter="waypoint""#) && line.contains(r#"response_code="503""#), "{line}");
        assert!(line.contains(r#"response_flags="UH""#) && line.ends_with(" 2"), "{line}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_sum{"), "{text}");
    }
}
