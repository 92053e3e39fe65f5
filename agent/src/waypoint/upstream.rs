//! The waypoint's client side: picks an endpoint (the DestinationRule's load balancer), reaches it
//! over HBONE presenting the waypoint's own identity (or plain TCP for an endpoint outside the
//! mesh), and keeps HTTP connections per endpoint for reuse: idle HTTP/1.1 connections (bounded)
//! and one multiplexed HTTP/2 connection.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use sluice_common::INBOUND_HBONE_PORT;

use crate::{
    config::{
        EnrollDecision, Snapshot,
        kinds::destination_rule::{LoadBalancerSettings, SimpleLb},
    },
    identity::Identity,
    tunnel::{
        TunnelError,
        io::StreamIo,
        pool::{Pool, PoolKey},
    },
};

/// The body type the waypoint sends and answers with.
pub type Body = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An endpoint's HTTP/2 connection, behind an async lock held while it is dialled.
type H2Slot = Arc<tokio::sync::Mutex<Option<conn::http2::SendRequest<Body>>>>;

/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 32;

/// One endpoint to send a request to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `endpoint-ip:target-port`.
    pub addr: SocketAddr,
    /// The workload's identity when it is in the mesh (reached over HBONE); None: plain TCP.
    pub identity: Option<Identity>,
}

/// Why a request could not be sent (Envoy's response flags).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {0}: {1}")]
    Tunnel(SocketAddr, TunnelError),
    #[error("TCP connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TCP connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("HTTP to {0} failed: {1}")]
    Http(SocketAddr, hyper::Error),
}

impl UpstreamError {
    /// `UF` (upstream connection failure) or `UC` (upstream connection termination).
    pub fn flag(&self) -> &'static str {
        match self {
            UpstreamError::Http(..) => "UC",
            _ => "UF",
        }
    }

    /// Whether the request never reached the endpoint (safe to retry on `connect-failure`).
    pub fn is_connect_failure(&self) -> bool {
        !matches!(self, UpstreamError::Http(..))
    }
}

/// The waypoint's upstream connections.
pub struct Upstreams {
    hbone: Pool,
    me: Identity,
    connect_timeout: Duration,
    http1: Arc<Mutex<HashMap<Endpoint, Vec<conn::http1::SendRequest<Body>>>>>,
    /// One HTTP/2 connection per endpoint; the async lock makes concurrent first requests share
    /// one dial instead of each opening a connection.
    http2: Mutex<HashMap<Endpoint, H2Slot>>,
    /// Requests in flight per endpoint address (LEAST_REQUEST).
    active: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    /// Round-robin cursors per (service, subset).
    rr: Mutex<HashMap<String, usize>>,
}

