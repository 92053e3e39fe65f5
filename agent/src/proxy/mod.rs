//! The per-pod listeners' accept loops and the connections they carry.
//!
//! - outbound (15001): destinations inside the mesh (a workload of an enrolled pod, directly or
//!   behind a Service VIP) are carried over HBONE to the destination pod's 15008; anything else
//!   passes through as plain TCP re-originated from inside the source pod's netns.
//! - inbound plaintext (15006): delivered to the application from inside the pod's netns.
//! - HBONE (15008): mTLS from other agents; each CONNECT stream is delivered to the application
//!   from the source pod's address.
//!
//! Every connection is admitted by the one gate ([`crate::policy::admission`]) and has one
//! connection record ([`crate::conn`]) that registers it, counts Istio's TCP metrics and writes its
//! access log; nothing in this module counts or logs a connection itself.
mod copy;
mod hbone;
mod inbound;
mod local;
mod outbound;
mod pipe;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::warn;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use parking_lot::Mutex;
use rustls::ServerConfig;

use crate::{
    config::{Service, SnapshotStore},
    conn::{ConnInfo, ConnRecord, Recorder, Registry, labels::LabelCache},
    identity::{Identity, certs::CertManager},
    limits::{
        accept::AcceptBackoff,
        caps::{Ask, Caps, Class, Limiter, Permit},
    },
    redirect::{Kernel, NetNs, inpod::Role},
    telemetry::{
        metrics::{ConnLabels, Metrics},
        reason::Reason,
    },
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
    /// The name and namespace as connection records name the pod (shared, not copied).
    pub pod_name: Arc<str>,
    pub pod_namespace: Arc<str>,
    /// The pod's SPIFFE principal, shared by its connection records.
    pub principal: Arc<str>,
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

    /// The shared Istio labels of this pod; `workload` is [`PodCtx::workload`] of `snap`.
    pub fn peer(
        &self,
        snap: &Arc<crate::config::Snapshot>,
        workload: &crate::config::model::PodEntry,
        cache: &LabelCache,
    ) -> crate::conn::labels::Peer {
        let mut p = cache.peer(snap, workload);
        // The identity is the one this agent assigned to the pod (its certificate's).
        p.principal = self.principal.clone();
        p
    }
}

/// Shared by every pod's listeners.
pub struct Proxy {
    pub kernel: Arc<Kernel>,
    /// Every connection's record reports here (metrics, access log, live registry).
    pub recorder: Arc<Recorder>,
    /// Istio labels shared per workload.
    labels: LabelCache,
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
    /// Connection caps (per pod, per source, the node's budget), taken at accept.
    limiter: Arc<Limiter>,
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

/// Why carrying failed, with what the operator needs to know.
type Failed = (Reason, String);

impl Proxy {
    #[allow(clippy::too_many_arguments, reason = "each argument is a shared service of the proxy")]
    pub fn new(
        caps: Caps,
        kernel: Arc<Kernel>,
        metrics: Arc<Metrics>,
        store: Arc<SnapshotStore>,
        certs: Arc<CertManager>,
        pool: Pool,
        connect_timeout: Duration,
        trust_domain: &str,
    ) -> Proxy {
        Proxy {
            kernel,
            recorder: Recorder::new(metrics, Registry::new()),
            labels: LabelCache::new(trust_domain),
            store,
            certs,
            pool,
            connect_timeout,
            rr: Mutex::new(Default::default()),
            local: Default::default(),
            active: Default::default(),
            drain: tokio::sync::watch::channel(false).0,
            limiter: Limiter::new(caps),
        }
    }

