//! Istio's own Gateway (networking.istio.io v1/v1beta1/v1alpha3): the servers of an ingress or
//! egress gateway, parsed from its `spec` exactly as Istio spells the fields, and the checks Istio's
//! validation performs on it. sluice runs no such gateway; it validates them so `sluice analyze`
//! reports mistakes. (The Gateway API Gateway, waypoints among them, is [`super::gateway_api`].)
//!
//! This module owns the wire shape and its validation. It imports only [`super::common`], never
//! another kind nor the compiler.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::{Issue, Labels, check_port, join};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: Port,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub number: u32,
    pub protocol: String,
    pub name: String,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsProtocol {
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

const GATEWAY_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS"];

impl GatewaySpec {
    /// Istio's semantic checks of a (networking.istio.io) Gateway.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        if self.servers.is_empty() {
            is.push(Issue::error(
                "servers",
                "a Gateway needs at least one server",
                "add a server with a port and hosts",
            ));
        }
        let mut port_names = BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let sp = format!("servers[{i}]");
            check_port(is, &join(&sp, "port.number"), s.port.number);
            let proto = s.port.protocol.to_ascii_uppercase();
            if !GATEWAY_PROTOCOLS.contains(&proto.as_str()) {
                is.push(Issue::error(
                    join(&sp, "port.protocol"),
                    format!("`{}` is not a Gateway protocol", s.port.protocol),
                    "use HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS",
                ));
            }
            if s.port.name.is_empty() {
                is.push(Issue::error(
                    join(&sp, "port.name"),
                    "port name is empty",
                    "name the port, e.g. https",
                ));
            } else if !port_names.insert(s.port.name.as_str()) {
                is.push(Issue::error(
                    join(&sp, "port.name"),
                    format!("port name `{}` is used by two servers", s.port.name),
                    "give every server port a unique name",
                ));
            }
            if s.hosts.is_empty() {
                is.push(Issue::error(
                    join(&sp, "hosts"),
                    "a server needs at least one host",
                    "list hosts such as \"*\" or \"ns/app.example.com\"",
                ));
            }
            for (j, h) in s.hosts.iter().enumerate() {
                let host = h.split_once('/').map_or(h.as_str(), |(_, host)| host);
                if host.is_empty() {
                    is.push(Issue::error(
                        format!("{sp}.hosts[{j}]"),
                        format!("host `{h}` is empty"),
                        "write e.g. \"*\" or \"ns/app.example.com\"",
                    ));
                }
            }
            let tls_protocol = proto == "HTTPS" || proto == "TLS";
            match &s.tls {
                None if tls_protocol => is.push(Issue::error(
                    join(&sp, "tls"),
                    format!("a {proto} server needs tls settings"),
                    "set tls.mode (e.g. SIMPLE with credentialName)",
                )),
                Some(t) => {
                    let tp = join(&sp, "tls");
                    let has_cert = t.credential_name.is_some()
                        || !t.credential_names.is_empty()
                        || !t.tls_certificates.is_empty()
                        || (t.server_certificate.is_some() && t.private_key.is_some());
                    if matches!(
                        t.mode,
                        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
                    ) && !has_cert
                    {
                        is.push(Issue::error(
                            join(&tp, "mode"),
                            "a terminating TLS server needs a certificate",
                            "set credentialName, or serverCertificate and privateKey",
                        ));
                    }
                    if matches!(t.mode, Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual))
                        && t.ca_certificates.is_none()
                        && t.credential_name.is_none()
                        && t.ca_cert_credential_name.is_none()
                        && t.credential_names.is_empty()
                    {
                        is.push(Issue::error(
                            join(&tp, "mode"),
                            "MUTUAL needs CA certificates to verify clients",
                            "set caCertificates, or a credentialName whose secret holds ca.crt",
                        ));
                    }
                    if t.credential_name.is_some() && !t.credential_names.is_empty() {
                        is.push(Issue::error(
                            join(&tp, "credentialNames"),
                            "`credentialName` and `credentialNames` are both set",
                            "use one of them",
                        ));
                    }
                }
                None => {}
            }
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::kinds::testing::{has, parse, parse_err, patched, round_trips};

    fn gateway() -> Value {
        json!({
            "selector": {"app": "my-gateway-controller"},
            "servers": [{
                "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                "hosts": ["uk.bookinfo.com", "eu.bookinfo.com"],
                "tls": {"httpsRedirect": true}
            }, {
                "port": {"number": 443, "name": "https-443", "protocol": "HTTPS"},
                "bind": "0.0.0.0",
                "hosts": ["ns1/uk.bookinfo.com"],
                "name": "https",
                "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-secret", "minProtocolVersion": "TLSV1_2",
                        "maxProtocolVersion": "TLSV1_3", "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384"]}
            }, {
                "port": {"number": 9443, "name": "https-9443", "protocol": "HTTPS"},
                "hosts": ["bookinfo-namespace/*.bookinfo.com"],
                "tls": {"mode": "MUTUAL", "serverCertificate": "/etc/certs/server.pem", "privateKey": "/etc/certs/key.pem",
                        "caCertificates": "/etc/certs/ca.pem", "caCrl": "/etc/certs/crl.pem",
                        "subjectAltNames": ["client.example.com"], "verifyCertificateSpki": ["abc"],
                        "verifyCertificateHash": ["de:ad"], "insecureSkipVerify": false}
            }, {
                "port": {"number": 8443, "name": "tls-passthrough", "protocol": "TLS"},
                "hosts": ["*"],
                "tls": {"mode": "PASSTHROUGH"},
                "defaultEndpoint": "127.0.0.1:8443"
            }, {
                "port": {"number": 2379, "name": "mongo", "protocol": "MONGO", "targetPort": 2379},
                "hosts": ["*"]
            }, {
                "port": {"number": 8444, "name": "multi", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "OPTIONAL_MUTUAL", "credentialNames": ["rsa", "ecdsa"], "caCertCredentialName": "ca",
                        "tlsCertificates": [{"serverCertificate": "/a", "privateKey": "/b", "caCertificates": "/c"}]}
            }]
        })
    }

    #[test]
    fn gateway_example_parses_validates_and_round_trips() {
        let gw: GatewaySpec = round_trips(gateway());
        assert_eq!(
            gw.servers[1].tls.as_ref().expect("present").min_protocol_version,
            Some(TlsProtocol::TlsV1_2)
        );
        assert_eq!(gw.validate(), vec![]);
    }

    #[test]
    fn gateway_rules() {
        let base = gateway();
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            ("/servers", json!([]), "servers", "needs at least one server"),
            ("/servers/0/port/number", json!(0), "servers[0].port.number", "port 0 is out of range"),
            (
                "/servers/0/port/protocol",
                json!("QUIC"),
                "servers[0].port.protocol",
                "`QUIC` is not a Gateway protocol",
            ),
            (
                "/servers/1/port/name",
                json!("http"),
                "servers[1].port.name",
                "port name `http` is used by two servers",
            ),
            ("/servers/0/hosts", json!([]), "servers[0].hosts", "needs at least one host"),
            ("/servers/0/hosts/0", json!("ns/"), "servers[0].hosts[0]", "is empty"),
            ("/servers/1/tls", Value::Null, "servers[1].tls", "a HTTPS server needs tls settings"),
            ("/servers/1/tls/credentialName", Value::Null, "servers[1].tls.mode", "needs a certificate"),
            (
                "/servers/2/tls/caCertificates",
                Value::Null,
                "servers[2].tls.mode",
                "MUTUAL needs CA certificates",
            ),
            ("/servers/5/tls/credentialName", json!("x"), "servers[5].tls.credentialNames", "both set"),
        ];
        for (pointer, value, path, message) in cases {
            let gw: GatewaySpec = parse(patched(&base, pointer, value));
            has(&gw.validate(), path, message);
        }
    }

    #[test]
    fn gateway_unknown_fields_and_wrong_types_are_rejected() {
        let err = parse_err::<GatewaySpec>(patched(&gateway(), "/servers/0/tls/httpRedirect", json!(true)));
        assert!(err.contains("unknown field `httpRedirect`"), "{err}");
        let err =
            parse_err::<GatewaySpec>(patched(&gateway(), "/selector", json!({"matchLabels": {"a": "b"}})));
        assert!(err.contains("invalid type"), "{err}");
        for (pointer, value) in [
            ("/servers/0/port", json!(80)),
            ("/servers/1/tls/mode", json!("TERMINATE")),
            ("/servers/1/tls/minProtocolVersion", json!("TLSv1_2")),
        ] {
            let r = serde_json::from_value::<GatewaySpec>(patched(&gateway(), pointer, value.clone()));
            assert!(r.is_err(), "{pointer} = {value} was accepted");
        }
    }
}
