//! The same-node fast path: when a pod's outbound connection targets a mesh pod enrolled on this
//! same node, the agent hands the bytes from one pod's socket to the other's directly, without
//! TLS or HTTP/2. Nothing crosses a network: both sockets live in pods this agent enrolled, and
//! the source identity is the one the agent itself assigned to the source pod (the same identity
//! it would put in that pod's certificate), so PeerAuthentication STRICT is satisfied and the
//! destination's AuthorizationPolicies are evaluated with it exactly as the HBONE inbound path does.
//! Both reporters' Istio metrics are recorded (`connection_security_policy="mutual_tls"`: the
//! peer identity is authenticated, nothing is sent in clear on any wire).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;
use tracing::warn;

use super::{Direction, Failure, PodCtx, Proxy, Upstream};
use crate::{
    config::Snapshot,
    policy::{self, Facts, Verdict},
    telemetry::metrics::ConnLabels,
};

impl Proxy {
    /// Records `pod` as enrolled on this node under each of its addresses.
    pub fn register_local(&self, pod: &Arc<PodCtx>) {
        let mut local = self.local.write();
        for ip in &pod.ips {
            local.insert(*ip, pod.clone());
        }
    }

    /// Forgets the addresses of the pod with netns `cookie` (only entries that are still its own).
    pub fn forget_local(&self, ips: &[IpAddr], cookie: u64) {
        let mut local = self.local.write();
        for ip in ips {
            if local.get(ip).is_some_and(|p| p.netns_cookie == cookie) {
                local.remove(ip);
            }
        }
    }

    /// The pod enrolled on this node that owns `ip`.
    pub(super) fn local_pod(&self, ip: IpAddr) -> Option<Arc<PodCtx>> {
        self.local.read().get(&ip).cloned()
    }

    /// Carries an outbound connection of `src_pod` to `dst_pod` on this node. Returns the client
    /// back when the fast path does not apply (no source address of the target's family).
    #[allow(clippy::too_many_arguments, reason = "each argument is one fact of the connection")]
    pub(super) async fn same_node(
        &self,
        snap: &Snapshot,
        client: TcpStream,
        peer: SocketAddr,
        src_pod: &Arc<PodCtx>,
        dst_pod: &Arc<PodCtx>,
        target: SocketAddr,
        src_labels: ConnLabels,
    ) -> Option<TcpStream> {
        let Some(src_ip) = src_pod.ips.iter().copied().find(|ip| ip.is_ipv6() == target.is_ipv6()) else {
            return Some(client);
        };
        let src = SocketAddr::new(src_ip, peer.port());
        let identity = src_pod.identity();
        let dst_workload = dst_pod.workload(snap);
        let mut dst_labels =
            ConnLabels::new("destination", target).destination(&dst_workload, dst_pod.principal());
        dst_labels.connection_security_policy = "mutual_tls";
        dst_labels = dst_labels.source(&src_pod.workload(snap), identity.to_string());
        dst_labels.destination_service = src_labels.destination_service.clone();
        dst_labels.destination_service_name = src_labels.destination_service_name.clone();
        dst_labels.destination_service_namespace = src_labels.destination_service_namespace.clone();
        let facts = Facts { identity: Some(&identity), src_ip, dst: target, http: None };
        let refused = match policy::authorize(snap, &dst_workload, &facts) {
            Verdict::Deny { by } => {
                Some((Failure::Deny.label(), format!("denied by AuthorizationPolicy {by}")))
            }
            Verdict::Allow { .. } => None,
        };
        let app = match refused {
            Some(e) => Err(e),
            None => self.deliver(dst_pod, src, target).await.map_err(|(f, d)| (f.label(), d)),
        };
        let app = match app {
            Ok(app) => app,
            Err((reason, detail)) => {
                self.metrics.failure(Direction::Inbound.label(), reason);
                dst_labels.response_flags = reason.to_string();
                self.metrics.conn_opened(&dst_labels);
                self.metrics.conn_closed(&dst_labels, 0, 0);
                warn!(target: "sluice::access", direction = "inbound", pod = %dst_pod.name,
                      namespace = %dst_pod.namespace, %src, dst = %target, reason, detail,
                      src_principal = %identity, path = "same_node", "connection refused");
                self.carry(
                    Direction::Outbound,
                    src_pod,
                    peer,
                    target,
                    src_labels,
                    client,
                    Err((reason, detail)),
                )
                .await;
                return None;
            }
        };
        self.metrics.conn_opened(&dst_labels);
        let (sent, received) = self
            .carry(Direction::Outbound, src_pod, peer, target, src_labels, client, Ok(Upstream::Tcp(app)))
            .await;
        // The destination's view: what the client sent is what it received.
        self.metrics.conn_closed(&dst_labels, received, sent);
        None
    }
}
