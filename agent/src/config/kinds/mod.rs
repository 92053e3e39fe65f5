//! The kinds sluice reads: [`KINDS`], the one table of them, and one file per Istio or Gateway API
//! kind with the wire shape of its `spec` (Istio's field names, unknown fields rejected) and the
//! checks Istio's own validation runs on it (`validate()`, returning [`common::Issue`]s).
//!
//! [`KINDS`] says, per kind, its `kind:` name, the apiVersions the compiler accepts, how the
//! Kubernetes source watches it and whether it is applied; the compiler's apiVersion check, its
//! dispatch (an exhaustive `match` on [`Kind`]) and the Kubernetes watch list
//! (`kubernetes::kinds::WATCHED`, and the RBAC check built on it) all read this table. The core
//! Kubernetes kinds (Namespace, Pod, Service) and sluice's Workload have rows but no file: the
//! compiler reads their few fields directly.
//!
//! Layering: [`common`] holds what several kinds share and imports no kind; each kind file imports
//! [`common`] (and `config::duration`) and no other kind; the snapshot compiler (`Snapshot::compile`)
//! imports the kinds. Nothing here imports the compiler, the sources or anything outside `config`.
//!
//! Adding a kind: its file here (spec type, `validate()`, tests), a [`Kind`] variant with its row
//! in [`KINDS`] (a test fails until the row exists), and the compile arm the exhaustive match then
//! demands; `deploy/rbac.yaml` needs the new resource if the kind is watched (a test says so).
pub mod authorization_policy;
pub mod common;
pub mod destination_rule;
pub mod gateway_api;
pub mod istio_gateway;
pub mod peer_authentication;
pub mod request_authentication;
pub mod service_entry;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod virtual_service;

/// sluice's own light stand-in for a Pod in file configs.
pub const WORKLOAD_API_VERSION: &str = "sluice.dev/v1alpha1";

/// Every kind sluice reads. The snapshot compiler matches on it exhaustively, so a new variant does
/// not build until it has a compile arm (and a test checks it has one row in [`KINDS`]).
///
/// Declaration order is the order hints list a `kind:`'s apiVersions in when two API groups share
/// the name: the Gateway API `Gateway` (waypoints) before Istio's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    /// sluice's light Pod for file configs ([`WORKLOAD_API_VERSION`]).
    Workload,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    /// The gateway.networking.k8s.io Gateway ([`gateway_api`]), waypoints among them.
    Gateway,
    /// The networking.istio.io Gateway ([`istio_gateway`]): ingress/egress, which sluice does not run.
    IstioGateway,
    Telemetry,
}

/// How the Kubernetes source watches a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// The version listed and watched (one of the kind's accepted apiVersions).
    pub version: &'static str,
    /// The resource name in URLs and RBAC rules (`pods`, `peerauthentications`).
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// What the mesh loses while this API is not served (CRD not installed).
    pub absent_means: &'static str,
}

/// One row of [`KINDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: Kind,
    /// The `kind:` of its documents.
    pub name: &'static str,
    /// The apiVersions accepted, spelled as Istio and Kubernetes serve them; the first is the
    /// preferred one, named in hints.
    pub api_versions: &'static [&'static str],
    /// How the Kubernetes source watches it; None for a kind only file configs carry.
    pub watch: Option<Watch>,
    /// Why a kind that parses and validates is not applied by the node proxy (a warning says so).
    pub not_enforced: Option<&'static str>,
}

const ISTIO_NETWORKING: &[&str] =
    &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];
const ISTIO_SECURITY: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

const fn row(
    kind: Kind,
    name: &'static str,
    api_versions: &'static [&'static str],
    watch: Option<Watch>,
) -> KindInfo {
    KindInfo { kind, name, api_versions, watch, not_enforced: None }
}

const fn watch(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    namespaced: bool,
    absent_means: &'static str,
) -> Option<Watch> {
    Some(Watch { group, version, plural, namespaced, absent_means })
}

