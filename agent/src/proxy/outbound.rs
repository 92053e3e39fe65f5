//! Outbound: a connection an enrolled pod's app opened, redirected by `cgroup/connect4/6` to the
//! pod's 15001 listener. The original destination comes from the kernel's ORIG_DST map; a Service
//! VIP is resolved to one of its endpoints; a destination inside the mesh is reached over HBONE,
//! anything else as plain TCP.
use std::{net::SocketAddr, sync::Arc};

use sluice_common::INBOUND_HBONE_PORT;
use tokio::net::TcpStream;

use super::{Direction, Failed, PodCtx, Proxy, Upstream, copy};
use crate::{
    config::{EnrollDecision, Snapshot, waypoints::WaypointRef},
    identity::Identity,
    policy::admission::{self, ConnFacts, Decision, Path},
    telemetry::{metrics::ConnLabels, reason::Reason},
    tunnel::pool::PoolKey,
};

impl Proxy {
    pub(super) async fn outbound(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
        let dir = Direction::Outbound;
        let snap = self.store.load();
        let me = pod.peer(&snap, &pod.workload(&snap), &self.labels);
        let Some(dst) = self.kernel.take_orig_dst(pod.netns_cookie, peer) else {
            // Named by the capture socket it arrived on: there is no other destination to name.
            let here = client.local_addr().unwrap_or(peer);
            let labels = ConnLabels::new("source", here).source(me.labels, me.principal);
            let rec = self.record(dir, "outbound", &pod, peer, here, labels, "-".into());
            return rec.refuse(
                Reason::NoOriginalDst,
                "captured connection without an original destination (the kernel recorded none); closed",
            );
        };
        let mut labels = ConnLabels::new("source", dst).source(me.labels, me.principal);
        let facts = ConnFacts { path: Path::Outbound, src: peer.ip(), dst, trust_domain: &pod.trust_domain };
        if let Decision::Refuse { reason, detail, .. } = admission::admit(&snap, &facts) {
            let rec = self.record(dir, "outbound", &pod, peer, dst, labels, "-".into());
            return rec.refuse(reason, &detail);
        }
        // A destination bound to a waypoint is reached through it: the original destination
        // (Service VIP or pod address) travels as the CONNECT authority.
        let waypoint = match snap.service_by_vip(dst) {
            Some((svc, _)) => snap.service_waypoint(svc),
            None => snap.workload_by_ip(dst.ip()).and_then(|w| snap.workload_waypoint(w)),
        };
        if let Some(wp) = waypoint {
            if let Some((svc, _)) = snap.service_by_vip(dst) {
                labels.service = self.labels.service(&snap, svc);
            }
            let upstream = self.via_waypoint(&snap, &pod, &wp, dst, &mut labels).await;
            let rec = self.record(dir, "outbound", &pod, peer, dst, labels, "-".into());
            self.carry(rec, client, upstream).await;
            return;
        }
        // A Service VIP becomes one of its endpoints.
        let target = match snap.service_by_vip(dst) {
            Some((svc, port)) => {
                labels.service = self.labels.service(&snap, svc);
                match self.pick_endpoint(svc, dst.is_ipv6()) {
                    Some(ip) => SocketAddr::new(ip, port.target_port),
                    None => {
                        let rec = self.record(dir, "outbound", &pod, peer, dst, labels, "-".into());
                        let _ = client.set_zero_linger();
                        return rec.refuse(
                            Reason::NoEndpoints,
                            &format!("service {} has no endpoints", svc.hostname()),
                        );
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
                let dst_peer = self.labels.peer(&snap, w);
                labels = labels.destination(dst_peer.labels, dst_peer.principal);
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
                    Err(e) => Err((e.reason(), e.to_string())),
                }
            }
            None => copy::connect_from(&pod.netns, target, self.connect_timeout).await.map(Upstream::Tcp),
        };
        let rec = self.record(dir, "outbound", &pod, peer, target, labels, "-".into());
        self.carry(rec, client, upstream).await;
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
    ) -> Result<Upstream, Failed> {
        // Instances of the destination's address family, like endpoints of a Service.
        let all = snap.waypoint_addrs(wp);
        let same: Vec<_> = all.iter().filter(|a| a.ip.is_ipv6() == dst.is_ipv6()).cloned().collect();
        let addrs = if same.is_empty() { all } else { same };
        if addrs.is_empty() {
            return Err((
                Reason::NoEndpoints,
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
        labels.destination_principal = expected.to_string().into();
        let key = PoolKey {
            src_pod: pod.netns_cookie,
            src: pod.identity(),
            dst: SocketAddr::new(a.ip, INBOUND_HBONE_PORT),
            expected,
        };
        match self.pool.connect(&key, Some(&pod.netns), dst).await {
            Ok((send, recv, guard)) => Ok(Upstream::Tunnel(send, recv, guard)),
            Err(e) => Err((e.reason(), format!("via waypoint {}/{}: {e}", wp.namespace, wp.name))),
        }
    }
}
