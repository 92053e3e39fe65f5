//! The agent's Prometheus registry, with Istio's standard TCP metric names and labels so existing
//! Istio dashboards work unchanged, plus sluice's own counters (`sluice_*`).
use prometheus::{Encoder as _, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Istio's TCP metric labels, in the order every TCP metric carries them.
pub const TCP_LABELS: &[&str] = &[
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
    "response_flags",
    "connection_security_policy",
];

/// Label values for one connection; `unknown` where nothing is known, as Istio reports it.
#[derive(Clone, Debug)]
pub struct ConnLabels {
    /// `source` (outbound, reported by the client's agent) or `destination` (inbound).
    pub reporter: &'static str,
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
    /// The Service hostname, or `ip:port` when the destination is no Service.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `-` when the connection succeeded, else the failure reason.
    pub response_flags: String,
    /// `mutual_tls` for HBONE, `unknown` for plain TCP (as ztunnel reports it).
    pub connection_security_policy: &'static str,
    /// `tcp` for the node proxy; `http` or `grpc` for the waypoint's requests.
    pub request_protocol: &'static str,
}

/// The `app` and `version` of a workload's labels, as Istio derives them.
fn app_version(labels: &crate::config::model::Labels) -> (String, String) {
    let get =
        |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned().unwrap_or_else(|| "unknown".into());
    (get(&["app.kubernetes.io/name", "app"]), get(&["app.kubernetes.io/version", "version"]))
}

impl ConnLabels {
    /// Everything `unknown`, no failure, plain TCP.
    pub fn new(reporter: &'static str, destination: std::net::SocketAddr) -> ConnLabels {
        let u = || String::from("unknown");
        ConnLabels {
            reporter,
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
            destination_service: destination.to_string(),
            destination_service_name: u(),
            destination_service_namespace: u(),
            response_flags: "-".into(),
            connection_security_policy: "unknown",
            request_protocol: "tcp",
        }
    }

    pub fn source(mut self, w: &crate::config::model::PodEntry, principal: String) -> ConnLabels {
        self.set_source(w, principal);
        self
    }

    pub fn destination(mut self, w: &crate::config::model::PodEntry, principal: String) -> ConnLabels {
        self.set_destination(w, principal);
        self
    }

    pub fn service(mut self, svc: &crate::config::Service) -> ConnLabels {
        self.set_service(svc);
        self
    }

    /// The source workload's labels (metadata; the principal is the verified identity's).
    pub fn set_source(&mut self, w: &crate::config::model::PodEntry, principal: String) {
        (self.source_app, self.source_version) = app_version(&w.labels);
        self.source_workload = w.name.clone();
        self.source_workload_namespace = w.namespace.clone();
        self.source_principal = principal;
    }

    pub fn set_destination(&mut self, w: &crate::config::model::PodEntry, principal: String) {
        (self.destination_app, self.destination_version) = app_version(&w.labels);
        self.destination_workload = w.name.clone();
        self.destination_workload_namespace = w.namespace.clone();
        self.destination_principal = principal;
    }

    pub fn set_service(&mut self, svc: &crate::config::Service) {
        self.destination_service = svc.hostname();
        self.destination_service_name = svc.name.clone();
        self.destination_service_namespace = svc.namespace.clone();
    }

    /// The values in [`TCP_LABELS`] order.
    pub fn values(&self) -> [&str; 17] {
        [
            self.reporter,
            &self.source_workload,
            &self.source_workload_namespace,
            &self.source_principal,
            &self.source_app,
            &self.source_version,
            &self.destination_workload,
            &self.destination_workload_namespace,
            &self.destination_principal,
            &self.destination_app,
            &self.destination_version,
            &self.destination_service,
            &self.destination_service_name,
            &self.destination_service_namespace,
            self.request_protocol,
            &self.response_flags,
            self.connection_security_policy,
        ]
    }
}

pub struct Metrics {
    registry: Registry,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    failures: IntCounterVec,
    redirect: IntCounterVec,
    pub enrolled_pods: IntGauge,
    /// Snapshots loaded since start.
    pub config_generation: IntGauge,
    /// Mesh config changes rejected since start.
    pub config_rejections: IntGauge,
    /// 1 while the latest mesh config change is rejected (the last good one is in force).
    pub config_in_error: IntGauge,
    /// Seconds until each workload certificate expires.
    pub cert_expiry_seconds: prometheus::IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v =
                IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable(name, e));
            if let Err(e) = registry.register(Box::new(v.clone())) {
                unreachable(name, e);
            }
            v
        };
        let tcp_opened = vec("istio_tcp_connections_opened_total", "TCP connections opened", TCP_LABELS);
        let tcp_closed = vec("istio_tcp_connections_closed_total", "TCP connections closed", TCP_LABELS);
        let tcp_sent =
            vec("istio_tcp_sent_bytes_total", "Bytes sent by the client side of TCP connections", TCP_LABELS);
        let tcp_received = vec(
            "istio_tcp_received_bytes_total",
            "Bytes received by the client side of TCP connections",
            TCP_LABELS,
        );
        let failures = vec(
            "sluice_proxy_failures_total",
            "Captured connections the agent could not carry, by reason",
            &["direction", "reason"],
        );
        let redirect = vec(
            "sluice_redirect_decisions_total",
            "Decisions taken by the kernel programs, by decision",
            &["decision"],
        );
        let enrolled_pods = IntGauge::new("sluice_enrolled_pods", "Pods enrolled on this node")
            .unwrap_or_else(|e| unreachable("sluice_enrolled_pods", e));
        if let Err(e) = registry.register(Box::new(enrolled_pods.clone())) {
            unreachable("sluice_enrolled_pods", e);
        }
        let config_generation =
            IntGauge::new("sluice_config_generation", "Mesh config snapshots loaded since start")
                .unwrap_or_else(|e| unreachable("sluice_config_generation", e));
        if let Err(e) = registry.register(Box::new(config_generation.clone())) {
            unreachable("sluice_config_generation", e);
        }
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable(name, e));
            if let Err(e) = registry.register(Box::new(g.clone())) {
                unreachable(name, e);
            }
            g
        };
        let config_rejections = gauge(
            "sluice_config_rejections",
            "Mesh config changes rejected since start (the last good snapshot stayed in force)",
        );
        let config_in_error =
            gauge("sluice_config_in_error", "1 while the latest mesh config change is rejected");
        let cert_expiry_seconds = prometheus::IntGaugeVec::new(
            Opts::new("sluice_cert_expiry_seconds", "Seconds until a workload certificate expires"),
            &["identity"],
        )
        .unwrap_or_else(|e| unreachable("sluice_cert_expiry_seconds", e));
        if let Err(e) = registry.register(Box::new(cert_expiry_seconds.clone())) {
            unreachable("sluice_cert_expiry_seconds", e);
        }
        Metrics {
            registry,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            failures,
            redirect,
            enrolled_pods,
            config_generation,
            config_rejections,
            config_in_error,
            cert_expiry_seconds,
        }
    }

    pub fn conn_opened(&self, l: &ConnLabels) {
        self.tcp_opened.with_label_values(&l.values()).inc();
    }

    /// `sent` is client -> server bytes, `received` server -> client, as Istio counts them.
    pub fn conn_closed(&self, l: &ConnLabels, sent: u64, received: u64) {
        let v = l.values();
        self.tcp_closed.with_label_values(&v).inc();
        self.tcp_sent.with_label_values(&v).inc_by(sent);
        self.tcp_received.with_label_values(&v).inc_by(received);
    }

    pub fn failure(&self, direction: &str, reason: &str) {
        self.failures.with_label_values(&[direction, reason]).inc();
    }

    /// Brings `sluice_redirect_decisions_total` up to the kernel's current totals.
    pub fn sync_redirect_counters(&self, totals: &[(&'static str, u64)]) {
        for (label, total) in totals {
            let c = self.redirect.with_label_values(&[label]);
            let now = c.get();
            if *total > now {
                c.inc_by(total - now);
            }
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registration only fails for malformed names or duplicates, both fixed at compile time here.
fn unreachable(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} could not be registered: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_names_and_labels_render() {
        let m = Metrics::new();
        let mut l = ConnLabels::new("source", "10.0.0.1:80".parse().expect("addr"));
        l.source_workload = "client".into();
        m.conn_opened(&l);
        m.conn_closed(&l, 10, 20);
        m.sync_redirect_counters(&[("outbound_redirected", 3)]);
        m.sync_redirect_counters(&[("outbound_redirected", 5)]);
        let text = m.render();
        assert!(text.contains("istio_tcp_connections_opened_total{"), "{text}");
        assert!(text.contains("source_workload=\"client\""), "{text}");
        assert!(text.contains("istio_tcp_sent_bytes_total{"), "{text}");
        assert!(
            text.contains("sluice_redirect_decisions_total{decision=\"outbound_redirected\"} 5"),
            "{text}"
        );
    }
}
