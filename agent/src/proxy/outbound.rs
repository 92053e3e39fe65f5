//! Outbound: a connection an enrolled pod's app opened, redirected by `cgroup/connect4/6` to the
//! pod's 15001 listener. The original destination comes from the kernel's ORIG_DST map; a Service
//! VIP is resolved to one of its endpoints; a destination inside the mesh is reached over HBONE,
//! anything else as plain TCP.
use std::{net::SocketAddr, sync::Arc};

use sluice_common::INBOUND_HBONE_PORT;
use tokio::net::TcpStream;
use tracing::warn;

use super::{Direction, Failure, PodCtx, Proxy, Upstream, copy, is_agent_port};
use crate::{
    config::{EnrollDecision, Snapshot, waypoints::WaypointRef},
    identity::Identity,
    telemetry::metrics::ConnLabels,
    tunnel::pool::PoolKey,
};

impl Proxy {
    pub(super) async fn outbound(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
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
        let snap = self.store.load();
        let mut labels = ConnLabels::new("source", dst).source(&pod.workload(&snap), pod.principal());
        // A destination bound to a waypoint is reached through it: the original destination
        // (Service VIP or pod address) travels as the CONNECT authority.
        let waypoint = match snap.service_by_vip(dst) {
            Some((svc, _)) => snap.service_waypoint(svc),
            None => snap.workload_by_ip(dst.ip()).and_then(|w| snap.workload_waypoint(w)),
        };
        if let Some(wp) = waypoint {
            if let Some((svc, _)) = snap.service_by_vip(dst) {
                labels = labels.service(svc);
            }
            let upstream = self.via_waypoint(&snap, &pod, &wp, dst, &mut labels).await;
            self.carry(dir, &pod, peer, dst, labels, client, upstream).await;
            return;
        }
        // A Service VIP becomes one of its endpoints.
        let target = match snap.service_by_vip(dst) {
            Some((svc, port)) => {
                labels = labels.service(svc);
                match self.pick_endpoint(svc, dst.is_ipv6()) {
                    Some(ip) => SocketAddr::new(ip, port.target_port),
                    None => {
                        let detail = format!("service {} has no endpoints", svc.hostname());
                        let err = Err((Failure::NoEndpoints.label(), detail));
                        self.carry(dir, &pod, peer, dst, labels, client, err).await;
                        return;
                    }
                }
            }
            None => dst,
        };
        let in_mesh = snap
            .workload_by_ip(target.ip())
            .filter(|w| snap.enrollment(&w.namespace, &w.name) == EnrollDecision::Enrolled);
        let upstream = match in_mesh {
            Some(w) => {
                let expected = Identity::new(&pod.trust_domain, &w.namespace, &w.service_account);
                labels = labels.destination(w, expected.to_string());
                labels.connection_security_policy = "mutual_tls";
                if let Some(dst_pod) = self.local_pod(target.ip()) {
                    match self.same_node(&snap, client, peer, &pod, &dst_pod, target, labels.clone()).await {
                        None => return,
                        Some(c) => client = c, // no source address of the target's family: HBONE
                    }
                }
                let key = PoolKey {
                    src_pod: pod.netns_cookie,
                    src: pod.identity(),
                    dst: SocketAddr::new(target.ip(), INBOUND_HBONE_PORT),
                    expected,
                };
                match self.pool.connect(&key, Some(&pod.netns), target).await {
                    Ok((send, recv, guard)) => Ok(Upstream::Tunnel(send, recv, guard)),
                    Err(e) => Err((e.response_flag(), e.to_string())),
                }
            }
            None => copy::connect_from(&pod.netns, target, self.connect_timeout)
                .await
                .map(Upstream::Tcp)
                .map_err(|(f, d)| (f.label(), d)),
        };
        self.carry(dir, &pod, peer, target, labels, client, upstream).await;
    }

    /// Opens a CONNECT stream for `dst` to one of the waypoint's instances (round robin),
    /// expecting the waypoint's identity.
    async fn via_waypoint(
        &self,
        snap: &Snapshot,
        pod: &PodCtx,
        wp: &WaypointRef,
        dst: SocketAddr,
        labels: &mut ConnLabels,
    ) -> Result<Upstream, (&'static str, String)> {
        // Instances of the destination's address family, like endpoints of a Service.
        let all = snap.waypoint_addrs(wp);
        let same: Vec<_> = all.iter().filter(|a| a.ip.is_ipv6() == dst.is_ipv6()).cloned().collect();
        let addrs = if same.is_empty() { all } else { same };
        if addrs.is_empty() {
            return Err((
                Failure::NoEndpoints.label(),
                format!(
                    "waypoint {}/{} has no running instance (no pod labelled {}={})",
                    wp.namespace,
                    wp.name,
                    crate::config::waypoints::GATEWAY_NAME_LABEL,
                    wp.name
                ),
            ));
        }
        let n = {
            let mut rr = self.rr.lock();
            let n = rr.entry((wp.namespace.clone(), format!("waypoint/{}", wp.name))).or_default();
            let i = *n;
            *n = n.wrapping_add(1);
            i
        };
        let a = &addrs[n % addrs.len()];
        // A waypoint's identity is its Gateway's service account (named after the Gateway, as
        // Istio deploys it), never whatever a pod carrying the gateway-name label runs as.
        let expected = wp.identity(&pod.trust_domain);
        labels.connection_security_policy = "mutual_tls";
        labels.destination_principal = expected.to_string();
        let key = PoolKey {
            src_pod: pod.netns_cookie,
            src: pod.identity(),
            dst: SocketAddr::new(a.ip, INBOUND_HBONE_PORT),
            expected,
        };
        match self.pool.connect(&key, Some(&pod.netns), dst).await {
            Ok((send, recv, guard)) => Ok(Upstream::Tunnel(send, recv, guard)),
            Err(e) => Err((e.response_flag(), format!("via waypoint {}/{}: {e}", wp.namespace, wp.name))),
        }
    }
}
