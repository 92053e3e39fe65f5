//! Route selection, as pure functions of the snapshot and one request: which VirtualService and
//! which of its `http` routes a request takes (Istio's match semantics), which weighted destination,
//! and which endpoints that destination's host and subset stand for (DestinationRule subsets).
//!
//! Nothing here does I/O; the request phases ([`super::phases`]) act on what these return.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use http::HeaderMap;
use parking_lot::Mutex;
use regex::Regex;

use crate::config::{
    Snapshot,
    kinds::{
        common::{StringMatch, StringMatcher},
        destination_rule::{DestinationRuleSpec, LoadBalancerSettings, Subset},
        virtual_service::{
            HttpMatchRequest, HttpRoute, HttpRouteDestination, L4MatchAttributes, TcpRoute,
            VirtualServiceSpec,
        },
    },
    model::{Labels, Object, PodEntry, Service},
    references::{host_matches, resolve},
};

/// What routing looks at in one request.
#[derive(Clone, Copy, Debug)]
pub struct Req<'a> {
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// The query string without `?` ("" when none).
    pub query: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    /// The Service port the client addressed.
    pub port: u16,
    /// The client workload, when the waypoint knows it (by its address in the snapshot).
    pub source: Option<&'a PodEntry>,
    /// The client's namespace from its verified identity.
    pub source_namespace: Option<&'a str>,
}

/// Compiled regexes, shared by all requests. Bounded: cleared when full, so a config with many
/// distinct patterns costs recompiles, never unbounded memory.
#[derive(Default)]
pub struct RegexCache(Mutex<HashMap<String, Option<Arc<Regex>>>>);

const REGEX_CACHE_MAX: usize = 4096;

impl RegexCache {
    /// Whether `value` matches `pattern` entirely (RE2/Envoy semantics: anchored at both ends).
    /// An invalid pattern (rejected by validation, so only reachable through a bug) never matches.
    pub fn full_match(&self, pattern: &str, value: &str) -> bool {
        let re = {
            let mut m = self.0.lock();
            if let Some(r) = m.get(pattern) {
                r.clone()
            } else {
                if m.len() >= REGEX_CACHE_MAX {
                    m.clear();
                }
                let r = Regex::new(&format!("^(?:{pattern})$")).ok().map(Arc::new);
                m.insert(pattern.to_string(), r.clone());
                r
            }
        };
        re.is_some_and(|r| r.is_match(value))
    }
}

pub fn string_match(m: &StringMatch, value: Option<&str>, ignore_case: bool, re: &RegexCache) -> bool {
    let Some(v) = value else {
        return false;
    };
    match m.matcher() {
        StringMatcher::Exact(e) if ignore_case => e.eq_ignore_ascii_case(v),
        StringMatcher::Exact(e) => e == v,
        StringMatcher::Prefix(p) if ignore_case => {
            v.len() >= p.len() && v.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        }
        StringMatcher::Prefix(p) => v.starts_with(p),
        StringMatcher::Regex(r) => re.full_match(r, v),
        StringMatcher::Any => true,
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// One `HTTPMatchRequest`: every field that is set must match.
pub fn request_matches(m: &HttpMatchRequest, r: &Req<'_>, re: &RegexCache) -> bool {
    let ic = m.ignore_uri_case.unwrap_or(false);
    m.uri.as_ref().is_none_or(|u| string_match(u, Some(r.path), ic, re))
        && m.scheme.as_ref().is_none_or(|s| string_match(s, Some(r.scheme), false, re))
        && m.method.as_ref().is_none_or(|s| string_match(s, Some(r.method), false, re))
        && m.authority.as_ref().is_none_or(|s| string_match(s, Some(r.authority), false, re))
        && m.headers
            .iter()
            .all(|(k, v)| string_match(v, header(r.headers, &k.to_ascii_lowercase()), false, re))
        && m.without_headers
            .iter()
            .all(|(k, v)| !string_match(v, header(r.headers, &k.to_ascii_lowercase()), false, re))
        && m.query_params.iter().all(|(k, v)| string_match(v, query_param(r.query, k), false, re))
        && m.port.is_none_or(|p| p == u32::from(r.port))
        && (m.source_labels.is_empty()
            || r.source.is_some_and(|s| m.source_labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))))
        && m.source_namespace.as_deref().is_none_or(|ns| r.source_namespace == Some(ns))
}

