//! Readiness, metrics and admin HTTP endpoints, on two listeners: the metrics surface
//! (`--metrics-addr`, scraped from outside the node: `/healthz/ready`, `/stats/prometheus`) and the
//! admin surface (`--admin-addr`, loopback by default: `/debug/pods`, `/debug/config_dump`,
//! `/debug/connections` and `POST /debug/connections/close?id=N`, plus the metrics paths), so pod
//! inventories and connection control are never exposed to the network by default.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::debug;

use crate::{
    config::SnapshotStore,
    conn::Registry,
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

/// Binds `addr` and serves `surface` until the returned task is aborted.
pub async fn serve(addr: SocketAddr, state: State, surface: Surface) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(req, &state, surface).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(error = %e, "admin connection");
                }
            });
        }
    }))
}

async fn route(req: Request<Incoming>, s: &State, surface: Surface) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if surface == Surface::Ready && path != "/healthz/ready" {
        return text(StatusCode::NOT_FOUND, "only /healthz/ready is served here\n".into());
    }
    let admin_only = path.starts_with("/debug/") || matches!(path, "/pods" | "/config_dump" | "/certs");
    if surface == Surface::Metrics && admin_only {
        return text(
            StatusCode::NOT_FOUND,
            "debug endpoints are served on the admin address (--admin-addr)\n".into(),
        );
    }
    match path {
        "/healthz/ready" => text(StatusCode::OK, "ready\n".into()),
        "/stats/prometheus" | "/metrics" => {
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
        "/debug/pods" | "/pods" => json(&s.pods.pods_json().await),
        "/debug/connections" => json(&serde_json::json!({
            "count": s.connections.count(),
            "connections": s.connections.list(),
        })),
        "/debug/connections/close" => close_connection(&req, &s.connections),
        "/debug/config_dump" | "/config_dump" => {
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
        "/debug/certs" | "/certs" => json(&s.certs.status()),
        "/debug/agent" => json(&serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "layout": sluice_common::LAYOUT_VERSION,
        })),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz/ready, /stats/prometheus, /debug/pods, /debug/connections, /debug/config_dump\n".into(),
        ),
    }
}

/// `POST /debug/connections/close?id=N`: closes one live connection (its access log and metrics
/// say `admin_closed`). POST only, so a crawler or a stray GET never closes anything.
fn close_connection(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /debug/connections/close?id=N\n".into());
    }
    if !from_a_local_tool(req) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: a request with an Origin header or a Host other than localhost/127.0.0.1/[::1] \
             (a web page, or DNS rebinding) may not close connections\n"
                .into(),
        );
    }
    let id = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))
        .and_then(|v| v.parse::<u64>().ok());
    let Some(id) = id else {
        return text(
            StatusCode::BAD_REQUEST,
            "query parameter id (a number from /debug/connections) is missing or not a number\n".into(),
        );
    };
    if registry.close(id, Reason::AdminClosed) {
        text(StatusCode::OK, format!("closing connection {id}\n"))
    } else {
        text(StatusCode::NOT_FOUND, format!("no live connection {id} (see /debug/connections)\n"))
    }
}

/// Whether a state-changing request comes from a tool on the node (curl, `sluice`), not from a
/// browser page: no `Origin` header, and a loopback `Host` (what DNS rebinding cannot forge).
fn from_a_local_tool(req: &Request<Incoming>) -> bool {
    if req.headers().contains_key(header::ORIGIN) {
        return false;
    }
    let Some(host) = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()) else {
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