/// The one table of kinds: what the compiler accepts (`apiVersion` checks), what it compiles
/// ([`Kind`]) and what the Kubernetes source watches (`kubernetes::kinds::WATCHED`, and from it
/// the RBAC check). Rows are in the order the Kubernetes source hands documents to the compiler.
pub const KINDS: &[KindInfo] = &[
    row(
        Kind::Namespace,
        "Namespace",
        &["v1"],
        watch("", "v1", "namespaces", false, "no namespace is enrolled"),
    ),
    row(Kind::Pod, "Pod", &["v1"], watch("", "v1", "pods", true, "no pod is known")),
    row(Kind::Service, "Service", &["v1"], watch("", "v1", "services", true, "no service VIP is resolved")),
    row(Kind::Workload, "Workload", &[WORKLOAD_API_VERSION], None),
    row(
        Kind::PeerAuthentication,
        "PeerAuthentication",
        ISTIO_SECURITY,
        watch(
            "security.istio.io",
            "v1",
            "peerauthentications",
            true,
            "no PeerAuthentication applies (mesh-default mTLS mode)",
        ),
    ),
    row(
        Kind::AuthorizationPolicy,
        "AuthorizationPolicy",
        ISTIO_SECURITY,
        watch(
            "security.istio.io",
            "v1",
            "authorizationpolicies",
            true,
            "no AuthorizationPolicy applies (traffic is not restricted by policy)",
        ),
    ),
    row(
        Kind::RequestAuthentication,
        "RequestAuthentication",
        ISTIO_SECURITY,
        watch("security.istio.io", "v1", "requestauthentications", true, "no RequestAuthentication applies"),
    ),
    row(
        Kind::VirtualService,
        "VirtualService",
        ISTIO_NETWORKING,
        watch("networking.istio.io", "v1", "virtualservices", true, "no VirtualService applies"),
    ),
    row(
        Kind::DestinationRule,
        "DestinationRule",
        ISTIO_NETWORKING,
        watch("networking.istio.io", "v1", "destinationrules", true, "no DestinationRule applies"),
    ),
    row(
        Kind::ServiceEntry,
        "ServiceEntry",
        ISTIO_NETWORKING,
        watch("networking.istio.io", "v1", "serviceentries", true, "no ServiceEntry is known"),
    ),
    row(
        Kind::IstioGateway,
        "Gateway",
        ISTIO_NETWORKING,
        watch("networking.istio.io", "v1", "gateways", true, "no Istio Gateway is known"),
    ),
    KindInfo {
        not_enforced: Some("the node proxy reports its fixed set of Istio TCP metrics"),
        ..row(
            Kind::Telemetry,
            "Telemetry",
            &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"],
            watch("telemetry.istio.io", "v1", "telemetries", true, "no Telemetry applies"),
        )
    },
    row(
        Kind::Gateway,
        "Gateway",
        &["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"],
        watch(
            "gateway.networking.k8s.io",
            "v1",
            "gateways",
            true,
            "no Gateway API gateway (waypoint) is known",
        ),
    ),
];

impl Kind {
    /// This kind's row of [`KINDS`].
    pub fn info(self) -> Option<&'static KindInfo> {
        KINDS.iter().find(|k| k.kind == self)
    }
}

/// Whether sluice reads documents of `kind: name` (under some apiVersion).
pub fn is_known(name: &str) -> bool {
    KINDS.iter().any(|k| k.name == name)
}

/// The kind of a document with `kind: name` and `apiVersion: api_version`; None when no row accepts
/// that pair.
pub fn resolve(name: &str, api_version: &str) -> Option<Kind> {
    KINDS.iter().find(|k| k.name == name && k.api_versions.contains(&api_version)).map(|k| k.kind)
}

/// The apiVersions accepted for `kind: name`, preferred first (the rows sharing the name in
/// [`Kind`] order), or None for a kind sluice does not read.
pub fn api_versions(name: &str) -> Option<Vec<&'static str>> {
    let mut rows: Vec<&KindInfo> = KINDS.iter().filter(|k| k.name == name).collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by_key(|k| k.kind);
    Some(rows.iter().flat_map(|k| k.api_versions.iter().copied()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, spelled through an exhaustive match so a new one must be listed here too.
    fn all() -> Vec<Kind> {
        let mut out = Vec::new();
        let mut next = Some(Kind::Namespace);
        while let Some(k) = next {
            out.push(k);
            next = match k {
                Kind::Namespace => Some(Kind::Pod),
                Kind::Pod => Some(Kind::Service),
                Kind::Service => Some(Kind::Workload),
                Kind::Workload => Some(Kind::PeerAuthentication),
                Kind::PeerAuthentication => Some(Kind::AuthorizationPolicy),
                Kind::AuthorizationPolicy => Some(Kind::RequestAuthentication),
                Kind::RequestAuthentication => Some(Kind::VirtualService),
                Kind::VirtualService => Some(Kind::DestinationRule),
                Kind::DestinationRule => Some(Kind::ServiceEntry),
                Kind::ServiceEntry => Some(Kind::Gateway),
                Kind::Gateway => Some(Kind::IstioGateway),
                Kind::IstioGateway => Some(Kind::Telemetry),
                Kind::Telemetry => None,
            };
        }
        out
    }

    #[test]
    fn every_kind_has_exactly_one_row() {
        for k in all() {
            assert_eq!(KINDS.iter().filter(|r| r.kind == k).count(), 1, "{k:?}");
        }
        assert_eq!(KINDS.len(), all().len());
    }

    #[test]
    fn a_watched_version_is_one_its_own_row_accepts() {
        for r in KINDS {
            assert!(!r.api_versions.is_empty(), "{:?}", r.kind);
            if let Some(w) = r.watch {
                let v = if w.group.is_empty() {
                    w.version.to_string()
                } else {
                    format!("{}/{}", w.group, w.version)
                };
                assert!(r.api_versions.contains(&v.as_str()), "{:?} watches {v}", r.kind);
            }
        }
    }

    #[test]
    fn shared_names_resolve_by_api_version_and_hint_the_gateway_api_first() {
        assert_eq!(resolve("Gateway", "networking.istio.io/v1beta1"), Some(Kind::IstioGateway));
        assert_eq!(resolve("Gateway", "gateway.networking.k8s.io/v1"), Some(Kind::Gateway));
        assert_eq!(resolve("Gateway", "v1"), None);
        assert_eq!(resolve("Frobnicator", "v1"), None);
        let gw = api_versions("Gateway").unwrap_or_default();
        assert_eq!(gw.first(), Some(&"gateway.networking.k8s.io/v1"));
        assert_eq!(gw.len(), 5);
        assert_eq!(api_versions("Frobnicator"), None);
        assert!(is_known("Workload") && !is_known("Frobnicator"));
    }
}
