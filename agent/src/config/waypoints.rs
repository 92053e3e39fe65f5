//! Which traffic goes through a waypoint, from Istio's labels: `istio.io/use-waypoint: <gateway>`
//! on a Service, a pod or their namespace (`none` opts out; `istio.io/use-waypoint-namespace`
//! names another namespace), and `istio.io/waypoint-for` on the Gateway (`service`, the default;
//! `workload`; `all`; `none`) saying which kind of traffic that waypoint takes. A waypoint's
//! addresses are its pods' (label `gateway.networking.k8s.io/gateway-name: <gateway>`).
//!
//! Pure lookups over the snapshot; the agent's outbound path and the destination's inbound check
//! ask these.
use std::net::IpAddr;

use serde::Serialize;

use super::model::{Labels, PodEntry, Service, Snapshot};

/// The label a namespace, Service or pod carries to send its traffic through a waypoint.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Names the waypoint's namespace when it is not the labelled object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// On a waypoint Gateway: which traffic it takes.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The label on a waypoint's pods naming its Gateway (Istio sets it on the pods it deploys).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Which traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaypointFor {
    /// Traffic addressed to a Service (Istio's default).
    #[default]
    Service,
    /// Traffic addressed to a workload's own address.
    Workload,
    All,
    None,
}

impl WaypointFor {
    pub fn parse(v: Option<&str>) -> Option<WaypointFor> {
        match v {
            None | Some("service") => Some(WaypointFor::Service),
            Some("workload") => Some(WaypointFor::Workload),
            Some("all") => Some(WaypointFor::All),
            Some("none") => Some(WaypointFor::None),
            Some(_) => None,
        }
    }

    fn takes_services(self) -> bool {
        matches!(self, WaypointFor::Service | WaypointFor::All)
    }

    fn takes_workloads(self) -> bool {
        matches!(self, WaypointFor::Workload | WaypointFor::All)
    }
}

/// A waypoint Gateway, named by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl WaypointRef {
    /// The one identity a waypoint's instances present: the service account named after the
    /// Gateway in its namespace (as Istio deploys waypoints). Pod labels only say where its
    /// instances are; a pod that merely carries the label cannot present this identity.
    pub fn identity(&self, trust_domain: &str) -> crate::identity::Identity {
        crate::identity::Identity::new(trust_domain, &self.namespace, &self.name)
    }
}

/// One running waypoint instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointAddr {
    pub ip: IpAddr,
    pub service_account: String,
}

/// The waypoint `labels` (of an object in `namespace`) ask for: Some(Some(..)) a waypoint,
/// Some(None) an explicit opt-out (`none`), None when the labels say nothing.
fn requested(labels: &Labels, namespace: &str) -> Option<Option<WaypointRef>> {
    let name = labels.get(USE_WAYPOINT_LABEL)?;
    if name == "none" || name.is_empty() {
        return Some(None);
    }
    let ns = labels.get(USE_WAYPOINT_NAMESPACE_LABEL).map_or(namespace, String::as_str);
    Some(Some(WaypointRef { namespace: ns.to_string(), name: name.clone() }))
}

impl Snapshot {
    fn waypoint_kind(&self, w: &WaypointRef) -> Option<WaypointFor> {
        self.waypoint_for.get(&(w.namespace.clone(), w.name.clone())).copied()
    }

    fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// The waypoint that traffic addressed to `svc` goes through: the Service's label, else its
    /// namespace's; only a declared waypoint Gateway that takes Service traffic counts.
    pub fn service_waypoint(&self, svc: &Service) -> Option<WaypointRef> {
        let wanted = requested(&svc.labels, &svc.namespace)
            .or_else(|| self.namespace_labels(&svc.namespace).and_then(|l| requested(l, &svc.namespace)))??;
        self.waypoint_kind(&wanted).filter(|k| k.takes_services()).map(|_| wanted)
    }

    /// The waypoint that traffic addressed to workload `w` itself goes through: the pod's label,
    /// else its namespace's; only a waypoint that takes workload traffic counts.
    pub fn workload_waypoint(&self, w: &PodEntry) -> Option<WaypointRef> {
        let wanted = requested(&w.labels, &w.namespace)
            .or_else(|| self.namespace_labels(&w.namespace).and_then(|l| requested(l, &w.namespace)))??;
        self.waypoint_kind(&wanted).filter(|k| k.takes_workloads()).map(|_| wanted)
    }

    /// The running instances of a waypoint (its pods with an address), in a stable order.
    pub fn waypoint_addrs(&self, wp: &WaypointRef) -> Vec<WaypointAddr> {
        let mut out: Vec<WaypointAddr> = self
            .pods
            .values()
            .filter(|p| p.namespace == wp.namespace && p.labels.get(GATEWAY_NAME_LABEL) == Some(&wp.name))
            .flat_map(|p| {
                p.ips.iter().map(|ip| WaypointAddr { ip: *ip, service_account: p.service_account.clone() })
            })
            .collect();
        out.sort_by_key(|a| a.ip);
        out
    }

    /// Whether `w` is one of the waypoint's own pods.
    pub fn is_waypoint_pod(&self, w: &PodEntry, wp: &WaypointRef) -> bool {
        w.namespace == wp.namespace && w.labels.get(GATEWAY_NAME_LABEL) == Some(&wp.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_for_test as snap;

    const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: WHAT}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: wp-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}\nspec: {serviceAccountName: wp}\nstatus: {podIP: 10.0.9.9}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec: {clusterIP: 10.96.0.1, selector: {app: a}, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: shop, labels: {istio.io/use-waypoint: none}}\nspec: {clusterIP: 10.96.0.2, selector: {app: b}, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a-1, namespace: shop, labels: {app: a}}\nspec: {serviceAccountName: a}\nstatus: {podIP: 10.0.1.1}\n---\n";

    fn svc<'a>(s: &'a Snapshot, name: &str) -> &'a Service {
        s.services.get(&("shop".to_string(), name.to_string())).expect("service")
    }

    #[test]
    fn labels_bind_services_and_workloads_as_waypoint_for_says() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}\n";
        let wp = WaypointRef { namespace: "shop".into(), name: "wp".into() };
        let service_only = snap(&format!("{}{ns}", GW.replace("WHAT", "service")));
        assert_eq!(service_only.service_waypoint(svc(&service_only, "a")), Some(wp.clone()));
        assert_eq!(service_only.service_waypoint(svc(&service_only, "b")), None, "the Service opts out");
        let pod = service_only.workload_by_ip("10.0.1.1".parse().expect("ip")).expect("pod");
        assert_eq!(service_only.workload_waypoint(pod), None, "waypoint-for service takes no pod traffic");
        let all = snap(&format!("{}{ns}", GW.replace("WHAT", "all")));
        let pod = all.workload_by_ip("10.0.1.1".parse().expect("ip")).expect("pod");
        assert_eq!(all.workload_waypoint(pod), Some(wp.clone()));
        assert_eq!(
            all.waypoint_addrs(&wp),
            vec![WaypointAddr { ip: "10.0.9.9".parse().expect("ip"), service_account: "wp".into() }]
        );
        // A label naming no declared waypoint binds nothing.
        let dangling = snap(&format!(
            "{}{}",
            GW.replace("WHAT", "all"),
            ns.replace("use-waypoint: wp", "use-waypoint: nope")
        ));
        assert_eq!(dangling.service_waypoint(svc(&dangling, "a")), None);
    }
}
