//! The request pipeline's driver and its bookkeeping: [`Waypoint::handle`] labels the request,
//! runs [`Waypoint::pipeline`] in the request's trace span, and writes the request's one metrics
//! update and access-log line. `pipeline` calls the phases of [`super::phases`] top to bottom;
//! every answer the waypoint makes itself carries Envoy's response flag.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::{HeaderMap, Request, Response, header};
use hyper::body::Incoming;
use tracing::info;

pub(crate) use super::phases::mirror::MIRRORS_IN_FLIGHT;
use super::{
    Waypoint,
    metrics::RequestLabels,
    phases::{
        Local,
        answer::{self, Answer},
        authn, authz,
        destination::{self, Cluster},
        fault, mirror, normalize, respond, rewrite, route,
        send::{self, Plan, RetryPolicy},
    },
    upstream::Body,
};
use crate::{
    config::{
        Snapshot,
        model::{PodEntry, Service},
    },
    identity::Identity,
};

/// The HBONE stream a request arrived on.
#[derive(Debug)]
pub struct Conn {
    /// The client's verified identity (its node agent presents the client workload's).
    pub peer: Identity,
    pub peer_addr: SocketAddr,
    /// The original destination the client addressed (a Service VIP or a pod).
    pub target: SocketAddr,
}

/// Sets the source (or destination) workload labels of a request to `w`.
pub(crate) fn workload_labels(l: &mut RequestLabels, w: &PodEntry, trust_domain: &str, source: bool) {
    let principal = Identity::new(trust_domain, &w.namespace, &w.service_account).to_string();
    if source { l.conn.set_source(w, principal) } else { l.conn.set_destination(w, principal) }
}

fn service_labels(l: &mut RequestLabels, s: &Service) {
    l.conn.set_service(s);
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
            labels.conn.source = crate::telemetry::metrics::WorkloadLabels::unknown_in(&conn.peer.namespace);
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
                *l.resp
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

    /// The request pipeline: the phases of [`super::phases`], in this order. Each hands the next
    /// a value or ends the request with a local answer (status and response flag):
    ///
    /// ```text
    /// phase        input                                   output                      answers itself
    /// normalize    request head                            authority, normalized path  400 -
    /// authenticate snapshot, Service, head (+JWKS fetch)   verified token or none      401 -
    /// authorize    snapshot, Service, conn facts, token    allowed                     403 DENY
    /// (no Service: the pod addressed directly -> send)
    /// route        snapshot, Service, conn facts, head     route or the Service        404 NR
    /// answer       route, head                             CORS headers to add         200 preflight, directResponse, redirect
    /// fault        route, roll                             delay (DI), abort           abort status FI
    /// destination  snapshot, route, roll                   Service, subset, endpoints  503 NR, NC, UH
    /// rewrite      route, destination, head                upstream head               -
    /// (body)       request body                            kept (64 KiB) or streamed   400 DPE
    /// mirror       route, kept body                        copies (answers ignored)    -
    /// send         endpoints, retries, timeout             upstream response           504 UT, 503 UO/UF/UC/UH, URX
    /// respond      route, destination, response            response headers            -
    /// ```
    async fn pipeline(
        self: &Arc<Self>,
        snap: &Snapshot,
        conn: &Conn,
        mut req: Request<Incoming>,
        labels: &mut RequestLabels,
    ) -> Result<Response<Body>, Local> {
        let service = snap.service_by_vip(conn.target).map(|(s, _)| s);
        match service {
            Some(s) => service_labels(labels, s),
            None => labels.conn.service = crate::telemetry::metrics::ServiceLabels::Address(conn.target),
        }
        // A WebSocket handshake: the client side of the upgrade, joined to the endpoint's at 101.
        let websocket = normalize::is_websocket(&req);
        let upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let authority = normalize::normalize(&mut req, websocket)?;
        let auth = authn::authenticate(self, snap, conn, service, &mut req).await?;
        authz::authorize(snap, &self.me, service, conn, &req, &authority, auth.as_ref())?;
        let Some(svc) = service else {
            return send::to_pod(self, snap, conn, req, upgrade, labels).await;
        };
        let routed = route::select(snap, svc, conn, &req, &authority, &self.regexes)?;
        let cors = match answer::answer(&routed, &req, &authority, &self.regexes) {
            Answer::Respond(resp) => return Ok(resp),
            Answer::Forward { cors } => cors,
        };
        let faults = fault::decide(routed.route, fastrand::f64);
        if let Some(delay) = faults.delay {
            tokio::time::sleep(delay).await;
            labels.conn.response_flags = "DI";
        }
        if let Some(abort) = faults.abort {
            return Err(abort);
        }
        let (port, v6) = (conn.target.port(), conn.target.is_ipv6());
        let dest = destination::pick(snap, svc, &routed, port, v6, |n| fastrand::u64(..n))?;
        service_labels(labels, dest.target.service);
        let (mut parts, body) = req.into_parts();
        rewrite::rewrite(&mut parts, &routed, dest.headers);
        let mut body = send::read_body(&parts, body).await?;
        let retry = RetryPolicy::of(routed.route.and_then(|r| r.retries.as_ref()));
        let key = dest.cluster_key();
        let query = parts.uri.query().unwrap_or("");
        let hash =
            destination::hash_key(dest.target.load_balancer(), &parts.headers, query, conn.peer_addr.ip());
        let eps = destination::endpoints(self, snap, &dest.target, &key, hash, retry.attempts);
        let cluster = Cluster::of(&key, &dest.target);
        mirror::mirror(self, snap, conn, &routed, &parts, &body, &authority);
        let host = dest.target.service.hostname();
        let timeout = send::timeout(routed.route);
        let plan = Plan { eps: &eps, retry: &retry, timeout, host: &host, cluster: Some(&cluster) };
        let mut resp = send::send(self, parts, &mut body, &plan, Some(labels), upgrade).await?;
        respond::respond(&mut resp, routed.route, dest.headers, cors);
        Ok(resp)
    }
}
