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
//! - [`handler`]: one request's life (metrics, access-log line) and the pipeline's driver, which
//!   runs the named phases of [`phases`] top to bottom (docs/waypoint.md has the chart).
//! - Each stream is admitted by `crate::policy::admission` and has a connection record
//!   (`crate::conn`): registered live, counted and logged once.
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
pub mod phases;
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
    config::{self, SnapshotStore, waypoints::WaypointRef},
    conn::{ConnInfo, ConnRecord, Recorder, Registry},
    identity::{Identity, tls::server_config},
    limits::caps::{Ask, Class, Limiter, Permit},
    policy::admission::{self, ConnFacts, Decision, Path},
    telemetry::{
        metrics::{ConnLabels, Metrics, WorkloadLabels},
        reason::Reason,
    },
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
    /// This waypoint's Gateway.
    pub me: WaypointRef,
    /// The name and namespace as connection records name the waypoint (shared, not copied).
    pub record_name: (Arc<str>, Arc<str>),
    /// The waypoint's own SPIFFE principal.
    pub principal: Arc<str>,
    pub trust_domain: String,
    /// Every stream's record reports here (TCP metrics, access log, live registry).
    pub recorder: Arc<Recorder>,
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
    /// Connection caps: per source address and the process's descriptor budget (a waypoint has no
    /// pods of its own: the per-pod cap does not apply).
    pub limiter: Arc<Limiter>,
}

/// Runs a waypoint until SIGTERM/SIGINT.
pub fn run(args: WaypointArgs) -> anyhow::Result<()> {
    let nofile = crate::limits::raise_and_log();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-waypoint")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args, nofile))
}

async fn run_async(args: WaypointArgs, nofile: Option<u64>) -> anyhow::Result<()> {
    // clap requires all three unless a subcommand (`generate`) is given.
    let (Some(config_path), Some(name), Some(namespace)) =
        (args.config.clone(), args.name.clone(), args.namespace.clone())
    else {
        anyhow::bail!("`sluice waypoint` needs --config, --name and --namespace");
    };
    // The same two config sources as the agent: a watched directory, or the Kubernetes API.
    let (snap, source) = config::source::load(&config_path, args.config_limits.limits()).await?;
    if !snap.k8s_gateways.iter().any(|g| g.name == name && g.namespace == namespace && g.spec.is_waypoint()) {
        warn!(gateway = %name, namespace = %namespace,
              "no Gateway of class istio-waypoint with this name in the config yet; serving anyway (agents send traffic here only once it exists)");
    }
    let store = SnapshotStore::new(snap);
    let _watch = source.follow(store.clone())?;

    let certs = crate::identity::cert_manager(&args.identity.settings())?;
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
        me: WaypointRef { namespace: namespace.clone(), name: name.clone() },
        record_name: (name.as_str().into(), namespace.as_str().into()),
        principal: me.to_string().into(),
        trust_domain: args.identity.trust_domain.clone(),
        recorder: Recorder::new(Arc::new(Metrics::tcp_only()), Registry::new()),
        store,
        upstreams: upstream::Upstreams::new(pool, me.clone(), args.connect_timeout),
        metrics: metrics::HttpMetrics::new(),
        limiter: Limiter::new(args.caps.caps(nofile.unwrap_or(1024))),
        regexes: routes::RegexCache::default(),
        jwks: jwt::KeyCache::default(),
        remote_jwks: jwks::RemoteJwks::new(args.jwks_ca.clone()),
        outliers: resilience::Outliers::default(),
        pools: resilience::Pools::default(),
        mirrors: Arc::new(tokio::sync::Semaphore::new(handler::MIRRORS_IN_FLIGHT)),
    });

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics_srv = serve_metrics(args.metrics_addr, wp.clone(), args.caps.max_admin_conns)
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
            let errors = wp.recorder.metrics().accept_errors("hbone");
            let mut backoff = crate::limits::accept::AcceptBackoff::new("hbone", Some(errors));
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => {
                        backoff.succeeded();
                        x
                    }
                    Err(e) => {
                        backoff.failed(&e).await;
                        continue;
                    }
                };
                // Each connection counts against its source and the budget before TLS, in the
                // handshake share until the handshake verified the peer.
                let Some(mut permit) = wp.admit_load(peer, Class::Handshake) else {
                    let _ = tcp.set_zero_linger();
                    continue;
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
                        |_| permit.into_mesh(),
                        move |stream| {
                            // Each stream holds an upstream socket: its source's cap and the budget.
                            let Some(permit) = w2.admit_load(stream.peer_addr, Class::Mesh) else {
                                return stream.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                            };
                            let w2 = w2.clone();
                            tokio::spawn(async move {
                                let _permit = permit;
                                w2.stream(stream).await
                            });
                        },
                    )
                    .await;
                    if let Err(e) = r {
                        wp.recorder.handshake_refused(
                            "inbound",
                            &wp.name,
                            &wp.namespace,
                            e.peer(),
                            e.reason(),
                            &e,
                        );
                    }
                });
            }
        })
    };
    crate::shutdown::signal().await;
    info!("waypoint shutting down");
    accept.abort();
    metrics_srv.abort();
    reaper.abort();
    Ok(())
}

