//! The connection record: one per connection (or HBONE stream), from accept to close. It holds the
//! connection's facts and Istio labels, registers it in the live-connection registry, and is the
//! only place that counts Istio's TCP metrics, counts refusals (`sluice_proxy_failures_total`) and
//! writes the access log (target `sluice::access`): once at open (debug) and once at close (info),
//! or once as a refusal when the connection was refused or failed before any byte moved.
//!
//! Access-log fields (the one vocabulary of the agent and the waypoint, docs/ARCHITECTURE.md):
//! `conn_id`, `direction`, `path`, `pod` and `namespace` (the node-local pod, or the waypoint),
//! `src` and `dst` (addresses), `src_principal`, `dst_principal`, `dst_service`, `security`,
//! `policy`, `reason` and `detail` (refusals), `sent`, `received`, `duration_ms`, `error`.
use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tracing::{debug, info, warn};

use super::registry::{ConnInfo, Live, Registration, Registry};
use crate::telemetry::{
    metrics::{ConnLabels, Metrics},
    reason::Reason,
};

/// What every connection record of one proxy process reports to.
pub struct Recorder {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// When an overload refusal was last logged, and how many were not logged since.
    overload_log: parking_lot::Mutex<(Option<Instant>, u64)>,
}

/// Overload refusals come in floods: at most one log line per this interval (with a count).
const OVERLOAD_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Recorder {
    pub fn new(metrics: Arc<Metrics>, registry: Arc<Registry>) -> Arc<Recorder> {
        Arc::new(Recorder { metrics, registry, overload_log: Default::default() })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts the record of an accepted connection: registered from now on, counted and logged
    /// once it is refused ([`ConnRecord::refuse`]) or carried ([`ConnRecord::carry`]).
    pub fn open(&self, info: ConnInfo, labels: ConnLabels) -> ConnRecord {
        let reg = self.registry.register(info);
        ConnRecord {
            metrics: self.metrics.clone(),
            reg,
            labels,
            peer_view: None,
            tcp_metrics: true,
            start: Instant::now(),
            opened: false,
            done: false,
        }
    }

    /// An HBONE connection refused during its handshake (TLS, identity, HTTP/2), before any stream
    /// and so before any connection record exists: counted by reason and logged once.
    pub fn handshake_refused(
        &self,
        direction: &'static str,
        pod: &str,
        namespace: &str,
        src: std::net::SocketAddr,
        reason: Reason,
        error: &dyn std::fmt::Display,
    ) {
        self.metrics.failure(direction, reason);
        warn!(target: "sluice::access", direction, path = "hbone", pod, namespace, %src, reason = reason.as_str(),
              error = %error, "HBONE connection refused");
    }

    /// A connection refused at accept because a cap was reached (`overload_*`), before any record
    /// exists (none is made: a flood must cost as little as possible). Counted by reason
    /// (`sluice_proxy_failures_total`); logged at most once every 5 s, with how many refusals the
    /// interval saw, since a flood would otherwise write a line per connection.
    pub fn overloaded(
        &self,
        direction: &'static str,
        path: &'static str,
        (pod, namespace): (&str, &str),
        src: std::net::SocketAddr,
        refused: crate::limits::caps::Refused,
    ) {
        use crate::limits::caps::Refused;
        let reason = match refused {
            Refused::Budget => Reason::OverloadBudget,
            Refused::Pod => Reason::OverloadPod,
            Refused::Source => Reason::OverloadSource,
        };
        self.metrics.failure(direction, reason);
        let refused_since = {
            let mut l = self.overload_log.lock();
            l.1 += 1;
            let now = Instant::now();
            if l.0.is_some_and(|t| now.duration_since(t) < OVERLOAD_LOG_EVERY) {
                return;
            }
            l.0 = Some(now);
            std::mem::take(&mut l.1)
        };
        warn!(target: "sluice::access", direction, path, pod, namespace, %src, reason = reason.as_str(),
              detail = %refused, refused_since_last_line = refused_since, "connection refused: overload");
    }
}

/// One connection's life; see the module doc. Dropping a record that was neither refused nor
/// carried to its end (its task was cancelled) still counts and logs its close.
pub struct ConnRecord {
    metrics: Arc<Metrics>,
    reg: Registration,
    labels: ConnLabels,
    /// The destination's own view, when one agent reports both ends (the same-node path). Its
    /// byte counters are the other way round (what the client sent, the destination received).
    peer_view: Option<ConnLabels>,
    /// Whether Istio's TCP metrics count this connection (a waypoint's HTTP streams are counted
    /// request by request instead).
    tcp_metrics: bool,
    start: Instant,
    /// Counted opened (carried).
    opened: bool,
    done: bool,
}

impl ConnRecord {
    /// Whether Istio's TCP metrics count this connection (on by default). Refusals are counted
    /// in `sluice_proxy_failures_total` either way.
    pub fn count_tcp(&mut self, on: bool) {
        self.tcp_metrics = on;
    }

    pub fn labels(&self) -> &ConnLabels {
        &self.labels
    }

    pub fn labels_mut(&mut self) -> &mut ConnLabels {
        &mut self.labels
    }

    /// Also reports the connection as its destination sees it (`reporter="destination"`), with
    /// the bytes the other way round: what the client sent is what the destination received.
    pub fn set_peer_view(&mut self, labels: ConnLabels) {
        self.peer_view = Some(labels);
    }

    /// The registry entry: byte counters and the close signal.
    pub fn live(&self) -> &Arc<Live> {
        self.reg.live()
    }

    fn info(&self) -> &ConnInfo {
        &self.reg.live().info
    }

    /// The label sets Istio's TCP metrics count this connection under.
    fn views(&self) -> impl Iterator<Item = &ConnLabels> {
        std::iter::once(&self.labels).chain(self.peer_view.as_ref()).filter(|_| self.tcp_metrics)
    }

    /// The connection was refused, or failed before any byte moved: counted with `reason` as
    /// its response flag and logged once. `detail` names the object that decided and why.
    pub fn refuse(mut self, reason: Reason, detail: &str) {
        self.done = true;
        self.labels.response_flags = reason.as_str();
        if let Some(v) = &mut self.peer_view {
            v.response_flags = reason.as_str();
        }
        let i = self.info();
        self.metrics.failure(i.direction, reason);
        if let Some(v) = &self.peer_view
            && v.reporter == "destination"
            && i.direction == "outbound"
        {
            // The destination's side of a same-node connection is an inbound refusal too.
            self.metrics.failure("inbound", reason);
        }
        for l in self.views() {
            self.metrics.conn_opened(l);
            self.metrics.conn_closed(l, 0, 0);
        }
        let l = &self.labels;
        warn!(target: "sluice::access", conn_id = self.live().id, direction = i.direction, path = i.path,
              pod = %i.pod, namespace = %i.namespace, src = %i.src, dst = %i.dst, src_principal = %l.source_principal,
              dst_principal = %l.destination_principal, dst_service = %l.destination_service(),
              security = l.connection_security_policy, policy = %i.policy, reason = reason.as_str(),
              detail, "connection refused");
    }

    /// Carries the connection: counts it opened, runs `copy` (which counts bytes into
    /// [`Live::sent`] and [`Live::received`] and returns its first error) until it ends or a
    /// close is asked for through the registry, then counts and logs the close. Resolves to the
    /// bytes (sent, received).
    ///
    /// Not an `async fn`: an async fn keeps its arguments in a slot of their own beside the locals
    /// they move into (rust-lang/rust#62958), which stored every connection's copy state twice
    /// (measured: +2.3 KiB per idle HBONE connection). The copy is boxed once here instead.
    pub fn carry<'a>(
        mut self,
        copy: impl Future<Output = Option<String>> + Send + 'a,
    ) -> impl Future<Output = (u64, u64)> + Send + 'a {
        let mut copy = Box::pin(copy);
        for l in self.views() {
            self.metrics.conn_opened(l);
        }
        self.opened = true;
        {
            let (i, l) = (self.info(), &self.labels);
            debug!(target: "sluice::access", conn_id = self.live().id, direction = i.direction, path = i.path,
                   pod = %i.pod, namespace = %i.namespace, src = %i.src, dst = %i.dst, src_principal = %l.source_principal,
                   dst_principal = %l.destination_principal, dst_service = %l.destination_service(),
                   security = l.connection_security_policy, policy = %i.policy, "connection opened");
        }
        async move {
            let live = self.live().clone();
            // The copy first: copies that watch the close themselves reset both sides on the way
            // out (see `Live::stopped`); a copy that does not is simply dropped.
            let error = tokio::select! {
                biased;
                e = copy.as_mut() => e,
                r = live.closed() => Some(format!("closed: {r}")),
            };
            drop(copy);
            // Flagged as closed from outside only when that is what ended it (a copy that finished
            // on its own while a close was being asked for keeps its own result).
            if let Some(r) = live.close_reason().filter(|_| error.is_some()) {
                self.labels.response_flags = r.as_str();
                if let Some(v) = &mut self.peer_view {
                    v.response_flags = r.as_str();
                }
            }
            self.finish(error)
        }
    }

    fn finish(&mut self, error: Option<String>) -> (u64, u64) {
        self.done = true;
        if !self.opened {
            // Abandoned before it was carried (its task was cancelled while connecting): counted
            // opened too, so opened and closed always match.
            for l in self.views() {
                self.metrics.conn_opened(l);
            }
        }
        let live = self.live();
        let (sent, received) = (live.sent.load(Ordering::Relaxed), live.received.load(Ordering::Relaxed));
        if self.tcp_metrics {
            self.metrics.conn_closed(&self.labels, sent, received);
            if let Some(v) = &self.peer_view {
                self.metrics.conn_closed(v, received, sent);
            }
        }
        let (i, l) = (self.info(), &self.labels);
        info!(target: "sluice::access", conn_id = live.id, direction = i.direction, path = i.path,
              pod = %i.pod, namespace = %i.namespace, src = %i.src, dst = %i.dst, sent, received,
              duration_ms = self.start.elapsed().as_millis() as u64, security = l.connection_security_policy,
              src_principal = %l.source_principal, dst_principal = %l.destination_principal,
              dst_service = %l.destination_service(), policy = %i.policy, flags = l.response_flags, error,
              "connection closed");
        (sent, received)
    }
}

