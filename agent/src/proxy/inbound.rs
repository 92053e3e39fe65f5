//! Inbound: TCP to an enrolled pod, steered by `sk_lookup` into the pod's 15006 listener. The
//! accepted socket's local address is the original destination; the agent delivers to it from
//! inside the destination pod's netns, from the original client's address when the pod's delivery
//! route is in place (see `redirect::routing`).
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::warn;

use super::{Direction, Failure, PodCtx, Proxy, Upstream, is_agent_port};
use crate::{
    config::kinds::peer_authentication::MtlsMode,
    policy::{self, Facts, Verdict},
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
    ) -> Result<TcpStream, (Failure, String)> {
        if pod.transparent {
            super::copy::deliver_transparent(&self.kernel, &pod.netns, src, dst, self.connect_timeout).await
        } else {
            super::copy::connect_from(&pod.netns, dst, self.connect_timeout).await
        }
    }

    pub(super) async fn inbound(self: Arc<Self>, client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
        let dir = Direction::Inbound;
        let dst = match client.local_addr() {
            Ok(a) => a,
            Err(e) => {
                warn!(pod = %pod.name, error = %e, "inbound socket has no local address");
                return;
            }
        };
        if is_agent_port(dst) {
            self.metrics.failure(dir.label(), Failure::Loop.label());
            return;
        }
        let snap = self.store.load();
        let workload = pod.workload(&snap);
        let refusal = match policy::mtls_mode(&snap, &workload, dst.port()) {
            MtlsMode::Strict => {
                Some((Failure::MtlsRequired, "PeerAuthentication STRICT: plaintext refused".to_string()))
            }
            _ => match policy::authorize(
                &snap,
                &workload,
                &Facts { identity: None, src_ip: peer.ip(), dst, http: None },
            ) {
                Verdict::Deny { by } => Some((Failure::Deny, format!("denied by AuthorizationPolicy {by}"))),
                Verdict::Allow { .. } => None,
            },
        };
        let labels = ConnLabels::new("destination", dst).destination(&workload, pod.principal());
        if let Some((f, detail)) = refusal {
            self.carry(dir, &pod, peer, dst, labels, client, Err((f.label(), detail))).await;
            return;
        }
        let app = self.deliver(&pod, peer, dst).await.map(Upstream::Tcp).map_err(|(f, d)| (f.label(), d));
        self.carry(dir, &pod, peer, dst, labels, client, app).await;
    }
}
