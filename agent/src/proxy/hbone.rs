//! HBONE inbound: mTLS connections from other agents on a pod's 15008 listener. The peer's
//! identity comes from its verified certificate; each CONNECT stream is admitted by the gate,
//! delivered to the application (from the source pod's address) and answered 200, or refused
//! (401 denied, 400 a loop, 503 when the application cannot be reached).
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{Direction, PodCtx, Proxy};
use crate::{
    limits::caps::{Class, Permit},
    policy::admission::{self, ConnFacts, Decision, Path},
    telemetry::metrics::ConnLabels,
    tunnel::{copy, server},
};

impl Proxy {
    /// `permit` is the connection's, taken at accept in the handshake share; it moves to the
    /// mesh once the peer is verified and is given back when the connection ends.
    pub(super) async fn hbone(self: Arc<Self>, tcp: TcpStream, pod: Arc<PodCtx>, mut permit: Permit) {
        let me = self.clone();
        let pod2 = pod.clone();
        let result = server::serve_connection(
            tcp,
            pod.tls.clone(),
            &pod.trust_domain,
            server::Targets::OwnAddress,
            self.draining(),
            |_| permit.into_mesh(),
            move |stream| {
                // Each stream holds the application socket it is delivered to: it counts against
                // the pod's and the source's caps and the budget, or is refused with 503 at once.
                let Some(permit) = me.admit_load("hbone", Class::Mesh, 1, &pod2, true, stream.peer_addr)
                else {
                    return stream.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                };
                let me = me.clone();
                let pod = pod2.clone();
                let guard = me.track();
                tokio::spawn(async move {
                    let _held = (guard, permit);
                    me.hbone_stream(stream, pod).await
                });
            },
        )
        .await;
        if let Err(e) = result {
            self.recorder.handshake_refused(
                Direction::Inbound.label(),
                &pod.name,
                &pod.namespace,
                e.peer(),
                e.reason(),
                &e,
            );
        }
    }

    async fn hbone_stream(self: Arc<Self>, stream: server::Stream, pod: Arc<PodCtx>) {
        let (src, dst) = (stream.peer_addr, stream.target);
        let snap = self.store.load();
        let workload = pod.workload(&snap);
        let facts = ConnFacts {
            path: Path::Hbone { workload: &workload, peer: &stream.peer },
            src: src.ip(),
            dst,
            trust_domain: &pod.trust_domain,
        };
        let decision = admission::admit(&snap, &facts);
        let me = pod.peer(&snap, &workload, &self.labels);
        let mut labels = ConnLabels::new("destination", dst).destination(me.labels, me.principal);
        labels.connection_security_policy = "mutual_tls";
        // The source workload's labels are metadata looked up by address; the principal is always
        // the verified certificate's.
        let src_labels = match snap.workload_by_ip(src.ip()) {
            Some(w) => self.labels.peer(&snap, w).labels,
            None => crate::telemetry::metrics::WorkloadLabels::unknown_in(&stream.peer.namespace),
        };
        labels = labels.source(src_labels, stream.peer.to_string().into());
        let rec = self.record(
            Direction::Inbound,
            facts.path.label(),
            &pod,
            src,
            dst,
            labels,
            decision.policy_label(),
        );
        if let Decision::Refuse { reason, detail, .. } = decision {
            stream.refuse(reason.connect_status());
            return rec.refuse(reason, &detail);
        }
        let app = match self.deliver(&pod, src, dst).await {
            Ok(app) => app,
            Err((reason, detail)) => {
                stream.refuse(reason.connect_status());
                return rec.refuse(reason, &detail);
            }
        };
        let (send, recv) = match stream.accept() {
            Ok(x) => x,
            Err(e) => {
                let detail = format!("the peer left before the stream was answered: {e}");
                return rec.refuse(crate::telemetry::reason::Reason::Connect, &detail);
            }
        };
        let live = rec.live().clone();
        // splice(tcp=app): app -> peer is what the client received, peer -> app what it sent.
        rec.carry(copy::splice(app, send, recv, &live.received, &live.sent, live.stopped())).await;
    }
}
