//! The request pipeline, read top to bottom: authenticate (RequestAuthentication JWT) ->
//! authorize (L7 AuthorizationPolicy) -> route
//! (VirtualService) -> direct response / redirect -> fault -> destination and subset -> rewrite and
//! headers -> send with timeout and retries (mirroring a copy) -> response headers -> metrics and
//! access log. Every answer the waypoint makes itself carries Envoy's response flag.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::{
    Waypoint,
    metrics::RequestLabels,
    resilience::Outcome,
    routes::{self, DestError, Req, Selected},
    upstream::{Body, BoxError},
};
use crate::{
    config::{
        Snapshot,
        kinds::virtual_service::{HeaderOperations, HttpRetry, HttpRoute},
        model::{PodEntry, Service},
    },
    identity::Identity,
    policy::{self, Facts, HttpFacts, admission},
};

/// Largest request body kept in memory so it can be retried or mirrored; larger or unsized bodies
/// stream through once (no retry, no mirror).
const REPLAY_LIMIT: u64 = 64 * 1024;
/// Mirrored copies in flight at once, and how long one may take.
pub(crate) const MIRRORS_IN_FLIGHT: usize = 256;
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HBONE stream a request arrived on.
#[derive(Debug)]
pub struct Conn {
    /// The client's verified identity (its node agent presents the client workload's).
    pub peer: Identity,
    pub peer_addr: SocketAddr,
    /// The original destination the client addressed (a Service VIP or a pod).
    pub target: SocketAddr,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| -> BoxError { match e {} }).boxed());
    *r.status_mut() = status;
    r
}

/// A response the waypoint makes itself, with its flag.
struct Local {
    resp: Response<Body>,
    flag: &'static str,
}

fn local(status: StatusCode, flag: &'static str, body: impl Into<Bytes>) -> Local {
    let mut resp = full(status, body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Local { resp, flag }
}

fn workload_labels(l: &mut RequestLabels, w: &PodEntry, trust_domain: &str, source: bool) {
    let principal = Identity::new(trust_domain, &w.namespace, &w.service_account).to_string();
    if source { l.conn.set_source(w, principal) } else { l.conn.set_destination(w, principal) }
}

fn service_labels(l: &mut RequestLabels, s: &Service) {
    l.conn.set_service(s);
}

/// The JWT rules of the RequestAuthentications attached to this waypoint or to `svc`.
fn jwt_rules<'a>(
    snap: &'a Snapshot,
    wp: &Waypoint,
    svc: Option<&Service>,
) -> Vec<&'a crate::config::kinds::request_authentication::JwtRule> {
    snap.request_authentications
        .iter()
        .filter(|ra| {
            ra.spec.target_ref.iter().chain(ra.spec.target_refs.iter()).any(|r| {
                admission::attached(&r.kind, &r.name, r.namespace.as_deref(), &ra.namespace, &wp.me, svc)
            })
        })
        .flat_map(|ra| ra.spec.jwt_rules.iter())
        .collect()
}

fn apply_ops(h: &mut HeaderMap, ops: Option<&HeaderOperations>) {
    let Some(ops) = ops else { return };
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            h.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            h.append(k, v);
        }
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

/// Removes hop-by-hop headers (and those `Connection` names) before a message crosses the
/// waypoint; `Connection: upgrade` and `Upgrade: websocket` stay for a WebSocket handshake.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, websocket: bool) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(t.is_empty() || websocket && t == "upgrade"))
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "http2-settings",
        "trailer",
    ] {
        h.remove(n);
    }
    if !websocket {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    // `te: trailers` is the one TE value HTTP/2 (and gRPC) allows; anything else is hop-by-hop.
    if h.get(header::TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        h.remove(header::TE);
    }
}

/// The request's authority: the URI's (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target)
/// else its one `Host` header. Several `Host` headers, none at all, or one that differs from the
/// URI's authority are refused (400): policy and routing must see what the upstream will see.
fn authority_of<B>(req: &Request<B>) -> Result<String, &'static str> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header");
    }
    let host = hosts.first().map(|h| h.to_str().map_err(|_| "the Host header is not text")).transpose()?;
    match (req.uri().authority().map(|a| a.as_str()), host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            Err("the Host header differs from the request's authority")
        }
        (Some(a), _) => Ok(a.to_string()),
        (None, Some(h)) if !h.is_empty() => Ok(h.to_string()),
        _ => Err("the request has no authority (Host header)"),
    }
}