/// The route a request takes.
#[derive(Debug)]
pub enum Selected<'a> {
    /// The first `http` route of `vs` whose matches accept the request.
    Route {
        vs: &'a Object<VirtualServiceSpec>,
        index: usize,
        route: &'a HttpRoute,
        matched: Option<&'a HttpMatchRequest>,
    },
    /// A VirtualService covers the host, but none of its routes matched: 404 (Envoy's `NR`).
    NoRoute { vs: &'a Object<VirtualServiceSpec> },
    /// No VirtualService for this host: straight to the Service that was addressed.
    Default,
}

/// Whether the VirtualService `vs` covers `svc` (a host naming it, short names read in the
/// VirtualService's namespace, or a wildcard covering its hostname).
fn covers(snap: &Snapshot, vs: &Object<VirtualServiceSpec>, svc: &Service) -> bool {
    let hostname = svc.hostname();
    vs.spec.hosts.iter().any(|h| {
        if h.starts_with('*') {
            return host_matches(h, &hostname);
        }
        if svc.host.is_some() {
            return h == &hostname;
        }
        resolve(snap, h, &vs.namespace).is_some_and(|s| s.namespace == svc.namespace && s.name == svc.name)
    })
}

/// The VirtualService for `svc` (bound to the mesh, with routes `has` asks for). Among several for
/// one host, those in the Service's own namespace come first, then by namespace and name (a stable
/// order).
fn virtual_service_for<'a>(
    snap: &'a Snapshot,
    svc: &Service,
    has: impl Fn(&VirtualServiceSpec) -> bool,
) -> Option<&'a Object<VirtualServiceSpec>> {
    snap.virtual_services
        .iter()
        .filter(|vs| has(&vs.spec) && vs.spec.gateways.iter().all(|g| g == "mesh") && covers(snap, vs, svc))
        .min_by(|a, b| {
            let key = |vs: &'a Object<VirtualServiceSpec>| {
                (vs.namespace != svc.namespace, vs.namespace.as_str(), vs.name.as_str())
            };
            key(a).cmp(&key(b))
        })
}

/// Picks the route for `r` to `svc` (see [`virtual_service_for`] for which VirtualService).
pub fn select<'a>(snap: &'a Snapshot, svc: &Service, r: &Req<'_>, re: &RegexCache) -> Selected<'a> {
    let Some(vs) = virtual_service_for(snap, svc, |spec| !spec.http.is_empty()) else {
        return Selected::Default;
    };
    for (index, route) in vs.spec.http.iter().enumerate() {
        if route.matches.is_empty() {
            return Selected::Route { vs, index, route, matched: None };
        }
        if let Some(m) = route.matches.iter().find(|m| request_matches(m, r, re)) {
            return Selected::Route { vs, index, route, matched: Some(m) };
        }
    }
    Selected::NoRoute { vs }
}

/// Picks one of a route's destinations by weight (`roll` in 0..total weight; a single destination
/// without a weight takes everything). None when the route has no destination or all weights are 0.
pub fn pick_weighted(
    dests: &[HttpRouteDestination],
    roll: impl FnOnce(u64) -> u64,
) -> Option<&HttpRouteDestination> {
    pick_by_weight(dests, |d| d.weight, roll)
}

/// [`pick_weighted`] over any destinations with an optional weight.
pub fn pick_by_weight<T>(
    items: &[T],
    weight_of: impl Fn(&T) -> Option<i32>,
    roll: impl FnOnce(u64) -> u64,
) -> Option<&T> {
    let weight = |d: &T| match weight_of(d) {
        Some(w) => u64::try_from(w).unwrap_or(0),
        None if items.len() == 1 => 100,
        None => 0,
    };
    let total: u64 = items.iter().map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut n = roll(total);
    for d in items {
        let w = weight(d);
        if n < w {
            return Some(d);
        }
        n -= w;
    }
    None
}

