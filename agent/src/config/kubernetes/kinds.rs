//! The API kinds the Kubernetes source watches: group, version, kind and resource (plural) of each,
//! whether it comes from a CRD (and so may be absent), and what the mesh loses while it is absent.
//!
//! [`WATCHED`] is not written here: it is the watched rows of the one kind table,
//! [`crate::config::kinds::KINDS`], so the watchers, the snapshot order and the RBAC check
//! (`deploy/rbac.yaml`) follow that table. This module adds what only the Kubernetes source needs
//! (CRD names, kube's `ApiResource`).
use kube::core::ApiResource;

use crate::config::kinds::KINDS;

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

/// How many rows of [`KINDS`] the source watches.
const fn watched_count() -> usize {
    let (mut i, mut n) = (0, 0);
    while i < KINDS.len() {
        if KINDS[i].watch.is_some() {
            n += 1;
        }
        i += 1;
    }
    n
}

/// [`WATCHED`], built at compile time from the watched rows of [`KINDS`], in table order.
const WATCHED_KINDS: [WatchedKind; watched_count()] = {
    let empty =
        WatchedKind { group: "", version: "", kind: "", plural: "", namespaced: false, absent_means: "" };
    let mut out = [empty; watched_count()];
    let (mut i, mut n) = (0, 0);
    while i < KINDS.len() {
        if let Some(w) = KINDS[i].watch {
            out[n] = WatchedKind {
                group: w.group,
                version: w.version,
                kind: KINDS[i].name,
                plural: w.plural,
                namespaced: w.namespaced,
                absent_means: w.absent_means,
            };
            n += 1;
        }
        i += 1;
    }
    out
};

/// Every kind the source watches, in the order documents are handed to the compiler.
pub const WATCHED: &[WatchedKind] = &WATCHED_KINDS;

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
            let accepted = crate::config::kinds::api_versions(w.kind).unwrap_or_default();
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
