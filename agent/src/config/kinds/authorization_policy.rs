//! Istio's AuthorizationPolicy (security.istio.io v1/v1beta1): ALLOW/DENY rules over sources,
//! operations and conditions, attached by a workload selector or by targetRefs (a waypoint), parsed
//! from its `spec` exactly as Istio spells the fields.
//!
//! Every struct rejects unknown fields: a field sluice does not implement (or a typo such as
//! `notNamespace`) must never be silently ignored, because ignoring a constraint of an ALLOW rule
//! would allow more than the author meant. The error names the field and the accepted ones.
//!
//! This module owns the wire shape and what it says about layers (which fields need HTTP); the
//! verdicts belong to `policy`. It imports only [`super::common`], never another kind nor the
//! compiler.
use serde::{Deserialize, Serialize};

use super::common::{PolicyTargetReference, WorkloadSelector};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

/// `rules[].from[].source`. `requestPrincipals` are HTTP-only (JWT).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
}

/// `rules[].to[].operation`. Hosts, methods and paths are HTTP-only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    pub values: Option<Vec<String>>,
    pub not_values: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: Option<Vec<RuleFrom>>,
    pub to: Option<Vec<RuleTo>>,
    pub when: Option<Vec<Condition>>,
}

/// `provider` of a CUSTOM policy (external authorization).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// `targetRef`/`targetRefs` attach a policy to a Gateway (a waypoint) or a Service instead of
    /// selecting workloads; such policies are enforced where that traffic is proxied (a waypoint).
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    pub provider: Option<ExtensionProvider>,
    #[serde(default)]
    pub action: Action,
    /// `None` (no rules field) and `Some([])` both match nothing.
    pub rules: Option<Vec<Rule>>,
}

/// `when` keys the node proxy can evaluate on a TCP connection; every other key needs HTTP.
pub const L4_CONDITION_KEYS: &[&str] =
    &["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

impl AuthorizationPolicySpec {
    /// Field paths (under `spec`) of HTTP-only constraints, which the node proxy cannot evaluate.
    pub fn http_only_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().flatten().enumerate() {
            for (j, f) in r.from.iter().flatten().enumerate() {
                let s = &f.source;
                for (set, name) in [
                    (&s.request_principals, "requestPrincipals"),
                    (&s.not_request_principals, "notRequestPrincipals"),
                ] {
                    if set.is_some() {
                        out.push(format!("rules[{i}].from[{j}].source.{name}"));
                    }
                }
            }
            for (j, t) in r.to.iter().flatten().enumerate() {
                let o = &t.operation;
                for (set, name) in [
                    (&o.hosts, "hosts"),
                    (&o.not_hosts, "notHosts"),
                    (&o.methods, "methods"),
                    (&o.not_methods, "notMethods"),
                    (&o.paths, "paths"),
                    (&o.not_paths, "notPaths"),
                ] {
                    if set.is_some() {
                        out.push(format!("rules[{i}].to[{j}].operation.{name}"));
                    }
                }
            }
            for (j, c) in r.when.iter().flatten().enumerate() {
                if !L4_CONDITION_KEYS.contains(&c.key.as_str()) {
                    out.push(format!("rules[{i}].when[{j}].key"));
                }
            }
        }
        out
    }

    /// The policy attaches to targets (a waypoint, a Service) rather than selecting workloads.
    pub fn is_targeted(&self) -> bool {
        self.target_ref.is_some() || self.target_refs.as_ref().is_some_and(|t| !t.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    pub spec: AuthorizationPolicySpec,
}
