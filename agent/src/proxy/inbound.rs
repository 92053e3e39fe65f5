//! Inbound: TCP to an enrolled pod, steered by `sk_lookup` into the pod's 15006 listener. The
//! accepted socket's local address is the original destination; the agent delivers to it from
//! inside the pod's netns (its marked connection arrives over loopback, which sk_lookup leaves alone).
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Failure, PodCtx, Proxy, copy, is_agent_port};
use crate::telemetry::metrics::ConnLabels;

impl Proxy {
    pub(super) async fn inbound(self: Arc<Self>, client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
        let dst = match client.local_addr() {
            Ok(a) => a,
            Err(e) => {
                warn!(pod = %pod.name, error = %e, "inbound socket has no local address");
                return;
            }
        };
        if is_agent_port(dst) {
            self.metrics.failure("inbound", Failure::Loop.label());
            return;
        }
        let mut labels = ConnLabels {
            reporter: "destination",
            source_workload: "unknown".into(),
            source_workload_namespace: "unknown".into(),
            source_principal: "unknown".into(),
            destination_workload: pod.name.clone(),
            destination_workload_namespace: pod.namespace.clone(),
            destination_principal: pod.principal(),
            destination_service: dst.to_string(),
            response_flags: "-".into(),
            connection_security_policy: "none",
        };
        let connected = if pod.transparent {
            copy::deliver_transparent(&self.kernel, &pod.netns, peer, dst, self.connect_timeout).await
        } else {
            copy::connect_from(&pod.netns, dst, self.connect_timeout).await
        };
        let app = match connected {
            Ok(s) => s,
            Err((f, detail)) => {
                self.metrics.failure("inbound", f.label());
                labels.response_flags = f.label().to_string();
                self.metrics.conn_opened(&labels);
                self.metrics.conn_closed(&labels, 0, 0);
                warn!(target: "sluice::access", direction = "inbound", pod = %pod.name, namespace = %pod.namespace,
                      src = %peer, dst = %dst, reason = f.label(), detail, "delivery to the app failed");
                return;
            }
        };
        self.metrics.conn_opened(&labels);
        let start = std::time::Instant::now();
        let (sent, received, err) = copy::splice(client, app).await;
        self.metrics.conn_closed(&labels, sent, received);
        info!(target: "sluice::access", direction = "inbound", pod = %pod.name, namespace = %pod.namespace,
              src = %peer, dst = %dst, sent, received, duration_ms = start.elapsed().as_millis() as u64,
              error = err.map(|e| e.to_string()), "connection closed");
    }
}
