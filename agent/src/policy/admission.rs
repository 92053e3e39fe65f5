//! The admission gate: one pure function decides whether a connection may be carried, for every
//! path of the agent (outbound, inbound plaintext, HBONE, same node) and for the waypoint's L4
//! part. It reads only the connection's facts and the snapshot, so every rule is unit-tested
//! without root (see the tables below).
//!
//! Rules, in order:
//! 1. A destination that is one of the agent's own ports is a loop ([`Reason::Loop`]).
//! 2. Plaintext to a port whose PeerAuthentication is STRICT is refused
//!    ([`Reason::MtlsRequired`]).
//! 3. A workload bound to a waypoint for its own traffic accepts (authenticated) traffic only from
//!    that waypoint, so L7 policy cannot be bypassed by dialling the pod ([`Reason::Deny`]).
//! 4. At a waypoint: only destinations bound to this waypoint are served (never an open relay);
//!    opaque TCP is authorized with the policies attached to the waypoint or the Service (HTTP is
//!    authorized per request by the waypoint's pipeline).
//! 5. AuthorizationPolicy ([`super::authorize`], Istio's order).
//!
//! The gate decides; it does no I/O and counts nothing. The caller's connection record
//! (`crate::conn`) counts and logs the decision once.
use std::net::{IpAddr, SocketAddr};

use sluice_common::{INBOUND_CAPTURE_PORT, INBOUND_HBONE_PORT, OUTBOUND_CAPTURE_PORT};

use super::{Facts, Verdict};
use crate::{
    config::{
        Service, Snapshot,
        kinds::{authorization_policy::AuthorizationPolicy, peer_authentication::MtlsMode},
        model::PodEntry,
        waypoints::WaypointRef,
    },
    identity::Identity,
    telemetry::reason::Reason,
};

/// Which way a connection reached the proxy, with what that path knows.
#[derive(Clone, Copy, Debug)]
pub enum Path<'a> {
    /// 15001: an enrolled pod's own outbound connection, before routing.
    Outbound,
    /// 15006: plaintext to `workload` (a pod enrolled on this node).
    InboundPlain { workload: &'a PodEntry },
    /// 15008: an HBONE stream to `workload` from the verified `peer`.
    Hbone { workload: &'a PodEntry, peer: &'a Identity },
    /// Same node: to `workload` from a pod this agent enrolled, with the identity it assigned.
    SameNode { workload: &'a PodEntry, peer: &'a Identity },
    /// At `waypoint`: an HBONE stream from the verified `peer`.
    Waypoint { waypoint: &'a WaypointRef, peer: &'a Identity },
}

impl Path<'_> {
    /// The path's name in access logs and `/debug/connections`.
    pub fn label(&self) -> &'static str {
        match self {
            Path::Outbound => "outbound",
            Path::InboundPlain { .. } => "inbound",
            Path::Hbone { .. } => "hbone",
            Path::SameNode { .. } => "same_node",
            Path::Waypoint { .. } => "waypoint",
        }
    }
}

/// What the gate is told about one connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnFacts<'a> {
    pub path: Path<'a>,
    /// The client's address (for HBONE, the tunnelled source).
    pub src: IpAddr,
    /// The original destination.
    pub dst: SocketAddr,
    /// This mesh's trust domain.
    pub trust_domain: &'a str,
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Carry it; `policy` names the AuthorizationPolicy that allowed it, if one did.
    Admit { policy: Option<String> },
    /// Refuse it, for `reason`; `detail` says which object decided and why; `policy` names the
    /// AuthorizationPolicy that denied it, if one did.
    Refuse { reason: Reason, detail: String, policy: Option<String> },
}

impl Decision {
    pub fn admitted(&self) -> bool {
        matches!(self, Decision::Admit { .. })
    }

    /// `ns/name` of the AuthorizationPolicy that decided (allowed or denied), or `-`.
    pub fn policy(&self) -> &str {
        match self {
            Decision::Admit { policy: Some(p) } | Decision::Refuse { policy: Some(p), .. } => p,
            _ => "-",
        }
    }

    /// [`Decision::policy`] as a connection record keeps it (no allocation for `-`).
    pub fn policy_label(&self) -> std::borrow::Cow<'static, str> {
        match self.policy() {
            "-" => std::borrow::Cow::Borrowed("-"),
            p => std::borrow::Cow::Owned(p.to_string()),
        }
    }
}

/// Whether `addr` is one of the agent's own in-pod ports.
pub fn is_agent_port(addr: SocketAddr) -> bool {
    matches!(addr.port(), OUTBOUND_CAPTURE_PORT | INBOUND_CAPTURE_PORT | INBOUND_HBONE_PORT)
}

/// Whether traffic to `target` is carried as opaque TCP at a waypoint: a Service port named `tcp`
/// or `tcp-*` (Istio's explicit protocol selection). Everything else is served as HTTP.
pub fn opaque_tcp(snap: &Snapshot, target: SocketAddr) -> bool {
    snap.service_by_vip(target).is_some_and(|(_, p)| p.name == "tcp" || p.name.starts_with("tcp-"))
}

