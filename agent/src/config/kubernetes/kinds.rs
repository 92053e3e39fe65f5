//! The API kinds the Kubernetes source watches: group, version, kind and resource (plural) of each,
//! whether it comes from a CRD (and so may be absent), and what the mesh loses while it is absent.
//!
//! This table is the single list the watchers, the snapshot order and the RBAC check
//! (`deploy/rbac.yaml`) are derived from.
use kube::core::ApiResource;

/// One watched API kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedKind {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs and RBAC rules (`pods`, `peerauthentications`).
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// What the mesh loses while this API is not served (CRD not installed).
    pub absent_means: &'static str,
}

impl WatchedKind {
    /// `group/version`, or `version` for the core group, as `apiVersion` spells it.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The CRD that serves this kind (`peerauthentications.security.istio.io`); `None` for core.
    pub fn crd(&self) -> Option<String> {
        (!self.group.is_empty()).then(|| format!("{}.{}", self.plural, self.group))
    }

    /// `apiVersion Kind`, for logs and errors.
    pub fn label(&self) -> String {
        format!("{} {}", self.api_version(), self.kind)
    }

    /// The dynamic API description kube's `Api::all_with` and reflectors need.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }
}

const fn k(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    absent_means: &'static str,
) -> WatchedKind {
    WatchedKind { group, version, kind, plural, namespaced, absent_means }
}

/// Every kind the source watches, in the order documents are handed to the compiler.
pub const WATCHED: &[WatchedKind] = &[
    k("", "v1", "Namespace", "namespaces", false, "no namespace is enrolled"),
    k("", "v1", "Pod", "pods", true, "no pod is known"),
    k("", "v1", "Service", "services", true, "no service VIP is resolved"),
    k(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
        "no PeerAuthentication applies (mesh-default mTLS mode)",
    ),
    k(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
        "no AuthorizationPolicy applies (traffic is not restricted by policy)",
    ),
    k(
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
        true,
        "no RequestAuthentication applies",
    ),
    k("networking.istio.io", "v1", "VirtualService", "virtualservices", true, "no VirtualService applies"),
    k("networking.istio.io", "v1", "DestinationRule", "destinationrules", true, "no DestinationRule applies"),
    k("networking.istio.io", "v1", "ServiceEntry", "serviceentries", true, "no ServiceEntry is known"),
    k("networking.istio.io", "v1", "Gateway", "gateways", true, "no Istio Gateway is known"),
    k("telemetry.istio.io", "v1", "Telemetry", "telemetries", true, "no Telemetry applies"),
    k(
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
        "gateways",
        true,
        "no Gateway API gateway (waypoint) is known",
    ),
];

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};

    use super::*;

    #[test]
    fn core_kinds_match_k8s_openapi() {
        for ar in [
            ApiResource::erase::<Namespace>(&()),
            ApiResource::erase::<Pod>(&()),
            ApiResource::erase::<Service>(&()),
        ] {
            let w = WATCHED.iter().find(|w| w.kind == ar.kind).expect("watched");
            assert_eq!(w.api_resource(), ar);
            assert_eq!(w.crd(), None);
        }
    }

    #[test]
    fn every_watched_api_version_is_one_the_compiler_accepts() {
        for w in WATCHED {
            let accepted = crate::config::model::api_versions(w.kind).unwrap_or_default();
            assert!(accepted.contains(&w.api_version().as_str()), "{} not accepted: {accepted:?}", w.label());
        }
    }

    #[test]
    fn crd_names_and_labels() {
        let pa = WATCHED.iter().find(|w| w.kind == "PeerAuthentication").expect("watched");
        assert_eq!(pa.crd().as_deref(), Some("peerauthentications.security.istio.io"));
        assert_eq!(pa.label(), "security.istio.io/v1 PeerAuthentication");
        let gws: Vec<String> =
            WATCHED.iter().filter(|w| w.kind == "Gateway").filter_map(WatchedKind::crd).collect();
        assert_eq!(gws, ["gateways.networking.istio.io", "gateways.gateway.networking.k8s.io"]);
    }
}