/// Normalizes a request path as Istio's default (RFC 3986: percent-encoded unreserved characters
/// decoded, `.` and `..` segments removed) and merges repeated slashes, so `/a/../admin`,
/// `//admin` and `/%61dmin` are all `/admin` to policy and routing. None for a path that encodes
/// a slash or backslash, a control character or invalid percent-encoding.
pub(crate) fn normalize_path(p: &str) -> Option<String> {
    let mut decoded = String::with_capacity(p.len());
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = p.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            match v {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    decoded.push(v as char)
                }
                b'/' | b'\\' | 0..=0x1f | 0x7f => return None,
                _ => decoded.push_str(&p[i..i + 3].to_ascii_uppercase()),
            }
            i += 3;
        } else {
            let c = p[i..].chars().next()?;
            if c == '\\' || c.is_control() {
                return None;
            }
            decoded.push(c);
            i += c.len_utf8();
        }
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing =
        (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..")) && !out.is_empty();
    let mut norm = format!("/{}", out.join("/"));
    if trailing {
        norm.push('/');
    }
    Some(norm)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        },
    )
}

/// A gRPC status by Istio's name (`UNAVAILABLE`) or number, as its numeric code.
fn grpc_code(s: &str) -> Option<u16> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| *n == s)
        .map(|i| i as u16)
        .or_else(|| s.parse::<u16>().ok().filter(|n| *n <= 16))
}

/// Whether `percent` (Istio's Percent, unset = 100) fires this time.
fn fires(percent: Option<f64>) -> bool {
    let p = percent.unwrap_or(100.0);
    p >= 100.0 || (p > 0.0 && fastrand::f64() * 100.0 < p)
}

/// Retry settings in force: the route's, else Istio's default (2 attempts on connect failures,
/// refused streams and 503).
struct RetryPolicy {
    attempts: u32,
    per_try: Option<std::time::Duration>,
    on: Vec<String>,
}

impl RetryPolicy {
    fn of(r: Option<&HttpRetry>) -> RetryPolicy {
        match r {
            Some(r) => RetryPolicy {
                attempts: r.attempts.map_or(2, |a| u32::try_from(a).unwrap_or(0)),
                per_try: r.per_try_timeout.as_ref().map(|d| d.as_std()).filter(|d| !d.is_zero()),
                on: r
                    .retry_on
                    .as_deref()
                    .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
            },
            None => RetryPolicy {
                attempts: 2,
                per_try: None,
                on: vec!["connect-failure".into(), "refused-stream".into(), "503".into()],
            },
        }
    }

    fn on_status(&self, s: StatusCode) -> bool {
        let code = s.as_u16();
        self.on.iter().any(|o| match o.as_str() {
            "5xx" => code >= 500,
            "gateway-error" => matches!(code, 502..=504),
            "retriable-4xx" => code == 409,
            n => n.parse::<u16>().is_ok_and(|n| n == code),
        })
    }

    fn on_connect_failure(&self) -> bool {
        self.on.iter().any(|o| {
            matches!(o.as_str(), "connect-failure" | "5xx" | "gateway-error" | "reset" | "refused-stream")
        })
    }

    fn on_reset(&self) -> bool {
        self.on.iter().any(|o| matches!(o.as_str(), "reset" | "5xx"))
    }
}

/// The request body: kept (replayable) or streamed once.
enum ReqBody {
    Kept(Bytes),
    Stream(Option<Incoming>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Kept(b) => Some(Full::new(b.clone()).map_err(|e| -> BoxError { match e {} }).boxed()),
            ReqBody::Stream(s) => s.take().map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Kept(_))
    }
}

async fn read_body(parts: &http::request::Parts, body: Incoming) -> Result<ReqBody, Local> {
    let len = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    // HTTP/2 has no Content-Length requirement: a stream that already ended (a GET, most gRPC
    // calls' headers-only frames aside) or announces an exact small size is kept too.
    let exact = hyper::body::Body::size_hint(&body).exact();
    let small = match len.or(exact) {
        Some(n) => n <= REPLAY_LIMIT,
        None => hyper::body::Body::is_end_stream(&body) || (!chunked && parts.version < Version::HTTP_2),
    };
    if !small {
        return Ok(ReqBody::Stream(Some(body)));
    }
    match http_body_util::Limited::new(body, REPLAY_LIMIT as usize).collect().await {
        Ok(c) => Ok(ReqBody::Kept(c.to_bytes())),
        Err(_) => Err(local(StatusCode::BAD_REQUEST, "DPE", "request body could not be read\n")),
    }
}

