//! The agent's Prometheus registry, with Istio's standard TCP metric names and labels so existing
//! Istio dashboards work unchanged, plus sluice's own counters (`sluice_*`).
use std::sync::Arc;

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

/// The labels Istio derives from one workload, shared (`Arc`) by every connection of that workload
/// instead of copied into each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

impl WorkloadLabels {
    /// Nothing known: `unknown` everywhere, as Istio reports it.
    pub fn unknown() -> Arc<WorkloadLabels> {
        static UNKNOWN: std::sync::OnceLock<Arc<WorkloadLabels>> = std::sync::OnceLock::new();
        UNKNOWN
            .get_or_init(|| {
                Arc::new(WorkloadLabels {
                    workload: UNKNOWN_LABEL.into(),
                    namespace: UNKNOWN_LABEL.into(),
                    app: UNKNOWN_LABEL.into(),
                    version: UNKNOWN_LABEL.into(),
                })
            })
            .clone()
    }

    /// A peer known only by its identity's namespace (no workload in the config has its address):
    /// `unknown` everywhere but the namespace, as Istio reports it.
    pub fn unknown_in(namespace: &str) -> Arc<WorkloadLabels> {
        Arc::new(WorkloadLabels { namespace: namespace.to_string(), ..(*Self::unknown()).clone() })
    }

    /// A workload's labels, with `app` and `version` derived as Istio does.
    pub fn of(w: &crate::config::model::PodEntry) -> WorkloadLabels {
        let (app, version) = app_version(&w.labels);
        WorkloadLabels { workload: w.name.clone(), namespace: w.namespace.clone(), app, version }
    }
}

/// What Istio reports as `unknown`.
pub const UNKNOWN_LABEL: &str = "unknown";

/// The destination Service's labels, or the bare address when the destination is no Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceLabels {
    Service { hostname: Arc<str>, name: Arc<str>, namespace: Arc<str> },
    Address(std::net::SocketAddr),
}

impl ServiceLabels {
    pub fn of(svc: &crate::config::Service) -> ServiceLabels {
        ServiceLabels::Service {
            hostname: svc.hostname().into(),
            name: svc.name.as_str().into(),
            namespace: svc.namespace.as_str().into(),
        }
    }
}

/// Label values for one connection; `unknown` where nothing is known, as Istio reports it. The
/// per-workload parts are shared, so a connection costs a few pointers, not 14 strings.
#[derive(Clone, Debug)]
pub struct ConnLabels {
    /// `source` (outbound, reported by the client's agent), `destination` (inbound) or `waypoint`.
    pub reporter: &'static str,
    pub source: Arc<WorkloadLabels>,
    pub source_principal: Arc<str>,
    pub destination: Arc<WorkloadLabels>,
    pub destination_principal: Arc<str>,
    /// The Service, or `ip:port` when the destination is no Service.
    pub service: ServiceLabels,
    /// `-` when the connection succeeded, else the failure's flag ([`crate::telemetry::reason`]).
    pub response_flags: &'static str,
    /// `mutual_tls` for HBONE, `unknown` for plain TCP (as ztunnel reports it).
    pub connection_security_policy: &'static str,
    /// `tcp` for the node proxy; `http` or `grpc` for the waypoint's requests.
    pub request_protocol: &'static str,
}

/// The `app` and `version` of a workload's labels, as Istio derives them.
fn app_version(labels: &crate::config::model::Labels) -> (String, String) {
    let get = |keys: &[&str]| {
        keys.iter().find_map(|k| labels.get(*k)).cloned().unwrap_or_else(|| UNKNOWN_LABEL.into())
    };
    (get(&["app.kubernetes.io/name", "app"]), get(&["app.kubernetes.io/version", "version"]))
}

fn unknown_principal() -> Arc<str> {
    static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::from(UNKNOWN_LABEL)).clone()
}

impl ConnLabels {
    /// Everything `unknown`, no failure, plain TCP.
    pub fn new(reporter: &'static str, destination: std::net::SocketAddr) -> ConnLabels {
        ConnLabels {
            reporter,
            source: WorkloadLabels::unknown(),
            source_principal: unknown_principal(),
            destination: WorkloadLabels::unknown(),
            destination_principal: unknown_principal(),
            service: ServiceLabels::Address(destination),
            response_flags: "-",
            connection_security_policy: UNKNOWN_LABEL,
            request_protocol: "tcp",
        }
    }

    pub fn source(mut self, w: Arc<WorkloadLabels>, principal: Arc<str>) -> ConnLabels {
        self.source = w;
        self.source_principal = principal;
        self
    }

    pub fn destination(mut self, w: Arc<WorkloadLabels>, principal: Arc<str>) -> ConnLabels {
        self.destination = w;
        self.destination_principal = principal;
        self
    }

