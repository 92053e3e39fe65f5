//! Phase 3, authorize: the L7 AuthorizationPolicies attached to this waypoint or to the Service,
//! decided over the request head, the connection's verified identity and the token [`super::authn`]
//! verified. Istio's order: a matching DENY denies; with ALLOW policies one must match.
//!
//! Owns the allow/deny decision for one request and nothing else. Pure: it reads the snapshot and
//! the request, and must not change the request, do I/O, or count anything (the denial is logged).
use http::{Request, StatusCode};
use tracing::debug;

use super::{Local, local};
use crate::{
    config::{Snapshot, model::Service, waypoints::WaypointRef},
    policy::{self, Facts, HttpFacts, admission},
    waypoint::{handler::Conn, jwt::Authenticated},
};

/// Allows the request, or answers 403 `DENY` (`RBAC: access denied`).
pub fn authorize<B>(
    snap: &Snapshot,
    me: &WaypointRef,
    service: Option<&Service>,
    conn: &Conn,
    req: &Request<B>,
    authority: &str,
    auth: Option<&Authenticated>,
) -> Result<(), Local> {
    let applicable = admission::waypoint_policies(snap, me, service);
    if applicable.is_empty() {
        return Ok(());
    }
    let facts_http = HttpFacts {
        method: req.method().as_str(),
        path: req.uri().path(),
        host: authority,
        headers: req.headers(),
        request_principal: auth.map(|a| a.principal.as_str()),
        claims: auth.map(|a| &a.claims),
    };
    let facts = Facts {
        identity: Some(&conn.peer),
        src_ip: conn.peer_addr.ip(),
        dst: conn.target,
        http: Some(&facts_http),
    };
    let verdict = policy::decide(&applicable, &facts);
    if !verdict.allowed() {
        debug!(policy = %verdict.policy(), src_principal = %conn.peer, path = %req.uri().path(), "request denied");
        return Err(local(StatusCode::FORBIDDEN, "DENY", "RBAC: access denied"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::compile_for_test, identity::Identity, waypoint::jwt::TokenSource};

    /// Service `web` (10.96.0.1:80) with two policies attached to waypoint `wp`: GETs allowed,
    /// `/admin` denied unless the token's principal is `idp/admin`.
    const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: [idp/admin]}}], to: [{operation: {paths: [/admin*]}}]}]
";

    fn conn() -> Conn {
        Conn {
            peer: Identity::new("cluster.local", "shop", "client"),
            peer_addr: "10.0.2.1:40000".parse().expect("addr"),
            target: "10.96.0.1:80".parse().expect("addr"),
        }
    }

    fn token(principal: &str) -> Authenticated {
        Authenticated {
            principal: principal.into(),
            claims: serde_json::json!({}),
            rule: 0,
            from: TokenSource::Header("authorization".into()),
        }
    }

    #[test]
    fn policies_allow_or_deny_403() {
        let snap = compile_for_test(MESH);
        let me = WaypointRef { namespace: "shop".into(), name: "wp".into() };
        let other = WaypointRef { namespace: "shop".into(), name: "elsewhere".into() };
        let admin = token("idp/admin");
        let user = token("idp/user");
        // (row, waypoint, method, path, token, allowed)
        type Row<'a> = (&'a str, &'a WaypointRef, &'a str, &'a str, Option<&'a Authenticated>, bool);
        let rows: &[Row<'_>] = &[
            ("get_is_allowed", &me, "GET", "/", None, true),
            ("post_matches_no_allow", &me, "POST", "/", None, false),
            ("admin_without_token_denied", &me, "GET", "/admin", None, false),
            ("admin_with_another_principal_denied", &me, "GET", "/admin/x", Some(&user), false),
            ("admin_with_the_admin_principal_allowed", &me, "GET", "/admin", Some(&admin), true),
            ("no_policy_attached_allows", &other, "POST", "/admin", None, true),
        ];
        let web = snap.services.get(&("shop".to_string(), "web".to_string())).cloned().expect("web");
        for (name, wp, method, path, auth, allowed) in rows {
            let req = Request::builder().method(*method).uri(*path).body(()).expect("request");
            match authorize(&snap, wp, Some(&web), &conn(), &req, "web", *auth) {
                Ok(()) => assert!(allowed, "{name}: allowed"),
                Err(l) => {
                    assert!(!allowed, "{name}: denied");
                    assert_eq!((l.status(), l.flag), (StatusCode::FORBIDDEN, "DENY"), "{name}");
                }
            }
        }
    }
}
