//! Phase 2, authenticate: RequestAuthentication. The JWT rules attached to this waypoint or to the
//! Service, their `jwksUri` documents fetched when a token first needs them, the token verified.
//! An invalid token is 401; a missing one passes without a principal.
//!
//! Owns the token headers and parameters (removed unless `forwardOriginalToken`) and the headers
//! only a verified token may set (`outputPayloadToHeader`, `outputClaimToHeaders`). Its only I/O is
//! the JWKS fetch; it must not decide authorization (that is [`super::authz`]'s, with the token
//! this phase hands on) nor touch the path or authority.
use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode, header};
use tracing::{debug, warn};

use super::{Local, local};
use crate::{
    config::{Snapshot, kinds::request_authentication::JwtRule, model::Service, waypoints::WaypointRef},
    policy::admission,
    waypoint::{
        Waypoint,
        handler::Conn,
        jwks::{DEFAULT_TIMEOUT, Fetch},
        jwt::{self, Authenticated, JwtError},
    },
};

/// Verifies the request's token, if any: the verified token (None when no rule applies or no
/// token is present), or 401 with Envoy's message.
pub async fn authenticate<B>(
    wp: &Arc<Waypoint>,
    snap: &Snapshot,
    conn: &Conn,
    service: Option<&Service>,
    req: &mut Request<B>,
) -> Result<Option<Authenticated>, Local> {
    let rules = jwt_rules(snap, &wp.me, service);
    jwt::strip_outputs(&rules, req.headers_mut());
    if rules.is_empty() {
        return Ok(None);
    }
    let query = req.uri().query().unwrap_or("").to_string();
    if jwt::token_present(&rules, req.headers(), &query) {
        fetch_jwks(wp, snap, &rules).await;
    }
    let remote = |uri: &str| wp.remote_jwks.get(uri);
    let auth = match jwt::authenticate(&rules, req.headers(), &query, &wp.jwks, &remote) {
        Ok(a) => a,
        Err(e) => {
            debug!(src_principal = %conn.peer, path = %req.uri().path(), error = %e, "request with an invalid JWT refused");
            return Err(refusal(&e));
        }
    };
    if let Some(a) = &auth
        && let Some(rule) = rules.get(a.rule)
    {
        jwt::apply_outputs(rule, a, req.headers_mut());
    }
    Ok(auth)
}

/// The JWT rules of the RequestAuthentications attached to waypoint `me` or to `svc`.
pub fn jwt_rules<'a>(snap: &'a Snapshot, me: &WaypointRef, svc: Option<&Service>) -> Vec<&'a JwtRule> {
    snap.request_authentications
        .iter()
        .filter(|ra| {
            ra.spec.target_ref.iter().chain(ra.spec.target_refs.iter()).any(|r| {
                admission::attached(&r.kind, &r.name, r.namespace.as_deref(), &ra.namespace, me, svc)
            })
        })
        .flat_map(|ra| ra.spec.jwt_rules.iter())
        .collect()
}

/// The answer to an invalid token: 401 with Envoy's message and a `WWW-Authenticate` challenge.
fn refusal(e: &JwtError) -> Local {
    let mut l = local(StatusCode::UNAUTHORIZED, "-", e.to_string());
    l.resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sluice\", error=\"invalid_token\""),
    );
    l
}

/// Makes sure the `jwksUri` documents of `rules` are there: fetched now (bounded by the rule's
/// timeout) when never fetched, refreshed in the background when stale.
async fn fetch_jwks(wp: &Arc<Waypoint>, snap: &Snapshot, rules: &[&JwtRule]) {
    for r in rules.iter().filter(|r| r.jwks.is_none()) {
        let Some(uri) = &r.jwks_uri else { continue };
        let timeout = fetch_timeout(r);
        match wp.remote_jwks.needs_fetch(uri) {
            Fetch::Now => {
                if let Err(e) = wp.remote_jwks.fetch(snap, &wp.upstreams, uri, timeout).await {
                    warn!(error = %e, "JWKS fetch failed; tokens of this issuer are refused until it succeeds");
                }
            }
            Fetch::Background => {
                let (me, uri, snap) = (wp.clone(), uri.clone(), wp.store.load());
                tokio::spawn(async move {
                    if let Err(e) = me.remote_jwks.fetch(&snap, &me.upstreams, &uri, timeout).await {
                        warn!(error = %e, "JWKS refresh failed; the cached keys stay in use");
                    }
                });
            }
            Fetch::No => {}
        }
    }
}

/// How long a `jwksUri` fetch may take: the rule's `timeout`, else the default (a zero timeout
/// counts as unset).
fn fetch_timeout(r: &JwtRule) -> std::time::Duration {
    r.timeout.as_ref().map(|d| d.as_std()).filter(|d| !d.is_zero()).unwrap_or(DEFAULT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_for_test;

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
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: other}, ports: [{name: http, port: 80}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: on-gateway, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  jwtRules: [{issuer: gateway-issuer, jwks: '{\"keys\": []}'}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: on-web, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: web}]
  jwtRules: [{issuer: web-issuer, jwks: '{\"keys\": []}', timeout: 2s}]
";

    #[test]
    fn rules_attached_to_the_waypoint_or_the_service_apply() {
        let snap = compile_for_test(MESH);
        let me = WaypointRef { namespace: "shop".into(), name: "wp".into() };
        let other_wp = WaypointRef { namespace: "shop".into(), name: "elsewhere".into() };
        let svc = |name: &str| snap.services.get(&("shop".to_string(), name.to_string())).cloned();
        let (web, other) = (svc("web").expect("web"), svc("other").expect("other"));
        let rows: &[(&str, &WaypointRef, Option<&Service>, &[&str])] = &[
            ("gateway_and_service_rules", &me, Some(&web), &["gateway-issuer", "web-issuer"]),
            ("gateway_rule_only_for_another_service", &me, Some(&other), &["gateway-issuer"]),
            ("gateway_rule_for_a_pod", &me, None, &["gateway-issuer"]),
            ("another_waypoint_sees_only_the_service_rule", &other_wp, Some(&web), &["web-issuer"]),
        ];
        for (name, wp, svc, want) in rows {
            let got: Vec<&str> =
                jwt_rules(&snap, wp, *svc).iter().map(|r| r.issuer.as_deref().unwrap_or("")).collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn fetch_timeouts_default_when_unset() {
        let snap = compile_for_test(MESH);
        let me = WaypointRef { namespace: "shop".into(), name: "wp".into() };
        let web = snap.services.get(&("shop".to_string(), "web".to_string())).cloned().expect("web");
        let rules = jwt_rules(&snap, &me, Some(&web));
        let got: Vec<_> = rules.iter().map(|r| fetch_timeout(r)).collect();
        assert_eq!(got, [DEFAULT_TIMEOUT, std::time::Duration::from_secs(2)]);
    }

    #[test]
    fn an_invalid_token_is_401_with_a_challenge() {
        let l = refusal(&JwtError::Expired);
        assert_eq!((l.status(), l.flag), (StatusCode::UNAUTHORIZED, "-"));
        assert!(l.resp.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(super::super::body_text(*l.resp), "Jwt is expired");
    }
}
