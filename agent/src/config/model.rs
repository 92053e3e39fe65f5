//! The mesh model, its compiled immutable [`Snapshot`] and the compiler ([`Snapshot::compile`]).
//!
//! The compiler asks the kind table ([`super::kinds::KINDS`]) which kind a document is, then runs
//! that kind's arm of one exhaustive `match` over [`Kind`]: the core Kubernetes kinds (Namespace,
//! Pod, Service) and sluice's Workload are read field by field here; every other kind's `spec` is
//! parsed and validated by its file under [`super::kinds`] and kept whole (or turned into
//! services, policies, waypoints). Kinds that validate but are not applied are named in a warning,
//! never silently dropped. This module imports the kinds; no kind imports it. It does no I/O.
use std::{
    borrow::Cow,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;
use serde_json::Value;

/// Labels are defined beside the kinds (their selectors embed them); the model uses them throughout.
pub use super::kinds::common::Labels;
use super::{
    diag::{Diagnostic, Diagnostics, Severity},
    kinds::{
        self, Kind, KindInfo,
        authorization_policy::{Action, AuthorizationPolicy, AuthorizationPolicySpec},
        common::{Issue, IssueSeverity},
        destination_rule::DestinationRuleSpec,
        gateway_api,
        istio_gateway::GatewaySpec,
        peer_authentication::{PeerAuthentication, PeerAuthenticationSpec},
        request_authentication::RequestAuthenticationSpec,
        service_entry::{Resolution, ServiceEntrySpec},
        telemetry::TelemetrySpec,
        virtual_service::VirtualServiceSpec,
    },
    select::{PodIndex, PodKey},
    yaml::Document,
};

/// Istio's ambient enrollment label.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A pod (or light `Workload` entry) as the config describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub service_account: String,
    /// `status.podIPs` (Pod) or `spec.addresses` (Workload).
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName` of a Pod: the agent of that node enrolls it even if no CNI call told it.
    pub node: Option<String>,
    /// `metadata.uid` of a Pod.
    pub uid: Option<String>,
    /// The policies that select this workload, resolved at compile time.
    pub policies: WorkloadPolicies,
}

/// Which policies apply to one workload, precomputed so a connection never scans the policy list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadPolicies {
    /// Indices into [`Snapshot::authorization_policies`] of the policies that select the workload
    /// (its namespace's and the root namespace's), in config order.
    pub authz: Vec<u32>,
    /// Index into [`Snapshot::peer_authentications`] of the workload-scoped PeerAuthentication
    /// in force (the first by name when several select it).
    pub peer_auth: Option<u32>,
    /// False for a bare entry built for a pod the config does not list: nothing was resolved.
    pub resolved: bool,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// Numeric `targetPort` (defaults to `port`).
    pub target_port: u16,
}

/// A Kubernetes Service: virtual IPs and ports in front of the pods its selector matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub selector: Labels,
    /// Pod IPs of the matching pods (computed at compile time), sorted.
    pub endpoints: Vec<IpAddr>,
    /// Set for a ServiceEntry: its first host, which names it in metrics.
    pub host: Option<String>,
    /// `metadata.labels` (`istio.io/use-waypoint` among them).
    pub labels: Labels,
}

impl Service {
    /// `name.namespace.svc.cluster.local` as Istio names a Kubernetes Service; a ServiceEntry's
    /// first host.
    pub fn hostname(&self) -> String {
        match &self.host {
            Some(h) => h.clone(),
            None => format!("{}.{}.svc.cluster.local", self.name, self.namespace),
        }
    }
}

/// An Istio object the snapshot keeps whole (for the waypoint and for `sluice analyze`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Object<T> {
    pub namespace: String,
    pub name: String,
    pub spec: T,
}

/// Whether a pod is in the mesh, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum EnrollDecision {
    Enrolled,
    /// Not enrolled; the reason is shown in status and logs.
    NotEnrolled(&'static str),
}

/// The compiled mesh config. Immutable; replaced whole on every change.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub namespaces: HashMap<String, Namespace>,
    /// Keyed by (namespace, name).
    #[serde(skip)]
    pub pods: HashMap<(String, String), PodEntry>,
    /// Pod IP -> (namespace, name).
    #[serde(skip)]
    pub pods_by_ip: HashMap<IpAddr, (String, String)>,
    /// Keyed by (namespace, name).
    #[serde(skip)]
    pub services: HashMap<(String, String), Arc<Service>>,
    /// Service VIP:port -> (the service, index into its ports): one lookup, no allocation.
    #[serde(skip)]
    pub vips: HashMap<SocketAddr, (Arc<Service>, usize)>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// AuthorizationPolicies attached with targetRef(s) to a waypoint Gateway or a Service: the
    /// waypoint enforces them, at L7.
    pub waypoint_policies: Vec<AuthorizationPolicy>,
    pub virtual_services: Vec<Object<VirtualServiceSpec>>,
    pub destination_rules: Vec<Object<DestinationRuleSpec>>,
    pub service_entries: Vec<Object<ServiceEntrySpec>>,
    /// networking.istio.io Gateways (ingress/egress; not run by sluice).
    pub gateways: Vec<Object<GatewaySpec>>,
    /// gateway.networking.k8s.io Gateways, waypoints among them.
    pub k8s_gateways: Vec<Object<gateway_api::GatewaySpec>>,
    /// Waypoint Gateways (namespace, name) and which traffic each takes (`istio.io/waypoint-for`).
    #[serde(skip)]
    pub waypoint_for: HashMap<(String, String), super::waypoints::WaypointFor>,
    pub request_authentications: Vec<Object<RequestAuthenticationSpec>>,
    pub telemetries: Vec<Object<TelemetrySpec>>,
    /// Namespace -> index of its namespace-wide PeerAuthentication (no selector; first by name).
    #[serde(skip)]
    pub namespace_peer_auth: HashMap<String, u32>,
    /// Namespace -> indices of its AuthorizationPolicies (for workloads the config does not list).
    #[serde(skip)]
    authz_by_namespace: HashMap<String, Vec<u32>>,
    /// `name.namespace.svc.cluster.local` -> the Kubernetes Service (one lookup per routed request).
    #[serde(skip)]
    pub services_by_host: HashMap<String, (String, String)>,
}

/// Istio's root namespace: policies there apply to the whole mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";

impl Snapshot {
    /// Decides enrollment for a pod by Istio's ambient rules: the pod's own
    /// `istio.io/dataplane-mode` label wins (`none` opts out, `ambient` opts in); otherwise the
    /// namespace's label decides.
    pub fn enrollment(&self, namespace: &str, pod: &str) -> EnrollDecision {
        let pod_mode = self
            .pods
            .get(&(namespace.to_string(), pod.to_string()))
            .and_then(|p| p.labels.get(DATAPLANE_MODE_LABEL));
        match pod_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_NONE) => {
                return EnrollDecision::NotEnrolled("pod label istio.io/dataplane-mode=none");
            }
            Some(DATAPLANE_MODE_AMBIENT) => return EnrollDecision::Enrolled,
            _ => {}
        }
        let ns_mode = self.namespaces.get(namespace).and_then(|n| n.labels.get(DATAPLANE_MODE_LABEL));
        match ns_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_AMBIENT) => EnrollDecision::Enrolled,
            _ => EnrollDecision::NotEnrolled("namespace not labelled istio.io/dataplane-mode=ambient"),
        }
    }

    /// The pod (or Workload) that owns `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&PodEntry> {
        self.pods_by_ip.get(&ip).and_then(|k| self.pods.get(k))
    }

    /// The Service and port behind a virtual `ip:port`.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<(&Service, &ServicePort)> {
        let (svc, idx) = self.vips.get(&addr)?;
        Some((svc, svc.ports.get(*idx)?))
    }

    /// The service account of a pod (`default` when the config does not say).
    pub fn service_account(&self, namespace: &str, pod: &str) -> String {
        self.pods
            .get(&(namespace.to_string(), pod.to_string()))
            .map(|p| p.service_account.clone())
            .unwrap_or_else(|| "default".to_string())
    }

    /// Compiles parsed documents (with their file names) into a snapshot, collecting every problem.
    pub fn compile(docs: &[(PathBuf, Document)], diags: &mut Diagnostics) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
        let mut doc_index = 0;
        for (i, (file, doc)) in docs.iter().enumerate() {
            // 1-based position of the document in its file, named by diagnostics about its kind.
            doc_index = if i > 0 && docs[i - 1].0 == *file { doc_index + 1 } else { 1 };
            let mut cx = Cx { file, doc, diags, object: None };
            let Some(kind) = cx.string("kind", true) else {
                continue;
            };
            let name = cx.string("metadata.name", true).unwrap_or_default();
            let namespace = cx.string("metadata.namespace", false);
            cx.object = Some(match &namespace {
                Some(ns) => format!("{kind}/{ns}/{name}"),
                None => format!("{kind}/{name}"),
            });
            let api_version = cx.string("apiVersion", false);
            // The kind table decides which kind (and so which compile arm) a document is.
            let resolved = api_version.as_deref().and_then(|v| kinds::resolve(&kind, v));
            if resolved.is_none()
                && let Some(accepted) = kinds::api_versions(&kind)
            {
                match &api_version {
                    None => cx.error(
                        "apiVersion",
                        format!("is required for {kind}"),
                        &format!("add `apiVersion: {}`", accepted[0]),
                    ),
                    Some(v) => cx.error(
                        "apiVersion",
                        format!("`{v}` is not an apiVersion of {kind}"),
                        &format!("use one of: {}", accepted.join(", ")),
                    ),
                }
                continue;
            }
            // Same-named objects of different API groups (the two Gateway kinds) are distinct.
            let group = api_version.as_deref().and_then(|v| v.rsplit_once('/')).map_or("", |(g, _)| g);
            if let Some(id) = cx.object.as_ref().map(|o| format!("{group}:{o}")) {
                if let Some((f, l)) = seen.get(&id) {
                    cx.error(
                        "metadata.name",
                        format!("duplicate object, first defined at {}:{l}", f.display()),
                        "remove one of the two definitions",
                    );
                    continue;
                }
                seen.insert(id, (file.clone(), doc.start.line));
            }
            let labels = cx.labels("metadata.labels");
            let Some(resolved) = resolved else {
                cx.unknown_kind(&kind, api_version.as_deref(), doc_index);
                continue;
            };
            match resolved {
                Kind::Namespace => {
                    snap.namespaces.insert(name.clone(), Namespace { name, labels });
                }
                Kind::Pod | Kind::Workload => {
                    let is_pod = resolved == Kind::Pod;
                    let (sa_path, ips) = if is_pod {
                        let mut ips = cx.ip_list("status.podIPs", Some("ip"));
                        if ips.is_empty() {
                            ips = cx.ip_list("status.podIP", None);
                        }
                        ("spec.serviceAccountName", ips)
                    } else {
                        ("spec.serviceAccount", cx.ip_list("spec.addresses", None))
                    };
                    let service_account = cx.string(sa_path, false).unwrap_or_else(|| "default".into());
                    let (node, uid) = if is_pod {
                        (cx.string("spec.nodeName", false), cx.string("metadata.uid", false))
                    } else {
                        (None, None)
                    };
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    for ip in &ips {
                        let key = (namespace.clone(), name.clone());
                        if let Some(other) = snap.pods_by_ip.insert(*ip, key) {
                            cx.error(
                                if is_pod { "status.podIPs" } else { "spec.addresses" },
                                format!("address {ip} is already used by {}/{}", other.0, other.1),
                                "every workload needs its own addresses",
                            );
                        }
                    }
                    snap.pods.insert(
                        (namespace.clone(), name.clone()),
                        PodEntry {
                            namespace,
                            name,
                            labels,
                            service_account,
                            ips,
                            node,
                            uid,
                            policies: Default::default(),
                        },
                    );
                }
                Kind::PeerAuthentication => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.spec::<PeerAuthenticationSpec>() {
                        if spec.selector.is_none() && !spec.port_level_mtls.is_empty() {
                            cx.warning(
                                "spec.portLevelMtls",
                                "portLevelMtls is ignored without a workload selector (as in Istio)".into(),
                                "add spec.selector.matchLabels",
                            );
                        }
                        snap.peer_authentications.push(PeerAuthentication { namespace, name, spec });
                    }
                }
                Kind::AuthorizationPolicy => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.spec::<AuthorizationPolicySpec>() {
                        if spec.action == Action::Custom {
                            cx.error(
                                "spec.action",
                                "CUSTOM (external authorization) is not supported by sluice".into(),
                                "use ALLOW or DENY",
                            );
                        } else if spec.selector.is_some() && spec.is_targeted() {
                            cx.error(
                                "spec.targetRefs",
                                "selector and targetRef/targetRefs are mutually exclusive".into(),
                                "keep the selector (workloads) or the targetRefs (a waypoint or Service)",
                            );
                        } else if spec.is_targeted() {
                            // Istio ambient: a targeted policy is enforced by the waypoint the
                            // traffic passes through (targetRefs a waypoint Gateway or a Service
                            // behind one), never by the node proxy.
                            let refs = spec.target_ref.iter().chain(spec.target_refs.iter().flatten());
                            for (i, r) in refs.enumerate() {
                                if r.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                                    cx.error(
                                        &format!("spec.targetRefs[{i}].namespace"),
                                        format!("a policy in namespace {namespace} cannot attach to objects of namespace {}", r.namespace.as_deref().unwrap_or("")),
                                        "create the policy in the target's namespace (Istio does not support cross-namespace targetRefs)",
                                    );
                                }
                                if r.kind != "Gateway" && r.kind != "Service" {
                                    cx.warning(
                                        &format!("spec.targetRefs[{i}].kind"),
                                        format!("a waypoint enforces policies attached to a Gateway or a Service, not a {}", r.kind),
                                        "target the waypoint Gateway or the Service",
                                    );
                                }
                            }
                            snap.waypoint_policies.push(AuthorizationPolicy { namespace, name, spec });
                        } else {
                            for field in spec.http_only_fields() {
                                let effect = match spec.action {
                                    Action::Deny => "this DENY rule matches every connection it scopes",
                                    Action::Allow => "this ALLOW rule never matches",
                                    _ => "this rule never matches",
                                };
                                cx.warning(
                                    &format!("spec.{field}"),
                                    format!(
                                        "HTTP-only: a waypoint enforces it when the policy targets the waypoint (targetRefs); \
                                         at L4 {effect}"
                                    ),
                                    "keep L7 constraints for a waypoint, or use ports, principals, namespaces and ipBlocks",
                                );
                            }
                            snap.authorization_policies.push(AuthorizationPolicy { namespace, name, spec });
                        }
                    }
                }
                Kind::Service => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    let mut vips = cx.ip_list("spec.clusterIPs", None);
                    if vips.is_empty() {
                        vips = cx.ip_list("spec.clusterIP", None);
                    }
                    let ports = cx.service_ports();
                    let selector = cx.labels("spec.selector");
                    let labels = cx.labels("metadata.labels");
                    snap.services.insert(
                        (namespace.clone(), name.clone()),
                        Arc::new(Service {
                            namespace,
                            name,
                            vips,
                            ports,
                            selector,
                            endpoints: Vec::new(),
                            host: None,
                            labels,
                        }),
                    );
                }
                Kind::ServiceEntry => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.checked_spec::<ServiceEntrySpec>(ServiceEntrySpec::validate) {
                        if let Some(svc) = cx.service_entry(&namespace, &name, &spec) {
                            // Keyed apart from a Kubernetes Service of the same name.
                            snap.services
                                .insert((namespace.clone(), format!("ServiceEntry/{name}")), Arc::new(svc));
                        }
                        snap.service_entries.push(Object { namespace, name, spec });
                    }
                }
                Kind::VirtualService => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.checked_spec::<VirtualServiceSpec>(VirtualServiceSpec::validate) {
                        cx.not_enforced(resolved);
                        snap.virtual_services.push(Object { namespace, name, spec });
                    }
                }
                Kind::DestinationRule => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.checked_spec::<DestinationRuleSpec>(DestinationRuleSpec::validate)
                    {
                        cx.not_enforced(resolved);
                        snap.destination_rules.push(Object { namespace, name, spec });
                    }
                }
                Kind::RequestAuthentication => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) =
                        cx.checked_spec::<RequestAuthenticationSpec>(RequestAuthenticationSpec::validate)
                    {
                        if spec.selector.is_some()
                            || (spec.target_ref.is_none() && spec.target_refs.is_empty())
                        {
                            cx.warning(
                                "spec.selector",
                                "the waypoint validates JWTs for RequestAuthentications attached with targetRefs; \
                                 one with a selector (or none) has no effect in ambient mode"
                                    .into(),
                                "attach it to the waypoint Gateway or a Service with spec.targetRefs",
                            );
                        }
                        snap.request_authentications.push(Object { namespace, name, spec });
                    }
                }
                Kind::Telemetry => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.checked_spec::<TelemetrySpec>(TelemetrySpec::validate) {
                        cx.not_enforced(resolved);
                        snap.telemetries.push(Object { namespace, name, spec });
                    }
                }
                Kind::IstioGateway => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) = cx.checked_spec::<GatewaySpec>(GatewaySpec::validate) {
                        cx.warning(
                            "kind",
                            "networking.istio.io Gateways configure ingress/egress gateways, which sluice does \
                             not run; this one has no effect"
                                .into(),
                            "run an ingress gateway beside sluice, or remove the object",
                        );
                        snap.gateways.push(Object { namespace, name, spec });
                    }
                }
                Kind::Gateway => {
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    if let Some(spec) =
                        cx.checked_spec::<gateway_api::GatewaySpec>(gateway_api::GatewaySpec::validate)
                    {
                        if spec.is_waypoint() {
                            let labels = cx.labels("metadata.labels");
                            let value = labels.get(super::waypoints::WAYPOINT_FOR_LABEL).map(String::as_str);
                            match super::waypoints::WaypointFor::parse(value) {
                                Some(kind) => {
                                    snap.waypoint_for.insert((namespace.clone(), name.clone()), kind);
                                }
                                None => cx.error(
                                    "metadata.labels",
                                    format!(
                                        "istio.io/waypoint-for `{}` is not a known traffic type",
                                        value.unwrap_or("")
                                    ),
                                    "use service (the default), workload, all or none",
                                ),
                            }
                        } else {
                            cx.warning(
                                "spec.gatewayClassName",
                                "only Gateways of class istio-waypoint concern sluice; this one is left to its own controller".into(),
                                "nothing to do if another controller serves this class",
                            );
                        }
                        snap.k8s_gateways.push(Object { namespace, name, spec });
                    }
                }
            }
        }
        snap.link_services();
        snap.index_policies();
        snap.shrink_to_fit();
        snap
    }

    /// Drops the spare capacity the compile's growing left in the snapshot's tables (up to half of
    /// each): the snapshot is immutable from here on, and with 100,000 policies the slack is MiBs.
    fn shrink_to_fit(&mut self) {
        self.namespaces.shrink_to_fit();
        self.pods.shrink_to_fit();
        self.pods_by_ip.shrink_to_fit();
        self.services.shrink_to_fit();
        self.vips.shrink_to_fit();
        self.peer_authentications.shrink_to_fit();
        self.authorization_policies.shrink_to_fit();
        self.waypoint_policies.shrink_to_fit();
        self.virtual_services.shrink_to_fit();
        self.destination_rules.shrink_to_fit();
        self.service_entries.shrink_to_fit();
        self.gateways.shrink_to_fit();
        self.k8s_gateways.shrink_to_fit();
        self.waypoint_for.shrink_to_fit();
        self.request_authentications.shrink_to_fit();
        self.telemetries.shrink_to_fit();
        self.namespace_peer_auth.shrink_to_fit();
        self.authz_by_namespace.values_mut().for_each(Vec::shrink_to_fit);
        self.services_by_host.shrink_to_fit();
    }

    /// Cross-object checks for `sluice analyze`: selectors that select nothing. Only meaningful when
    /// the documents list the pods (an agent fed by Kubernetes learns them at run time).
    pub fn check_references(&self, docs: &[(PathBuf, Document)], diags: &mut Diagnostics) {
        self.check_peer_authentication_conflicts(docs, diags);
        super::references::check(self, docs, diags);
        if self.pods.is_empty() {
            return; // workloads come at run time (the API server, the CNI): nothing to check against
        }
        for (file, doc) in docs {
            let kind = doc.value["kind"].as_str().unwrap_or("");
            if !matches!(kind, "AuthorizationPolicy" | "PeerAuthentication" | "Service") {
                continue;
            }
            let name = doc.value["metadata"]["name"].as_str().unwrap_or("");
            let ns = doc.value["metadata"]["namespace"].as_str().unwrap_or("default");
            let path = if kind == "Service" { "spec.selector" } else { "spec.selector.matchLabels" };
            let selector = path.split('.').try_fold(&doc.value, |v, k| v.get(k)).and_then(Value::as_object);
            let Some(selector) = selector.filter(|s| !s.is_empty()) else { continue };
            let selects = self.pods.values().any(|p| {
                (p.namespace == ns || (kind != "Service" && ns == ROOT_NAMESPACE))
                    && selector.iter().all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
            });
            if !selects {
                let pos = doc.pos(path);
                diags.push(Diagnostic {
                    severity: Severity::Warning,
                    file: file.clone(),
                    line: pos.line,
                    column: pos.column,
                    object: Some(format!("{kind}/{ns}/{name}")),
                    field: Some(path.into()),
                    message: "selects no workload in the config".into(),
                    hint: Some("check the labels against the pods' metadata.labels".into()),
                });
            }
        }
    }

    /// The AuthorizationPolicies that select `w`, as indices into `authorization_policies`:
    /// precomputed for listed workloads, computed from the namespace index for a bare entry.
    pub fn authz_for<'a>(&'a self, w: &'a PodEntry) -> Cow<'a, [u32]> {
        if w.policies.resolved {
            return Cow::Borrowed(&w.policies.authz);
        }
        let mut out: Vec<u32> = [w.namespace.as_str(), ROOT_NAMESPACE]
            .iter()
            .take(if w.namespace == ROOT_NAMESPACE { 1 } else { 2 })
            .filter_map(|ns| self.authz_by_namespace.get(*ns))
            .flatten()
            .copied()
            .filter(|i| {
                self.authorization_policies
                    .get(*i as usize)
                    .is_some_and(|p| p.spec.selector.as_ref().is_none_or(|s| s.matches(&w.labels)))
            })
            .collect();
        out.sort_unstable();
        Cow::Owned(out)
    }

    /// The workload-scoped PeerAuthentication in force for `w`, if any.
    pub fn workload_peer_auth(&self, w: &PodEntry) -> Option<&PeerAuthentication> {
        if w.policies.resolved {
            return w.policies.peer_auth.and_then(|i| self.peer_authentications.get(i as usize));
        }
        self.peer_authentications
            .iter()
            .filter(|p| {
                p.namespace == w.namespace && p.spec.selector.as_ref().is_some_and(|s| s.matches(&w.labels))
            })
            .min_by(|a, b| a.name.cmp(&b.name))
    }

    /// The namespace-wide PeerAuthentication of `namespace`, if any.
    pub fn namespace_peer_auth(&self, namespace: &str) -> Option<&PeerAuthentication> {
        self.namespace_peer_auth.get(namespace).and_then(|i| self.peer_authentications.get(*i as usize))
    }

    /// Resolves, once per compile, which policies select each listed workload. Cost is
    /// O(policies x workloads of the policy's namespace), never per connection.
    fn index_policies(&mut self) {
        let ix = PodIndex::new(&self.pods);
        let mut resolved: Vec<WorkloadPolicies> = vec![WorkloadPolicies::default(); ix.keys.len()];
        let mut authz_by_namespace: HashMap<String, Vec<u32>> = HashMap::new();
        let no_labels = Labels::new();
        for (i, ap) in self.authorization_policies.iter().enumerate() {
            authz_by_namespace.entry(ap.namespace.clone()).or_default().push(i as u32);
            let scope = (ap.namespace != ROOT_NAMESPACE).then_some(ap.namespace.as_str());
            let selector = ap.spec.selector.as_ref().map_or(&no_labels, |s| &s.match_labels);
            for w in ix.select(scope, selector) {
                resolved[w as usize].authz.push(i as u32);
            }
        }
        let mut namespace_peer_auth: HashMap<String, u32> = HashMap::new();
        for (i, pa) in self.peer_authentications.iter().enumerate() {
            let Some(selector) = &pa.spec.selector else {
                let slot = namespace_peer_auth.entry(pa.namespace.clone()).or_insert(i as u32);
                if self.peer_authentications[*slot as usize].name > pa.name {
                    *slot = i as u32;
                }
                continue;
            };
            for w in ix.select(Some(pa.namespace.as_str()), &selector.match_labels) {
                let entry = &mut resolved[w as usize];
                let better = entry
                    .peer_auth
                    .and_then(|j| self.peer_authentications.get(j as usize))
                    .is_none_or(|cur| pa.name < cur.name);
                if better {
                    entry.peer_auth = Some(i as u32);
                }
            }
        }
        let by_key: HashMap<PodKey, WorkloadPolicies> =
            ix.keys.iter().map(|k| (*k).clone()).zip(resolved).collect();
        for (key, pod) in self.pods.iter_mut() {
            pod.policies = by_key.get(key).cloned().unwrap_or_default();
            pod.policies.resolved = true;
        }
        self.authz_by_namespace = authz_by_namespace;
        self.namespace_peer_auth = namespace_peer_auth;
    }

    /// PeerAuthentications at the same scope (two namespace-wide ones in one namespace, two
    /// mesh-wide ones, or two workload ones selecting the same workload) whose modes differ: Istio
    /// then picks the oldest, sluice the first by name; either way one of them is silently moot.
    fn check_peer_authentication_conflicts(&self, docs: &[(PathBuf, Document)], diags: &mut Diagnostics) {
        let where_is = |pa: &PeerAuthentication| {
            docs.iter().find(|(_, d)| {
                d.value["kind"] == "PeerAuthentication"
                    && d.value["metadata"]["name"] == pa.name.as_str()
                    && d.value["metadata"]["namespace"].as_str().unwrap_or("default") == pa.namespace
            })
        };
        let mode = |pa: &PeerAuthentication| {
            (pa.spec.mtls.as_ref().map(|m| m.mode), pa.spec.port_level_mtls.clone())
        };
        let mut pairs: Vec<(&PeerAuthentication, &PeerAuthentication, String)> = Vec::new();
        let pas = &self.peer_authentications;
        for (i, a) in pas.iter().enumerate() {
            for b in &pas[i + 1..] {
                if a.namespace != b.namespace || mode(a) == mode(b) {
                    continue;
                }
                let scope = match (&a.spec.selector, &b.spec.selector) {
                    (None, None) if a.namespace == ROOT_NAMESPACE => "mesh-wide".to_string(),
                    (None, None) => format!("namespace-wide in {}", a.namespace),
                    (Some(sa), Some(sb)) => {
                        let shared = self.pods.values().find(|p| {
                            p.namespace == a.namespace && sa.matches(&p.labels) && sb.matches(&p.labels)
                        });
                        match shared {
                            Some(p) => format!("both select {}/{}", p.namespace, p.name),
                            None if sa == sb => "the same selector".to_string(),
                            None => continue,
                        }
                    }
                    _ => continue,
                };
                pairs.push((a, b, scope));
            }
        }
        for (a, b, scope) in pairs {
            let (first, second) = if a.name <= b.name { (a, b) } else { (b, a) };
            let Some((file, doc)) = where_is(second) else { continue };
            let pos = doc.pos("spec");
            diags.push(Diagnostic {
                severity: Severity::Warning,
                file: file.clone(),
                line: pos.line,
                column: pos.column,
                object: Some(format!("PeerAuthentication/{}/{}", second.namespace, second.name)),
                field: Some("spec".into()),
                message: format!(
                    "conflicts with PeerAuthentication/{}/{} ({scope}) and has no effect: the first by name wins",
                    first.namespace, first.name
                ),
                hint: Some("keep one PeerAuthentication per scope, or make their modes agree".into()),
            });
        }
    }

    /// Computes each Service's endpoints from its selector and indexes its VIPs.
    fn link_services(&mut self) {
        let ix = PodIndex::new(&self.pods);
        for ((ns, _), svc) in self.services.iter_mut() {
            let svc = Arc::make_mut(svc); // sole owner while compiling: no copy
            if !svc.selector.is_empty() {
                let mut eps: Vec<IpAddr> = ix
                    .select(Some(ns.as_str()), &svc.selector)
                    .into_iter()
                    .flat_map(|i| ix.pod(i).ips.iter().copied())
                    .collect();
                eps.sort();
                svc.endpoints = eps;
            }
        }
        for ((ns, name), svc) in &self.services {
            if svc.host.is_none() {
                self.services_by_host.insert(svc.hostname(), (ns.clone(), name.clone()));
            }
            for vip in &svc.vips {
                for (i, p) in svc.ports.iter().enumerate() {
                    self.vips.insert(SocketAddr::new(*vip, p.port), (svc.clone(), i));
                }
            }
        }
    }
}

