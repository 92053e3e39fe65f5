//! Readiness, metrics and admin HTTP endpoints, on two listeners: the metrics surface
//! (`--metrics-addr`, scraped from outside the node: `/healthz/ready`, `/stats/prometheus`) and the
//! admin surface (`--admin-addr`, loopback by default: `/debug/pods`, `/debug/config_dump`,
//! `/debug/connections` and `POST /debug/connections/close?id=N`, plus the metrics paths), so pod
//! inventories and connection control are never exposed to the network by default.
//!
//! Every listener is bounded ([`serve_http`]): a connection with no request in progress is closed
//! after 10 s, at most 64 connections are open at once (the one idle longest makes room for a
//! new one), and accept errors back off instead of spinning.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::debug;

use crate::{
    config::SnapshotStore,
    conn::Registry,
    limits::accept::AcceptBackoff,
    redirect::Kernel,
    telemetry::{metrics::Metrics, reason::Reason},
};

/// The pod inventory `/debug/pods` serves, as JSON; the agent's pod registry implements it (the
/// admin module sits below the agent and does not know its types).
pub trait Inventory: Send + Sync {
    fn pods_json(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>>;
}

/// What the endpoints read.
#[derive(Clone)]
pub struct State {
    pub metrics: Arc<Metrics>,
    pub kernel: Arc<Kernel>,
    pub pods: Arc<dyn Inventory>,
    /// The connections the agent carries now (`/debug/connections`).
    pub connections: Arc<Registry>,
    pub store: Arc<SnapshotStore>,
    pub certs: Arc<crate::identity::certs::CertManager>,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Readiness only (`--ready-addr`, Istio's 15021).
    Ready,
    Metrics,
    Admin,
}

/// Longest a connection may go without a request in progress (sending nothing, sending headers
/// slowly, or idle between keep-alive requests) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of one HTTP listener (admin, metrics, readiness; the waypoint's metrics).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Concurrent connections; at the cap the connection idle longest is closed to make room,
    /// and a new connection is refused only when every connection has a request in progress.
    pub max_connections: usize,
    /// See [`IDLE_TIMEOUT`]; also hyper's header-read timeout.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: crate::limits::caps::DEFAULT_ADMIN_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Binds `addr` and serves `surface` until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    state: State,
    surface: Surface,
    limits: HttpLimits,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let name = match surface {
        Surface::Ready => "ready",
        Surface::Metrics => "metrics",
        Surface::Admin => "admin",
    };
    let metrics = state.metrics.clone();
    Ok(tokio::spawn(serve_http(listener, name, limits, metrics, move |req| {
        let state = state.clone();
        async move { route(req, &state, surface).await }
    })))
}

/// One open connection of an HTTP listener.
struct HttpConn {
    /// A request is being answered.
    busy: std::sync::atomic::AtomicBool,
    /// When the last request was answered (or the connection accepted).
    last: parking_lot::Mutex<tokio::time::Instant>,
    /// A request was answered on it.
    used: std::sync::atomic::AtomicBool,
    /// Closes the connection (to make room for a new one).
    evict: tokio::sync::Notify,
}

/// The open connections of one listener, by when they were accepted.
#[derive(Default)]
struct HttpConns {
    next: u64,
    open: std::collections::BTreeMap<u64, Arc<HttpConn>>,
}

/// Serves HTTP/1 on `listener` with `handler`, within `limits`: accept errors back off
/// (`sluice_accept_errors_total{listener=name}`), idle connections are closed after the idle
/// timeout, and at the connection cap the connection idle longest makes room (so a readiness
/// probe still gets in while idle connections are held open); closes are counted in
/// `sluice_admin_connections_closed_total{listener=name, reason}`.
pub async fn serve_http<H, F>(
    listener: TcpListener,
    name: &'static str,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let conns = Arc::new(parking_lot::Mutex::new(HttpConns::default()));
    let mut backoff = AcceptBackoff::new(name, Some(metrics.accept_errors(name)));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let (id, conn) = {
            let mut c = conns.lock();
            if c.open.len() >= limits.max_connections {
                let idle = idle_longest(&c.open);
                match idle.and_then(|id| c.open.remove(&id)) {
                    Some(old) => {
                        old.evict.notify_one();
                        metrics.admin_closed(name, "evicted_idle");
                    }
                    None => {
                        drop(c);
                        metrics.admin_closed(name, "over_cap");
                        let _ = stream.set_zero_linger();
                        continue;
                    }
                }
            }
            c.next += 1;
            let conn = Arc::new(HttpConn {
                busy: false.into(),
                last: parking_lot::Mutex::new(tokio::time::Instant::now()),
                used: false.into(),
                evict: tokio::sync::Notify::new(),
            });
            let id = c.next;
            c.open.insert(id, conn.clone());
            (id, conn)
        };
        let (handler, conns, metrics) = (handler.clone(), conns.clone(), metrics.clone());
        tokio::spawn(async move {
            let c2 = conn.clone();
            let svc = service_fn(move |req| {
                let (handler, conn) = (handler.clone(), c2.clone());
                conn.busy.store(true, Ordering::Relaxed);
                async move {
                    let r = handler(req).await;
                    *conn.last.lock() = tokio::time::Instant::now();
                    conn.used.store(true, Ordering::Relaxed);
                    conn.busy.store(false, Ordering::Relaxed);
                    Ok::<_, Infallible>(r)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let mut served = std::pin::pin!(served);
            loop {
                let wait = if conn.busy.load(Ordering::Relaxed) {
                    limits.idle_timeout
                } else {
                    (*conn.last.lock() + limits.idle_timeout)
                        .saturating_duration_since(tokio::time::Instant::now())
                };
                tokio::select! {
                    r = served.as_mut() => {
                        match r {
                            // hyper's header-read timeout: the same idle close, counted the same.
                            Err(e) if e.is_timeout() => metrics.admin_closed(name, "idle_timeout"),
                            Err(e) => debug!(listener = name, error = %e, "HTTP connection"),
                            Ok(()) => {}
                        }
                        break;
                    }
                    () = conn.evict.notified() => break,
                    () = tokio::time::sleep(wait) => {
                        let idle = conn.last.lock().elapsed();
                        if !conn.busy.load(Ordering::Relaxed) && idle >= limits.idle_timeout {
                            metrics.admin_closed(name, "idle_timeout");
                            break;
                        }
                    }
                }
            }
            conns.lock().open.remove(&id);
        });
    }
}

/// The connection to close to make room: of those not answering a request, the one whose last
/// request (or accept) is oldest; of equals, one never used, then the one accepted first.
fn idle_longest(open: &std::collections::BTreeMap<u64, Arc<HttpConn>>) -> Option<u64> {
    open.iter()
        .filter(|(_, x)| !x.busy.load(Ordering::Relaxed))
        .min_by_key(|(id, x)| (*x.last.lock(), x.used.load(Ordering::Relaxed), **id))
        .map(|(id, _)| *id)
}

/// What a request asks for, decided from its head alone ([`endpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ready,
    Metrics,
    Pods,
    Connections,
    /// `POST /debug/connections/close?id=N` from a local tool.
    Close(u64),
    ConfigDump,
    Certs,
    Agent,
    /// Not served: the status and the message that says why.
    Refused(StatusCode, &'static str),
}

/// The endpoint a request head asks for on `surface`: readiness only on the readiness listener,
/// no debug endpoint on the metrics listener, and a connection closed only by a POST from a
/// local tool ([`from_a_local_tool`]) naming a numeric id.
pub fn endpoint(
    method: &hyper::Method,
    uri: &hyper::Uri,
    headers: &header::HeaderMap,
    surface: Surface,
) -> Endpoint {
    let path = uri.path();
    if surface == Surface::Ready && path != "/healthz/ready" {
        return Endpoint::Refused(StatusCode::NOT_FOUND, "only /healthz/ready is served here\n");
    }
    let admin_only = path.starts_with("/debug/") || matches!(path, "/pods" | "/config_dump" | "/certs");
    if surface == Surface::Metrics && admin_only {
        return Endpoint::Refused(
            StatusCode::NOT_FOUND,
            "debug endpoints are served on the admin address (--admin-addr)\n",
        );
    }
    match path {
        "/healthz/ready" => Endpoint::Ready,
        "/stats/prometheus" | "/metrics" => Endpoint::Metrics,
        "/debug/pods" | "/pods" => Endpoint::Pods,
        "/debug/connections" => Endpoint::Connections,
        "/debug/connections/close" => close_endpoint(method, uri, headers),
        "/debug/config_dump" | "/config_dump" => Endpoint::ConfigDump,
        "/debug/certs" | "/certs" => Endpoint::Certs,
        "/debug/agent" => Endpoint::Agent,
        _ => Endpoint::Refused(
            StatusCode::NOT_FOUND,
            "not found; try /healthz/ready, /stats/prometheus, /debug/pods, /debug/connections, /debug/config_dump\n",
        ),
    }
}

async fn route(req: Request<Incoming>, s: &State, surface: Surface) -> Response<Full<Bytes>> {
    match endpoint(req.method(), req.uri(), req.headers(), surface) {
        Endpoint::Refused(status, why) => text(status, why.into()),
        Endpoint::Ready => text(StatusCode::OK, "ready\n".into()),
        Endpoint::Metrics => {
            let totals: Vec<(&'static str, u64)> =
                s.kernel.counters().into_iter().map(|(d, v)| (d.label(), v)).collect();
            s.metrics.sync_redirect_counters(&totals);
            s.metrics.config_generation.set(s.store.generation() as i64);
            let rejections = s.store.rejections();
            s.metrics.config_rejections.set(rejections.total as i64);
            s.metrics.config_in_error.set(i64::from(rejections.current.is_some()));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for c in s.certs.status() {
                s.metrics
                    .cert_expiry_seconds
                    .with_label_values(&[&c.identity])
                    .set(c.expires_unix as i64 - now as i64);
            }
            text(StatusCode::OK, s.metrics.render())
        }
        Endpoint::Pods => json(&s.pods.pods_json().await),
        Endpoint::Connections => json(&serde_json::json!({
            "count": s.connections.count(),
            "connections": s.connections.list(),
        })),
        Endpoint::Close(id) => {
            if s.connections.close(id, Reason::AdminClosed) {
                text(StatusCode::OK, format!("closing connection {id}\n"))
            } else {
                text(StatusCode::NOT_FOUND, format!("no live connection {id} (see /debug/connections)\n"))
            }
        }
        Endpoint::ConfigDump => {
            let snap = s.store.load();
            let mut workloads: Vec<_> = snap.pods.values().collect();
            workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            let mut services: Vec<&crate::config::Service> = snap.services.values().map(|s| &**s).collect();
            services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            json(&serde_json::json!({
                "generation": s.store.generation(),
                "rejections": s.store.rejections(),
                "namespaces": snap.namespaces,
                "workloads": workloads,
                "services": services,
                "peer_authentications": snap.peer_authentications,
                "authorization_policies": snap.authorization_policies,
                "certificates": s.certs.status(),
            }))
        }
        Endpoint::Certs => json(&s.certs.status()),
        Endpoint::Agent => json(&serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "layout": sluice_common::LAYOUT_VERSION,
        })),
    }
}

/// `POST /debug/connections/close?id=N`: closes one live connection (its access log and metrics
/// say `admin_closed`). POST only, so a crawler or a stray GET never closes anything.
fn close_endpoint(method: &hyper::Method, uri: &hyper::Uri, headers: &header::HeaderMap) -> Endpoint {
    if method != hyper::Method::POST {
        return Endpoint::Refused(StatusCode::METHOD_NOT_ALLOWED, "use POST /debug/connections/close?id=N\n");
    }
    if !from_a_local_tool(headers) {
        return Endpoint::Refused(
            StatusCode::FORBIDDEN,
            "refused: a request with an Origin header or a Host other than localhost/127.0.0.1/[::1] \
             (a web page, or DNS rebinding) may not close connections\n",
        );
    }
    let id = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))
        .and_then(|v| v.parse::<u64>().ok());
    match id {
        Some(id) => Endpoint::Close(id),
        None => Endpoint::Refused(
            StatusCode::BAD_REQUEST,
            "query parameter id (a number from /debug/connections) is missing or not a number\n",
        ),
    }
}

