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

/// The API group of an apiVersion: `security.istio.io` for `security.istio.io/v1`, empty for the core
/// group (`v1`).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// The kinds sluice reads from API group `group`, in [`KINDS`] order without repeats; empty for a
/// group it reads nothing from. Derived from the table, so a new row extends it.
pub fn kinds_of_group(group: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KINDS {
        if k.api_versions.iter().any(|v| group_of(v) == group) && !out.contains(&k.name) {
            out.push(k.name);
        }
    }
    out
}

/// Real kinds of the groups sluice reads that it deliberately does not read (upstream Istio and
/// Gateway API kinds): ignored with a warning, never mistaken for a misspelt kind of that group.
pub const IGNORED_KINDS: &[(&str, &[&str])] = &[
    ("networking.istio.io", &["Sidecar", "WorkloadEntry", "WorkloadGroup", "EnvoyFilter", "ProxyConfig"]),
    (
        "gateway.networking.k8s.io",
        &[
            "GatewayClass",
            "HTTPRoute",
            "GRPCRoute",
            "TCPRoute",
            "TLSRoute",
            "UDPRoute",
            "ReferenceGrant",
            "BackendTLSPolicy",
        ],
    ),
];

/// What a document's unknown `kind:` is, given its apiVersion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// Not a kind sluice reads, in a group it reads nothing from (`apps/v1 Deployment`, `v1
    /// ConfigMap`), or a real upstream kind sluice ignores ([`IGNORED_KINDS`]): ignored, a warning.
    Unrelated { nearest: Option<&'static str> },
    /// A kind that does not exist in a group sluice reads (`security.istio.io`), or a near miss of
    /// a kind sluice reads with no or a core apiVersion: almost certainly a typo, and ignoring it
    /// would drop the object (a DENY would stop denying). An error.
    Misspelt { group: String, known: Vec<&'static str>, nearest: Option<&'static str> },
    /// A near miss of a kind sluice reads in a near miss of a group it reads
    /// (`securty.istio.io/v1 AuthorisationPolicy`): both misspelt, still a typo, an error naming
    /// the group and kind it most likely meant.
    MisspeltGroup { group: String, nearest_group: &'static str, nearest: &'static str },
}

/// The non-core API groups sluice reads, in [`KINDS`] order without repeats.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KINDS {
        for v in k.api_versions {
            let g = group_of(v);
            if !g.is_empty() && !out.contains(&g) {
                out.push(g);
            }
        }
    }
    out
}

/// Classifies a `kind: name` that [`is_known`] says sluice does not read.
pub fn classify_unknown(name: &str, api_version: Option<&str>) -> Unknown {
    let group = api_version.map(group_of);
    let known = group.map(kinds_of_group).unwrap_or_default();
    let ignored =
        group.is_some_and(|g| IGNORED_KINDS.iter().any(|(ig, kinds)| *ig == g && kinds.contains(&name)));
    // The kinds a typo could have meant: of its group when sluice reads that group, else all.
    let candidates: Vec<&'static str> = if known.is_empty() || group == Some("") {
        KINDS.iter().map(|k| k.name).collect()
    } else {
        known.clone()
    };
    let nearest = nearest(name, &candidates);
    match group {
        _ if ignored => Unknown::Unrelated { nearest: None },
        // A non-core group sluice reads: every kind sluice does not know there is a typo.
        Some(g) if !g.is_empty() && !known.is_empty() => {
            Unknown::Misspelt { group: g.to_string(), known, nearest }
        }
        // The core group or no apiVersion: only a near miss is a typo (`Namespce`, not `ConfigMap`).
        Some("") | None if nearest.is_some() => Unknown::Misspelt {
            group: group.unwrap_or_default().to_string(),
            known: if group.is_some() { known } else { Vec::new() },
            nearest,
        },
        // A group sluice does not read, but within a typo of one it does, and a kind within a typo
        // of one of that group's kinds: both misspelt.
        Some(g) if !g.is_empty() => {
            let both = self::nearest(g, &groups())
                .and_then(|ng| self::nearest(name, &kinds_of_group(ng)).map(|nk| (ng, nk)));
            match both {
                Some((nearest_group, nk)) => {
                    Unknown::MisspeltGroup { group: g.to_string(), nearest_group, nearest: nk }
                }
                None => Unknown::Unrelated { nearest },
            }
        }
        _ => Unknown::Unrelated { nearest },
    }
}

