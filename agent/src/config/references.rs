//! Cross-object checks of routing config for `sluice analyze`: VirtualService hosts and route
//! destinations that name no known service, DestinationRules for unknown hosts, subsets that match
//! no workload, routes to subsets no DestinationRule defines, and routing config for Services no
//! waypoint serves (L7 config applies only to traffic that passes a waypoint). Only meaningful when the checked
//! config lists the services (and, for subsets, the workloads); otherwise they are skipped.
use std::path::PathBuf;

use super::{
    diag::{Diagnostic, Diagnostics, Severity},
    kinds::virtual_service::Destination,
    model::{Labels, Service, Snapshot},
    yaml::Document,
};

/// Whether `pattern` (an Istio host, possibly `*.suffix` or `*`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The service an Istio host names, read in `namespace` as Istio reads short names.
pub fn resolve<'a>(snap: &'a Snapshot, host: &str, namespace: &str) -> Option<&'a Service> {
    let fqdn = match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.cluster.local"),
        1 => format!("{host}.svc.cluster.local"),
        2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host.to_string(),
    };
    snap.services_by_host.get(&fqdn).and_then(|k| snap.services.get(k)).map(|s| &**s)
}

/// Whether any Service or ServiceEntry host is named (or covered) by `host`.
fn known(snap: &Snapshot, host: &str, namespace: &str) -> bool {
    if host.starts_with('*') {
        return true; // wildcards name whatever matches them
    }
    resolve(snap, host, namespace).is_some()
        || snap.service_entries.iter().any(|se| se.spec.hosts().iter().any(|h| host_matches(h, host)))
}

struct Sink<'a> {
    docs: &'a [(PathBuf, Document)],
    diags: &'a mut Diagnostics,
}

impl Sink<'_> {
    fn warn(&mut self, kind: &str, ns: &str, name: &str, field: &str, message: String, hint: &str) {
        let found = self.docs.iter().find(|(_, d)| {
            d.value["kind"] == kind
                && d.value["metadata"]["name"] == name
                && d.value["metadata"]["namespace"].as_str().unwrap_or("default") == ns
        });
        let Some((file, doc)) = found else { return };
        let pos = doc.pos(field);
        self.diags.push(Diagnostic {
            severity: Severity::Warning,
            file: file.clone(),
            line: pos.line,
            column: pos.column,
            object: Some(format!("{kind}/{ns}/{name}")),
            field: Some(field.to_string()),
            message,
            hint: Some(hint.to_string()),
        });
    }
}

