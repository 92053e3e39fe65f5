//! Outbound: a connection an enrolled pod's app opened, redirected by `cgroup/connect4/6` to the
//! pod's 15001 listener. The original destination comes from the kernel's ORIG_DST map.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Failure, PodCtx, Proxy, copy, is_agent_port};
use crate::telemetry::metrics::ConnLabels;

impl Proxy {
    pub(super) async fn outbound(self: Arc<Self>, client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
        let Some(dst) = self.kernel.take_orig_dst(pod.netns_cookie, peer) else {
            self.metrics.failure("outbound", Failure::NoOriginalDst.label());
            warn!(target: "sluice::access", direction = "outbound", pod = %pod.name, namespace = %pod.namespace,
                  %peer, reason = Failure::NoOriginalDst.label(), "captured connection without an original destination; closed");
            return;
        };
        if is_agent_port(dst) && dst.ip().is_loopback() {
            self.metrics.failure("outbound", Failure::Loop.label());
            return;
        }
        let mut labels = ConnLabels {
            reporter: "source",
            source_workload: pod.name.clone(),
            source_workload_namespace: pod.namespace.clone(),
            source_principal: pod.principal(),
            destination_workload: "unknown".into(),
            destination_workload_namespace: "unknown".into(),
            destination_principal: "unknown".into(),
            destination_service: dst.to_string(),
            response_flags: "-".into(),
            connection_security_policy: "none",
        };
        let upstream = match copy::connect_from(&pod.netns, dst, self.connect_timeout).await {
            Ok(s) => s,
            Err((f, detail)) => {
                self.metrics.failure("outbound", f.label());
                labels.response_flags = f.label().to_string();
                self.metrics.conn_opened(&labels);
                self.metrics.conn_closed(&labels, 0, 0);
                warn!(target: "sluice::access", direction = "outbound", pod = %pod.name, namespace = %pod.namespace,
                      src = %peer, dst = %dst, reason = f.label(), detail, "connection failed");
                return;
            }
        };
        self.metrics.conn_opened(&labels);
        let start = std::time::Instant::now();
        let (sent, received, err) = copy::splice(client, upstream).await;
        self.metrics.conn_closed(&labels, sent, received);
        info!(target: "sluice::access", direction = "outbound", pod = %pod.name, namespace = %pod.namespace,
              src = %peer, dst = %dst, sent, received, duration_ms = start.elapsed().as_millis() as u64,
              error = err.map(|e| e.to_string()), "connection closed");
    }
}