    pub fn service(mut self, svc: &crate::config::Service) -> ConnLabels {
        self.set_service(svc);
        self
    }

    /// The source workload's labels (metadata; the principal is the verified identity's).
    pub fn set_source(&mut self, w: &crate::config::model::PodEntry, principal: String) {
        self.source = Arc::new(WorkloadLabels::of(w));
        self.source_principal = principal.into();
    }

    pub fn set_destination(&mut self, w: &crate::config::model::PodEntry, principal: String) {
        self.destination = Arc::new(WorkloadLabels::of(w));
        self.destination_principal = principal.into();
    }

    pub fn set_service(&mut self, svc: &crate::config::Service) {
        self.service = ServiceLabels::of(svc);
    }

    /// The `destination_service` label: the Service hostname or `ip:port`.
    pub fn destination_service(&self) -> std::borrow::Cow<'_, str> {
        match &self.service {
            ServiceLabels::Service { hostname, .. } => std::borrow::Cow::Borrowed(hostname),
            ServiceLabels::Address(a) => std::borrow::Cow::Owned(a.to_string()),
        }
    }

    /// Calls `f` with the values in [`TCP_LABELS`] order.
    pub fn with_values<R>(&self, f: impl FnOnce(&[&str; 17]) -> R) -> R {
        let svc = self.destination_service();
        let (svc_name, svc_ns): (&str, &str) = match &self.service {
            ServiceLabels::Service { name, namespace, .. } => (name, namespace),
            ServiceLabels::Address(_) => (UNKNOWN_LABEL, UNKNOWN_LABEL),
        };
        let (s, d) = (&*self.source, &*self.destination);
        f(&[
            self.reporter,
            &s.workload,
            &s.namespace,
            &self.source_principal,
            &s.app,
            &s.version,
            &d.workload,
            &d.namespace,
            &self.destination_principal,
            &d.app,
            &d.version,
            &svc,
            svc_name,
            svc_ns,
            self.request_protocol,
            self.response_flags,
            self.connection_security_policy,
        ])
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
    accept_errors: IntCounterVec,
    admin_refused: IntCounterVec,
    /// Descriptors carried connections may hold together (`limits::caps`).
    pub connection_budget: IntGauge,
    /// Descriptors carried connections hold now.
    pub connection_budget_used: IntGauge,
    pub enrolled_pods: IntGauge,
    /// CNI ADDs the agent refused, by `reason` (the claimed field in conflict, `not_in_config`,
    /// `enrollment_failed`).
    pub cni_refusals: IntCounterVec,
    /// The agent's soft open-file limit after raising it at start (RLIMIT_NOFILE).
    pub open_files_limit: IntGauge,
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
    /// The agent's registry: Istio's TCP metrics and every `sluice_*` series.
    pub fn new() -> Metrics {
        Self::build(true)
    }

    /// Istio's TCP metrics and `sluice_proxy_failures_total` only (a waypoint's connections).
    pub fn tcp_only() -> Metrics {
        Self::build(false)
    }

    /// Builds every series; registers (and so renders) the node-only ones when `node`.
    fn build(node: bool) -> Metrics {
        let registry = Registry::new();
        let register = |name: &str, c: Box<dyn prometheus::core::Collector>, always: bool| {
            if (always || node)
                && let Err(e) = registry.register(c)
            {
                unreachable(name, e);
            }
        };
        let vec = |name: &str, help: &str, labels: &[&str], always: bool| {
            let v =
                IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable(name, e));
            register(name, Box::new(v.clone()), always);
            v
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable(name, e));
            register(name, Box::new(g.clone()), false);
            g
        };
        let tcp_opened =
            vec("istio_tcp_connections_opened_total", "TCP connections opened", TCP_LABELS, true);
        let tcp_closed =
            vec("istio_tcp_connections_closed_total", "TCP connections closed", TCP_LABELS, true);
        let tcp_sent = vec(
            "istio_tcp_sent_bytes_total",
            "Bytes sent by the client side of TCP connections",
            TCP_LABELS,
            true,
        );
        let tcp_received = vec(
            "istio_tcp_received_bytes_total",
            "Bytes received by the client side of TCP connections",
            TCP_LABELS,
            true,
        );
        let failures = vec(
            "sluice_proxy_failures_total",
            "Connections refused or that could not be carried, by reason",
            &["direction", "reason"],
            true,
        );
        let redirect = vec(
            "sluice_redirect_decisions_total",
            "Decisions taken by the kernel programs, by decision",
            &["decision"],
            false,
        );
        let accept_errors = vec(
            "sluice_accept_errors_total",
            "Failed accepts (EMFILE and the like) by listener; each is followed by a back-off pause",
            &["listener"],
            true,
        );
        let admin_refused = vec(
            "sluice_admin_connections_closed_total",
            "Connections the admin, metrics or readiness server closed on its own, by reason \
             (over_cap, evicted_idle, idle_timeout)",
            &["listener", "reason"],
            true,
        );
        let connection_budget = gauge(
            "sluice_connection_budget_fds",
            "Descriptors all carried connections may hold together (a share of the open-file limit)",
        );
        let connection_budget_used =
            gauge("sluice_connection_budget_used_fds", "Descriptors carried connections hold now");
        let enrolled_pods = gauge("sluice_enrolled_pods", "Pods enrolled on this node");
        let cni_refusals = vec(
            "sluice_cni_refusals_total",
            "CNI ADDs refused, by reason (a conflicting claim's field, not_in_config, enrollment_failed)",
            &["reason"],
            false,
        );
        let open_files_limit = gauge(
            "sluice_open_files_limit",
            "The agent's open-file limit (soft RLIMIT_NOFILE, raised to hard at start)",
        );
        let config_generation = gauge("sluice_config_generation", "Mesh config snapshots loaded since start");
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
        register("sluice_cert_expiry_seconds", Box::new(cert_expiry_seconds.clone()), false);
        Metrics {
            registry,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            failures,
            redirect,
            accept_errors,
            admin_refused,
            connection_budget,
            connection_budget_used,
            enrolled_pods,
            cni_refusals,
            open_files_limit,
            config_generation,
            config_rejections,
            config_in_error,
            cert_expiry_seconds,
        }
    }

    /// The `sluice_accept_errors_total` series of `listener`, for its accept loop's back-off.
    pub fn accept_errors(&self, listener: &str) -> prometheus::IntCounter {
        self.accept_errors.with_label_values(&[listener])
    }

    /// Counts a connection the admin, metrics or readiness server `listener` closed for `reason`.
    pub fn admin_closed(&self, listener: &str, reason: &str) {
        self.admin_refused.with_label_values(&[listener, reason]).inc();
    }

    /// Counts a connection opened. Only the connection record (`crate::conn::record`) calls this.
    pub(crate) fn conn_opened(&self, l: &ConnLabels) {
        l.with_values(|v| self.tcp_opened.with_label_values(v).inc());
    }

    /// Counts a connection closed with `sent` and `received` bytes as the caller orients them (the
    /// source reporter: client -> server and server -> client). Only the connection record calls
    /// this.
    pub(crate) fn conn_closed(&self, l: &ConnLabels, sent: u64, received: u64) {
        l.with_values(|v| {
            self.tcp_closed.with_label_values(v).inc();
            self.tcp_sent.with_label_values(v).inc_by(sent);
            self.tcp_received.with_label_values(v).inc_by(received);
        });
    }

    /// Counts a connection refused or failed. Only the connection record calls this.
    pub(crate) fn failure(&self, direction: &str, reason: super::reason::Reason) {
        self.failures.with_label_values(&[direction, reason.as_str()]).inc();
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
        let w = crate::config::model::PodEntry {
            name: "client".into(),
            namespace: "shop".into(),
            labels: [("app".to_string(), "shop-ui".to_string())].into_iter().collect(),
            ..Default::default()
        };
        let l = ConnLabels::new("source", "10.0.0.1:80".parse().expect("addr"))
            .source(Arc::new(WorkloadLabels::of(&w)), "spiffe://cluster.local/ns/shop/sa/client".into());
        m.conn_opened(&l);
        m.conn_closed(&l, 10, 20);
        m.sync_redirect_counters(&[("outbound_redirected", 3)]);
        m.sync_redirect_counters(&[("outbound_redirected", 5)]);
        let text = m.render();
        assert!(text.contains("istio_tcp_connections_opened_total{"), "{text}");
        assert!(text.contains("source_workload=\"client\""), "{text}");
        assert!(text.contains("source_app=\"shop-ui\""), "{text}");
        assert!(text.contains("source_version=\"unknown\""), "{text}");
        assert!(text.contains("destination_service=\"10.0.0.1:80\""), "{text}");
        assert!(text.contains("istio_tcp_sent_bytes_total{"), "{text}");
        assert!(
            text.contains("sluice_redirect_decisions_total{decision=\"outbound_redirected\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn a_waypoints_registry_has_tcp_series_only() {
        let m = Metrics::tcp_only();
        m.conn_opened(&ConnLabels::new("waypoint", "10.0.0.1:80".parse().expect("addr")));
        m.failure("inbound", crate::telemetry::reason::Reason::Deny);
        let text = m.render();
        assert!(text.contains("istio_tcp_connections_opened_total{"), "{text}");
        assert!(text.contains("sluice_proxy_failures_total{"), "{text}");
        assert!(!text.contains("sluice_enrolled_pods"), "node series on a waypoint: {text}");
    }
}