/// The first `tcp` route of the VirtualService for `svc` that accepts a connection to `port` from
/// `source` (opaque TCP through the waypoint): `port`, `sourceLabels`, `sourceNamespace`,
/// `destinationSubnets` (the Service VIP) are checked. The route and its VirtualService's namespace.
pub fn select_tcp<'a>(
    snap: &'a Snapshot,
    svc: &Service,
    vip: std::net::SocketAddr,
    source: Option<&PodEntry>,
    source_namespace: &str,
) -> Option<(&'a TcpRoute, &'a str)> {
    let vs = virtual_service_for(snap, svc, |spec| !spec.tcp.is_empty())?;
    let accepts = |m: &L4MatchAttributes| {
        m.port.is_none_or(|p| p == u32::from(vip.port()))
            && m.source_namespace.as_deref().is_none_or(|ns| ns == source_namespace)
            && (m.source_labels.is_empty()
                || source.is_some_and(|s| m.source_labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))))
            && (m.destination_subnets.is_empty()
                || m.destination_subnets.iter().any(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .is_ok_and(|net| net.contains(&vip.ip()))
                }))
    };
    vs.spec
        .tcp
        .iter()
        .find(|r| r.matches.is_empty() || r.matches.iter().any(accepts))
        .map(|r| (r, vs.namespace.as_str()))
}

/// The DestinationRule for `svc`: one in the Service's namespace first, then any other, then the
/// root namespace, each by name (Istio reads the client's namespace first; at a waypoint the
/// Service's namespace is the one that owns it).
pub fn destination_rule<'a>(snap: &'a Snapshot, svc: &Service) -> Option<&'a Object<DestinationRuleSpec>> {
    let hostname = svc.hostname();
    let mut drs: Vec<&Object<DestinationRuleSpec>> = snap
        .destination_rules
        .iter()
        .filter(|dr| {
            if dr.spec.workload_selector.is_some() {
                return false;
            }
            if dr.spec.host.starts_with('*') {
                return host_matches(&dr.spec.host, &hostname);
            }
            if svc.host.is_some() {
                return dr.spec.host == hostname;
            }
            resolve(snap, &dr.spec.host, &dr.namespace)
                .is_some_and(|s| s.namespace == svc.namespace && s.name == svc.name)
        })
        .collect();
    drs.sort_by_key(|dr| {
        (dr.namespace != svc.namespace, dr.spec.host.starts_with('*'), dr.namespace.clone(), dr.name.clone())
    });
    drs.first().copied()
}

/// Why a destination has nowhere to go (Envoy's response flags).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestError {
    /// `NC`: the route names a host the mesh does not know.
    #[error("route destination host `{0}` names no Service in the mesh config")]
    UnknownHost(String),
    /// `NC`: the route names a subset no DestinationRule defines for the host.
    #[error("subset `{subset}` of {host} is not defined by any DestinationRule")]
    UnknownSubset { host: String, subset: String },
    /// `UH`: the host (or subset) has no endpoint.
    #[error("{0} has no endpoints")]
    NoEndpoints(String),
    /// `NC`: the port is not one of the Service's ports.
    #[error("{host} has no port {port}")]
    UnknownPort { host: String, port: u16 },
}

impl DestError {
    /// Envoy's response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            DestError::NoEndpoints(_) => "UH",
            _ => "NC",
        }
    }
}

/// Where one route destination leads.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub service: &'a Service,
    /// The Service port (for metrics and the Host header).
    pub port: u16,
    /// The port the endpoints listen on.
    pub target_port: u16,
    pub endpoints: Vec<IpAddr>,
    pub subset: Option<&'a Subset>,
    pub rule: Option<&'a Object<DestinationRuleSpec>>,
}

impl Target<'_> {
    /// The load-balancer settings in force: the subset's, else the port's, else the rule's.
    pub fn load_balancer(&self) -> Option<&LoadBalancerSettings> {
        fn port_level(
            tp: &crate::config::kinds::destination_rule::TrafficPolicy,
            port: u16,
        ) -> Option<&LoadBalancerSettings> {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.as_ref().and_then(|s| s.number) == Some(u32::from(port)))
                .and_then(|p| p.load_balancer.as_ref())
                .or(tp.load_balancer.as_ref())
        }
        self.subset.and_then(|s| s.traffic_policy.as_ref()).and_then(|tp| port_level(tp, self.port)).or_else(
            || {
                self.rule
                    .and_then(|r| r.spec.traffic_policy.as_ref())
                    .and_then(|tp| port_level(tp, self.port))
            },
        )
    }
}