/// The candidate closest to `name` by edit distance (ignoring case), if close enough to be a typo:
/// at most 2 edits and fewer than a third of the name's length (`Pod` is not a typo of `Node`).
pub fn nearest(name: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&name, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2 && *d * 3 < c.len().max(name.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters (kind names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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

    #[test]
    fn unknown_kinds_of_groups_sluice_reads_are_typos_others_are_unrelated() {
        // The groups come from the table: a new row's group is covered without a list to update.
        for r in KINDS {
            for v in r.api_versions {
                assert!(kinds_of_group(group_of(v)).contains(&r.name), "{v}");
            }
        }
        assert_eq!(
            kinds_of_group("security.istio.io"),
            ["PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"]
        );
        let typo = classify_unknown("AuthorisationPolicy", Some("security.istio.io/v1"));
        let Unknown::Misspelt { group, known, nearest } = typo else { panic!("{typo:?}") };
        assert_eq!(group, "security.istio.io");
        assert_eq!(known.len(), 3);
        assert_eq!(nearest, Some("AuthorizationPolicy"));
        // Far from every kind of the group: still an error, just without a suggestion.
        assert!(matches!(
            classify_unknown("Frobnicator", Some("networking.istio.io/v1")),
            Unknown::Misspelt { nearest: None, .. }
        ));
        assert!(matches!(
            classify_unknown("Telemetri", Some("telemetry.istio.io/v1")),
            Unknown::Misspelt { .. }
        ));
        assert!(matches!(
            classify_unknown("Gatewy", Some("gateway.networking.k8s.io/v1")),
            Unknown::Misspelt { nearest: Some("Gateway"), .. }
        ));
        // Both the group and the kind misspelt: an error naming both.
        assert_eq!(
            classify_unknown("AuthorisationPolicy", Some("securty.istio.io/v1")),
            Unknown::MisspeltGroup {
                group: "securty.istio.io".into(),
                nearest_group: "security.istio.io",
                nearest: "AuthorizationPolicy"
            }
        );
        // A near group with a kind far from its kinds, or a far group, stays a warning.
        for (name, v) in [("Frobnicator", "securty.istio.io/v1"), ("AuthorisationPolicy", "example.com/v1")] {
            assert!(matches!(classify_unknown(name, Some(v)), Unknown::Unrelated { .. }), "{v} {name}");
        }
        // Real upstream kinds sluice ignores, and unrelated groups, are warnings.
        for (name, v) in [
            ("HTTPRoute", "gateway.networking.k8s.io/v1"),
            ("Sidecar", "networking.istio.io/v1"),
            ("Deployment", "apps/v1"),
            ("ConfigMap", "v1"),
            ("Node", "v1"),
            ("WasmPlugin", "extensions.istio.io/v1alpha1"),
        ] {
            assert!(matches!(classify_unknown(name, Some(v)), Unknown::Unrelated { .. }), "{v} {name}");
        }
        // The core group and a missing apiVersion: a near miss of a kind sluice reads is a typo.
        assert!(matches!(
            classify_unknown("Namespce", Some("v1")),
            Unknown::Misspelt { nearest: Some("Namespace"), .. }
        ));
        assert!(matches!(
            classify_unknown("authorizationpolicy", None),
            Unknown::Misspelt { nearest: Some("AuthorizationPolicy"), .. }
        ));
        assert!(matches!(classify_unknown("Frobnicator", None), Unknown::Unrelated { nearest: None }));
    }
}
