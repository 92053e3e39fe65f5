//! The per-pod listeners' accept loops and the connections they carry.
//!
//! - outbound (15001): destinations inside the mesh (a workload of an enrolled pod, directly or
//!   behind a Service VIP) are carried over HBONE to the destination pod's 15008; anything else
//!   passes through as plain TCP re-originated from inside the source pod's netns.
//! - inbound plaintext (15006): delivered to the application from inside the pod's netns.
//! - HBONE (15008): mTLS from other agents; each CONNECT stream is delivered to the application
//!   from the source pod's address.
//!
//! Every connection is counted with Istio's TCP metrics and logged on the `sluice::access` target.
mod copy;
mod hbone;
mod inbound;
mod local;
mod outbound;
mod pipe;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sluice_common::{INBOUND_CAPTURE_PORT, INBOUND_HBONE_PORT, OUTBOUND_CAPTURE_PORT};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::{info, warn};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use parking_lot::Mutex;
use rustls::ServerConfig;

use crate::{
    config::{Service, SnapshotStore},
    identity::{Identity, certs::CertManager},
    redirect::{Kernel, NetNs, inpod::Role},
    telemetry::metrics::{ConnLabels, Metrics},
    tunnel::pool::{Pool, StreamGuard},
};

/// What the proxy knows about the pod a listener belongs to.
#[derive(Debug)]
pub struct PodCtx {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub trust_domain: String,
    pub netns: Arc<NetNs>,
    pub netns_cookie: u64,
    /// Inbound connections reach the app from the original client's address (the pod's delivery
    /// policy route is in place); otherwise from the pod's own address.
    pub transparent: bool,
    /// TLS server config presenting this pod's identity on 15008.
    pub tls: Arc<ServerConfig>,
    /// The pod's addresses (the same-node fast path delivers from them).
    pub ips: Vec<std::net::IpAddr>,
}

impl PodCtx {
    /// This pod as the current snapshot describes it (labels drive policy selectors); a bare entry
    /// when the config does not list it.
    pub fn workload<'s>(
        &self,
        snap: &'s crate::config::Snapshot,
    ) -> std::borrow::Cow<'s, crate::config::model::PodEntry> {
        match snap.pods.get(&(self.namespace.clone(), self.name.clone())) {
            Some(w) => std::borrow::Cow::Borrowed(w),
            None => std::borrow::Cow::Owned(crate::config::model::PodEntry {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                service_account: self.service_account.clone(),
                ..Default::default()
            }),
        }
    }

    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The pod's SPIFFE identity.
    pub fn principal(&self) -> String {
        self.identity().to_string()
    }
}

/// Shared by every pod's listeners.
pub struct Proxy {
    pub kernel: Arc<Kernel>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<SnapshotStore>,
    pub certs: Arc<CertManager>,
    pub pool: Pool,
    pub connect_timeout: Duration,
    /// Round-robin position per Service.
    rr: Mutex<std::collections::HashMap<(String, String), usize>>,
    /// Pods enrolled on this node by address: the same-node fast path ([`local`]).
    local: parking_lot::RwLock<std::collections::HashMap<std::net::IpAddr, Arc<PodCtx>>>,
    /// Connections (and HBONE streams) being carried now; an agent that handed over drains them.
    active: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the agent drains: HBONE connections get a GOAWAY so peers open new ones elsewhere.
    drain: tokio::sync::watch::Sender<bool>,
}

/// Counts one carried connection while it lives.
pub(crate) struct ActiveGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The far side of a captured connection once it is connected.
pub enum Upstream {
    Tcp(TcpStream),
    Tunnel(SendStream<Bytes>, RecvStream, StreamGuard),
}

/// Why a captured connection was dropped or failed; one label value per reason
/// (`sluice_proxy_failures_total{reason}`) and one access-log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No original destination recorded for an outbound connection.
    NoOriginalDst,
    /// The original destination is one of the agent's own ports (a loop).
    Loop,
    /// Connecting to the destination failed or was refused.
    ConnectFailed,
    /// Connecting to the destination timed out.
    ConnectTimeout,
    /// Could not create a socket in the pod's network namespace.
    Socket,
    /// A Service VIP with no endpoints: the client's connection fails at once.
    NoEndpoints,
    /// Plaintext to a port whose PeerAuthentication mode is STRICT.
    MtlsRequired,
    /// An AuthorizationPolicy denied the connection (Istio's response flag).
    Deny,
}

impl Failure {
    pub const ALL: [Failure; 8] = [
        Failure::NoOriginalDst,
        Failure::Loop,
        Failure::ConnectFailed,
        Failure::ConnectTimeout,
        Failure::Socket,
        Failure::NoEndpoints,
        Failure::MtlsRequired,
        Failure::Deny,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::NoOriginalDst => "no_original_dst",
            Failure::Loop => "loop",
            Failure::ConnectFailed => "connect_failed",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Socket => "socket",
            Failure::NoEndpoints => "no_endpoints",
            Failure::MtlsRequired => "mtls_required",
            Failure::Deny => "DENY",
        }
    }
}

/// Which way a captured connection goes, as metrics and access logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

fn is_agent_port(addr: SocketAddr) -> bool {
    matches!(addr.port(), OUTBOUND_CAPTURE_PORT | INBOUND_CAPTURE_PORT | INBOUND_HBONE_PORT)
}