/// Counts one request in flight to an endpoint while held.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstreams {
    pub fn new(hbone: Pool, me: Identity, connect_timeout: Duration) -> Upstreams {
        Upstreams {
            hbone,
            me,
            connect_timeout,
            http1: Arc::default(),
            http2: Mutex::default(),
            active: Mutex::default(),
            rr: Mutex::default(),
        }
    }

    /// The HBONE pool (for the idle reaper).
    pub fn pool(&self) -> &Pool {
        &self.hbone
    }

    /// Forgets per-endpoint state (idle connections, in-flight counters) of addresses that are no
    /// longer in `live`, so endpoints that come and go do not accumulate.
    pub fn prune(&self, live: &std::collections::HashSet<IpAddr>) {
        self.http1.lock().retain(|ep, _| live.contains(&ep.addr.ip()));
        self.http2.lock().retain(|ep, _| live.contains(&ep.addr.ip()));
        self.active.lock().retain(|a, n| live.contains(&a.ip()) || n.load(Ordering::Relaxed) > 0);
    }

    fn in_flight(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        self.active.lock().entry(addr).or_default().clone()
    }

    /// Chooses one of `ips` with the load balancer `lb` (ROUND_ROBIN by default; LEAST_REQUEST
    /// compares two random endpoints' requests in flight; RANDOM; consistentHash by `hash_key`).
    pub fn choose(
        &self,
        key: &str,
        ips: &[IpAddr],
        port: u16,
        lb: Option<&LoadBalancerSettings>,
        hash_key: Option<u64>,
    ) -> Option<IpAddr> {
        if ips.is_empty() {
            return None;
        }
        if let (Some(lb), Some(h)) = (lb, hash_key)
            && lb.consistent_hash.is_some()
        {
            return Some(ips[(h % ips.len() as u64) as usize]);
        }
        match lb.and_then(|l| l.simple) {
            Some(SimpleLb::Random) => Some(ips[fastrand::usize(..ips.len())]),
            Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) if ips.len() > 1 => {
                let (a, b) = (fastrand::usize(..ips.len()), fastrand::usize(..ips.len()));
                let load = |i: usize| self.in_flight(SocketAddr::new(ips[i], port)).load(Ordering::Relaxed);
                Some(ips[if load(b) < load(a) { b } else { a }])
            }
            _ => {
                let mut rr = self.rr.lock();
                let n = rr.entry(key.to_string()).or_default();
                let ip = ips[*n % ips.len()];
                *n = n.wrapping_add(1);
                Some(ip)
            }
        }
    }

    /// The endpoint for `ip:port`: over HBONE when the workload is enrolled in the mesh.
    pub fn endpoint(&self, snap: &Snapshot, ip: IpAddr, port: u16) -> Endpoint {
        let identity = snap
            .workload_by_ip(ip)
            .filter(|w| snap.enrollment(&w.namespace, &w.name) == EnrollDecision::Enrolled)
            .map(|w| Identity::new(&self.me.trust_domain, &w.namespace, &w.service_account));
        Endpoint { addr: SocketAddr::new(ip, port), identity }
    }

    /// A byte stream to `ep`: an HBONE CONNECT stream, or a TCP connection.
    pub async fn open(&self, ep: &Endpoint) -> Result<Io, UpstreamError> {
        match &ep.identity {
            Some(expected) => {
                let key = PoolKey {
                    src_pod: 0,
                    src: self.me.clone(),
                    dst: SocketAddr::new(ep.addr.ip(), INBOUND_HBONE_PORT),
                    expected: expected.clone(),
                };
                let (send, recv, guard) = self
                    .hbone
                    .connect(&key, None, ep.addr)
                    .await
                    .map_err(|e| UpstreamError::Tunnel(ep.addr, e))?;
                Ok(Io::Tunnel(StreamIo::new(send, recv, guard)))
            }
            None => match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(ep.addr))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Io::Tcp(s))
                }
                Ok(Err(e)) => Err(UpstreamError::Connect(ep.addr, e)),
                Err(_) => Err(UpstreamError::ConnectTimeout(ep.addr)),
            },
        }
    }

    /// Sends `req` to `ep` over a pooled or new connection of the request's HTTP version.
    pub async fn send(
        &self,
        ep: &Endpoint,
        req: Request<Body>,
        h2: bool,
    ) -> Result<(Response<Incoming>, InFlight), UpstreamError> {
        let counter = self.in_flight(ep.addr);
        counter.fetch_add(1, Ordering::Relaxed);
        let flight = InFlight(counter);
        let resp = if h2 { self.send_h2(ep, req).await? } else { self.send_h1(ep, req).await? };
        Ok((resp, flight))
    }

    async fn send_h2(&self, ep: &Endpoint, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let slot = self.http2.lock().entry(ep.clone()).or_default().clone();
        let mut sender = {
            let mut held = slot.lock().await;
            match held.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let io = self.open(ep).await?;
                    let (s, c) = conn::http2::Builder::new(TokioExecutor::new())
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|e| UpstreamError::Http(ep.addr, e))?;
                    tokio::spawn(async move {
                        let _ = c.await;
                    });
                    *held = Some(s.clone());
                    s
                }
            }
        };
        sender.ready().await.map_err(|e| UpstreamError::Http(ep.addr, e))?;
        sender.send_request(req).await.map_err(|e| UpstreamError::Http(ep.addr, e))
    }

    async fn send_h1(&self, ep: &Endpoint, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let pooled = {
            let mut m = self.http1.lock();
            let list = m.entry(ep.clone()).or_default();
            list.retain(|s| !s.is_closed());
            list.iter().position(|s| s.is_ready()).map(|i| list.swap_remove(i))
        };
        let mut sender = match pooled {
            Some(s) => s,
            None => {
                let io = self.open(ep).await?;
                let (s, c) = conn::http1::Builder::new()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| UpstreamError::Http(ep.addr, e))?;
                tokio::spawn(async move {
                    let _ = c.with_upgrades().await;
                });
                s
            }
        };
        sender.ready().await.map_err(|e| UpstreamError::Http(ep.addr, e))?;
        let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Http(ep.addr, e))?;
        self.recycle_h1(ep.clone(), sender, resp.status() == http::StatusCode::SWITCHING_PROTOCOLS);
        Ok(resp)
    }

    /// Returns an HTTP/1.1 connection to the idle list once its response body is done.
    fn recycle_h1(&self, ep: Endpoint, mut sender: conn::http1::SendRequest<Body>, upgraded: bool) {
        if upgraded {
            return; // the connection now belongs to the upgraded stream
        }
        // hyper keeps a connection busy until the previous response body was read; a task waits
        // for that and then offers it for reuse. Idle lists are re-checked on use, so one that
        // closes while idle costs nothing.
        let idle = Arc::downgrade(&self.http1);
        tokio::spawn(async move {
            if sender.ready().await.is_ok()
                && let Some(idle) = idle.upgrade()
            {
                let mut m = idle.lock();
                let list = m.entry(ep).or_default();
                if list.len() < IDLE_PER_ENDPOINT {
                    list.push(sender);
                }
            }
        });
    }
}

/// A byte stream to an endpoint.
pub enum Io {
    Tunnel(StreamIo<crate::tunnel::pool::StreamGuard>),
    Tcp(tokio::net::TcpStream),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tunnel(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
