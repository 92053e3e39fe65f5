//! `sluice waypoint`: the optional L7 hop of Istio's ambient mode.
//!
//! A waypoint is declared by a Gateway of class `istio-waypoint`; workloads, Services or whole
//! namespaces opt in with the label `istio.io/use-waypoint: <gateway name>`, and node agents then
//! send their traffic to the waypoint over HBONE instead of to the destination. The waypoint
//! accepts HBONE on 15008 with its own SPIFFE identity (minted from the local CA), reads each
//! CONNECT stream as HTTP/1.1 or HTTP/2 (a Service port named `tcp*` is carried as opaque TCP),
//! applies L7 AuthorizationPolicy and VirtualService/DestinationRule, and forwards to the chosen
//! endpoint over HBONE presenting its own identity.
//!
//! - [`routes`]: route, destination and subset selection (pure functions of the snapshot).
//! - [`handler`]: the request pipeline.
//! - [`cors`]: a route's `corsPolicy`.
//! - [`jwt`]: RequestAuthentication (JWT verification); [`jwks`]: JWKS fetched from `jwksUri`.
//! - [`resilience`]: outlier detection and connection-pool limits (DestinationRule).
//! - [`upstream`]: endpoint choice, HBONE/TCP connections and HTTP connection reuse.
//! - [`trace`]: W3C trace context, a span per request.
//! - [`metrics`]: Istio's HTTP metrics with `reporter="waypoint"`.
//!
//! Which traffic is bound to a waypoint is decided in [`crate::config::waypoints`]. The waypoint
//! reads the same config source as the agents and owns no kernel state.
pub mod cors;
pub mod generate;
pub mod handler;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod resilience;
pub mod routes;
pub mod trace;
pub mod upstream;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::{
    cli::WaypointArgs,
    config::{self, SnapshotStore},
    identity::{Identity, tls::server_config},
    tunnel::{
        io::StreamIo,
        pool::Pool,
        server::{self, Targets},
    },
};

/// One waypoint process.
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    pub trust_domain: String,
    pub store: Arc<SnapshotStore>,
    pub upstreams: upstream::Upstreams,
    pub metrics: metrics::HttpMetrics,
    pub regexes: routes::RegexCache,
    pub jwks: jwt::KeyCache,
    pub remote_jwks: jwks::RemoteJwks,
    pub outliers: resilience::Outliers,
    pub pools: resilience::Pools,
    /// Bounds the mirrored copies in flight.
    pub mirrors: Arc<tokio::sync::Semaphore>,
}