impl Waypoint {
    /// Serves one request that arrived on `conn`.
    pub async fn handle(self: Arc<Self>, conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let snap = self.store.load();
        let mut labels = RequestLabels::new(conn.target);
        if let Some(w) = snap.workload_by_ip(conn.peer_addr.ip()) {
            workload_labels(&mut labels, w, &self.trust_domain, true);
        } else {
            labels.conn.source_principal = conn.peer.to_string().into();
            let mut unknown = (*crate::telemetry::metrics::WorkloadLabels::unknown()).clone();
            unknown.namespace = conn.peer.namespace.clone();
            labels.conn.source = Arc::new(unknown);
        }
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            labels.conn.request_protocol = "grpc";
        }
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let content_length =
            |h: &HeaderMap| h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let req_bytes = content_length(req.headers()).or((req.method() == http::Method::GET).then_some(0));
        let trace = super::trace::TraceContext::from_headers(req.headers());
        let mut req = req;
        trace.propagate(req.headers_mut());
        let span = tracing::info_span!("request", trace_id = %trace.trace_id, span_id = %trace.span_id,
                                       parent_span_id = trace.parent_id.as_deref().unwrap_or("-"));
        let result =
            tracing::Instrument::instrument(self.pipeline(&snap, &conn, req, &mut labels), span).await;
        let resp = match result {
            Ok(r) => r,
            Err(l) => {
                labels.conn.response_flags = l.flag;
                l.resp
            }
        };
        labels.response_code = resp.status().as_u16();
        if grpc {
            // Only gRPC's status codes (0-16) become a label value: an upstream cannot mint series.
            labels.grpc_response_status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.parse::<u8>().is_ok_and(|n| n <= 16))
                .unwrap_or("")
                .to_string();
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        self.metrics.request(&labels, ms, (req_bytes, content_length(resp.headers())));
        info!(target: "sluice::access", reporter = "waypoint", %method, %path, status = labels.response_code,
              flags = labels.conn.response_flags, src_principal = %labels.conn.source_principal, dst_service = %labels.conn.destination_service(),
              dst_workload = %labels.conn.destination.workload, trace_id = %trace.trace_id, span_id = %trace.span_id, duration_ms = ms, "request");
        resp
    }

    async fn pipeline(
        self: &Arc<Self>,
        snap: &Snapshot,
        conn: &Conn,
        mut req: Request<Incoming>,
        labels: &mut RequestLabels,
    ) -> Result<Response<Body>, Local> {
        let service = snap.service_by_vip(conn.target).map(|(s, _)| s);
        let port = conn.target.port();
        if let Some(s) = service {
            service_labels(labels, s);
        } else {
            labels.conn.service = crate::telemetry::metrics::ServiceLabels::Address(conn.target);
        }
        // WebSocket and other HTTP/1.1 upgrades: the client side of the upgrade, joined to the
        // endpoint's once it answers 101.
        // Only WebSocket is joined end to end: any other upgrade (h2c among them) would turn the
        // connection into a tunnel that later requests cross without L7 policy.
        let websocket = req.version() < Version::HTTP_2
            && req
                .headers()
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        strip_hop_by_hop(req.headers_mut(), websocket);
        // One authority and one normalized path for policy, routing and the upstream alike.
        let authority =
            authority_of(&req).map_err(|why| local(StatusCode::BAD_REQUEST, "-", format!("{why}\n")))?;
        if let Ok(v) = HeaderValue::try_from(authority.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
        let path = normalize_path(req.uri().path())
            .ok_or_else(|| local(StatusCode::BAD_REQUEST, "-", "the request path cannot be normalized\n"))?;
        if path != req.uri().path() {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = pq.parse().ok();
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
        let source = snap.workload_by_ip(conn.peer_addr.ip());

        // 1. Authentication (RequestAuthentication): an invalid token is 401, a missing one passes.
        let rules = jwt_rules(snap, self, service);
        super::jwt::strip_outputs(&rules, req.headers_mut());
        let query = req.uri().query().unwrap_or("").to_string();
        if !rules.is_empty() && super::jwt::token_present(&rules, req.headers(), &query) {
            self.fetch_jwks(snap, &rules).await;
        }
        let remote = |uri: &str| self.remote_jwks.get(uri);
        let auth = if rules.is_empty() {
            None
        } else {
            match super::jwt::authenticate(&rules, req.headers(), &query, &self.jwks, &remote) {
                Ok(a) => a,
                Err(e) => {
                    warn!(target: "sluice::access", src = %conn.peer, path = %req.uri().path(), error = %e, "request with an invalid JWT refused");
                    let mut l = local(StatusCode::UNAUTHORIZED, "-", e.to_string());
                    l.resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"sluice\", error=\"invalid_token\""),
                    );
                    return Err(l);
                }
            }
        };
        if let Some(a) = &auth
            && let Some(rule) = rules.get(a.rule)
        {
            super::jwt::apply_outputs(rule, a, req.headers_mut());
        }

        // 2. Authorization (L7).
        let applicable = admission::waypoint_policies(snap, &self.me, service);
        if !applicable.is_empty() {
            let facts_http = HttpFacts {
                method: req.method().as_str(),
                path: req.uri().path(),
                host: &authority,
                headers: req.headers(),
                request_principal: auth.as_ref().map(|a| a.principal.as_str()),
                claims: auth.as_ref().map(|a| &a.claims),
            };
            let facts = Facts {
                identity: Some(&conn.peer),
                src_ip: conn.peer_addr.ip(),
                dst: conn.target,
                http: Some(&facts_http),
            };
            let verdict = policy::decide(&applicable, &facts);
            if !verdict.allowed() {
                warn!(target: "sluice::access", policy = %verdict.policy(), src = %conn.peer, path = %req.uri().path(), "request denied");
                return Err(local(StatusCode::FORBIDDEN, "DENY", "RBAC: access denied"));
            }
        }

        // 3. Route.
        let Some(svc) = service else {
            // A pod addressed directly: no Service, so no VirtualService; straight to it.
            let target = conn.target;
            if let Some(w) = snap.workload_by_ip(target.ip()) {
                workload_labels(labels, w, &self.trust_domain, false);
            }
            let ep = self.upstreams.endpoint(snap, target.ip(), target.port());
            let (parts, body) = req.into_parts();
            let mut body = read_body(&parts, body).await?;
            return self
                .send(parts, &mut body, &[ep], &RetryPolicy::of(None), None, None, "", upgrade, None)
                .await;
        };
        let view = Req {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query().unwrap_or(""),
            authority: &authority,
            scheme: "http",
            headers: req.headers(),
            port,
            source,
            source_namespace: Some(conn.peer.namespace.as_str()),
        };
        let selected = routes::select(snap, svc, &view, &self.regexes);
        let (route, matched, vs_ns): (Option<&HttpRoute>, _, &str) = match selected {
            Selected::Route { vs, route, matched, .. } => (Some(route), matched, vs.namespace.as_str()),
            Selected::NoRoute { .. } => return Err(local(StatusCode::NOT_FOUND, "NR", "no route matched\n")),
            Selected::Default => (None, None, svc.namespace.as_str()),
        };

        // 4. Answers without an upstream (an allowed CORS preflight among them).
        let mut cors_headers = None;
        if let Some(p) = route.and_then(|r| r.cors_policy.as_ref()) {
            match super::cors::evaluate(p, req.method(), req.headers(), &self.regexes) {
                super::cors::Cors::Preflight(h) => {
                    let mut resp = full(StatusCode::OK, "");
                    resp.headers_mut().extend(h);
                    return Ok(resp);
                }
                super::cors::Cors::Actual(h) => cors_headers = Some(h),
                super::cors::Cors::None => {}
            }
        }
        if let Some(r) = route {
            if let Some(d) = &r.direct_response {
                let body = d.body.as_ref().and_then(|b| b.string.clone()).unwrap_or_default();
                let status = StatusCode::from_u16(d.status as u16).unwrap_or(StatusCode::OK);
                return Ok(full(status, body));
            }
            if let Some(rd) = &r.redirect {
                let host = rd.authority.clone().unwrap_or_else(|| authority.clone());
                let scheme = rd.scheme.clone().unwrap_or_else(|| "http".into());
                let path = match (&rd.uri, &rd.prefix_rewrite) {
                    (Some(u), _) => u.clone(),
                    (None, Some(p)) => routes::rewrite_path(req.uri().path(), matched, p),
                    (None, None) => req.uri().path().to_string(),
                };
                let host = match rd.port {
                    Some(p) => format!("{}:{p}", host.split(':').next().unwrap_or(&host)),
                    None => host,
                };
                let code = rd
                    .redirect_code
                    .and_then(|c| StatusCode::from_u16(c as u16).ok())
                    .unwrap_or(StatusCode::MOVED_PERMANENTLY);
                let mut resp = full(code, "");
                if let Ok(v) = HeaderValue::try_from(format!("{scheme}://{host}{path}")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return Ok(resp);
            }
            // 5. Faults.
            if let Some(f) = &r.fault {
                if let Some(d) = &f.delay
                    && let Some(fixed) = &d.fixed_delay
                    && fires(d.percentage.as_ref().map(|p| p.get()).or(d.percent.map(f64::from)))
                {
                    tokio::time::sleep(fixed.as_std()).await;
                    labels.conn.response_flags = "DI";
                }
                if let Some(a) = &f.abort
                    && fires(a.percentage.as_ref().map(|p| p.get()))
                {
                    if let Some(code) = a.http_status {
                        let status =
                            StatusCode::from_u16(code as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                        return Err(local(status, "FI", "fault filter abort"));
                    }
                    if let Some(g) = a.grpc_status.as_deref().and_then(grpc_code) {
                        // A gRPC trailers-only response: 200 with the status in the headers.
                        let mut resp = full(StatusCode::OK, "");
                        let h = resp.headers_mut();
                        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                        h.insert("grpc-status", HeaderValue::from(g));
                        h.insert("grpc-message", HeaderValue::from_static("fault filter abort"));
                        return Err(Local { resp, flag: "FI" });
                    }
                }
            }
        }

        // 6. Destination.
        let (host, dport, subset, dest_headers) = match route {
            Some(r) => {
                let d = routes::pick_weighted(&r.route, |n| fastrand::u64(..n)).ok_or_else(|| {
                    local(StatusCode::SERVICE_UNAVAILABLE, "NR", "route has no destination\n")
                })?;
                let p =
                    d.destination.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok());
                (d.destination.host.clone(), p, d.destination.subset.clone(), d.headers.clone())
            }
            None => (svc.hostname(), None, None, None),
        };
        let target =
            routes::resolve_target(snap, &host, vs_ns, dport, port, subset.as_deref(), conn.target.is_ipv6())
                .map_err(|e: DestError| {
                    warn!(target: "sluice::access", error = %e, "no upstream");
                    local(StatusCode::SERVICE_UNAVAILABLE, e.flag(), format!("no healthy upstream: {e}\n"))
                })?;
        service_labels(labels, target.service);

        // 7. Request rewrite and headers.
        let (mut parts, body) = req.into_parts();
        if let Some(r) = route {
            if let Some(rw) = &r.rewrite {
                let path = parts.uri.path().to_string();
                let new_path = match (&rw.uri, &rw.uri_regex_rewrite) {
                    (Some(u), _) => Some(routes::rewrite_path(&path, matched, u)),
                    (None, Some(rr)) => match (&rr.pattern, &rr.rewrite) {
                        (Some(p), Some(w)) => {
                            regex::Regex::new(p).ok().map(|re| re.replace_all(&path, w.as_str()).into_owned())
                        }
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(np) = new_path {
                    let pq = match parts.uri.query() {
                        Some(q) => format!("{np}?{q}"),
                        None => np,
                    };
                    if let Ok(u) = pq.parse::<Uri>() {
                        parts.uri = u;
                    }
                }
                if let Some(a) = &rw.authority
                    && let Ok(v) = HeaderValue::try_from(a.as_str())
                {
                    parts.headers.insert(header::HOST, v);
                }
            }
            apply_ops(&mut parts.headers, r.headers.as_ref().and_then(|h| h.request.as_ref()));
        }
        apply_ops(&mut parts.headers, dest_headers.as_ref().and_then(|h| h.request.as_ref()));

        let mut body = read_body(&parts, body).await?;
        let retry = RetryPolicy::of(route.and_then(|r| r.retries.as_ref()));
        let key = format!(
            "{}/{}/{}",
            target.service.namespace,
            target.service.name,
            subset.as_deref().unwrap_or("")
        );
        let lb = target.load_balancer();
        let hash = lb.and_then(|l| l.consistent_hash.as_ref()).and_then(|ch| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            if let Some(name) = &ch.http_header_name {
                parts.headers.get(name.as_str())?.as_bytes().hash(&mut h);
            } else if let Some(c) = &ch.http_cookie {
                cookie(&parts.headers, &c.name)?.hash(&mut h);
            } else if let Some(q) = &ch.http_query_parameter_name {
                routes::query_param(parts.uri.query().unwrap_or(""), q)?.hash(&mut h);
            } else if ch.use_source_ip == Some(true) {
                conn.peer_addr.ip().hash(&mut h);
            } else {
                return None;
            }
            Some(h.finish())
        });
        // Endpoints that outlier detection ejected are skipped; one endpoint per attempt, so a
        // retry can land elsewhere.
        let now = std::time::Instant::now();
        let healthy: Vec<std::net::IpAddr> = target
            .endpoints
            .iter()
            .copied()
            .filter(|ip| !self.outliers.is_ejected(&key, SocketAddr::new(*ip, target.target_port), now))
            .collect();
        let mut eps = Vec::new();
        for _ in 0..=retry.attempts.min(10) {
            if let Some(ip) = self.upstreams.choose(&key, &healthy, target.target_port, lb, hash) {
                eps.push(self.upstreams.endpoint(snap, ip, target.target_port));
            }
        }
        let cluster = Cluster {
            key: &key,
            outlier: target.outlier_detection(),
            pool: target.connection_pool(),
            size: target.endpoints.len(),
        };

        // 8. Mirror (a copy, answer ignored).
        if let (Some(r), ReqBody::Kept(b)) = (route, &body) {
            let mirrors: Vec<(&crate::config::kinds::virtual_service::Destination, Option<f64>)> = r
                .mirror
                .iter()
                .map(|d| {
                    (d, r.mirror_percentage.as_ref().map(|p| p.get()).or(r.mirror_percent.map(f64::from)))
                })
                .chain(r.mirrors.iter().map(|m| (&m.destination, m.percentage.as_ref().map(|p| p.get()))))
                .collect();
            for (d, pct) in mirrors {
                if !fires(pct) {
                    continue;
                }
                let p = d.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok());
                if let Ok(t) = routes::resolve_target(
                    snap,
                    &d.host,
                    vs_ns,
                    p,
                    port,
                    d.subset.as_deref(),
                    conn.target.is_ipv6(),
                ) && let Some(ip) = self.upstreams.choose(
                    &format!("mirror/{}", d.host),
                    &t.endpoints,
                    t.target_port,
                    None,
                    None,
                ) {
                    let ep = self.upstreams.endpoint(snap, ip, t.target_port);
                    let mut mparts = http::Request::new(()).into_parts().0;
                    mparts.method = parts.method.clone();
                    mparts.uri = parts.uri.clone();
                    mparts.version = parts.version;
                    mparts.headers = parts.headers.clone();
                    let shadow = format!("{}-shadow", authority.split(':').next().unwrap_or(&authority));
                    if let Ok(v) = HeaderValue::try_from(shadow) {
                        mparts.headers.insert(header::HOST, v);
                    }
                    let up = self.clone();
                    let b = b.clone();
                    // Bounded: a slow mirror never holds more than MIRRORS_IN_FLIGHT copies
                    // (extra ones are dropped) and each lives at most MIRROR_TIMEOUT.
                    let Ok(permit) = self.mirrors.clone().try_acquire_owned() else { continue };
                    tokio::spawn(async move {
                        let mut mb = ReqBody::Kept(b);
                        let none = RetryPolicy { attempts: 0, per_try: None, on: vec![] };
                        let eps = [ep];
                        let send = up.send(mparts, &mut mb, &eps, &none, None, None, "", None, None);
                        let _ = tokio::time::timeout(MIRROR_TIMEOUT, send).await;
                        drop(permit);
                    });
                }
            }
        }

        // 9. Send, with the route's timeout around every attempt.
        let timeout = route.and_then(|r| r.timeout.as_ref()).map(|d| d.as_std()).filter(|d| !d.is_zero());
        let resp_ops = route.and_then(|r| r.headers.as_ref()).and_then(|h| h.response.clone());
        let dest_resp_ops = dest_headers.as_ref().and_then(|h| h.response.clone());
        let mut resp = self
            .send(
                parts,
                &mut body,
                &eps,
                &retry,
                timeout,
                Some(labels),
                &target.service.hostname(),
                upgrade,
                Some(&cluster),
            )
            .await?;
        apply_ops(resp.headers_mut(), resp_ops.as_ref());
        apply_ops(resp.headers_mut(), dest_resp_ops.as_ref());
        if let Some(h) = cors_headers {
            resp.headers_mut().extend(h);
        }
        Ok(resp)
    }

    /// Makes sure the `jwksUri` documents of `rules` are there: fetched now (bounded by the rule's
    /// timeout) when never fetched, refreshed in the background when stale.
    async fn fetch_jwks(
        self: &Arc<Self>,
        snap: &Snapshot,
        rules: &[&crate::config::kinds::request_authentication::JwtRule],
    ) {
        use super::jwks::{DEFAULT_TIMEOUT, Fetch};
        for r in rules.iter().filter(|r| r.jwks.is_none()) {
            let Some(uri) = &r.jwks_uri else { continue };
            let timeout =
                r.timeout.as_ref().map(|d| d.as_std()).filter(|d| !d.is_zero()).unwrap_or(DEFAULT_TIMEOUT);
            match self.remote_jwks.needs_fetch(uri) {
                Fetch::Now => {
                    if let Err(e) = self.remote_jwks.fetch(snap, &self.upstreams, uri, timeout).await {
                        warn!(error = %e, "JWKS fetch failed; tokens of this issuer are refused until it succeeds");
                    }
                }
                Fetch::Background => {
                    let (me, uri, snap) = (self.clone(), uri.clone(), self.store.load());
                    tokio::spawn(async move {
                        if let Err(e) = me.remote_jwks.fetch(&snap, &me.upstreams, &uri, timeout).await {
                            warn!(error = %e, "JWKS refresh failed; the cached keys stay in use");
                        }
                    });
                }
                Fetch::No => {}
            }
        }
    }

    /// Sends to the endpoints in turn (one per attempt), retrying as `retry` allows.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        parts: http::request::Parts,
        body: &mut ReqBody,
        eps: &[crate::waypoint::upstream::Endpoint],
        retry: &RetryPolicy,
        timeout: Option<std::time::Duration>,
        mut labels: Option<&mut RequestLabels>,
        host: &str,
        mut upgrade: Option<hyper::upgrade::OnUpgrade>,
        cluster: Option<&Cluster<'_>>,
    ) -> Result<Response<Body>, Local> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let h2 = parts.version == Version::HTTP_2;
        // The cluster's connection pool: a slot for the whole request (all attempts and the body).
        let slot = match cluster {
            Some(c) => match self.pools.acquire(c.key, c.pool, h2).await {
                Ok(s) => Some(s),
                Err(_) => {
                    return Err(local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "UO",
                        "upstream connect error or disconnect/reset before headers. reset reason: overflow\n",
                    ));
                }
            },
            None => None,
        };
        let mut slot = slot;
        let record = |ep: SocketAddr, outcome: Outcome| {
            if let Some(c) = cluster
                && let Some(od) = c.outlier
                && self.outliers.record(c.key, ep, outcome, od, c.size, std::time::Instant::now())
            {
                warn!(target: "sluice::access", cluster = c.key, endpoint = %ep, "endpoint ejected by outlier detection");
            }
        };
        let mut parts = parts;
        parts.extensions = http::Extensions::new();
        let attempts = if body.replayable() { retry.attempts + 1 } else { 1 };
        let snap = self.store.load();
        let mut last: Option<Local> = None;
        for (attempt, ep) in eps.iter().cycle().take(attempts as usize).enumerate() {
            let Some(b) = body.take() else { break };
            let mut req = Request::from_parts(parts.clone(), b);
            if h2 {
                // An HTTP/2 upstream needs the absolute form.
                let a = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                    .unwrap_or_else(|| host.to_string());
                if let Ok(u) = format!("http://{a}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()))
                    .parse::<Uri>()
                {
                    *req.uri_mut() = u;
                }
                // The authority travels as :authority alone.
                req.headers_mut().remove(header::HOST);
            } else {
                *req.version_mut() = Version::HTTP_11;
            }
            if let Some(l) = labels.as_deref_mut()
                && let Some(w) = snap.workload_by_ip(ep.addr.ip())
            {
                workload_labels(l, w, &self.trust_domain, false);
            }
            let fut = self.upstreams.send(ep, req, h2);
            let per_try = retry.per_try.map(|t| tokio::time::Instant::now() + t);
            let limit = match (deadline, per_try) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let result = match limit {
                Some(l) => match tokio::time::timeout_at(l, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        last = Some(local(StatusCode::GATEWAY_TIMEOUT, "UT", "upstream request timeout"));
                        // A per-try timeout counts as a 504 for retries (as in Envoy): retried only
                        // when retryOn covers it, since the upstream may have acted on the request.
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                            || !retry.on_status(StatusCode::GATEWAY_TIMEOUT)
                        {
                            break;
                        }
                        continue;
                    }
                },
                None => fut.await,
            };
            match result {
                Ok((resp, flight)) => {
                    record(ep.addr, Outcome::Status(resp.status().as_u16()));
                    let retryable = attempt + 1 < attempts as usize && retry.on_status(resp.status());
                    if retryable {
                        last = Some(Local {
                            resp: resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
                            flag: "URX",
                        });
                        continue;
                    }
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let mut resp = resp;
                        if let Some(client) = upgrade.take() {
                            let server = hyper::upgrade::on(&mut resp);
                            tokio::spawn(join_upgrade(client, server));
                        }
                        return Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()));
                    }
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers, false);
                    // Keep the endpoint counted while the body streams.
                    let rbody = InFlightBody { inner: rbody, _flight: flight, _slot: slot.take() };
                    return Ok(Response::from_parts(rparts, BoxBody::new(rbody)));
                }
                Err(e) => {
                    if e.is_connect_failure() {
                        record(ep.addr, Outcome::ConnectFailure);
                    }
                    warn!(target: "sluice::access", endpoint = %ep.addr, error = %e, attempt, "upstream failed");
                    let again =
                        if e.is_connect_failure() { retry.on_connect_failure() } else { retry.on_reset() };
                    last = Some(local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        e.flag(),
                        format!("upstream connect error or disconnect/reset before headers: {e}\n"),
                    ));
                    if !again {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n")))
    }
}