    /// The connection caps and what is counted against them.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Takes what a new connection (or HBONE stream) of `pod` from `src` needs from the caps, or
    /// counts and logs the refusal (the caller then closes it at once).
    fn admit_load(
        &self,
        path: &'static str,
        class: Class,
        fds: usize,
        pod: &PodCtx,
        per_pod: bool,
        src: SocketAddr,
    ) -> Option<Permit> {
        // A captured outbound connection comes from the pod itself: no per-source cap for it.
        let outbound = path == "outbound";
        let ask = Ask {
            class,
            fds,
            pod: per_pod.then_some(pod.netns_cookie),
            source: (!outbound).then_some(src.ip()),
        };
        match self.limiter.acquire(ask) {
            Ok(p) => Some(p),
            Err(refused) => {
                let direction = if outbound { "outbound" } else { "inbound" };
                self.recorder.overloaded(direction, path, (&pod.name, &pod.namespace), src, refused);
                None
            }
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

    /// The registry of the connections this agent carries now.
    pub fn registry(&self) -> &Arc<Registry> {
        self.recorder.registry()
    }

    /// Starts the record of a connection of `pod`.
    #[allow(clippy::too_many_arguments, reason = "each argument is one fact of the connection")]
    fn record(
        &self,
        dir: Direction,
        path: &'static str,
        pod: &PodCtx,
        src: SocketAddr,
        dst: SocketAddr,
        labels: ConnLabels,
        policy: std::borrow::Cow<'static, str>,
    ) -> ConnRecord {
        let info = ConnInfo {
            direction: dir.label(),
            path,
            pod: pod.pod_name.clone(),
            namespace: pod.pod_namespace.clone(),
            src,
            dst,
            src_principal: labels.source_principal.clone(),
            dst_principal: labels.destination_principal.clone(),
            policy,
        };
        self.recorder.open(info, labels)
    }

    /// Carries a captured connection once its other side is connected, or records why that
    /// failed (the client then sees a reset, not a silent close). Returns the bytes moved.
    async fn carry(&self, rec: ConnRecord, client: TcpStream, other: Result<Upstream, Failed>) -> (u64, u64) {
        let other = match other {
            Ok(s) => s,
            Err((reason, detail)) => {
                let _ = client.set_zero_linger();
                rec.refuse(reason, &detail);
                return (0, 0);
            }
        };
        let live = rec.live().clone();
        match other {
            Upstream::Tcp(s) => {
                rec.carry(copy::splice(client, s, &live.sent, &live.received, live.stopped())).await
            }
            Upstream::Tunnel(send, recv, _guard) => {
                let stop = live.stopped();
                rec.carry(crate::tunnel::copy::splice(client, send, recv, &live.sent, &live.received, stop))
                    .await
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, role: Role, listener: TcpListener, pod: Arc<PodCtx>) {
        let name = match role {
            Role::Outbound => "outbound",
            Role::Inbound => "inbound",
            Role::Hbone => "hbone",
        };
        let mut backoff = AcceptBackoff::new(name, Some(self.recorder.metrics().accept_errors(name)));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => {
                    backoff.succeeded();
                    x
                }
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            };
            // The caps first, before anything is allocated for the connection. Outbound
            // connections are the pod's own: they count against the budget and the pod's cap
            // (so one pod cannot take the whole budget), not against a source. An HBONE connection
            // counts against its source, and in the handshake share until its TLS verified the peer
            // (anyone reaching the pod's address can open one); each stream against the pod too.
            let permit = match role {
                Role::Outbound => self.admit_load("outbound", Class::Mesh, 2, &pod, true, peer),
                Role::Inbound => self.admit_load("inbound", Class::Plaintext, 2, &pod, true, peer),
                Role::Hbone => self.admit_load("hbone", Class::Handshake, 1, &pod, false, peer),
            };
            let Some(permit) = permit else {
                // A reset, at once: the client learns now, and no state is kept for it.
                let _ = stream.set_zero_linger();
                continue;
            };
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
                    Role::Outbound => {
                        let _permit = permit;
                        me.outbound(stream, peer, pod).await
                    }
                    Role::Inbound => {
                        let _permit = permit;
                        me.inbound(stream, peer, pod).await
                    }
                    Role::Hbone => me.hbone(stream, pod, permit).await,
                }
            });
        }
    }
}