/// The one admission decision for a connection described by `f`.
pub fn admit(snap: &Snapshot, f: &ConnFacts<'_>) -> Decision {
    let refuse = |reason, detail: String| Decision::Refuse { reason, detail, policy: None };
    match f.path {
        Path::Outbound => {
            if is_agent_port(f.dst) && f.dst.ip().is_loopback() {
                return refuse(Reason::Loop, format!("{} is the agent's own port", f.dst));
            }
            Decision::Admit { policy: None }
        }
        Path::InboundPlain { workload } => {
            if is_agent_port(f.dst) {
                return refuse(Reason::Loop, format!("{} is the agent's own port", f.dst));
            }
            if super::mtls_mode(snap, workload, f.dst.port()) == MtlsMode::Strict {
                return refuse(Reason::MtlsRequired, "PeerAuthentication STRICT: plaintext refused".into());
            }
            authorized(super::authorize(snap, workload, &l4(f, None)))
        }
        Path::Hbone { workload, peer } | Path::SameNode { workload, peer } => {
            if is_agent_port(f.dst) {
                return refuse(Reason::Loop, format!("{} is the agent's own port", f.dst));
            }
            if let Some(wp) = snap.workload_waypoint(workload)
                && *peer != wp.identity(f.trust_domain)
            {
                return refuse(
                    Reason::Deny,
                    format!("waypoint {}/{} (traffic must come through it)", wp.namespace, wp.name),
                );
            }
            authorized(super::authorize(snap, workload, &l4(f, Some(peer))))
        }
        Path::Waypoint { waypoint, peer } => {
            if !serves(snap, waypoint, f.dst) {
                return refuse(
                    Reason::Deny,
                    format!(
                        "{} is not bound to waypoint {}/{} (it is no open relay)",
                        f.dst, waypoint.namespace, waypoint.name
                    ),
                );
            }
            if !opaque_tcp(snap, f.dst) {
                // HTTP: authorized request by request, with the request's facts.
                return Decision::Admit { policy: None };
            }
            let service = snap.service_by_vip(f.dst).map(|(s, _)| s);
            let applicable = waypoint_policies(snap, waypoint, service);
            if applicable.is_empty() {
                return Decision::Admit { policy: None };
            }
            authorized(super::decide(&applicable, &l4(f, Some(peer))))
        }
    }
}

fn l4<'a>(f: &ConnFacts<'a>, identity: Option<&'a Identity>) -> Facts<'a> {
    Facts { identity, src_ip: f.src, dst: f.dst, http: None }
}

fn authorized(v: Verdict) -> Decision {
    match v {
        Verdict::Allow { by } => Decision::Admit { policy: by },
        Verdict::Deny { by } => Decision::Refuse {
            reason: Reason::Deny,
            detail: format!("AuthorizationPolicy {by}"),
            policy: Some(by),
        },
    }
}

/// Whether `target` is bound to `wp`: a Service VIP whose Service uses it, or the address of a
/// workload that uses it for its own traffic.
pub fn serves(snap: &Snapshot, wp: &WaypointRef, target: SocketAddr) -> bool {
    match snap.service_by_vip(target) {
        Some((svc, _)) => snap.service_waypoint(svc).is_some_and(|w| w == *wp),
        None => {
            snap.workload_by_ip(target.ip()).and_then(|w| snap.workload_waypoint(w)).is_some_and(|w| w == *wp)
        }
    }
}

/// The AuthorizationPolicies waypoint `wp` enforces for `svc`: those attached to its Gateway and
/// those attached to the Service.
pub fn waypoint_policies<'a>(
    snap: &'a Snapshot,
    wp: &WaypointRef,
    svc: Option<&Service>,
) -> Vec<&'a AuthorizationPolicy> {
    snap.waypoint_policies
        .iter()
        .filter(|p| {
            p.spec
                .target_ref
                .iter()
                .chain(p.spec.target_refs.iter().flatten())
                .any(|r| attached(&r.kind, &r.name, r.namespace.as_deref(), &p.namespace, wp, svc))
        })
        .collect()
}

/// Whether a policy of `namespace` attached to `kind`/`name` (in `ref_ns`, if given) applies to
/// waypoint `wp` or to `svc`. A reference is read in the policy's own namespace only: Istio does
/// not support attaching a policy to another namespace's objects (the compiler reports such a
/// reference as an error), so a policy in one namespace can never loosen or tighten another's.
pub fn attached(
    kind: &str,
    name: &str,
    ref_ns: Option<&str>,
    namespace: &str,
    wp: &WaypointRef,
    svc: Option<&Service>,
) -> bool {
    if ref_ns.is_some_and(|ns| ns != namespace) {
        return false;
    }
    match kind {
        "Gateway" => name == wp.name && namespace == wp.namespace,
        "Service" => svc.is_some_and(|s| s.name == name && s.namespace == namespace),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