impl Waypoint {
    /// One CONNECT stream from an agent, admitted by the gate: HTTP (L7 pipeline, authorized per
    /// request) or opaque TCP to an endpoint.
    /// Takes a connection's or a stream's share of the caps, or counts and logs the refusal.
    fn admit_load(&self, src: SocketAddr, class: Class) -> Option<Permit> {
        let ask = Ask { class, fds: 1, pod: None, source: Some(src.ip()) };
        match self.limiter.acquire(ask) {
            Ok(p) => Some(p),
            Err(refused) => {
                let at = (&*self.record_name.0, &*self.record_name.1);
                self.recorder.overloaded("inbound", "waypoint", at, src, refused);
                None
            }
        }
    }

    async fn stream(self: Arc<Self>, stream: server::Stream) {
        let snap = self.store.load();
        let facts = ConnFacts {
            path: Path::Waypoint { waypoint: &self.me, peer: &stream.peer },
            src: stream.peer_addr.ip(),
            dst: stream.target,
            trust_domain: &self.trust_domain,
        };
        let decision = admission::admit(&snap, &facts);
        let opaque = admission::opaque_tcp(&snap, stream.target);
        let src_labels = match snap.workload_by_ip(stream.peer_addr.ip()) {
            Some(w) => Arc::new(WorkloadLabels::of(w)),
            None => WorkloadLabels::unknown_in(&stream.peer.namespace),
        };
        let mut labels =
            ConnLabels::new("waypoint", stream.target).source(src_labels, stream.peer.to_string().into());
        labels.connection_security_policy = "mutual_tls";
        if let Some((svc, _)) = snap.service_by_vip(stream.target) {
            labels = labels.service(svc);
        }
        if !opaque {
            labels.request_protocol = "http";
        }
        let info = ConnInfo {
            direction: "inbound",
            path: facts.path.label(),
            pod: self.record_name.0.clone(),
            namespace: self.record_name.1.clone(),
            src: stream.peer_addr,
            dst: stream.target,
            src_principal: labels.source_principal.clone(),
            dst_principal: self.principal.clone(),
            policy: decision.policy_label(),
        };
        let mut rec = self.recorder.open(info, labels);
        if !opaque {
            // HTTP is counted request by request (istio_requests_total), not as TCP.
            rec.count_tcp(false);
        }
        if let Decision::Refuse { reason, detail, .. } = decision {
            stream.refuse(reason.connect_status());
            return rec.refuse(reason, &detail);
        }
        let conn = Arc::new(handler::Conn {
            peer: stream.peer.clone(),
            peer_addr: stream.peer_addr,
            target: stream.target,
        });
        let (send, recv) = match stream.accept() {
            Ok(x) => x,
            Err(e) => {
                return rec
                    .refuse(Reason::Connect, &format!("the peer left before the stream was answered: {e}"));
            }
        };
        let io = crate::conn::counted::Counted::new(StreamIo::new(send, recv, ()), rec.live().clone());
        if opaque {
            return self.tcp(conn, io, rec).await;
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
        rec.carry(async move {
            let r = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).await;
            r.err().map(|e| {
                debug!(error = %e, "HTTP connection ended");
                e.to_string()
            })
        })
        .await;
    }

    /// Opaque TCP through the waypoint: the VirtualService's `tcp` route (weighted destinations and
    /// subsets) or else the Service itself; the next endpoint; bytes copied both ways.
    async fn tcp(
        self: Arc<Self>,
        conn: Arc<handler::Conn>,
        mut io: crate::conn::counted::Counted<StreamIo<()>>,
        rec: ConnRecord,
    ) {
        let snap = self.store.load();
        let v6 = conn.target.is_ipv6();
        let ep = match snap.service_by_vip(conn.target) {
            Some((svc, port)) => {
                let source = snap.workload_by_ip(conn.peer_addr.ip());
                let (host, vs_ns, dport, subset) =
                    match routes::select_tcp(&snap, svc, conn.target, source, &conn.peer.namespace) {
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
                                    let detail =
                                        format!("the TCP route for {} has no destination", svc.hostname());
                                    return rec.refuse(Reason::NoEndpoints, &detail);
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
                    Err(e) => return rec.refuse(Reason::NoEndpoints, &format!("no TCP upstream: {e}")),
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
                        return rec.refuse(
                            Reason::NoEndpoints,
                            &format!("service {} has no endpoints", svc.hostname()),
                        );
                    }
                }
            }
            None => self.upstreams.endpoint(&snap, conn.target.ip(), conn.target.port()),
        };
        match self.upstreams.open(&ep).await {
            Ok(mut up) => {
                // Bytes are counted as they pass (`Counted`), also when the copy ends in an error.
                rec.carry(async move {
                    tokio::io::copy_bidirectional(&mut io, &mut up).await.err().map(|e| e.to_string())
                })
                .await;
            }
            Err(e) => rec.refuse(Reason::Connect, &format!("endpoint {}: {e}", ep.addr)),
        }
    }
}

/// `/stats/prometheus` and `/healthz/ready` for the waypoint.
async fn serve_metrics(
    addr: SocketAddr,
    wp: Arc<Waypoint>,
    max_admin_conns: usize,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let metrics = wp.recorder.metrics().clone();
    let limits = crate::admin::HttpLimits { max_connections: max_admin_conns, ..Default::default() };
    Ok(tokio::spawn(crate::admin::serve_http(listener, "metrics", limits, metrics, move |req| {
        let wp = wp.clone();
        async move {
            let (status, body) = match req.uri().path() {
                "/stats/prometheus" | "/metrics" => {
                    (200, wp.metrics.render() + &wp.recorder.metrics().render())
                }
                "/healthz/ready" => (200, "ready\n".to_string()),
                _ => (404, "not found\n".to_string()),
            };
            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
            r
        }
    })))
}