/// Copies bytes between the two sides of an upgraded connection (WebSocket) until both close.
async fn join_upgrade(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((c, s)) => {
            let (mut c, mut s) = (hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(s));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => warn!(error = %e, "upgrade failed"),
    }
}

/// A response body that keeps its endpoint's in-flight count until it is dropped.
struct InFlightBody {
    inner: Incoming,
    _flight: crate::waypoint::upstream::InFlight,
    _slot: Option<super::resilience::Slot>,
}

/// The upstream cluster a request goes to, with its DestinationRule resilience settings.
pub(crate) struct Cluster<'a> {
    /// `namespace/service/subset`.
    key: &'a str,
    outlier: Option<&'a crate::config::kinds::destination_rule::OutlierDetection>,
    pool: Option<&'a crate::config::kinds::destination_rule::ConnectionPoolSettings>,
    /// All endpoints of the cluster (ejected or not).
    size: usize,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx).map_err(|e| -> BoxError { Box::new(e) })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_as_istio_does_and_tricks_refused() {
        let rows = [
            ("/admin", Some("/admin")),
            ("/a/../admin", Some("/admin")),
            ("/./admin", Some("/admin")),
            ("//admin//x", Some("/admin/x")),
            ("/%61dmin", Some("/admin")),
            ("/x/%2e%2e/admin", Some("/admin")),
            ("/../../etc", Some("/etc")),
            ("/dir/", Some("/dir/")),
            ("/a%20b", Some("/a%20b")),
            ("/", Some("/")),
            ("/a%2Fb", None),
            ("/a%5cb", None),
            ("/a%zz", None),
            ("/a%2", None),
        ];
        for (input, want) in rows {
            assert_eq!(normalize_path(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn cookies_and_grpc_codes() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; session=abc; b=2".parse().expect("v"));
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "none"), None);
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("7"), Some(7));
        assert_eq!(grpc_code("BOGUS"), None);
        assert_eq!(grpc_code("99"), None);
    }

    #[test]
    fn one_authority_or_a_refusal() {
        let req = |uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().uri(uri);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            b.body(()).expect("request")
        };
        assert_eq!(authority_of(&req("/x", &["shop"])).ok().as_deref(), Some("shop"));
        assert_eq!(authority_of(&req("http://shop/x", &["SHOP"])).ok().as_deref(), Some("shop"));
        for (uri, hosts) in [("/x", vec![]), ("/x", vec!["a", "b"]), ("http://public/x", vec!["admin"])] {
            assert!(authority_of(&req(uri, &hosts)).is_err(), "{uri} {hosts:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross_and_only_websocket_upgrades() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-app", "ok"),
        ] {
            h.append(k, v.parse().expect("value"));
        }
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-app"]);
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, "Upgrade".parse().expect("v"));
        ws.insert(header::UPGRADE, "websocket".parse().expect("v"));
        strip_hop_by_hop(&mut ws, true);
        assert!(ws.contains_key(header::UPGRADE) && ws.contains_key(header::CONNECTION));
    }
}
