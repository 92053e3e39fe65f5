//! Policy evaluation with Istio's semantics, over the current snapshot: PeerAuthentication (which
//! mTLS mode a workload's port requires) and AuthorizationPolicy (who may connect, and at a
//! waypoint which HTTP requests may pass).
//!
//! Authorization order: a matching DENY policy denies; otherwise, when any ALLOW policy selects the
//! workload, one of them must match; otherwise the connection is allowed. AUDIT never changes the
//! decision. Policies in the root namespace apply mesh-wide. A rule that uses HTTP-only fields
//! (request principals, hosts, methods, paths, L7 `when` keys) can never match at L4: an ALLOW with
//! it allows nothing, a DENY with it denies everything it scopes. At a waypoint the request's facts
//! ([`HttpFacts`]) are known and those fields are evaluated. Unparseable values never match an
//! ALLOW and always match a DENY (fail closed).
pub mod admission;

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    config::{
        Snapshot,
        kinds::{
            authorization_policy::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source},
            peer_authentication::MtlsMode,
        },
        model::{PodEntry, ROOT_NAMESPACE},
    },
    identity::Identity,
};

/// What is known about one connection when it is authorized.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The verified peer identity; None for plaintext.
    pub identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst: SocketAddr,
    /// The request, when the decision is made for one HTTP request (at a waypoint).
    pub http: Option<&'a HttpFacts<'a>>,
}

/// What a waypoint knows about one HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct HttpFacts<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    /// The `Host`/`:authority`, as sent.
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The JWT principal (`iss/sub`) once RequestAuthentication validated a token; None without one.
    pub request_principal: Option<&'a str>,
    /// The validated token's claims.
    pub claims: Option<&'a serde_json::Value>,
}

/// The authorization decision, with the policy that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Allow { by: Option<String> },
    Deny { by: String },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    /// `ns/name` of the deciding policy, or `-`.
    pub fn policy(&self) -> String {
        match self {
            Verdict::Allow { by: Some(b) } | Verdict::Deny { by: b } => b.clone(),
            Verdict::Allow { by: None } => "-".into(),
        }
    }
}

/// The mTLS mode `w` requires on `port`: workload (port level first), then namespace, then mesh;
/// PERMISSIVE when nothing says otherwise.
pub fn mtls_mode(snap: &Snapshot, w: &PodEntry, port: u16) -> MtlsMode {
    let set = |m: MtlsMode| (m != MtlsMode::Unset).then_some(m);
    let from_workload = snap.workload_peer_auth(w).and_then(|p| {
        p.spec
            .port_level_mtls
            .get(&port)
            .and_then(|m| set(m.mode))
            .or_else(|| p.spec.mtls.as_ref().and_then(|m| set(m.mode)))
    });
    let scope =
        |ns: &str| snap.namespace_peer_auth(ns).and_then(|p| p.spec.mtls.as_ref().and_then(|m| set(m.mode)));
    from_workload
        .or_else(|| scope(&w.namespace))
        .or_else(|| scope(ROOT_NAMESPACE))
        .unwrap_or(MtlsMode::Permissive)
}

/// Authorizes a connection to workload `w`.
pub fn authorize(snap: &Snapshot, w: &PodEntry, f: &Facts<'_>) -> Verdict {
    let applicable: Vec<&AuthorizationPolicy> =
        snap.authz_for(w).iter().filter_map(|i| snap.authorization_policies.get(*i as usize)).collect();
    decide(&applicable, f)
}

/// Decides over an explicit set of policies (a waypoint's targeted policies), with Istio's order.
pub fn decide(applicable: &[&AuthorizationPolicy], f: &Facts<'_>) -> Verdict {
    let name = |p: &AuthorizationPolicy| format!("{}/{}", p.namespace, p.name);
    let matches = |p: &AuthorizationPolicy| {
        p.spec.rules.as_deref().unwrap_or_default().iter().any(|r| rule_matches(r, f, p.spec.action))
    };
    if let Some(p) = applicable.iter().find(|p| p.spec.action == Action::Deny && matches(p)) {
        return Verdict::Deny { by: name(p) };
    }
    let allows: Vec<_> = applicable.iter().filter(|p| p.spec.action == Action::Allow).collect();
    if allows.is_empty() {
        return Verdict::Allow { by: None };
    }
    match allows.iter().find(|p| matches(p)) {
        Some(p) => Verdict::Allow { by: Some(name(p)) },
        None => Verdict::Deny { by: allows.iter().map(|p| name(p)).collect::<Vec<_>>().join(",") },
    }
}

