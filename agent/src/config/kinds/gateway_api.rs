//! The Kubernetes Gateway API Gateway (gateway.networking.k8s.io/v1): the kind Istio ambient uses
//! to declare waypoints (`gatewayClassName: istio-waypoint`), parsed from its `spec` exactly as the
//! Gateway API spells the fields, and the checks that matter for a mesh.
//!
//! This module owns the wire shape and its validation; turning a waypoint Gateway into a running
//! waypoint belongs to the snapshot compiler. Every struct rejects unknown fields.
//! It imports only [`super::common`], never another kind nor the compiler.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::{Issue, check_port, join};

/// The class of Istio's waypoint proxies.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The HBONE port a waypoint listens on.
pub const HBONE_PORT: u32 = 15008;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewaySpecAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<GatewayInfrastructure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_listeners: Option<AllowedListeners>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_scope: Option<GatewayDefaultScope>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayDefaultScope {
    All,
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or an implementation's own (Istio: `HBONE`).
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsModeType {
    Terminate,
    Passthrough,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsModeType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespacesFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromNamespaces {
    All,
    Selector,
    Same,
    None,
}

/// `RouteNamespaces` / `ListenerNamespaces`: `{from, selector}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespacesFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromNamespaces>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Kubernetes `metav1.LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpecAddress {
    /// `IPAddress` (default), `Hostname` or an implementation's own.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct GatewayInfrastructure {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<LocalParametersReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalParametersReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedListeners {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespacesFrom>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<GatewayBackendTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontendTlsConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct GatewayBackendTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<SecretObjectReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTlsConfig {
    pub default: TlsConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_port: Vec<TlsPortConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<FrontendTlsValidation>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPortConfig {
    pub port: u32,
    pub tls: TlsConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendValidationMode {
    AllowValidOnly,
    AllowInsecureFallback,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTlsValidation {
    pub ca_certificate_refs: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FrontendValidationMode>,
}

impl GatewaySpec {
    /// A waypoint: `gatewayClassName: istio-waypoint`.
    pub fn is_waypoint(&self) -> bool {
        self.gateway_class_name == WAYPOINT_CLASS
    }

    /// Checks of a Gateway: the Gateway API's own rules plus what a waypoint needs.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        if self.gateway_class_name.is_empty() {
            is.push(Issue::error(
                "gatewayClassName",
                "gatewayClassName is empty",
                "name the GatewayClass, e.g. istio-waypoint",
            ));
        }
        if self.listeners.is_empty() {
            is.push(Issue::error("listeners", "a Gateway needs at least one listener", "add a listener"));
        }
        let mut names = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let lp = format!("listeners[{i}]");
            if l.name.is_empty() {
                is.push(Issue::error(
                    join(&lp, "name"),
                    "listener name is empty",
                    "name the listener, e.g. mesh",
                ));
            } else if !names.insert(l.name.as_str()) {
                is.push(Issue::error(
                    join(&lp, "name"),
                    format!("listener name `{}` is used twice", l.name),
                    "give every listener a unique name",
                ));
            }
            check_port(is, &join(&lp, "port"), l.port);
            if l.protocol.is_empty() {
                is.push(Issue::error(
                    join(&lp, "protocol"),
                    "protocol is empty",
                    "e.g. HTTP, HTTPS, TLS, TCP, HBONE",
                ));
            }
            let terminate = l.tls.as_ref().is_none_or(|t| t.mode != Some(TlsModeType::Passthrough));
            match (l.protocol.as_str(), &l.tls) {
                ("HTTPS", None) => is.push(Issue::error(
                    join(&lp, "tls"),
                    "an HTTPS listener needs tls settings",
                    "set tls.certificateRefs to the Secret holding the certificate",
                )),
                ("HTTPS" | "TLS", Some(t)) if terminate && t.certificate_refs.is_empty() => {
                    is.push(Issue::error(
                        join(&lp, "tls.certificateRefs"),
                        "a terminating TLS listener needs a certificate",
                        "list the Secret in tls.certificateRefs, or use mode: Passthrough",
                    ))
                }
                ("HTTP" | "TCP" | "UDP", Some(_)) => is.push(Issue::error(
                    join(&lp, "tls"),
                    format!("a {} listener takes no tls settings", l.protocol),
                    "use protocol HTTPS or TLS, or remove tls",
                )),
                _ => {}
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            let is_ip_type = a.address_type.as_deref().is_none_or(|t| t == "IPAddress");
            if let Some(v) = &a.value
                && is_ip_type
                && v.parse::<std::net::IpAddr>().is_err()
            {
                is.push(Issue::error(
                    format!("addresses[{i}].value"),
                    format!("`{v}` is not an IP address"),
                    "write an IP address, or set type: Hostname",
                ));
            }
        }
        if self.is_waypoint() && !self.listeners.iter().any(|l| l.protocol == "HBONE" && l.port == HBONE_PORT)
        {
            is.push(Issue::error(
                "listeners",
                "a waypoint (gatewayClassName istio-waypoint) has no HBONE listener on port 15008",
                "add a listener {name: mesh, port: 15008, protocol: HBONE}",
            ));
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn waypoint() -> Value {
        json!({
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
        })
    }

    fn ingress() -> Value {
        json!({
            "gatewayClassName": "istio",
            "listeners": [{
                "name": "https",
                "hostname": "*.example.com",
                "port": 443,
                "protocol": "HTTPS",
                "tls": {
                    "mode": "Terminate",
                    "certificateRefs": [{"kind": "Secret", "group": "", "name": "example-cert"}],
                    "options": {"example.com/min-version": "1.3"}
                },
                "allowedRoutes": {
                    "namespaces": {"from": "Selector", "selector": {
                        "matchLabels": {"shared-gateway-access": "true"},
                        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]
                    }},
                    "kinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]
                }
            }, {
                "name": "tls-passthrough",
                "port": 8443,
                "protocol": "TLS",
                "tls": {"mode": "Passthrough"},
                "allowedRoutes": {"namespaces": {"from": "All"}}
            }],
            "addresses": [{"type": "IPAddress", "value": "192.0.2.10"}, {"type": "Hostname", "value": "gw.example.com"}],
            "infrastructure": {
                "labels": {"team": "edge"},
                "annotations": {"example.com/owner": "edge"},
                "parametersRef": {"group": "", "kind": "ConfigMap", "name": "gw-options"}
            },
            "allowedListeners": {"namespaces": {"from": "Same"}},
            "tls": {
                "backend": {"clientCertificateRef": {"name": "client-cert"}},
                "frontend": {
                    "default": {"validation": {
                        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
                        "mode": "AllowValidOnly"
                    }},
                    "perPort": [{"port": 8443, "tls": {}}]
                }
            },
            "defaultScope": "All"
        })
    }

    fn parse(v: Value) -> GatewaySpec {
        serde_json::from_value(v).expect("the spec parses")
    }

    fn one(spec: &GatewaySpec) -> Issue {
        let issues = spec.validate();
        assert_eq!(issues.len(), 1, "{issues:?}");
        issues.into_iter().next().expect("one issue")
    }

    #[test]
    fn waypoint_parses_validates_and_round_trips() {
        let spec = parse(waypoint());
        assert!(spec.is_waypoint());
        assert_eq!(spec.validate(), vec![]);
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), waypoint());
    }

    #[test]
    fn ingress_gateway_parses_validates_and_round_trips() {
        let spec = parse(ingress());
        assert!(!spec.is_waypoint());
        assert_eq!(spec.listeners[1].tls.as_ref().expect("present").mode, Some(TlsModeType::Passthrough));
        assert_eq!(spec.validate(), vec![]);
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), ingress());
    }

    #[test]
    fn waypoint_needs_hbone_on_15008() {
        let mut v = waypoint();
        v["listeners"][0]["port"] = json!(15009);
        let i = one(&parse(v));
        assert_eq!(i.path, "listeners");
        assert_eq!(
            i.message,
            "a waypoint (gatewayClassName istio-waypoint) has no HBONE listener on port 15008"
        );
        assert!(i.hint.contains("protocol: HBONE"), "{}", i.hint);
    }

    #[test]
    fn listener_names_are_unique() {
        let spec = parse(json!({
            "gatewayClassName": "istio-waypoint",
            "listeners": [
                {"name": "mesh", "port": 15008, "protocol": "HBONE"},
                {"name": "mesh", "port": 80, "protocol": "HTTP"}
            ]
        }));
        let i = one(&spec);
        assert_eq!(i.path, "listeners[1].name");
        assert_eq!(i.message, "listener name `mesh` is used twice");
    }

    #[test]
    fn ports_tls_and_addresses_are_checked() {
        let i = one(&parse(
            json!({"gatewayClassName": "istio", "listeners": [{"name": "a", "port": 0, "protocol": "TCP"}]}),
        ));
        assert_eq!(i.path, "listeners[0].port");
        assert_eq!(i.message, "port 0 is out of range");
        let i = one(&parse(
            json!({"gatewayClassName": "istio", "listeners": [{"name": "a", "port": 443, "protocol": "HTTPS"}]}),
        ));
        assert_eq!(i.path, "listeners[0].tls");
        let i = one(&parse(json!({"gatewayClassName": "istio", "listeners": [
            {"name": "a", "port": 443, "protocol": "TLS", "tls": {"mode": "Terminate"}}
        ]})));
        assert_eq!(i.path, "listeners[0].tls.certificateRefs");
        let i = one(&parse(json!({"gatewayClassName": "istio",
            "listeners": [{"name": "a", "port": 80, "protocol": "HTTP"}],
            "addresses": [{"value": "not-an-ip"}]})));
        assert_eq!(i.path, "addresses[0].value");
        assert_eq!(i.message, "`not-an-ip` is not an IP address");
        let i = one(&parse(json!({"gatewayClassName": "istio"})));
        assert_eq!(i.path, "listeners");
        assert_eq!(i.message, "a Gateway needs at least one listener");
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let mut v = waypoint();
        v["listeners"][0]["portNumber"] = json!(1);
        let err = serde_json::from_value::<GatewaySpec>(v).expect_err("must be rejected").to_string();
        assert!(err.contains("unknown field `portNumber`"), "{err}");
        let err = serde_json::from_value::<GatewaySpec>(json!({"gatewayClass": "istio"}))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains("unknown field `gatewayClass`"), "{err}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        for bad in [
            json!({"gatewayClassName": 1}),
            json!({"gatewayClassName": "istio", "listeners": [{"name": "a", "port": "80", "protocol": "HTTP"}]}),
            json!({"gatewayClassName": "istio", "listeners": [{"name": "a", "port": 80, "protocol": "HTTP",
                "allowedRoutes": {"namespaces": {"from": "Everywhere"}}}]}),
            json!({"gatewayClassName": "istio", "listeners": {"name": "a"}}),
        ] {
            assert!(serde_json::from_value::<GatewaySpec>(bad.clone()).is_err(), "{bad}");
        }
    }
}