/// Runs every routing check; see the module doc.
pub fn check(snap: &Snapshot, docs: &[(PathBuf, Document)], diags: &mut Diagnostics) {
    if snap.services.is_empty() {
        return; // services come at run time (the API server): nothing to check against
    }
    let mut sink = Sink { docs, diags };
    let with_pods = !snap.pods.is_empty();
    const NO_WAYPOINT_HINT: &str = "label the Service or its namespace istio.io/use-waypoint=<name of a Gateway of class istio-waypoint>";
    for vs in &snap.virtual_services {
        let (ns, name) = (vs.namespace.as_str(), vs.name.as_str());
        for (i, h) in vs.spec.hosts().iter().enumerate() {
            if let Some(svc) = resolve(snap, h, ns).filter(|s| snap.service_waypoint(s).is_none()) {
                sink.warn(
                    "VirtualService",
                    ns,
                    name,
                    &format!("spec.hosts[{i}]"),
                    format!(
                        "{} uses no waypoint, so this VirtualService does not apply to its traffic",
                        svc.hostname()
                    ),
                    NO_WAYPOINT_HINT,
                );
            }
            if !known(snap, h, ns) {
                sink.warn(
                    "VirtualService",
                    ns,
                    name,
                    &format!("spec.hosts[{i}]"),
                    format!("host `{h}` is no known Service or ServiceEntry host"),
                    "check the spelling, or add the Service/ServiceEntry",
                );
            }
        }
        let mut dests: Vec<(String, &Destination)> = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                dests.push((format!("spec.http[{i}].route[{j}].destination"), &d.destination));
            }
        }
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                dests.push((format!("spec.tcp[{i}].route[{j}].destination"), &d.destination));
            }
        }
        for (i, r) in vs.spec.tls.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                dests.push((format!("spec.tls[{i}].route[{j}].destination"), &d.destination));
            }
        }
        for (path, d) in dests {
            if !known(snap, &d.host, ns) {
                sink.warn(
                    "VirtualService",
                    ns,
                    name,
                    &format!("{path}.host"),
                    format!("destination host `{}` is no known Service or ServiceEntry host", d.host),
                    "check the spelling, or add the Service/ServiceEntry",
                );
                continue;
            }
            let Some(subset) = &d.subset else { continue };
            let target = resolve(snap, &d.host, ns).map(Service::hostname);
            let defined = snap.destination_rules.iter().any(|dr| {
                let same_host = match (&target, resolve(snap, dr.spec.host(), &dr.namespace)) {
                    (Some(t), Some(s)) => *t == s.hostname(),
                    _ => host_matches(dr.spec.host(), &d.host),
                };
                same_host && dr.spec.subsets.iter().any(|s| &s.name == subset)
            });
            if !defined {
                sink.warn(
                    "VirtualService",
                    ns,
                    name,
                    &format!("{path}.subset"),
                    format!("subset `{subset}` of `{}` is defined by no DestinationRule", d.host),
                    "add the subset to the host's DestinationRule",
                );
            }
        }
    }
    for dr in &snap.destination_rules {
        let (ns, name) = (dr.namespace.as_str(), dr.name.as_str());
        if !known(snap, dr.spec.host(), ns) {
            sink.warn(
                "DestinationRule",
                ns,
                name,
                "spec.host",
                format!("host `{}` is no known Service or ServiceEntry host", dr.spec.host()),
                "check the spelling, or add the Service/ServiceEntry",
            );
            continue;
        }
        if let Some(svc) = resolve(snap, dr.spec.host(), ns).filter(|s| snap.service_waypoint(s).is_none()) {
            sink.warn(
                "DestinationRule",
                ns,
                name,
                "spec.host",
                format!(
                    "{} uses no waypoint, so this DestinationRule does not apply to its traffic",
                    svc.hostname()
                ),
                NO_WAYPOINT_HINT,
            );
        }
        let Some(svc) = resolve(snap, dr.spec.host(), ns).filter(|_| with_pods) else { continue };
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let mut wanted: Labels = svc.selector.clone();
            wanted.extend(subset.labels.clone());
            let matches = snap.pods.values().any(|p| {
                p.namespace == svc.namespace && wanted.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            });
            if !matches {
                sink.warn(
                    "DestinationRule",
                    ns,
                    name,
                    &format!("spec.subsets[{i}].labels"),
                    format!("subset `{}` matches no workload of {}", subset.name, svc.hostname()),
                    "check the labels against the pods behind the service",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    const MESH: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
status: {podIP: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec: {hosts: ["*.example.com"], ports: [{number: 443, name: https, protocol: TLS}], resolution: NONE, location: MESH_EXTERNAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web, api.example.com, nothere.shop.svc.cluster.local]
  http:
  - route:
    - destination: {host: web.shop.svc.cluster.local, subset: v1}
      weight: 50
    - destination: {host: web, subset: v3}
      weight: 50
  tcp:
  - route:
    - destination: {host: gone}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: stale, namespace: shop}
spec: {host: old.shop.svc.cluster.local}
"#;

    #[test]
    fn unknown_hosts_subsets_and_empty_subsets_are_reported_where_they_are() {
        let docs: Vec<_> =
            yaml::parse(MESH).expect("yaml").into_iter().map(|d| (PathBuf::from("r.yaml"), d)).collect();
        let mut diags = Diagnostics::default();
        let snap = Snapshot::compile(&docs, &mut diags);
        assert!(!diags.has_errors(), "{diags}");
        let mut refs = Diagnostics::default();
        check(&snap, &docs, &mut refs);
        let got: Vec<String> = refs.0.iter().map(ToString::to_string).collect();
        let want = [
            "r.yaml:20:11: warning: VirtualService/shop/web: field `spec.hosts[0]`: web.shop.svc.cluster.local uses no waypoint",
            "r.yaml:20:33: warning: VirtualService/shop/web: field `spec.hosts[2]`: host `nothere.shop.svc.cluster.local` is no known Service or ServiceEntry host",
            "r.yaml:25:40: warning: VirtualService/shop/web: field `spec.http[0].route[1].destination.subset`: subset `v3` of `web` is defined by no DestinationRule",
            "r.yaml:29:27: warning: VirtualService/shop/web: field `spec.tcp[0].route[0].destination.host`: destination host `gone` is no known Service or ServiceEntry host",
            "r.yaml:35:9: warning: DestinationRule/shop/web: field `spec.host`: web.shop.svc.cluster.local uses no waypoint",
            "r.yaml:38:24: warning: DestinationRule/shop/web: field `spec.subsets[1].labels`: subset `v2` matches no workload of web.shop.svc.cluster.local",
            "r.yaml:43:14: warning: DestinationRule/shop/stale: field `spec.host`: host `old.shop.svc.cluster.local` is no known Service or ServiceEntry host",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "\n got: {g}\nwant: {w}");
        }
    }

    #[test]
    fn short_names_resolve_in_the_objects_namespace() {
        let docs: Vec<_> =
            yaml::parse(MESH).expect("yaml").into_iter().map(|d| (PathBuf::from("r.yaml"), d)).collect();
        let snap = Snapshot::compile(&docs, &mut Diagnostics::default());
        for host in ["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"] {
            assert_eq!(resolve(&snap, host, "shop").map(|s| s.name.as_str()), Some("web"), "{host}");
        }
        assert!(resolve(&snap, "web", "other").is_none());
        assert!(known(&snap, "api.example.com", "shop"), "covered by the ServiceEntry wildcard");
    }
}
