//! Inbound: TCP to an enrolled pod, steered by `sk_lookup` into the pod's 15006 listener. The
//! accepted socket's local address is the original destination; the agent delivers to it from
//! inside the destination pod's netns, from the original client's address when the pod's delivery
//! route is in place (see `redirect::routing`).
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::warn;

use super::{Direction, Failed, PodCtx, Proxy, Upstream};
use crate::{
    policy::admission::{self, ConnFacts, Decision, Path},
    telemetry::metrics::ConnLabels,
};

impl Proxy {
    /// Connects to the application at `dst` inside `pod`, from the client's address `src` when the
    /// pod's delivery route is in place.
    pub(super) async fn deliver(
        &self,
        pod: &PodCtx,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<TcpStream, Failed> {
        if pod.transparent {
            super::copy::deliver_transparent(&self.kernel, &pod.netns, src, dst, self.connect_timeout).await
        } else {
            super::copy::connect_from(&pod.netns, dst, self.connect_timeout).await
        }
    }

    pub(super) async fn inbound(self: Arc<Self>, client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
        let dst = match client.local_addr() {
            Ok(a) => a,
            Err(e) => {
                warn!(pod = %pod.name, error = %e, "inbound socket has no local address");
                return;
            }
        };
        let snap = self.store.load();
        let workload = pod.workload(&snap);
        let facts = ConnFacts {
            path: Path::InboundPlain { workload: &workload },
            src: peer.ip(),
            dst,
            trust_domain: &pod.trust_domain,
        };
        let decision = admission::admit(&snap, &facts);
        let me = pod.peer(&snap, &workload, &self.labels);
        let labels = ConnLabels::new("destination", dst).destination(me.labels, me.principal);
        let rec = self.record(
            Direction::Inbound,
            facts.path.label(),
            &pod,
            peer,
            dst,
            labels,
            decision.policy_label(),
        );
        if let Decision::Refuse { reason, detail, .. } = decision {
            let _ = client.set_zero_linger();
            return rec.refuse(reason, &detail);
        }
        let app = self.deliver(&pod, peer, dst).await.map(Upstream::Tcp);
        self.carry(rec, client, app).await;
    }
}