/// Per-document compile context: typed field access that records diagnostics.
struct Cx<'a> {
    file: &'a Path,
    doc: &'a Document,
    diags: &'a mut Diagnostics,
    object: Option<String>,
}

impl Cx<'_> {
    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.doc.value, |v, k| v.get(k))
    }

    fn push(&mut self, severity: Severity, field: &str, message: String, hint: &str) {
        let pos = self.doc.pos(field);
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            object: self.object.clone(),
            field: Some(field.to_string()),
            message,
            hint: Some(hint.to_string()),
        });
    }

    fn error(&mut self, field: &str, message: String, hint: &str) {
        self.push(Severity::Error, field, message, hint);
    }

    fn warning(&mut self, field: &str, message: String, hint: &str) {
        self.push(Severity::Warning, field, message, hint);
    }

    /// A `kind:` no row of the kind table reads. A misspelt kind of a group sluice reads is an
    /// error (ignoring it would drop the object: a DENY would stop denying); anything else is
    /// ignored with a warning.
    fn unknown_kind(&mut self, kind: &str, api_version: Option<&str>, doc_index: usize) {
        let did_you_mean =
            |nearest: Option<&str>| nearest.map(|n| format!("did you mean `{n}`? ")).unwrap_or_default();
        match kinds::classify_unknown(kind, api_version) {
            kinds::Unknown::Misspelt { group, known, nearest } => {
                let reads = if known.is_empty() {
                    String::new()
                } else {
                    let group = if group.is_empty() { "the core group".to_string() } else { group };
                    format!("; sluice reads {} from {group}", known.join(", "))
                };
                self.error(
                    "kind",
                    format!(
                        "unknown kind `{kind}` (document {doc_index} of the file){reads}; an object of a \
                         misspelt kind is never ignored, it would silently drop a policy"
                    ),
                    &format!("{}fix the `kind:` spelling; the last good config stays in force until then", did_you_mean(nearest)),
                );
            }
            kinds::Unknown::MisspeltGroup { group, nearest_group, nearest } => {
                let version = api_version.and_then(|v| v.rsplit_once('/')).map_or("v1", |(_, v)| v);
                self.error(
                "kind",
                format!(
                    "unknown kind `{kind}` in API group `{group}` (document {doc_index} of the file); sluice \
                     reads `{nearest}` from `{nearest_group}`, and both names are a typo away; an object of \
                     a misspelt kind is never ignored, it would silently drop a policy"
                ),
                &format!(
                    "did you mean `apiVersion: {nearest_group}/{version}` and `kind: {nearest}`? fix the \
                     `apiVersion:` and `kind:` spelling; the last good config stays in force until then"
                ),
            )
            }
            kinds::Unknown::Unrelated { nearest } => self.warning(
                "kind",
                format!("unknown kind `{kind}` ignored (document {doc_index} of the file)"),
                &format!("{}sluice reads Istio and Kubernetes kinds; nothing to do if this object is for another controller", did_you_mean(nearest)),
            ),
        }
    }

    fn string(&mut self, path: &str, required: bool) -> Option<String> {
        match self.get(path) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.error(path, "is required".into(), "add it");
                None
            }
            Some(other) => {
                self.error(path, format!("must be a non-empty string, found {other}"), "quote the value");
                None
            }
        }
    }

    /// `spec` deserialized as `T` and checked by `validate`; every issue becomes a diagnostic at
    /// its field. None when the spec does not parse or has an error.
    fn checked_spec<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        validate: fn(&T) -> Vec<Issue>,
    ) -> Option<T> {
        let spec = self.spec::<T>()?;
        let mut failed = false;
        for issue in validate(&spec) {
            let field =
                if issue.path.is_empty() { "spec".to_string() } else { format!("spec.{}", issue.path) };
            let severity = match issue.severity {
                IssueSeverity::Error => {
                    failed = true;
                    Severity::Error
                }
                IssueSeverity::Warning => Severity::Warning,
            };
            self.push(severity, &field, issue.message, &issue.hint);
        }
        (!failed).then_some(spec)
    }

    fn not_enforced(&mut self, kind: Kind) {
        if let Some(KindInfo { name, not_enforced: Some(why), .. }) = kind.info() {
            self.warning(
                "kind",
                format!("{name} is parsed and validated but not enforced yet: {why}"),
                "see docs/config.md for what each kind does today",
            );
        }
    }

    /// What the node proxy takes from a ServiceEntry: its addresses become virtual IPs in front of
    /// its endpoints (static addresses or the workloads its selector picks). Fields that need DNS
    /// or per-endpoint ports are named in warnings.
    fn service_entry(&mut self, namespace: &str, name: &str, spec: &ServiceEntrySpec) -> Option<Service> {
        let resolution = spec.resolution.unwrap_or(Resolution::None);
        match resolution {
            Resolution::Static | Resolution::None => {}
            other => {
                let spelled = serde_json::to_value(other).ok().and_then(|v| v.as_str().map(str::to_string));
                let other = spelled.unwrap_or_else(|| format!("{other:?}"));
                self.warning(
                    "spec.resolution",
                    format!(
                        "resolution {other} needs DNS, which the node proxy does not resolve; connections to \
                         these hosts go to the addresses the client resolved, uncaptured by this entry"
                    ),
                    "use resolution STATIC with endpoint addresses to have sluice balance them",
                );
                return None;
            }
        }
        let mut vips = Vec::new();
        for (i, a) in spec.addresses.iter().enumerate() {
            match a.parse::<IpAddr>() {
                Ok(ip) => vips.push(ip),
                Err(_) => self.warning(
                    &format!("spec.addresses[{i}]"),
                    format!("`{a}` is a range; the node proxy captures single addresses only"),
                    "list the addresses one by one",
                ),
            }
        }
        if vips.is_empty() {
            return None; // nothing to capture: clients connect to the endpoints themselves
        }
        if resolution == Resolution::None {
            self.warning(
                "spec.resolution",
                "resolution NONE: connections to the addresses pass through to the address the client dialled".into(),
                "use STATIC with endpoints to have sluice pick an endpoint",
            );
            return None;
        }
        let mut endpoints = Vec::new();
        for (i, ep) in spec.endpoints.iter().enumerate() {
            if !ep.ports.is_empty() {
                self.warning(
                    &format!("spec.endpoints[{i}].ports"),
                    "per-endpoint ports are not supported by the node proxy; the port's targetPort is used"
                        .into(),
                    "set spec.ports[].targetPort instead",
                );
            }
            match ep.address.as_deref().map(str::parse::<IpAddr>) {
                Some(Ok(ip)) => endpoints.push(ip),
                _ => self.warning(
                    &format!("spec.endpoints[{i}].address"),
                    "only IP addresses are supported as endpoints; this endpoint is skipped".into(),
                    "write the endpoint's IP address",
                ),
            }
        }
        endpoints.sort();
        let ports = spec
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.number).ok()?;
                let target_port = p.target_port.and_then(|t| u16::try_from(t).ok()).unwrap_or(port);
                Some(ServicePort { name: p.name.clone(), port, target_port })
            })
            .collect();
        Some(Service {
            namespace: namespace.to_string(),
            name: name.to_string(),
            vips,
            ports,
            selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()).unwrap_or_default(),
            endpoints,
            host: spec.hosts.first().cloned(),
            labels: Labels::new(),
        })
    }

    /// `spec` deserialized as `T`; a mismatch is one diagnostic naming the field serde rejected.
    fn spec<T: serde::de::DeserializeOwned + Default>(&mut self) -> Option<T> {
        let v = self.get("spec").cloned().unwrap_or(Value::Null);
        if v.is_null() {
            return Some(T::default());
        }
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                // The path of the value serde rejected (for an unknown field: the map holding it).
                let inner = e.path().to_string();
                let field =
                    if inner == "." || inner.is_empty() { "spec".into() } else { format!("spec.{inner}") };
                self.error(
                    &field,
                    e.inner().to_string(),
                    "check the field names and value types against the Istio API",
                );
                None
            }
        }
    }

    /// A string or a list of strings (optionally objects with `field`) parsed as IP addresses.
    fn ip_list(&mut self, path: &str, field: Option<&str>) -> Vec<IpAddr> {
        let items: Vec<(String, Value)> = match self.get(path).cloned() {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(a)) => {
                a.into_iter().enumerate().map(|(i, v)| (format!("{path}[{i}]"), v)).collect()
            }
            Some(v) => vec![(path.to_string(), v)],
        };
        let mut out = Vec::new();
        for (p, v) in items {
            let v = match field {
                Some(f) => v.get(f).cloned().unwrap_or(Value::Null),
                None => v,
            };
            match v.as_str().map(str::parse::<IpAddr>) {
                Some(Ok(ip)) => out.push(ip),
                // Kubernetes writes "None" for headless services.
                Some(Err(_)) if v.as_str() == Some("None") => {}
                _ => self.error(&p, format!("`{v}` is not an IP address"), "write an IPv4 or IPv6 address"),
            }
        }
        out
    }

    /// `spec.ports` of a Service.
    fn service_ports(&mut self) -> Vec<ServicePort> {
        let Some(Value::Array(items)) = self.get("spec.ports").cloned() else {
            self.error("spec.ports", "a Service needs at least one port".into(), "add spec.ports");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, p) in items.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            let valid = |v: Option<&Value>| v.and_then(Value::as_u64).filter(|n| (1..=65535).contains(n));
            let Some(port) = valid(p.get("port")) else {
                self.error(&format!("{path}.port"), "must be a port number 1-65535".into(), "set port");
                continue;
            };
            let target_port = match p.get("targetPort") {
                None | Some(Value::Null) => port,
                Some(v) => match valid(Some(v)) {
                    Some(t) => t,
                    None => {
                        self.error(
                            &format!("{path}.targetPort"),
                            format!("targetPort {v} is not supported (named ports are not yet)"),
                            "use the container's port number",
                        );
                        continue;
                    }
                },
            };
            let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            out.push(ServicePort { name, port: port as u16, target_port: target_port as u16 });
        }
        out
    }

    fn labels(&mut self, path: &str) -> Labels {
        match self.get(path).cloned() {
            None | Some(Value::Null) => Labels::new(),
            Some(Value::Object(m)) => {
                let mut out = Labels::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => self.error(
                            &format!("{path}.{k}"),
                            format!("label values must be strings, found {other}"),
                            "quote the value, e.g. \"true\"",
                        ),
                    }
                }
                out
            }
            Some(other) => {
                self.error(
                    path,
                    format!("must be a map of strings, found {other}"),
                    "write key: \"value\" pairs",
                );
                Labels::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    fn compile(text: &str) -> (Snapshot, Diagnostics) {
        let docs = yaml::parse(text).expect("yaml");
        let docs: Vec<_> = docs.into_iter().map(|d| (PathBuf::from("mesh.yaml"), d)).collect();
        let mut diags = Diagnostics::default();
        let s = Snapshot::compile(&docs, &mut diags);
        (s, diags)
    }

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: shop, labels: {istio.io/dataplane-mode: none}}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: legacy, labels: {istio.io/dataplane-mode: ambient}}
spec: {serviceAccountName: api-sa}
"#;

    #[test]
    fn enrollment_rules() {
        let (s, d) = compile(MESH);
        assert!(!d.has_errors(), "{d}");
        let cases = [
            ("shop", "web", true),
            ("shop", "batch", false),
            ("legacy", "old", false),
            ("legacy", "api", true),
            ("absent", "x", false),
        ];
        for (ns, pod, want) in cases {
            assert_eq!(s.enrollment(ns, pod) == EnrollDecision::Enrolled, want, "{ns}/{pod}");
        }
        assert_eq!(s.service_account("legacy", "api"), "api-sa");
        assert_eq!(s.service_account("shop", "web"), "default");
    }

    #[test]
    fn services_resolve_vips_to_selected_pod_endpoints() {
        let (s, d) = compile(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, labels: {app: web}}
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: other, labels: {app: web}}
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
        );
        assert!(!d.has_errors(), "{d}");
        let (svc, port) = s.service_by_vip("10.96.0.10:80".parse().expect("addr")).expect("vip");
        assert_eq!(svc.hostname(), "web.shop.svc.cluster.local");
        assert_eq!(port.target_port, 8080);
        let want: Vec<IpAddr> =
            ["10.0.0.1", "10.0.1.1", "fd00::1"].iter().map(|a| a.parse().expect("ip")).collect();
        assert_eq!(svc.endpoints, want);
        assert!(s.service_by_vip("10.96.0.10:81".parse().expect("addr")).is_none());
        assert_eq!(s.workload_by_ip("10.0.1.1".parse().expect("ip")).map(|p| p.name.as_str()), Some("b"));
    }

    #[test]
    fn bad_addresses_and_ports_are_reported() {
        let (_, d) = compile(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: nope}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n",
        );
        let e: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("status.podIP") && e[0].contains("is not an IP address"), "{}", e[0]);
        assert!(e[1].contains("already used by default/"), "{}", e[1]);
        assert!(e[2].contains("spec.ports[0].port"), "{}", e[2]);
    }

    #[test]
    fn errors_name_file_line_object_and_field() {
        let (_, d) = compile("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    on: 3\n");
        let e: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("mesh.yaml:6:9: error: Namespace/a: field `metadata.labels.on`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn missing_kind_and_duplicates_are_errors_unknown_kinds_warn() {
        let (_, d) = compile(
            "metadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Frobnicator\nmetadata: {name: f}\n",
        );
        let errors: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("field `kind`: is required"), "{}", errors[0]);
        assert!(errors[1].contains("duplicate object, first defined at mesh.yaml:3"), "{}", errors[1]);
        assert!(d.warnings().any(|w| w.message.contains("unknown kind `Frobnicator`")));
    }

    #[test]
    fn a_misspelt_kind_of_a_group_sluice_reads_is_an_error_never_a_dropped_policy() {
        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: a}\nspec: {action: DENY, rules: [{}]}\n";
        let (s, d) = compile(deny);
        assert!(!d.has_errors(), "{d}");
        assert_eq!(s.authorization_policies.len(), 1);
        // The kind renamed: an error naming file, line, document, kind, the group's kinds and the fix.
        let (_, d) = compile(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n{}",
            deny.replace("AuthorizationPolicy", "AuthorisationPolicy")
        ));
        let e: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("mesh.yaml:6:7: error: AuthorisationPolicy/a/d: field `kind`: unknown kind `AuthorisationPolicy` (document 2 of the file)"), "{}", e[0]);
        assert!(
            e[0].contains(
                "PeerAuthentication, AuthorizationPolicy, RequestAuthentication from security.istio.io"
            ),
            "{}",
            e[0]
        );
        assert!(e[0].contains("did you mean `AuthorizationPolicy`?"), "{}", e[0]);
        // v1 ConfigMap (document 1) stays a warning.
        assert!(d.warnings().any(|w| w.message.contains("unknown kind `ConfigMap` ignored")), "{d}");
        // The group misspelt too: still an error, naming the group and kind it meant.
        let (s2, d2) = compile(
            &deny.replace("AuthorizationPolicy", "AuthorisationPolicy").replace("security.", "securty."),
        );
        assert!(s2.authorization_policies.is_empty());
        let e2: Vec<String> = d2.errors().map(ToString::to_string).collect();
        assert_eq!(e2.len(), 1, "{e2:?}");
        assert!(
            e2[0].contains("unknown kind `AuthorisationPolicy` in API group `securty.istio.io`")
                && e2[0].contains(
                    "did you mean `apiVersion: security.istio.io/v1` and `kind: AuthorizationPolicy`?"
                ),
            "{}",
            e2[0]
        );
        // The other ways a known kind could be dropped are errors too: a wrong or missing apiVersion.
        for (changed, want) in [
            (
                deny.replace("security.istio.io/v1", "security.istio.io/v2"),
                "is not an apiVersion of AuthorizationPolicy",
            ),
            (deny.replace("apiVersion: security.istio.io/v1\n", ""), "field `apiVersion`: is required"),
            (
                deny.replace("kind: AuthorizationPolicy", "kind: ''"),
                "field `kind`: must be a non-empty string",
            ),
            (
                deny.replace("kind: AuthorizationPolicy", "kind: authorizationpolicy"),
                "did you mean `AuthorizationPolicy`?",
            ),
        ] {
            let (s, d) = compile(&changed);
            assert!(d.errors().any(|e| e.to_string().contains(want)), "{changed}: {d}");
            assert!(s.authorization_policies.is_empty());
        }
    }

    #[test]
    fn api_versions_are_checked_per_kind() {
        let (_, d) = compile(
            "kind: Namespace\nmetadata: {name: a}\n---\napiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: v, namespace: a}\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: a}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: a}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: a}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]}\n",
        );
        let e: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("mesh.yaml:1:1: error: Namespace/a: field `apiVersion`: is required for Namespace")
                && e[0].contains("add `apiVersion: v1`"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("`networking.istio.io/v2` is not an apiVersion of VirtualService")
                && e[1].contains("networking.istio.io/v1alpha3"),
            "{}",
            e[1]
        );
    }

    #[test]
    fn precomputed_policies_match_a_full_scan() {
        let mut text = String::new();
        for ns in ["a", "b", ROOT_NAMESPACE] {
            for app in ["web", "db"] {
                text += &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}, namespace: {ns}, labels: {{app: {app}}}}}\n---\n"
                );
                text += &format!(
                    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {app}-only, namespace: {ns}}}\nspec: {{selector: {{matchLabels: {{app: {app}}}}}, action: DENY}}\n---\n"
                );
                text += &format!(
                    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: z-{app}, namespace: {ns}}}\nspec: {{selector: {{matchLabels: {{app: {app}}}}}, mtls: {{mode: STRICT}}}}\n---\n"
                );
            }
            text += &format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: all, namespace: {ns}}}\nspec: {{}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a-web, namespace: {ns}}}\nspec: {{selector: {{matchLabels: {{app: web}}}}}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: ns, namespace: {ns}}}\nspec: {{}}\n---\n"
            );
        }
        let (s, d) = compile(&text);
        assert!(!d.has_errors(), "{d}");
        assert_eq!(s.pods.len(), 6);
        for pod in s.pods.values() {
            assert!(pod.policies.resolved);
            let mut bare = pod.clone();
            bare.policies = WorkloadPolicies::default();
            assert_eq!(s.authz_for(pod), s.authz_for(&bare), "{}/{}", pod.namespace, pod.name);
            let names: Vec<String> = s
                .authz_for(pod)
                .iter()
                .map(|i| {
                    let p = &s.authorization_policies[*i as usize];
                    format!("{}/{}", p.namespace, p.name)
                })
                .collect();
            let own = format!("{}/{}-only", pod.namespace, pod.name);
            assert!(names.contains(&own), "{names:?}");
            assert!(names.contains(&format!("{ROOT_NAMESPACE}/all")), "{names:?}");
            let other = if pod.name == "web" { "db" } else { "web" };
            assert!(!names.iter().any(|n| n.ends_with(&format!("{other}-only"))), "{names:?}");
            let pa = s.workload_peer_auth(pod).map(|p| p.name.as_str());
            assert_eq!(pa, s.workload_peer_auth(&bare).map(|p| p.name.as_str()));
            assert_eq!(pa, Some(if pod.name == "web" { "a-web" } else { "z-db" }), "first by name wins");
            assert_eq!(s.namespace_peer_auth(&pod.namespace).map(|p| p.name.as_str()), Some("ns"));
        }
    }

    #[test]
    fn conflicting_peer_authentications_at_one_scope_are_reported() {
        let pa = |ns: &str, name: &str, selector: &str, mode: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector}mtls: {{mode: {mode}}}}}\n---\n"
            )
        };
        let text = [
            pa("istio-system", "mesh-a", "", "STRICT"),
            pa("istio-system", "mesh-b", "", "PERMISSIVE"),
            pa("shop", "ns-a", "", "STRICT"),
            pa("shop", "ns-b", "", "STRICT"), // same mode: no conflict
            pa("shop", "web", "selector: {matchLabels: {app: web}}, ", "DISABLE"),
            pa("shop", "tier", "selector: {matchLabels: {tier: front}}, ", "STRICT"),
            pa("shop", "db", "selector: {matchLabels: {app: db}}, ", "DISABLE"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web, tier: front}}\n"
                .to_string(),
        ]
        .concat();
        let docs: Vec<_> =
            yaml::parse(&text).expect("yaml").into_iter().map(|d| (PathBuf::from("pa.yaml"), d)).collect();
        let mut diags = Diagnostics::default();
        let snap = Snapshot::compile(&docs, &mut diags);
        assert!(!diags.has_errors(), "{diags}");
        snap.check_references(&docs, &mut diags);
        let w: Vec<String> = diags
            .warnings()
            .filter(|d| d.message.contains("conflicts with"))
            .map(ToString::to_string)
            .collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("PeerAuthentication/istio-system/mesh-b")
                && w[0].contains("conflicts with PeerAuthentication/istio-system/mesh-a (mesh-wide)"),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("PeerAuthentication/shop/web") && w[1].contains("tier (both select shop/web-1)"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn service_entries_become_virtual_ips_and_l7_kinds_are_validated_and_named() {
        let (s, d) = compile(
            r#"apiVersion: v1
kind: Pod
metadata: {name: vm-proxy, namespace: shop, labels: {app: legacy-db}}
status: {podIP: 10.0.5.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.internal]
  addresses: [240.0.0.10, 240.0.1.0/24]
  ports: [{number: 5432, name: tcp, protocol: TCP, targetPort: 15432}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 10.0.9.1}, {address: 10.0.9.2, ports: {tcp: 6543}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: vms, namespace: shop}
spec:
  hosts: [vms.internal]
  addresses: [240.0.0.11]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy-db}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split, namespace: shop}
spec:
  hosts: [db.internal]
  http:
  - route:
    - {destination: {host: db.internal}, weight: 70}
    - {destination: {host: db.internal}, weight: 20}
"#,
        );
        let (svc, port) = s.service_by_vip("240.0.0.10:5432".parse().expect("addr")).expect("vip");
        assert_eq!(svc.hostname(), "db.internal");
        assert_eq!(port.target_port, 15432);
        let want: Vec<IpAddr> = ["10.0.9.1", "10.0.9.2"].iter().map(|a| a.parse().expect("ip")).collect();
        assert_eq!(svc.endpoints, want);
        let (vms, _) = s.service_by_vip("240.0.0.11:80".parse().expect("addr")).expect("selector entry");
        assert_eq!(vms.endpoints, vec!["10.0.5.1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(s.service_entries.len(), 2);
        let all: Vec<String> = d.0.iter().map(ToString::to_string).collect();
        let has = |needle: &str| all.iter().any(|l| l.contains(needle));
        assert!(
            has("ServiceEntry/shop/db: field `spec.addresses[1]`: `240.0.1.0/24` is a range"),
            "{all:#?}"
        );
        assert!(has("ServiceEntry/shop/db: field `spec.endpoints[1].ports`: per-endpoint ports"), "{all:#?}");
        // A validation error from the VirtualService rules, at its field, rejects the object.
        let e: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("mesh.yaml:34:7: error: VirtualService/shop/split: field `spec.http[0].route`: destination weights sum to 90"),
            "{}",
            e[0]
        );
        assert!(s.virtual_services.is_empty(), "an invalid VirtualService is not kept");
    }
}