impl Drop for ConnRecord {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Some("abandoned: its task ended before the connection closed".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn info() -> ConnInfo {
        crate::conn::registry::test_info("10.0.0.2:8080".parse().expect("addr"))
    }

    fn recorder() -> Arc<Recorder> {
        Recorder::new(Arc::new(Metrics::new()), Registry::new())
    }

    fn count(r: &Recorder, metric: &str, needle: &str) -> u64 {
        r.metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn labels() -> ConnLabels {
        ConnLabels::new("destination", "10.0.0.2:8080".parse().expect("addr"))
    }

    #[test]
    fn a_refusal_is_counted_and_unregistered_once() {
        let r = recorder();
        let rec = r.open(info(), labels());
        assert_eq!(r.registry().count(), 1);
        rec.refuse(Reason::Deny, "AuthorizationPolicy shop/deny");
        assert_eq!(r.registry().count(), 0);
        assert_eq!(count(&r, "istio_tcp_connections_opened_total", r#"response_flags="DENY""#), 1);
        assert_eq!(count(&r, "istio_tcp_connections_closed_total", r#"response_flags="DENY""#), 1);
        assert_eq!(count(&r, "sluice_proxy_failures_total", r#"reason="DENY""#), 1);
    }

    #[tokio::test]
    async fn a_carried_connection_counts_its_bytes_once() {
        let r = recorder();
        let rec = r.open(info(), labels());
        let live = rec.live().clone();
        let copy = async {
            live.sent.fetch_add(10, Ordering::Relaxed);
            live.received.fetch_add(20, Ordering::Relaxed);
            None
        };
        assert_eq!(rec.carry(copy).await, (10, 20));
        assert_eq!(r.registry().count(), 0);
        assert_eq!(count(&r, "istio_tcp_connections_opened_total", r#"response_flags="-""#), 1);
        assert_eq!(count(&r, "istio_tcp_connections_closed_total", r#"response_flags="-""#), 1);
        assert_eq!(count(&r, "istio_tcp_sent_bytes_total", ""), 10);
        assert_eq!(count(&r, "istio_tcp_received_bytes_total", ""), 20);
    }

    #[tokio::test]
    async fn a_close_from_the_registry_ends_the_copy_with_its_reason() {
        let r = recorder();
        let rec = r.open(info(), labels());
        let id = rec.live().id;
        let moved = Arc::new(AtomicU64::new(0));
        let m = moved.clone();
        let live = rec.live().clone();
        // A copy that never ends by itself.
        let copy = async move {
            live.sent.fetch_add(5, Ordering::Relaxed);
            m.store(1, Ordering::Relaxed);
            std::future::pending::<Option<String>>().await
        };
        let task = tokio::spawn(rec.carry(copy));
        while moved.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(r.registry().close(id, Reason::AdminClosed));
        let bytes = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        assert_eq!(bytes.expect("closed in time").expect("task"), (5, 0));
        assert_eq!(r.registry().count(), 0);
        assert_eq!(count(&r, "istio_tcp_connections_closed_total", r#"response_flags="admin_closed""#), 1);
    }

    #[test]
    fn a_dropped_record_still_counts_its_open_and_close_once() {
        let r = recorder();
        drop(r.open(info(), labels()));
        assert_eq!(r.registry().count(), 0);
        assert_eq!(count(&r, "istio_tcp_connections_opened_total", ""), 1);
        assert_eq!(count(&r, "istio_tcp_connections_closed_total", ""), 1);
    }

    #[tokio::test]
    async fn an_admin_close_flags_both_views_of_a_same_node_connection() {
        let r = recorder();
        let mut i = info();
        i.direction = "outbound";
        let mut rec = r.open(i, ConnLabels::new("source", "10.0.0.2:8080".parse().expect("addr")));
        rec.set_peer_view(labels());
        let id = rec.live().id;
        let task = tokio::spawn(rec.carry(std::future::pending()));
        tokio::task::yield_now().await;
        assert!(r.registry().close(id, Reason::AdminClosed));
        tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("closed").expect("task");
        for reporter in ["source", "destination"] {
            let needle = format!(r#"reporter="{reporter}""#);
            let closed: u64 = r
                .metrics()
                .render()
                .lines()
                .filter(|l| l.starts_with("istio_tcp_connections_closed_total") && l.contains(&needle))
                .filter(|l| l.contains(r#"response_flags="admin_closed""#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            assert_eq!(closed, 1, "{reporter}");
        }
    }

    #[test]
    fn the_peer_view_is_counted_beside_the_reporters_own() {
        let r = recorder();
        let mut i = info();
        i.direction = "outbound";
        let mut rec = r.open(i, ConnLabels::new("source", "10.0.0.2:8080".parse().expect("addr")));
        rec.set_peer_view(labels());
        rec.refuse(Reason::Deny, "AuthorizationPolicy shop/deny");
        assert_eq!(count(&r, "istio_tcp_connections_opened_total", r#"reporter="source""#), 1);
        assert_eq!(count(&r, "istio_tcp_connections_opened_total", r#"reporter="destination""#), 1);
        assert_eq!(count(&r, "sluice_proxy_failures_total", r#"direction="inbound""#), 1);
        assert_eq!(count(&r, "sluice_proxy_failures_total", r#"direction="outbound""#), 1);
    }
}
#[cfg(test)]
mod size_budget {
    use super::*;

    /// Every live connection holds its record's future: it must hold the copy once (boxed), not
    /// twice as an `async fn` taking it by value did (rust-lang/rust#62958).
    #[test]
    fn the_carry_future_holds_neither_the_copy_nor_the_record_twice() {
        let r = Recorder::new(Arc::new(Metrics::new()), Registry::new());
        let rec = r.open(
            crate::conn::registry::test_info("10.0.0.1:2".parse().expect("addr")),
            ConnLabels::new("destination", "10.0.0.1:2".parse().expect("addr")),
        );
        let copy = async {
            let buf = [0u8; 1000];
            tokio::task::yield_now().await;
            std::hint::black_box(&buf);
            None::<String>
        };
        let copy_size = std::mem::size_of_val(&copy);
        let f = rec.carry(copy);
        let size = std::mem::size_of_val(&f);
        assert!(size < copy_size, "the copy is boxed, not inline: {size} bytes");
        // 520 bytes measured with rustc 1.95: the record, the close watch and the select.
        assert!(size <= 2 * std::mem::size_of::<ConnRecord>(), "carry future grew to {size} bytes");
    }
}
