//! Istio's ServiceEntry (networking.istio.io v1/v1beta1/v1alpha3), with its WorkloadEntry
//! endpoints: hosts and addresses outside the Kubernetes Services, parsed from its `spec` exactly as
//! Istio spells the fields, and the checks Istio's validation performs on it.
//!
//! This module owns the wire shape and its validation. Turning an entry into virtual IPs belongs to
//! `Snapshot::compile`. It imports only [`super::common`], never another kind nor the compiler.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::{Issue, Labels, check_export_to, check_port, is_ip_or_cidr, join};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<EntryWorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// The networking `WorkloadSelector` of ServiceEntry/Sidecar: `{labels: ...}` (policies use
/// `{matchLabels: ...}`, [`WorkloadSelector`](super::common::WorkloadSelector)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryWorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// `WorkloadEntry` (also a ServiceEntry endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl ServiceEntrySpec {
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Istio's semantic checks of a ServiceEntry.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        if self.hosts.is_empty() {
            is.push(Issue::error(
                "hosts",
                "a ServiceEntry needs at least one host",
                "list the hostnames, e.g. hosts: [api.example.com]",
            ));
        }
        let resolution = self.resolution.unwrap_or(Resolution::None);
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_empty() {
                is.push(Issue::error(format!("hosts[{i}]"), "host is empty", "write a hostname"));
            } else if h.contains('*') && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
                is.push(Issue::error(
                    format!("hosts[{i}]"),
                    format!("wildcard host `{h}` cannot be resolved with DNS"),
                    "use resolution NONE or DYNAMIC_DNS for wildcard hosts, or list concrete hosts",
                ));
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if !is_ip_or_cidr(a) {
                is.push(Issue::error(
                    format!("addresses[{i}]"),
                    format!("`{a}` is not an IP address or CIDR"),
                    "write e.g. 192.0.2.10 or 192.0.2.0/24",
                ));
            }
        }
        let mut numbers = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let pp = format!("ports[{i}]");
            check_port(is, &join(&pp, "number"), p.number);
            if let Some(t) = p.target_port {
                check_port(is, &join(&pp, "targetPort"), t);
            }
            if !numbers.insert(p.number) {
                is.push(Issue::error(
                    join(&pp, "number"),
                    format!("port {} is listed twice", p.number),
                    "give every port a unique number",
                ));
            }
            if p.name.is_empty() {
                is.push(Issue::error(join(&pp, "name"), "port name is empty", "name the port, e.g. https"));
            } else if !names.insert(p.name.as_str()) {
                is.push(Issue::error(
                    join(&pp, "name"),
                    format!("port name `{}` is used twice", p.name),
                    "give every port a unique name",
                ));
            }
        }
        if !self.endpoints.is_empty() && self.workload_selector.is_some() {
            is.push(Issue::error(
                "workloadSelector",
                "`endpoints` and `workloadSelector` are mutually exclusive",
                "list the endpoints, or select WorkloadEntries/pods by labels, not both",
            ));
        }
        match resolution {
            Resolution::Static => {
                if self.endpoints.is_empty() && self.workload_selector.is_none() {
                    is.push(Issue::error(
                        "endpoints",
                        "resolution STATIC needs endpoints or a workloadSelector",
                        "list endpoints with IP addresses, or select workloads by labels",
                    ));
                }
                for (i, e) in self.endpoints.iter().enumerate() {
                    let addr = e.address.as_deref().unwrap_or("");
                    if addr.parse::<std::net::IpAddr>().is_err() && !addr.starts_with("unix://") {
                        is.push(Issue::error(
                            format!("endpoints[{i}].address"),
                            format!("`{addr}` is not an IP address, as resolution STATIC needs"),
                            "write an IP address, or use resolution DNS for hostnames",
                        ));
                    }
                }
            }
            Resolution::None if !self.endpoints.is_empty() => {
                is.push(Issue::error(
                    "endpoints",
                    "resolution NONE ignores endpoints",
                    "set resolution STATIC (IP endpoints) or DNS (hostname endpoints)",
                ));
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                for (i, e) in self.endpoints.iter().enumerate() {
                    if e.address.as_deref().unwrap_or("").is_empty() {
                        is.push(Issue::error(
                            format!("endpoints[{i}].address"),
                            "endpoint address is empty",
                            "write a hostname or IP address",
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            for (name, port) in &e.ports {
                check_port(is, &format!("endpoints[{i}].ports.{name}"), *port);
                if !self.ports.is_empty() && !names.contains(name.as_str()) {
                    is.push(Issue::warning(
                        format!("endpoints[{i}].ports.{name}"),
                        format!("`{name}` is not the name of a port of this ServiceEntry"),
                        "endpoint ports are keyed by the names under spec.ports",
                    ));
                }
            }
        }
        check_export_to(is, &self.export_to);
        issues
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::kinds::testing::{has, parse, parse_err, patched, round_trips};

    fn service_entry_dns() -> Value {
        json!({
            "hosts": ["api.dropboxapi.com", "www.googleapis.com"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}, {"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS",
            "exportTo": ["."],
            "subjectAltNames": ["spiffe://cluster.local/ns/ext/sa/api"]
        })
    }

    fn service_entry_static() -> Value {
        json!({
            "hosts": ["mymongodb.somedomain"],
            "addresses": ["192.192.192.192/24", "10.0.0.1"],
            "ports": [{"number": 27018, "name": "mongodb", "protocol": "MONGO"}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "endpoints": [
                {"address": "2.2.2.2", "ports": {"mongodb": 7777}, "labels": {"app": "mongo"}, "network": "n1",
                 "locality": "us-east1/zone1", "weight": 10, "serviceAccount": "mongo"},
                {"address": "3.3.3.3"},
                {"address": "unix:///var/run/mongo.sock"}
            ]
        })
    }

    fn service_entry_selector() -> Value {
        json!({
            "hosts": ["details.bookinfo.com"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "details-legacy"}}
        })
    }

    #[test]
    fn service_entry_examples_parse_validate_and_round_trip() {
        for v in [service_entry_dns(), service_entry_static(), service_entry_selector()] {
            let se: ServiceEntrySpec = round_trips(v);
            assert_eq!(se.validate(), vec![], "{se:?}");
        }
        let se: ServiceEntrySpec = parse(service_entry_static());
        assert_eq!(se.resolution, Some(Resolution::Static));
        assert_eq!(se.endpoints[0].ports["mongodb"], 7777);
        assert_eq!(se.hosts(), ["mymongodb.somedomain"]);
    }

    #[test]
    fn service_entry_rules() {
        let dns = service_entry_dns();
        let st = service_entry_static();
        let sel = service_entry_selector();
        let cases: Vec<(&Value, &str, Value, &str, &str)> = vec![
            (&dns, "/hosts", json!([]), "hosts", "needs at least one host"),
            (&dns, "/hosts/0", json!("*.example.com"), "hosts[0]", "cannot be resolved with DNS"),
            (
                &st,
                "/addresses/1",
                json!("mongo.local"),
                "addresses[1]",
                "`mongo.local` is not an IP address or CIDR",
            ),
            (&dns, "/ports/1/number", json!(443), "ports[1].number", "port 443 is listed twice"),
            (&dns, "/ports/1/number", json!(0), "ports[1].number", "port 0 is out of range"),
            (&dns, "/ports/1/number", json!(65536), "ports[1].number", "out of range"),
            (&dns, "/ports/1/targetPort", json!(70000), "ports[1].targetPort", "out of range"),
            (&dns, "/ports/1/name", json!("https"), "ports[1].name", "port name `https` is used twice"),
            (
                &st,
                "/endpoints",
                json!([]),
                "endpoints",
                "resolution STATIC needs endpoints or a workloadSelector",
            ),
            (
                &st,
                "/endpoints/1/address",
                json!("mongo.example.com"),
                "endpoints[1].address",
                "is not an IP address, as resolution STATIC needs",
            ),
            (
                &st,
                "/workloadSelector",
                json!({"labels": {"app": "x"}}),
                "workloadSelector",
                "`endpoints` and `workloadSelector` are mutually exclusive",
            ),
            (&sel, "/endpoints", json!([{"address": "1.1.1.1"}]), "workloadSelector", "mutually exclusive"),
            (&st, "/resolution", json!("NONE"), "endpoints", "resolution NONE ignores endpoints"),
            (
                &dns,
                "/endpoints",
                json!([{"address": ""}]),
                "endpoints[0].address",
                "endpoint address is empty",
            ),
            (&st, "/endpoints/0/ports/mongodb", json!(0), "endpoints[0].ports.mongodb", "out of range"),
            (
                &st,
                "/endpoints/0/ports/mongo",
                json!(1),
                "endpoints[0].ports.mongo",
                "is not the name of a port",
            ),
            (&dns, "/exportTo/0", json!("*/x"), "exportTo[0]", "is not a namespace name"),
        ];
        for (base, pointer, value, path, message) in cases {
            let se: ServiceEntrySpec = parse(patched(base, pointer, value));
            has(&se.validate(), path, message);
        }
    }

    #[test]
    fn service_entry_unknown_fields_and_wrong_types_are_rejected() {
        let err =
            parse_err::<ServiceEntrySpec>(patched(&service_entry_static(), "/endpoints/0/addr", json!("x")));
        assert!(err.contains("unknown field `addr`"), "{err}");
        let err = parse_err::<ServiceEntrySpec>(patched(
            &service_entry_selector(),
            "/workloadSelector/matchLabels",
            json!({}),
        ));
        assert!(err.contains("unknown field `matchLabels`"), "{err}");
        for (pointer, value) in [
            ("/resolution", json!("DNS_RR")),
            ("/location", json!("EXTERNAL")),
            ("/ports/0/number", json!("443")),
            ("/ports/0", json!({"number": 443})),
            ("/hosts", json!("api.dropboxapi.com")),
        ] {
            let r = serde_json::from_value::<ServiceEntrySpec>(patched(
                &service_entry_dns(),
                pointer,
                value.clone(),
            ));
            assert!(r.is_err(), "{pointer} = {value} was accepted");
        }
    }
}
