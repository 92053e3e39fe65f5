//! The same-node fast path: when a pod's outbound connection targets a mesh pod enrolled on this
//! same node, the agent hands the bytes from one pod's socket to the other's directly, without
//! TLS or HTTP/2. Nothing crosses a network: both sockets live in pods this agent enrolled, and
//! the source identity is the one the agent itself assigned to the source pod (the same identity
//! it would put in that pod's certificate), so PeerAuthentication STRICT is satisfied and the
//! destination's AuthorizationPolicies are evaluated with it exactly as the HBONE inbound path does.
//! Both reporters' Istio metrics are recorded by the one connection record
//! (`connection_security_policy="mutual_tls"`: the peer identity is authenticated, nothing is
//! sent in clear on any wire). The destination's view counts the bytes the other way round
//! (`received` is what the client sent), as this path always has; the cross-node HBONE path's
//! destination view does not (a difference kept for now, see docs/ARCHITECTURE.md).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;

use super::{Direction, PodCtx, Proxy, Upstream};
use crate::{
    config::Snapshot,
    policy::admission::{self, ConnFacts, Decision, Path},
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

    /// Carries an outbound connection of `src_pod` to `dst_pod` on this node: one connection
    /// record reporting both ends (the source's view in `src_labels`, the destination's beside
    /// it). Returns the client back when the fast path does not apply (no source address of the
    /// target's family).
    #[allow(clippy::too_many_arguments, reason = "each argument is one fact of the connection")]
    pub(super) async fn same_node(
        &self,
        snap: &Arc<Snapshot>,
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
        let facts = ConnFacts {
            path: Path::SameNode { workload: &dst_workload, peer: &identity },
            src: src_ip,
            dst: target,
            trust_domain: &dst_pod.trust_domain,
        };
        let decision = admission::admit(snap, &facts);
        let dst_me = dst_pod.peer(snap, &dst_workload, &self.labels);
        let mut dst_labels =
            ConnLabels::new("destination", target).destination(dst_me.labels, dst_me.principal);
        dst_labels.connection_security_policy = "mutual_tls";
        dst_labels.source = src_labels.source.clone();
        dst_labels.source_principal = src_labels.source_principal.clone();
        dst_labels.service = src_labels.service.clone();
        let mut rec = self.record(
            Direction::Outbound,
            facts.path.label(),
            src_pod,
            peer,
            target,
            src_labels,
            decision.policy_label(),
        );
        rec.set_peer_view(dst_labels);
        let app = match decision {
            Decision::Refuse { reason, detail, .. } => Err((reason, detail)),
            Decision::Admit { .. } => self.deliver(dst_pod, src, target).await,
        };
        self.carry(rec, client, app.map(Upstream::Tcp)).await;
        None
    }
}