impl<'a> Target<'a> {
    /// The outlier detection in force: the subset's, else the port's, else the rule's.
    pub fn outlier_detection(&self) -> Option<&'a crate::config::kinds::destination_rule::OutlierDetection> {
        self.policy_field(|tp| tp.outlier_detection.as_ref(), |p| p.outlier_detection.as_ref())
    }

    /// The connection-pool limits in force: the subset's, else the port's, else the rule's.
    pub fn connection_pool(
        &self,
    ) -> Option<&'a crate::config::kinds::destination_rule::ConnectionPoolSettings> {
        self.policy_field(|tp| tp.connection_pool.as_ref(), |p| p.connection_pool.as_ref())
    }

    fn policy_field<T>(
        &self,
        top: impl Fn(&'a crate::config::kinds::destination_rule::TrafficPolicy) -> Option<&'a T>,
        port: impl Fn(&'a crate::config::kinds::destination_rule::PortTrafficPolicy) -> Option<&'a T>,
    ) -> Option<&'a T> {
        let level = |tp: &'a crate::config::kinds::destination_rule::TrafficPolicy| {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.as_ref().and_then(|s| s.number) == Some(u32::from(self.port)))
                .and_then(&port)
                .or_else(|| top(tp))
        };
        self.subset
            .and_then(|s| s.traffic_policy.as_ref())
            .and_then(level)
            .or_else(|| self.rule.and_then(|r| r.spec.traffic_policy.as_ref()).and_then(level))
    }
}

fn labels_match(want: &Labels, have: &Labels) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Resolves a destination: `host` read in `namespace`, `port` (a Service port, or the request's
/// port when the route names none) and an optional subset. Endpoints of the address family the
/// client used (`v6`) are preferred; the other family is used only when none has it.
pub fn resolve_target<'a>(
    snap: &'a Snapshot,
    host: &str,
    namespace: &str,
    port: Option<u16>,
    request_port: u16,
    subset: Option<&str>,
    v6: bool,
) -> Result<Target<'a>, DestError> {
    let service = resolve(snap, host, namespace)
        .or_else(|| snap.services.values().map(|s| &**s).find(|s| s.host.as_deref() == Some(host)))
        .ok_or_else(|| DestError::UnknownHost(host.to_string()))?;
    let port = port.unwrap_or(request_port);
    let target_port = match service.ports.iter().find(|p| p.port == port) {
        Some(p) => p.target_port,
        None if service.ports.is_empty() => port,
        None => return Err(DestError::UnknownPort { host: service.hostname(), port }),
    };
    let rule = destination_rule(snap, service);
    let subset = match subset {
        None => None,
        Some(name) => {
            Some(rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == name)).ok_or_else(|| {
                DestError::UnknownSubset { host: service.hostname(), subset: name.to_string() }
            })?)
        }
    };
    let endpoints: Vec<IpAddr> = service
        .endpoints
        .iter()
        .copied()
        .filter(|ip| match subset {
            None => true,
            Some(s) => snap.workload_by_ip(*ip).is_some_and(|w| labels_match(&s.labels, &w.labels)),
        })
        .collect();
    let same: Vec<IpAddr> = endpoints.iter().copied().filter(|ip| ip.is_ipv6() == v6).collect();
    let endpoints = if same.is_empty() { endpoints } else { same };
    if endpoints.is_empty() {
        let what = match subset {
            Some(s) => format!("subset {} of {}", s.name, service.hostname()),
            None => service.hostname(),
        };
        return Err(DestError::NoEndpoints(what));
    }
    Ok(Target { service, port, target_port, endpoints, subset, rule })
}

