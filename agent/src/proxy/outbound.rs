//! Outbound: a connection an enrolled pod's app opened, redirected by `cgroup/connect4/6` to the
//! pod's 15001 listener. The original destination comes from the kernel's ORIG_DST map.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::warn;

use super::{Direction, Failure, PodCtx, Proxy, copy, is_agent_port};
use crate::telemetry::metrics::ConnLabels;

impl Proxy {
    pub(super) async fn outbound(self: Arc<Self>, client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
        let dir = Direction::Outbound;
        let Some(dst) = self.kernel.take_orig_dst(pod.netns_cookie, peer) else {
            self.metrics.failure(dir.label(), Failure::NoOriginalDst.label());
            warn!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
                  %peer, reason = Failure::NoOriginalDst.label(), "captured connection without an original destination; closed");
            return;
        };
        if is_agent_port(dst) && dst.ip().is_loopback() {
            self.metrics.failure(dir.label(), Failure::Loop.label());
            return;
        }
        let labels = ConnLabels {
            reporter: "source",
            source_workload: pod.name.clone(),
            source_workload_namespace: pod.namespace.clone(),
            source_principal: pod.principal(),
            destination_workload: "unknown".into(),
            destination_workload_namespace: "unknown".into(),
            destination_principal: "unknown".into(),
            destination_service: dst.to_string(),
            response_flags: "-".into(),
            connection_security_policy: "unknown",
        };
        let upstream = copy::connect_from(&pod.netns, dst, self.connect_timeout).await;
        self.carry(dir, &pod, peer, dst, labels, client, upstream).await;
    }
}