/// Runs a waypoint until SIGTERM/SIGINT.
pub fn run(args: WaypointArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-waypoint")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: WaypointArgs) -> anyhow::Result<()> {
    // clap requires all three unless a subcommand (`generate`) is given.
    let (Some(config_path), Some(name), Some(namespace)) =
        (args.config.clone(), args.name.clone(), args.namespace.clone())
    else {
        anyhow::bail!("`sluice waypoint` needs --config, --name and --namespace");
    };
    // The same two config sources as the agent: a watched directory, or the Kubernetes API.
    let (snap, source) = config::source::load(&config_path).await?;
    if !snap.k8s_gateways.iter().any(|g| g.name == name && g.namespace == namespace && g.spec.is_waypoint()) {
        warn!(gateway = %name, namespace = %namespace,
              "no Gateway of class istio-waypoint with this name in the config yet; serving anyway (agents send traffic here only once it exists)");
    }
    let store = SnapshotStore::new(snap);
    let _watch = source.follow(store.clone())?;

    let certs = crate::identity::cert_manager(&args.identity)?;
    let sa = args.service_account.clone().unwrap_or_else(|| name.clone());
    if sa != name {
        warn!(service_account = %sa, gateway = %name,
              "agents expect a waypoint to present its Gateway's service account; they will refuse this identity");
    }
    let me = Identity::new(&args.identity.trust_domain, &namespace, &sa);
    let tls = server_config(&certs, &me).context("cannot build the waypoint's TLS configuration")?;
    let pool = Pool::new(certs.clone(), args.connect_timeout, Duration::from_secs(300));
    let wp = Arc::new(Waypoint {
        name: name.clone(),
        namespace: namespace.clone(),
        trust_domain: args.identity.trust_domain.clone(),
        store,
        upstreams: upstream::Upstreams::new(pool, me.clone(), args.connect_timeout),
        metrics: metrics::HttpMetrics::new(),
        regexes: routes::RegexCache::default(),
        jwks: jwt::KeyCache::default(),
        remote_jwks: jwks::RemoteJwks::new(args.jwks_ca.clone()),
        outliers: resilience::Outliers::default(),
        pools: resilience::Pools::default(),
        mirrors: Arc::new(tokio::sync::Semaphore::new(handler::MIRRORS_IN_FLIGHT)),
    });

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics_srv = serve_metrics(args.metrics_addr, wp.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let reaper = {
        let wp = wp.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                wp.upstreams.pool().reap_idle();
                // Endpoints that left the config take their per-endpoint state with them.
                let snap = wp.store.load();
                let live: std::collections::HashSet<std::net::IpAddr> = snap
                    .services
                    .values()
                    .flat_map(|s| s.endpoints.iter().copied())
                    .chain(snap.pods_by_ip.keys().copied())
                    .collect();
                wp.upstreams.prune(&live);
                wp.outliers.prune(&live);
            }
        })
    };
    info!(gateway = %name, namespace = %namespace, identity = %me, listen = %args.listen,
          metrics = %args.metrics_addr, "waypoint ready");
    let accept = {
        let wp = wp.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let wp = wp.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let td = wp.trust_domain.clone();
                    let w2 = wp.clone();
                    let r = server::serve_connection(
                        tcp,
                        tls,
                        &td,
                        Targets::Any,
                        std::future::pending(),
                        move |stream| {
                            tokio::spawn(w2.clone().stream(stream));
                        },
                    )
                    .await;
                    if let Err(e) = r {
                        warn!(target: "sluice::access", reporter = "waypoint", reason = e.response_flag(), error = %e, "HBONE connection refused");
                    }
                });
            }
        })
    };
    crate::agent::shutdown_signal().await;
    info!("waypoint shutting down");
    accept.abort();
    metrics_srv.abort();
    reaper.abort();
    Ok(())
}

impl Waypoint {
    /// Whether traffic to `target` is carried as opaque TCP: a Service port named `tcp` or
    /// `tcp-*` (Istio's explicit protocol selection). Everything else is served as HTTP.
    fn opaque(&self, target: SocketAddr) -> bool {
        let snap = self.store.load();
        snap.service_by_vip(target).is_some_and(|(_, p)| p.name == "tcp" || p.name.starts_with("tcp-"))
    }

    /// Whether `target` is bound to this waypoint: a Service VIP whose Service uses it, or the
    /// address of a workload that uses it for its own traffic. Anything else is refused, so the
    /// waypoint is never an open relay into the network.
    fn serves(&self, target: SocketAddr) -> bool {
        let snap = self.store.load();
        let me = |wp: crate::config::waypoints::WaypointRef| {
            wp.name == self.name && wp.namespace == self.namespace
        };
        match snap.service_by_vip(target) {
            Some((svc, _)) => snap.service_waypoint(svc).is_some_and(me),
            None => snap.workload_by_ip(target.ip()).and_then(|w| snap.workload_waypoint(w)).is_some_and(me),
        }
    }