use crate::config::kinds::authorization_policy::L4_CONDITION_KEYS as L4_KEYS;

fn uses_http_only(r: &Rule) -> bool {
    let src = |s: &Source| s.request_principals.is_some() || s.not_request_principals.is_some();
    let op = |o: &Operation| {
        o.hosts.is_some()
            || o.not_hosts.is_some()
            || o.methods.is_some()
            || o.not_methods.is_some()
            || o.paths.is_some()
            || o.not_paths.is_some()
    };
    r.from.iter().flatten().any(|f| src(&f.source))
        || r.to.iter().flatten().any(|t| op(&t.operation))
        || r.when.iter().flatten().any(|c| !L4_KEYS.contains(&c.key.as_str()))
}

fn rule_matches(r: &Rule, f: &Facts<'_>, action: Action) -> bool {
    if f.http.is_none() && uses_http_only(r) {
        return action == Action::Deny;
    }
    let fail = action == Action::Deny; // what an unparseable value yields
    let from_ok = match r.from.as_deref() {
        None | Some([]) => true,
        Some(list) => list.iter().any(|s| source_matches(&s.source, f, fail)),
    };
    let to_ok = match r.to.as_deref() {
        None | Some([]) => true,
        Some(list) => list.iter().any(|t| operation_matches(&t.operation, f, fail)),
    };
    let when_ok = r.when.iter().flatten().all(|c| condition_matches(c, f, fail));
    from_ok && to_ok && when_ok
}

/// Istio string matching: exact, `*` (any non-empty), `prefix*`, `*suffix`.
fn str_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(p) = pattern.strip_suffix('*') {
        value.starts_with(p)
    } else if let Some(s) = pattern.strip_prefix('*') {
        value.ends_with(s)
    } else {
        pattern == value
    }
}

fn principal(f: &Facts<'_>) -> String {
    f.identity
        .map(|i| format!("{}/ns/{}/sa/{}", i.trust_domain, i.namespace, i.service_account))
        .unwrap_or_default()
}

fn any_str(list: &Option<Vec<String>>, value: &str) -> Option<bool> {
    list.as_ref().map(|l| l.iter().any(|p| str_match(p.strip_prefix("spiffe://").unwrap_or(p), value)))
}

/// Whether `ip` is in any CIDR or address of `list`; unparseable entries yield `fail`.
fn any_cidr(list: &Option<Vec<String>>, ip: IpAddr, fail: bool) -> Option<bool> {
    list.as_ref().map(|l| {
        l.iter().any(|c| match c.parse::<IpNet>().or_else(|_| c.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => net.contains(&ip),
            Err(_) => fail,
        })
    })
}

fn source_matches(s: &Source, f: &Facts<'_>, fail: bool) -> bool {
    let p = principal(f);
    let ns = f.identity.map(|i| i.namespace.as_str()).unwrap_or("");
    let checks = [
        any_str(&s.principals, &p),
        any_str(&s.not_principals, &p).map(|m| !m),
        any_str(&s.namespaces, ns),
        any_str(&s.not_namespaces, ns).map(|m| !m),
        any_cidr(&s.ip_blocks, f.src_ip, fail),
        any_cidr(&s.not_ip_blocks, f.src_ip, !fail).map(|m| !m),
        // At L4 the remote address is the connection's source.
        any_cidr(&s.remote_ip_blocks, f.src_ip, fail),
        any_cidr(&s.not_remote_ip_blocks, f.src_ip, !fail).map(|m| !m),
        request_principal(&s.request_principals, f),
        request_principal(&s.not_request_principals, f).map(|m| !m),
    ];
    checks.iter().flatten().all(|ok| *ok)
}

fn port_in(list: &[String], port: u16, fail: bool) -> bool {
    list.iter().any(|p| p.parse::<u16>().map_or(fail, |n| n == port))
}

/// A claim of the request's validated token as strings (a list claim gives each element).
fn claim(f: &Facts<'_>, path: &[&str]) -> Vec<String> {
    f.http.and_then(|h| h.claims).map(|c| claim_values(c, path)).unwrap_or_default()
}

/// `requestPrincipals`: a request without a validated token has no principal and matches nothing.
fn request_principal(list: &Option<Vec<String>>, f: &Facts<'_>) -> Option<bool> {
    let p = f.http.and_then(|h| h.request_principal).unwrap_or("");
    list.as_ref().map(|l| !p.is_empty() && l.iter().any(|pat| str_match(pat, p)))
}