/// Whether a state-changing request comes from a tool on the node (curl, `sluice`), not from a
/// browser page: no `Origin` header, and a loopback `Host` (what DNS rebinding cannot forge).
pub fn from_a_local_tool(headers: &header::HeaderMap) -> bool {
    if headers.contains_key(header::ORIGIN) {
        return false;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((n, port)) if !host.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => n,
        _ => host,
    };
    matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

fn json<T: serde::Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => {
            let mut r = Response::new(Full::new(Bytes::from(b)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("serialization failed: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Serves `/healthz/ready`; a request to `/hold` stays in progress until `release` is notified.
    async fn server(limits: HttpLimits) -> (SocketAddr, Arc<Metrics>, Arc<tokio::sync::Notify>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let r = release.clone();
        tokio::spawn(serve_http(listener, "admin", limits, metrics.clone(), move |req| {
            let r = r.clone();
            async move {
                if req.uri().path() == "/hold" {
                    r.notified().await;
                }
                text(StatusCode::OK, "ready\n".into())
            }
        }));
        (addr, metrics, release)
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
        let mut buf = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits until the peer closes `s` (EOF or a reset); returns how long that took.
    async fn closed_after(s: &mut tokio::net::TcpStream) -> Duration {
        let t = Instant::now();
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "expected a close, got {r:?}");
        t.elapsed()
    }

    fn closes(m: &Metrics, reason: &str) -> u64 {
        m.render()
            .lines()
            .filter(|l| l.starts_with("sluice_admin_connections_closed_total") && l.contains(reason))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_half_a_request_is_closed_after_the_idle_timeout() {
        let idle = Duration::from_millis(300);
        let (addr, metrics, _) = server(HttpLimits { max_connections: 8, idle_timeout: idle }).await;
        let t = Instant::now();
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: loc").await.expect("half a request");
        for s in [&mut silent, &mut slow] {
            closed_after(s).await;
            let after = t.elapsed();
            assert!(after >= idle && after < Duration::from_secs(2), "closed after {after:?}");
        }
        // A keep-alive connection idle after its answer goes the same way.
        let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
        kept.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
        let mut buf = vec![0; 1024];
        let n = kept.read(&mut buf).await.expect("answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        closed_after(&mut kept).await;
        assert!(closes(&metrics, "idle_timeout") >= 1);
    }

    #[tokio::test]
    async fn idle_connections_over_the_cap_make_room_and_readiness_still_answers() {
        let limits = HttpLimits { max_connections: 4, idle_timeout: Duration::from_secs(30) };
        let (addr, metrics, release) = server(limits).await;
        // Twenty silent connections held open: the oldest are closed to make room for the newer.
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let ready = get(addr, "/healthz/ready").await.expect("readiness");
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert!(closes(&metrics, "evicted_idle") >= 17, "{}", metrics.render());
        closed_after(&mut held[0]).await;
        drop(held);
        // Four requests in progress: nothing can make room, a fifth connection is refused.
        let mut busy = Vec::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
            busy.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = get(addr, "/healthz/ready").await;
        assert!(!matches!(&refused, Ok(r) if r.starts_with("HTTP/1.1 200")), "{refused:?}");
        assert!(closes(&metrics, "over_cap") >= 1);
        release.notify_waiters();
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_longest_makes_room_not_the_oldest_accepted() {
        let limits = HttpLimits { max_connections: 2, idle_timeout: Duration::from_secs(30) };
        let (addr, metrics, _release) = server(limits).await;
        // A: accepted first, then used (a keep-alive scraper).
        let mut a = tokio::net::TcpStream::connect(addr).await.expect("a");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // B: accepted second, never sends anything: idle longest once A is used.
        let mut b = tokio::net::TcpStream::connect(addr).await.expect("b");
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
        let mut buf = vec![0; 1024];
        let n = a.read(&mut buf).await.expect("answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // C makes room: B goes, A stays open.
        let _c = tokio::net::TcpStream::connect(addr).await.expect("c");
        let b_read = tokio::time::timeout(Duration::from_secs(2), b.read(&mut buf)).await;
        assert!(matches!(b_read, Ok(Ok(0)) | Ok(Err(_))), "B, idle longest, is closed: {b_read:?}");
        let a_read = tokio::time::timeout(Duration::from_millis(300), a.read(&mut buf)).await;
        assert!(a_read.is_err(), "A, used last, stays open: {a_read:?}");
        assert_eq!(closes(&metrics, "evicted_idle"), 1);
    }
}