    /// One CONNECT stream from an agent: HTTP (L7 pipeline) or opaque TCP to an endpoint.
    async fn stream(self: Arc<Self>, stream: server::Stream) {
        if !self.serves(stream.target) {
            warn!(target: "sluice::access", reporter = "waypoint", src = %stream.peer, target = %stream.target,
                  "CONNECT to a destination not bound to this waypoint refused");
            return stream.refuse(http::StatusCode::UNAUTHORIZED);
        }
        let conn = Arc::new(handler::Conn {
            peer: stream.peer.clone(),
            peer_addr: stream.peer_addr,
            target: stream.target,
        });
        let opaque = self.opaque(conn.target);
        if opaque && !self.tcp_allowed(&conn) {
            return stream.refuse(http::StatusCode::UNAUTHORIZED);
        }
        let (send, recv) = match stream.accept() {
            Ok(x) => x,
            Err(e) => return debug!(error = %e, "CONNECT stream ended before it was answered"),
        };
        let io = StreamIo::new(send, recv, ());
        if opaque {
            return self.tcp(conn, io).await;
        }
        let me = self.clone();
        let svc = service_fn(move |req| {
            let me = me.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(me.handle(conn, req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(64 * 1024)
            .header_read_timeout(Duration::from_secs(30))
            .timer(hyper_util::rt::TokioTimer::new());
        builder.http2().max_concurrent_streams(1000).max_header_list_size(64 * 1024);
        if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).await {
            debug!(error = %e, "HTTP connection ended");
        }
    }

    /// Whether the policies attached to this waypoint or the Service allow opaque TCP from the
    /// peer, with what is known at L4 (rules with HTTP-only fields never match an ALLOW and always
    /// match a DENY).
    fn tcp_allowed(&self, conn: &handler::Conn) -> bool {
        let snap = self.store.load();
        let service = snap.service_by_vip(conn.target).map(|(s, _)| s);
        let applicable = handler::policies(&snap, self, service);
        if applicable.is_empty() {
            return true;
        }
        let facts = crate::policy::Facts {
            identity: Some(&conn.peer),
            src_ip: conn.peer_addr.ip(),
            dst: conn.target,
            http: None,
        };
        let verdict = crate::policy::decide(&applicable, &facts);
        if !verdict.allowed() {
            warn!(target: "sluice::access", reporter = "waypoint", src = %conn.peer, dst = %conn.target,
                  policy = %verdict.policy(), "TCP connection denied");
        }
        verdict.allowed()
    }

    /// Opaque TCP through the waypoint: the VirtualService's `tcp` route (weighted destinations and
    /// subsets) or else the Service itself; the next endpoint; bytes copied both ways.
    async fn tcp(self: Arc<Self>, conn: Arc<handler::Conn>, mut io: StreamIo<()>) {
        let snap = self.store.load();
        let v6 = conn.target.is_ipv6();
        let ep = match snap.service_by_vip(conn.target) {
            Some((svc, port)) => {
                let source = snap.workload_by_ip(conn.peer_addr.ip());
                let (host, vs_ns, dport, subset) = match routes::select_tcp(
                    &snap,
                    svc,
                    conn.target,
                    source,
                    &conn.peer.namespace,
                ) {
                    Some((r, ns)) => {
                        match routes::pick_by_weight(&r.route, |d| d.weight, |n| fastrand::u64(..n)) {
                            Some(d) => (
                                d.destination.host.clone(),
                                ns.to_string(),
                                d.destination
                                    .port
                                    .as_ref()
                                    .and_then(|p| p.number)
                                    .and_then(|n| u16::try_from(n).ok()),
                                d.destination.subset.clone(),
                            ),
                            None => {
                                return warn!(target: "sluice::access", reporter = "waypoint", service = %svc.hostname(), "TCP route without a destination");
                            }
                        }
                    }
                    None => (svc.hostname(), svc.namespace.clone(), None, None),
                };
                let target = match routes::resolve_target(
                    &snap,
                    &host,
                    &vs_ns,
                    dport,
                    port.port,
                    subset.as_deref(),
                    v6,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        return warn!(target: "sluice::access", reporter = "waypoint", error = %e, "no TCP upstream");
                    }
                };
                let key = format!(
                    "{}/{}/{}/tcp",
                    target.service.namespace,
                    target.service.name,
                    subset.as_deref().unwrap_or("")
                );
                match self.upstreams.choose(
                    &key,
                    &target.endpoints,
                    target.target_port,
                    target.load_balancer(),
                    None,
                ) {
                    Some(ip) => self.upstreams.endpoint(&snap, ip, target.target_port),
                    None => {
                        return warn!(target: "sluice::access", reporter = "waypoint", service = %svc.hostname(), "no endpoints for TCP");
                    }
                }
            }
            None => self.upstreams.endpoint(&snap, conn.target.ip(), conn.target.port()),
        };
        match self.upstreams.open(&ep).await {
            Ok(mut up) => {
                let r = tokio::io::copy_bidirectional(&mut io, &mut up).await;
                debug!(endpoint = %ep.addr, result = ?r, "TCP through the waypoint ended");
            }
            Err(e) => {
                warn!(target: "sluice::access", reporter = "waypoint", endpoint = %ep.addr, error = %e, "TCP upstream failed")
            }
        }
    }
}

/// `/stats/prometheus` and `/healthz/ready` for the waypoint.
async fn serve_metrics(addr: SocketAddr, wp: Arc<Waypoint>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let wp = wp.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let wp = wp.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/stats/prometheus" | "/metrics" => (200, wp.metrics.render()),
                            "/healthz/ready" => (200, "ready\n".to_string()),
                            _ => (404, "not found\n".to_string()),
                        };
                        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() =
                            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    }))
}