/// A `hosts` entry against the request's host: case-insensitive, and a pattern without a port
/// also matches the host with any port (as Istio documents).
fn host_match(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if str_match(&p, &h) {
        return true;
    }
    let bare = match h.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || port.parse::<u16>().is_ok() => name,
        _ => return false,
    };
    !p.contains(':') && str_match(&p, bare)
}

/// Istio's path matching: exact, `prefix*`, `*suffix`, `*`, and the `{*}` (one segment) / `{**}`
/// (the rest) path templates.
fn path_match(pattern: &str, path: &str) -> bool {
    if !pattern.contains('{') {
        return str_match(pattern, path);
    }
    let pats: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, p) in pats.iter().enumerate() {
        match *p {
            // Zero or more segments; it must be the pattern's last operator.
            "{**}" => return i + 1 == pats.len(),
            "{*}" => {
                if segs.get(i).is_none_or(|s| s.is_empty()) {
                    return false;
                }
            }
            lit => {
                if segs.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
    }
    pats.len() == segs.len()
}

fn operation_matches(o: &Operation, f: &Facts<'_>, fail: bool) -> bool {
    let port = f.dst.port();
    let l4 = o.ports.as_ref().is_none_or(|l| port_in(l, port, fail))
        && o.not_ports.as_ref().is_none_or(|l| !port_in(l, port, !fail));
    let Some(h) = f.http else {
        return l4;
    };
    let any =
        |list: &Option<Vec<String>>, m: &dyn Fn(&str) -> bool| list.as_ref().map(|l| l.iter().any(|p| m(p)));
    let checks = [
        any(&o.methods, &|p| p == h.method),
        any(&o.not_methods, &|p| p == h.method).map(|m| !m),
        any(&o.paths, &|p| path_match(p, h.path)),
        any(&o.not_paths, &|p| path_match(p, h.path)).map(|m| !m),
        any(&o.hosts, &|p| host_match(p, h.host)),
        any(&o.not_hosts, &|p| host_match(p, h.host)).map(|m| !m),
    ];
    l4 && checks.iter().flatten().all(|ok| *ok)
}

fn condition_matches(c: &Condition, f: &Facts<'_>, fail: bool) -> bool {
    // `on_error`: what an unparseable value counts as, chosen so the rule fails closed.
    let test = |v: &str, on_error: bool| -> bool {
        match c.key.as_str() {
            "source.ip" => any_cidr(&Some(vec![v.to_string()]), f.src_ip, on_error).unwrap_or(on_error),
            "destination.ip" => {
                any_cidr(&Some(vec![v.to_string()]), f.dst.ip(), on_error).unwrap_or(on_error)
            }
            "destination.port" => v.parse::<u16>().map_or(on_error, |p| p == f.dst.port()),
            "source.namespace" => str_match(v, f.identity.map(|i| i.namespace.as_str()).unwrap_or("")),
            "source.principal" => str_match(v.strip_prefix("spiffe://").unwrap_or(v), &principal(f)),
            "request.auth.principal" => {
                f.http.and_then(|h| h.request_principal).is_some_and(|p| str_match(v, p))
            }
            "request.auth.audiences" => claim(f, &["aud"]).iter().any(|a| str_match(v, a)),
            "request.auth.presenter" => claim(f, &["azp"]).iter().any(|a| str_match(v, a)),
            key if key.starts_with("request.auth.claims[") => {
                let path: Vec<&str> = key["request.auth.claims".len()..]
                    .split(']')
                    .filter_map(|p| p.strip_prefix('['))
                    .collect();
                claim(f, &path).iter().any(|a| str_match(v, a))
            }
            key => match (key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')), f.http) {
                (Some(name), Some(h)) => {
                    h.headers.get_all(name).iter().filter_map(|x| x.to_str().ok()).any(|x| str_match(v, x))
                }
                // A key this evaluator does not know (or an HTTP key at L4) fails closed.
                _ => on_error,
            },
        }
    };
    c.values.as_ref().is_none_or(|vs| vs.iter().any(|v| test(v, fail)))
        && c.not_values.as_ref().is_none_or(|vs| !vs.iter().any(|v| test(v, !fail)))
}

/// A claim by path (`request.auth.claims[a][b]` -> ["a", "b"]) as the strings policies compare:
/// a string, or each string of a list.
pub fn claim_values(claims: &serde_json::Value, path: &[&str]) -> Vec<String> {
    let mut v = claims;
    for p in path {
        match v.get(*p) {
            Some(x) => v = x,
            None => return Vec::new(),
        }
    }
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        serde_json::Value::Bool(b) => vec![b.to_string()],
        serde_json::Value::Number(n) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
