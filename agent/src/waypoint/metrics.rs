//! The waypoint's Prometheus registry: Istio's standard HTTP metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`) with
//! Istio's labels and `reporter="waypoint"`, so
//! existing Istio dashboards read them unchanged.
use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Istio's HTTP metric labels, in the order every HTTP metric carries them.
pub const HTTP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Label values of one request; `unknown` where nothing is known, as Istio reports it.
#[derive(Clone, Debug)]
pub struct RequestLabels {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    /// `-`, or Envoy's flag for why the waypoint answered itself (NR, UH, UF, FI, UT, ...).
    pub response_flags: &'static str,
}

impl Default for RequestLabels {
    fn default() -> Self {
        let u = || String::from("unknown");
        RequestLabels {
            source_workload: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_service: u(),
            destination_service_name: u(),
            destination_service_namespace: u(),
            request_protocol: "http",
            response_code: 0,
            grpc_response_status: String::new(),
            response_flags: "-",
        }
    }
}

impl RequestLabels {
    fn values(&self) -> [String; 19] {
        [
            "waypoint".into(),
            self.source_workload.clone(),
            self.source_workload_namespace.clone(),
            self.source_principal.clone(),
            self.source_app.clone(),
            self.source_version.clone(),
            self.destination_workload.clone(),
            self.destination_workload_namespace.clone(),
            self.destination_principal.clone(),
            self.destination_app.clone(),
            self.destination_version.clone(),
            self.destination_service.clone(),
            self.destination_service_name.clone(),
            self.destination_service_namespace.clone(),
            self.request_protocol.into(),
            self.response_code.to_string(),
            self.grpc_response_status.clone(),
            self.response_flags.into(),
            "mutual_tls".into(),
        ]
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
            HTTP_LABELS,
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
            HTTP_LABELS,
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        // Istio's size buckets: powers of ten from 1 byte to 100 MB.
        let sizes: Vec<f64> = (0..9).map(|e| 10f64.powi(e)).collect();
        let bytes = |name: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(sizes.clone()), HTTP_LABELS)
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
        let v = l.values();
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        self.requests.with_label_values(&refs).inc();
        self.duration.with_label_values(&refs).observe(millis);
        if let Some(n) = sizes.0 {
            self.request_bytes.with_label_values(&refs).observe(n as f64);
        }
        if let Some(n) = sizes.1 {
            self.response_bytes.with_label_values(&refs).observe(n as f64);
        }
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
        let l = RequestLabels { response_code: 503, response_flags: "UH", ..Default::default() };
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