impl Proxy {
    pub fn new(
        kernel: Arc<Kernel>,
        metrics: Arc<Metrics>,
        store: Arc<SnapshotStore>,
        certs: Arc<CertManager>,
        pool: Pool,
        connect_timeout: Duration,
    ) -> Proxy {
        Proxy {
            kernel,
            metrics,
            store,
            certs,
            pool,
            connect_timeout,
            rr: Mutex::new(Default::default()),
            local: Default::default(),
            active: Default::default(),
            drain: tokio::sync::watch::channel(false).0,
        }
    }

    pub(crate) fn track(&self) -> ActiveGuard {
        self.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveGuard(self.active.clone())
    }

    /// Connections and HBONE streams being carried now.
    pub fn active(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts draining: HBONE connections are told (GOAWAY) to take no new streams; streams and
    /// connections already carried go on.
    pub fn begin_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Resolves once [`Proxy::begin_drain`] was called.
    pub(crate) fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.drain.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// Waits until every carried connection has ended or `deadline` passed; returns how many were
    /// still open.
    pub async fn drained(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        while self.active() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.active()
    }

    /// Picks the next endpoint of `svc` round robin, preferring the VIP's address family.
    fn pick_endpoint(&self, svc: &Service, v6: bool) -> Option<std::net::IpAddr> {
        let same: Vec<_> = svc.endpoints.iter().filter(|ip| ip.is_ipv6() == v6).collect();
        let pool: Vec<_> = if same.is_empty() { svc.endpoints.iter().collect() } else { same };
        if pool.is_empty() {
            return None;
        }
        let mut rr = self.rr.lock();
        let n = rr.entry((svc.namespace.clone(), svc.name.clone())).or_default();
        let ip = *pool[*n % pool.len()];
        *n = n.wrapping_add(1);
        Some(ip)
    }

    /// Starts the accept loop of each listener; abort the handles to stop accepting (connections
    /// already accepted keep running in their own tasks).
    pub fn spawn(
        self: &Arc<Self>,
        pod: Arc<PodCtx>,
        listeners: Vec<(Role, TcpListener)>,
    ) -> Vec<JoinHandle<()>> {
        listeners
            .into_iter()
            .map(|(role, l)| {
                let me = self.clone();
                let pod = pod.clone();
                tokio::spawn(async move { me.accept_loop(role, l, pod).await })
            })
            .collect()
    }

    /// Carries one captured connection once its other side is connected (or failed): metrics,
    /// byte copying, access log. The one place both directions share.
    #[allow(clippy::too_many_arguments, reason = "each argument is one fact of the connection")]
    async fn carry(
        &self,
        dir: Direction,
        pod: &PodCtx,
        src: SocketAddr,
        dst: SocketAddr,
        mut labels: ConnLabels,
        client: TcpStream,
        other: Result<Upstream, (&'static str, String)>,
    ) -> (u64, u64) {
        let other = match other {
            Ok(s) => s,
            Err((reason, detail)) => {
                // The client sees a reset, not a silent close.
                let _ = client.set_zero_linger();
                self.metrics.failure(dir.label(), reason);
                labels.response_flags = reason.to_string();
                self.metrics.conn_opened(&labels);
                self.metrics.conn_closed(&labels, 0, 0);
                warn!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
                      %src, %dst, reason, detail, security = labels.connection_security_policy,
                      dst_principal = %labels.destination_principal, "connection failed");
                return (0, 0);
            }
        };
        self.metrics.conn_opened(&labels);
        let start = std::time::Instant::now();
        let (sent, received, err) = match other {
            Upstream::Tcp(s) => copy::splice(client, s).await,
            Upstream::Tunnel(send, recv, _guard) => crate::tunnel::copy::splice(client, send, recv).await,
        };
        self.metrics.conn_closed(&labels, sent, received);
        info!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
              %src, %dst, sent, received, duration_ms = start.elapsed().as_millis() as u64,
              security = labels.connection_security_policy, src_principal = %labels.source_principal,
              dst_principal = %labels.destination_principal, dst_service = %labels.destination_service,
              error = err, "connection closed");
        (sent, received)
    }

    async fn accept_loop(self: Arc<Self>, role: Role, listener: TcpListener, pod: Arc<PodCtx>) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // Accepted sockets do not inherit TCP_NODELAY: without it, small writes (a
                    // request, a TLS record, an h2 frame) wait for the peer's delayed ACK (~40 ms).
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!(pod = %pod.name, error = %e, "cannot set TCP_NODELAY");
                    }
                    let me = self.clone();
                    let pod = pod.clone();
                    let guard = self.track();
                    tokio::spawn(async move {
                        let _guard = guard;
                        match role {
                            Role::Outbound => me.outbound(stream, peer, pod).await,
                            Role::Inbound => me.inbound(stream, peer, pod).await,
                            Role::Hbone => me.hbone(stream, pod).await,
                        }
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    warn!(pod = %pod.name, namespace = %pod.namespace, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ports_are_loops() {
        assert!(is_agent_port("10.0.0.1:15001".parse().expect("addr")));
        assert!(is_agent_port("10.0.0.1:15006".parse().expect("addr")));
        assert!(is_agent_port("[fd00::1]:15008".parse().expect("addr")));
        assert!(!is_agent_port("10.0.0.1:8080".parse().expect("addr")));
    }

    #[test]
    fn failure_labels_are_unique() {
        let mut labels: Vec<&str> = Failure::ALL.iter().map(|f| f.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Failure::ALL.len());
    }
}
