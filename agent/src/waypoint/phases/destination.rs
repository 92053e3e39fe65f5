//! Phase 7, destination: the route's weighted destination, its host, port and subset resolved to
//! a Service's endpoints (DestinationRule subsets, the client's address family preferred), the
//! cluster's resilience settings, and the endpoints the attempts go to (outlier-ejected ones
//! skipped, the load balancer's choice, one endpoint per attempt).
//!
//! Owns where the request goes. Picking and resolving are pure over the snapshot (given the random
//! roll) and answer 503 `NR` (no destination), `NC` (unknown host, subset or port) or `UH` (no
//! endpoint); [`endpoints`] reads the load balancer and outlier state. It must not change the
//! request nor send anything.
use std::{
    hash::{Hash as _, Hasher as _},
    net::{IpAddr, SocketAddr},
};

use http::{HeaderMap, StatusCode};
use tracing::debug;

use super::{Local, headers::cookie, local, route::Routed};
use crate::{
    config::{
        Snapshot,
        kinds::{
            destination_rule::{ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection},
            virtual_service::Headers,
        },
        model::Service,
    },
    waypoint::{
        Waypoint,
        routes::{self, DestError, Target},
        upstream::Endpoint,
    },
};

/// Where a request to a Service goes.
#[derive(Debug)]
pub struct Dest<'a> {
    pub target: Target<'a>,
    /// The destination's subset name, as the route wrote it.
    pub subset: Option<&'a str>,
    /// The destination's own header operations.
    pub headers: Option<&'a Headers>,
}

impl Dest<'_> {
    /// `namespace/service/subset`: the load balancer's, outlier detection's and connection pool's key.
    pub fn cluster_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.target.service.namespace,
            self.target.service.name,
            self.subset.unwrap_or("")
        )
    }
}

/// The destination of `routed` (the Service itself without a route), resolved. `port` is the
/// Service port the client addressed, `v6` its address family; `roll` picks among weights.
pub fn pick<'a>(
    snap: &'a Snapshot,
    svc: &'a Service,
    routed: &Routed<'a>,
    port: u16,
    v6: bool,
    roll: impl FnOnce(u64) -> u64,
) -> Result<Dest<'a>, Local> {
    let (host, dport, subset, headers) = match routed.route {
        Some(r) => {
            let d = routes::pick_weighted(&r.route, roll)
                .ok_or_else(|| local(StatusCode::SERVICE_UNAVAILABLE, "NR", "route has no destination\n"))?;
            let p = d.destination.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok());
            (d.destination.host.clone(), p, d.destination.subset.as_deref(), d.headers.as_ref())
        }
        None => (svc.hostname(), None, None, None),
    };
    let target = routes::resolve_target(snap, &host, routed.namespace, dport, port, subset, v6).map_err(
        |e: DestError| {
            debug!(error = %e, "no upstream");
            local(StatusCode::SERVICE_UNAVAILABLE, e.flag(), format!("no healthy upstream: {e}\n"))
        },
    )?;
    Ok(Dest { target, subset, headers })
}

/// The consistent-hash key of a request under `lb` (a header, an existing cookie, a query
/// parameter or the client's address); None without a consistent hash or when the request lacks
/// the value.
pub fn hash_key(
    lb: Option<&LoadBalancerSettings>,
    headers: &HeaderMap,
    query: &str,
    client: IpAddr,
) -> Option<u64> {
    let ch = lb?.consistent_hash.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(name) = &ch.http_header_name {
        headers.get(name.as_str())?.as_bytes().hash(&mut h);
    } else if let Some(c) = &ch.http_cookie {
        cookie(headers, &c.name)?.hash(&mut h);
    } else if let Some(q) = &ch.http_query_parameter_name {
        routes::query_param(query, q)?.hash(&mut h);
    } else if ch.use_source_ip == Some(true) {
        client.hash(&mut h);
    } else {
        return None;
    }
    Some(h.finish())
}

/// The endpoints the attempts go to, one per attempt (`retries + 1`, at most 11), so a retry can
/// land elsewhere; endpoints that outlier detection ejected are skipped.
pub fn endpoints(
    wp: &Waypoint,
    snap: &Snapshot,
    target: &Target<'_>,
    key: &str,
    hash: Option<u64>,
    retries: u32,
) -> Vec<Endpoint> {
    let now = std::time::Instant::now();
    let healthy: Vec<IpAddr> = target
        .endpoints
        .iter()
        .copied()
        .filter(|ip| !wp.outliers.is_ejected(key, SocketAddr::new(*ip, target.target_port), now))
        .collect();
    let lb = target.load_balancer();
    let mut eps = Vec::new();
    for _ in 0..=retries.min(10) {
        if let Some(ip) = wp.upstreams.choose(key, &healthy, target.target_port, lb, hash) {
            eps.push(wp.upstreams.endpoint(snap, ip, target.target_port));
        }
    }
    eps
}