/// The path after a `rewrite.uri`: a prefix match replaces the matched prefix, anything else the
/// whole path (Envoy's prefix_rewrite / path rewrite). The query string is kept by the caller.
pub fn rewrite_path(path: &str, matched: Option<&HttpMatchRequest>, new: &str) -> String {
    match matched.and_then(|m| m.uri.as_ref()).map(StringMatch::matcher) {
        Some(StringMatcher::Prefix(p)) if path.len() >= p.len() => format!("{new}{}", &path[p.len()..]),
        _ => new.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_for_test as snap;

    const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: reviews}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: r1, namespace: shop, labels: {app: reviews, version: v1}}\nspec: {serviceAccountName: reviews}\nstatus: {podIP: 10.0.1.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: r2, namespace: shop, labels: {app: reviews, version: v2}}\nspec: {serviceAccountName: reviews}\nstatus: {podIP: 10.0.1.2}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}}]\n";

    const VS: &str = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - name: jason\n    match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: api\n    match: [{uri: {prefix: /api/}, method: {exact: POST}}, {uri: {regex: '/v[0-9]+/items'}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - name: split\n    match: [{uri: {prefix: /}}]\n    route: [{destination: {host: reviews, subset: v1}, weight: 80}, {destination: {host: reviews, subset: v2}, weight: 20}]\n";

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> Req<'a> {
        Req {
            method,
            path,
            query: "",
            authority: "reviews",
            scheme: "http",
            headers,
            port: 80,
            source: None,
            source_namespace: Some("shop"),
        }
    }

    fn svc(s: &Snapshot) -> Arc<Service> {
        s.services.get(&("shop".to_string(), "reviews".to_string())).expect("service").clone()
    }

    fn route_name(sel: &Selected<'_>) -> String {
        match sel {
            Selected::Route { route, .. } => route.name.clone().unwrap_or_default(),
            Selected::NoRoute { .. } => "no-route".into(),
            Selected::Default => "default".into(),
        }
    }

    #[test]
    fn routes_match_in_order_with_istio_semantics() {
        let s = snap(&format!("{BASE}{VS}"));
        let re = RegexCache::default();
        let svc = svc(&s);
        let mut jason = HeaderMap::new();
        jason.insert("end-user", "jason".parse().expect("value"));
        let none = HeaderMap::new();
        let rows: &[(&str, &str, &HeaderMap, &str)] = &[
            ("GET", "/", &jason, "jason"),
            ("POST", "/api/x", &none, "api"),
            ("GET", "/api/x", &none, "split"), // the first api match needs POST
            ("GET", "/v12/items", &none, "api"),
            ("GET", "/v12/items/more", &none, "split"), // regexes are anchored
            ("GET", "/anything", &none, "split"),
        ];
        for (m, p, h, want) in rows {
            let got = route_name(&select(&s, &svc, &req(m, p, h), &re));
            assert_eq!(&got, want, "{m} {p}");
        }
        // No VirtualService: the default route; a VirtualService whose routes all miss: no route.
        let plain = snap(BASE);
        assert_eq!(route_name(&select(&plain, &svc, &req("GET", "/", &none), &re)), "default");
        let narrow = snap(&format!(
            "{BASE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: shop}}\nspec:\n  hosts: [reviews.shop.svc.cluster.local]\n  http: [{{match: [{{uri: {{exact: /only}}}}], route: [{{destination: {{host: reviews}}}}]}}]\n"
        ));
        assert_eq!(route_name(&select(&narrow, &svc, &req("GET", "/other", &none), &re)), "no-route");
    }

    #[test]
    fn query_params_without_headers_ignore_case_and_ports() {
        let re = RegexCache::default();
        let mut h = HeaderMap::new();
        h.insert("x-canary", "1".parse().expect("value"));
        let mut r = req("GET", "/API/v1", &h);
        r.query = "debug=on&user=ann";
        let m = |yaml: &str| -> HttpMatchRequest { serde_json::from_str(yaml).expect("match") };
        assert!(request_matches(&m(r#"{"uri": {"prefix": "/api"}, "ignoreUriCase": true}"#), &r, &re));
        assert!(!request_matches(&m(r#"{"uri": {"prefix": "/api"}}"#), &r, &re));
        assert!(request_matches(&m(r#"{"queryParams": {"user": {"exact": "ann"}}}"#), &r, &re));
        assert!(!request_matches(&m(r#"{"queryParams": {"user": {"exact": "bob"}}}"#), &r, &re));
        assert!(request_matches(&m(r#"{"headers": {"X-Canary": {}}}"#), &r, &re), "present");
        assert!(!request_matches(&m(r#"{"withoutHeaders": {"x-canary": {}}}"#), &r, &re));
        assert!(request_matches(&m(r#"{"port": 80}"#), &r, &re));
        assert!(!request_matches(&m(r#"{"port": 81}"#), &r, &re));
        assert!(request_matches(&m(r#"{"sourceNamespace": "shop"}"#), &r, &re));
        assert!(!request_matches(&m(r#"{"sourceLabels": {"app": "x"}}"#), &r, &re), "unknown source");
    }

    #[test]
    fn weights_split_exactly_over_the_roll() {
        let s = snap(&format!("{BASE}{VS}"));
        let split = &s.virtual_services[0].spec.http[2].route;
        let mut counts = HashMap::new();
        for n in 0..100 {
            let d = pick_weighted(split, |_| n).expect("a destination");
            *counts.entry(d.destination.subset.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("v1"), Some(&80));
        assert_eq!(counts.get("v2"), Some(&20));
        let single = &s.virtual_services[0].spec.http[0].route;
        assert!(pick_weighted(single, |t| t - 1).is_some(), "one destination without weight takes all");
    }

    #[test]
    fn tcp_routes_match_ports_and_sources_and_split_by_weight() {
        let s = snap(&format!(
            "{BASE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: shop}}\nspec:\n  hosts: [reviews]\n  tcp:\n  - match: [{{port: 81, sourceNamespace: ops}}]\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route: [{{destination: {{host: reviews, subset: v1}}, weight: 75}}, {{destination: {{host: reviews, subset: v2}}, weight: 25}}]\n"
        ));
        let svc = svc(&s);
        let vip = |p: u16| std::net::SocketAddr::new("10.96.0.10".parse().expect("ip"), p);
        let (r, ns) = select_tcp(&s, &svc, vip(81), None, "ops").expect("route");
        assert_eq!((r.route[0].destination.subset.as_deref(), ns), (Some("v2"), "shop"));
        let (r, _) = select_tcp(&s, &svc, vip(81), None, "shop").expect("route");
        assert_eq!(r.route.len(), 2, "another namespace falls through to the split");
        let picks: Vec<_> = (0..100).filter_map(|n| pick_by_weight(&r.route, |d| d.weight, |_| n)).collect();
        assert_eq!(picks.iter().filter(|d| d.destination.subset.as_deref() == Some("v1")).count(), 75);
        assert!(select_tcp(&snap(BASE), &svc, vip(80), None, "shop").is_none(), "no VirtualService");
    }

    #[test]
    fn subsets_select_endpoints_and_errors_name_the_cause() {
        let s = snap(BASE);
        let t = resolve_target(&s, "reviews", "shop", None, 80, Some("v2"), false).expect("v2");
        assert_eq!(t.endpoints, vec!["10.0.1.2".parse::<IpAddr>().expect("ip")]);
        assert_eq!((t.port, t.target_port), (80, 8080));
        let all = resolve_target(&s, "reviews.shop.svc.cluster.local", "other", None, 80, None, false)
            .expect("all");
        assert_eq!(all.endpoints.len(), 2);
        let e = resolve_target(&s, "reviews", "shop", None, 80, Some("v9"), false).expect_err("v9");
        assert_eq!(e.flag(), "NC");
        assert!(e.to_string().contains("v9"), "{e}");
        let e =
            resolve_target(&s, "reviews", "shop", None, 80, Some("v3"), false).expect_err("v3 has no pods");
        assert_eq!(e.flag(), "UH");
        let e = resolve_target(&s, "ratings", "shop", None, 80, None, false).expect_err("unknown");
        assert_eq!(e, DestError::UnknownHost("ratings".into()));
        let e = resolve_target(&s, "reviews", "shop", Some(81), 80, None, false).expect_err("port");
        assert_eq!(e.flag(), "NC");
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_the_whole_path() {
        let m: HttpMatchRequest = serde_json::from_str(r#"{"uri": {"prefix": "/old/"}}"#).expect("m");
        assert_eq!(rewrite_path("/old/a/b", Some(&m), "/new/"), "/new/a/b");
        let e: HttpMatchRequest = serde_json::from_str(r#"{"uri": {"exact": "/x"}}"#).expect("m");
        assert_eq!(rewrite_path("/x", Some(&e), "/y"), "/y");
        assert_eq!(rewrite_path("/x", None, "/y"), "/y");
    }
}
