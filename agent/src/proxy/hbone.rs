//! HBONE inbound: mTLS connections from other agents on a pod's 15008 listener. The peer's
//! identity comes from its verified certificate; each CONNECT stream is delivered to the
//! application (from the source pod's address) and answered 200, or 503 when the application
//! cannot be reached.
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Direction, PodCtx, Proxy, is_agent_port};
use crate::{
    policy::{self, Facts, Verdict},
    telemetry::metrics::ConnLabels,
    tunnel::{copy, server},
};

impl Proxy {
    pub(super) async fn hbone(self: Arc<Self>, tcp: TcpStream, pod: Arc<PodCtx>) {
        let me = self.clone();
        let pod2 = pod.clone();
        let result = server::serve_connection(
            tcp,
            pod.tls.clone(),
            &pod.trust_domain,
            server::Targets::OwnAddress,
            self.draining(),
            move |stream| {
                let me = me.clone();
                let pod = pod2.clone();
                let guard = me.track();
                tokio::spawn(async move {
                    let _guard = guard;
                    me.hbone_stream(stream, pod).await
                });
            },
        )
        .await;
        if let Err(e) = result {
            self.metrics.failure(Direction::Inbound.label(), e.response_flag());
            warn!(target: "sluice::access", direction = "inbound", pod = %pod.name, namespace = %pod.namespace,
                  reason = e.response_flag(), error = %e, "HBONE connection refused");
        }
    }

    async fn hbone_stream(self: Arc<Self>, stream: server::Stream, pod: Arc<PodCtx>) {
        let dir = Direction::Inbound;
        let (src, dst) = (stream.peer_addr, stream.target);
        let snap = self.store.load();
        // Workload metadata for metrics only; the identity is the verified certificate's.
        let src_workload = snap.workload_by_ip(src.ip());
        let mut labels =
            ConnLabels::new("destination", dst).destination(&pod.workload(&snap), pod.principal());
        labels.connection_security_policy = "mutual_tls";
        labels.source_principal = stream.peer.to_string();
        labels.source_workload_namespace = stream.peer.namespace.clone();
        if let Some(w) = src_workload {
            // Metadata only; the identity above is the verified certificate's.
            labels = labels.source(w, stream.peer.to_string());
        }
        if is_agent_port(dst) {
            self.metrics.failure(dir.label(), super::Failure::Loop.label());
            return stream.refuse(StatusCode::BAD_REQUEST);
        }
        let facts = Facts { identity: Some(&stream.peer), src_ip: src.ip(), dst, http: None };
        let workload = pod.workload(&snap);
        // A workload bound to a waypoint for its own traffic accepts it only from that waypoint,
        // so L7 policy cannot be bypassed by dialling the pod directly.
        let verdict = match snap.workload_waypoint(&workload) {
            Some(wp) if stream.peer != wp.identity(&pod.trust_domain) => Verdict::Deny {
                by: format!("waypoint {}/{} (traffic must come through it)", wp.namespace, wp.name),
            },
            _ => policy::authorize(&snap, &workload, &facts),
        };
        if let Verdict::Deny { by } = &verdict {
            stream.refuse(StatusCode::UNAUTHORIZED);
            self.metrics.failure(dir.label(), super::Failure::Deny.label());
            labels.response_flags = "DENY".into();
            self.metrics.conn_opened(&labels);
            self.metrics.conn_closed(&labels, 0, 0);
            warn!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
                  %src, %dst, src_principal = %labels.source_principal, policy = %by, decision = "deny",
                  "connection denied by AuthorizationPolicy");
            return;
        }
        let app = match self.deliver(&pod, src, dst).await {
            Ok(app) => app,
            Err((f, detail)) => {
                stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
                self.metrics.failure(dir.label(), f.label());
                labels.response_flags = "CONNECT".into();
                self.metrics.conn_opened(&labels);
                self.metrics.conn_closed(&labels, 0, 0);
                warn!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
                      %src, %dst, src_principal = %labels.source_principal, reason = f.label(), detail,
                      "delivery to the app failed");
                return;
            }
        };
        let (send, recv) = match stream.accept() {
            Ok(x) => x,
            Err(e) => {
                warn!(pod = %pod.name, error = %e, "HBONE stream closed before it was answered");
                return;
            }
        };
        self.metrics.conn_opened(&labels);
        let start = std::time::Instant::now();
        // splice(tcp=app): (app -> peer, peer -> app) = (received, sent) from the client's view.
        let (received, sent, err) = copy::splice(app, send, recv).await;
        self.metrics.conn_closed(&labels, sent, received);
        info!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
              %src, %dst, sent, received, duration_ms = start.elapsed().as_millis() as u64,
              security = "mutual_tls", src_principal = %labels.source_principal,
              dst_principal = %labels.destination_principal, policy = %verdict.policy(), decision = "allow",
              error = err, "connection closed");
    }
}