/// The upstream cluster a request goes to, with its DestinationRule resilience settings.
pub(crate) struct Cluster<'a> {
    /// `namespace/service/subset`.
    pub key: &'a str,
    pub outlier: Option<&'a OutlierDetection>,
    pub pool: Option<&'a ConnectionPoolSettings>,
    /// All endpoints of the cluster (ejected or not).
    pub size: usize,
}

impl<'a> Cluster<'a> {
    /// The cluster `key` of `target`.
    pub fn of(key: &'a str, target: &Target<'a>) -> Cluster<'a> {
        Cluster {
            key,
            outlier: target.outlier_detection(),
            pool: target.connection_pool(),
            size: target.endpoints.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile_for_test, kinds::virtual_service::HttpRoute};

    const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.1.1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

    #[test]
    fn destinations_resolve_or_answer_503() {
        let snap = compile_for_test(MESH);
        let web = snap.services.get(&("shop".to_string(), "web".to_string())).cloned().expect("web");
        let dest = |host: &str, extra: &str| format!(r#"{{"destination": {{"host": "{host}"{extra}}}}}"#);
        // (row, the route's destinations (None: no route), want Ok((cluster key, target port)) or Err(flag))
        type Row<'a> = (&'a str, Option<String>, Result<(&'a str, u16), &'a str>);
        let rows: Vec<Row<'_>> = vec![
            ("no_route_is_the_service", None, Ok(("shop/web/", 8080))),
            ("route_to_the_service", Some(dest("web", "")), Ok(("shop/web/", 8080))),
            ("route_to_a_subset", Some(dest("web", r#", "subset": "v1""#)), Ok(("shop/web/v1", 8080))),
            ("no_destination_is_nr", Some(String::new()), Err("NR")),
            ("unknown_host_is_nc", Some(dest("ratings", "")), Err("NC")),
            ("unknown_subset_is_nc", Some(dest("web", r#", "subset": "v9""#)), Err("NC")),
            ("unknown_port_is_nc", Some(dest("web", r#", "port": {"number": 81}"#)), Err("NC")),
            ("subset_without_pods_is_uh", Some(dest("web", r#", "subset": "v2""#)), Err("UH")),
        ];
        for (name, dests, want) in rows {
            let route: Option<HttpRoute> =
                dests.map(|d| serde_json::from_str(&format!(r#"{{"route": [{d}]}}"#)).expect("route"));
            let routed = Routed { route: route.as_ref(), matched: None, namespace: "shop" };
            match (pick(&snap, &web, &routed, 80, false, |_| 0), want) {
                (Ok(d), Ok((key, port))) => {
                    assert_eq!((d.cluster_key().as_str(), d.target.target_port), (key, port), "{name}")
                }
                (Err(l), Err(flag)) => {
                    assert_eq!((l.status(), l.flag), (StatusCode::SERVICE_UNAVAILABLE, flag), "{name}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn consistent_hash_keys_come_from_the_request() {
        let lb = |json: &str| -> LoadBalancerSettings { serde_json::from_str(json).expect("lb") };
        let mut h = HeaderMap::new();
        h.insert("x-user", "ann".parse().expect("v"));
        h.insert(http::header::COOKIE, "session=abc".parse().expect("v"));
        let ip: IpAddr = "10.0.2.1".parse().expect("ip");
        let rows: &[(&str, Option<&str>, &str, bool)] = &[
            ("no_load_balancer", None, "", false),
            ("simple_round_robin", Some(r#"{"simple": "ROUND_ROBIN"}"#), "", false),
            ("by_header", Some(r#"{"consistentHash": {"httpHeaderName": "x-user"}}"#), "", true),
            ("missing_header", Some(r#"{"consistentHash": {"httpHeaderName": "x-none"}}"#), "", false),
            ("by_cookie", Some(r#"{"consistentHash": {"httpCookie": {"name": "session"}}}"#), "", true),
            (
                "by_query_parameter",
                Some(r#"{"consistentHash": {"httpQueryParameterName": "u"}}"#),
                "u=1",
                true,
            ),
            ("by_source_ip", Some(r#"{"consistentHash": {"useSourceIp": true}}"#), "", true),
        ];
        for (name, json, query, want) in rows {
            let lb = json.map(lb);
            let a = hash_key(lb.as_ref(), &h, query, ip);
            assert_eq!(a.is_some(), *want, "{name}");
            assert_eq!(a, hash_key(lb.as_ref(), &h, query, ip), "{name}: stable");
        }
    }
}
