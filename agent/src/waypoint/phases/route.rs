//! Phase 4, route: the VirtualService `http` route a request to a Service takes (Istio's match
//! semantics live in [`crate::waypoint::routes`]); a VirtualService whose routes all miss is 404
//! `NR`, no VirtualService routes to the Service as addressed.
//!
//! Owns the choice of route. Pure: it reads the snapshot, the request head and the connection
//! facts, and must not change the request or pick a destination (that is [`super::destination`]'s).
use http::{Request, StatusCode};

use super::{Local, local};
use crate::{
    config::{
        Snapshot,
        kinds::virtual_service::{HttpMatchRequest, HttpRoute},
        model::Service,
    },
    waypoint::{
        handler::Conn,
        routes::{self, RegexCache, Req, Selected},
    },
};

/// The route a request takes.
#[derive(Clone, Copy, Debug)]
pub struct Routed<'a> {
    /// The matched `http` route; None when no VirtualService covers the Service.
    pub route: Option<&'a HttpRoute>,
    /// The match that accepted the request (prefix rewrites replace its prefix).
    pub matched: Option<&'a HttpMatchRequest>,
    /// The namespace short destination hosts are read in: the VirtualService's, else the Service's.
    pub namespace: &'a str,
}

/// Selects the route for `req` to `svc`, or answers 404 `NR`.
pub fn select<'a, B>(
    snap: &'a Snapshot,
    svc: &'a Service,
    conn: &Conn,
    req: &Request<B>,
    authority: &str,
    regexes: &RegexCache,
) -> Result<Routed<'a>, Local> {
    let view = Req {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        authority,
        scheme: "http",
        headers: req.headers(),
        port: conn.target.port(),
        source: snap.workload_by_ip(conn.peer_addr.ip()),
        source_namespace: Some(conn.peer.namespace.as_str()),
    };
    match routes::select(snap, svc, &view, regexes) {
        Selected::Route { vs, route, matched, .. } => {
            Ok(Routed { route: Some(route), matched, namespace: vs.namespace.as_str() })
        }
        Selected::NoRoute { .. } => Err(local(StatusCode::NOT_FOUND, "NR", "no route matched\n")),
        Selected::Default => Ok(Routed { route: None, matched: None, namespace: svc.namespace.as_str() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::compile_for_test, identity::Identity};

    const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: routes, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: plain}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: routes}
spec:
  hosts: [web.shop.svc.cluster.local]
  http:
  - name: from-ops
    match: [{sourceNamespace: ops}]
    route: [{destination: {host: web.shop.svc.cluster.local}}]
  - name: api
    match: [{uri: {prefix: /api/}}]
    route: [{destination: {host: web.shop.svc.cluster.local}}]
";

    fn conn(ns: &str, vip: &str) -> Conn {
        Conn {
            peer: Identity::new("cluster.local", ns, "client"),
            peer_addr: "10.0.2.1:40000".parse().expect("addr"),
            target: vip.parse().expect("addr"),
        }
    }

    #[test]
    fn a_route_the_service_itself_or_404() {
        let snap = compile_for_test(MESH);
        let re = RegexCache::default();
        let svc =
            |name: &str| snap.services.get(&("shop".to_string(), name.to_string())).cloned().expect("svc");
        let (web, plain) = (svc("web"), svc("plain"));
        // (row, service, client namespace, path, Ok((route name, namespace)) or the 404)
        type Row<'a> = (&'a str, &'a Service, &'a str, &'a str, Option<(&'a str, &'a str)>);
        let rows: &[Row<'_>] = &[
            ("first_matching_route", &web, "shop", "/api/x", Some(("api", "routes"))),
            ("source_namespace_match", &web, "ops", "/", Some(("from-ops", "routes"))),
            ("all_routes_miss_is_404", &web, "shop", "/", None),
            ("no_virtual_service_is_the_service", &plain, "shop", "/", Some(("", "shop"))),
        ];
        for (name, svc, ns, path, want) in rows {
            let req = Request::builder().uri(*path).body(()).expect("request");
            let vip = format!("{}:80", svc.vips.first().expect("vip"));
            match (select(&snap, svc, &conn(ns, &vip), &req, "web", &re), want) {
                (Ok(r), Some((route, namespace))) => {
                    let got = r.route.and_then(|r| r.name.as_deref()).unwrap_or("");
                    assert_eq!((got, r.namespace), (*route, *namespace), "{name}");
                }
                (Err(l), None) => assert_eq!((l.status(), l.flag), (StatusCode::NOT_FOUND, "NR"), "{name}"),
                (got, _) => panic!("{name}: got {got:?}"),
            }
        }
    }
}
