//! Istio's VirtualService (networking.istio.io v1/v1beta1/v1alpha3): HTTP, TLS and TCP routes for
//! a set of hosts, parsed from its `spec` exactly as Istio spells the fields, and the checks Istio's
//! validation performs on it (weights, matches, retries, faults, rewrites, CORS, mirrors).
//!
//! This module owns the wire shape and its validation. Choosing a route for a request belongs to
//! the waypoint (`waypoint::routes`); compiling the object into the snapshot to `Snapshot::compile`.
//! It imports only [`super::common`] and the duration type, never another kind nor the compiler.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{
    Issue, Labels, Percent, PortSelector, StringMatch, StringMatcher, at_most_one, check_export_to,
    check_min_duration, check_non_negative, check_percent, check_port, check_regex, check_string_match,
    check_subnets, is_dns_label, is_header_name, is_ip_or_cidr, join, oneof_checked,
};
use crate::config::duration::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated: use `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// A TCP/TLS route destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    FromProtocolDefault,
    FromRequestPort,
}

/// `HTTPRedirect`; `port` and `derivePort` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}
oneof_checked!(HttpRedirect);

impl HttpRedirect {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one("redirect", &[("port", self.port.is_some()), ("derivePort", self.derive_port.is_some())])
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: `string` or `bytes` (base64).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}
oneof_checked!(HttpBody);

impl HttpBody {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one("body", &[("string", self.string.is_some()), ("bytes", self.bytes.is_some())])
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    Unspecified,
    Forward,
    Ignore,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated: use `allowOrigins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// `HTTPFaultInjection.Delay`; `fixedDelay` and `exponentialDelay` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    /// Deprecated: use `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}
oneof_checked!(Delay);

impl Delay {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one(
            "fault.delay",
            &[
                ("fixedDelay", self.fixed_delay.is_some()),
                ("exponentialDelay", self.exponential_delay.is_some()),
            ],
        )
    }
}

/// `HTTPFaultInjection.Abort`; `httpStatus`, `grpcStatus` and `http2Error` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}
oneof_checked!(Abort);

impl Abort {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one(
            "fault.abort",
            &[
                ("httpStatus", self.http_status.is_some()),
                ("grpcStatus", self.grpc_status.is_some()),
                ("http2Error", self.http2_error.is_some()),
            ],
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// Envoy's retry policies Istio accepts in `retryOn` (besides HTTP status codes).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl VirtualServiceSpec {
    /// The hosts this VirtualService routes (empty for a delegate VirtualService).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Istio's semantic checks of a VirtualService.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        if self.hosts.is_empty() {
            is.push(Issue::error(
                "hosts",
                "a VirtualService needs at least one host",
                "list the hostnames it routes, e.g. hosts: [reviews] (only a delegate VirtualService may omit them)",
            ));
        }
        let mesh_bound = self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh");
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_empty() {
                is.push(Issue::error(format!("hosts[{i}]"), "host is empty", "write a hostname"));
            } else if h == "*" && mesh_bound {
                is.push(Issue::error(
                    format!("hosts[{i}]"),
                    "wildcard host `*` is not allowed for a VirtualService bound to the mesh",
                    "name the hosts, or bind the VirtualService to a Gateway only",
                ));
            }
        }
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            is.push(Issue::error(
                "",
                "a VirtualService needs http, tls or tcp routes",
                "add at least one route under http, tls or tcp",
            ));
        }
        for (i, r) in self.http.iter().enumerate() {
            validate_http_route(is, &format!("http[{i}]"), r);
        }
        for (i, r) in self.tls.iter().enumerate() {
            let path = format!("tls[{i}]");
            if r.matches.is_empty() {
                is.push(Issue::error(
                    join(&path, "match"),
                    "a TLS route needs at least one match",
                    "match on sniHosts",
                ));
            }
            for (j, m) in r.matches.iter().enumerate() {
                let mp = format!("{path}.match[{j}]");
                if m.sni_hosts.is_empty() {
                    is.push(Issue::error(
                        join(&mp, "sniHosts"),
                        "a TLS match needs at least one SNI host",
                        "list the SNI names, e.g. sniHosts: [login.example.com]",
                    ));
                }
                check_subnets(is, &join(&mp, "destinationSubnets"), &m.destination_subnets);
                if let Some(p) = m.port {
                    check_port(is, &join(&mp, "port"), p);
                }
            }
            validate_l4_destinations(is, &join(&path, "route"), &r.route);
        }
        for (i, r) in self.tcp.iter().enumerate() {
            let path = format!("tcp[{i}]");
            for (j, m) in r.matches.iter().enumerate() {
                let mp = format!("{path}.match[{j}]");
                check_subnets(is, &join(&mp, "destinationSubnets"), &m.destination_subnets);
                if let Some(s) = &m.source_subnet
                    && !is_ip_or_cidr(s)
                {
                    is.push(Issue::error(
                        join(&mp, "sourceSubnet"),
                        format!("`{s}` is not an IP address or CIDR"),
                        "write e.g. 10.0.0.0/16",
                    ));
                }
                if let Some(p) = m.port {
                    check_port(is, &join(&mp, "port"), p);
                }
            }
            validate_l4_destinations(is, &join(&path, "route"), &r.route);
        }
        check_export_to(is, &self.export_to);
        issues
    }
}

fn validate_destination(is: &mut Vec<Issue>, path: &str, d: &Destination) {
    if d.host.is_empty() {
        is.push(Issue::error(
            join(path, "host"),
            "destination host is empty",
            "name a service, e.g. reviews.default.svc.cluster.local",
        ));
    }
    if let Some(s) = &d.subset
        && !is_dns_label(s)
    {
        is.push(Issue::error(
            join(path, "subset"),
            format!("subset `{s}` is not a DNS label"),
            "subset names are lowercase letters, digits and '-', as in the DestinationRule",
        ));
    }
    if let Some(PortSelector { number: Some(n) }) = &d.port {
        check_port(is, &join(path, "port.number"), *n);
    }
}

/// Weights: when more than one destination, or any weight is set, they must sum to 100.
fn check_weights(is: &mut Vec<Issue>, path: &str, weights: &[Option<i32>]) {
    let mut total: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = *w {
            if w < 0 {
                is.push(Issue::error(
                    format!("{path}[{i}].weight"),
                    format!("weight {w} is negative"),
                    "weights are between 0 and 100",
                ));
            }
            total += i64::from(w);
        }
    }
    let any_set = weights.iter().any(Option::is_some);
    if (weights.len() > 1 || any_set) && total != 100 {
        is.push(Issue::error(
            path,
            format!("destination weights sum to {total}, not 100"),
            "give every destination a weight so that they add up to 100",
        ));
    }
}

fn validate_l4_destinations(is: &mut Vec<Issue>, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        is.push(Issue::error(path, "a route needs at least one destination", "add a destination"));
    }
    for (i, r) in route.iter().enumerate() {
        validate_destination(is, &format!("{path}[{i}].destination"), &r.destination);
    }
    check_weights(is, path, &route.iter().map(|r| r.weight).collect::<Vec<_>>());
}

fn validate_headers(is: &mut Vec<Issue>, path: &str, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let p = join(path, side);
        let names = ops
            .set
            .keys()
            .map(|k| ("set", k))
            .chain(ops.add.keys().map(|k| ("add", k)))
            .chain(ops.remove.iter().map(|k| ("remove", k)));
        for (op, name) in names {
            if !is_header_name(name) {
                is.push(Issue::error(
                    format!("{p}.{op}"),
                    format!("`{name}` is not a valid header name"),
                    "header names are tokens: letters, digits and !#$%&'*+-.^_`|~",
                ));
            }
        }
    }
}

fn validate_http_route(is: &mut Vec<Issue>, path: &str, r: &HttpRoute) {
    let has_route = !r.route.is_empty();
    let actions = [
        ("route", has_route),
        ("redirect", r.redirect.is_some()),
        ("directResponse", r.direct_response.is_some()),
        ("delegate", r.delegate.is_some()),
    ];
    let set: Vec<&str> = actions.iter().filter(|a| a.1).map(|a| a.0).collect();
    if set.is_empty() {
        is.push(Issue::error(
            path,
            "an HTTP route needs one of route, redirect, directResponse or delegate",
            "add a route with a destination",
        ));
    } else if set.len() > 1 {
        is.push(Issue::error(
            join(path, set[1]),
            format!("`{}` and `{}` are mutually exclusive", set[0], set[1]),
            "an HTTP route either forwards (route), redirects, responds directly or delegates",
        ));
    }
    if r.rewrite.is_some() && (r.redirect.is_some() || r.direct_response.is_some()) {
        is.push(Issue::error(
            join(path, "rewrite"),
            "`rewrite` has no effect together with redirect or directResponse",
            "move the rewrite to a route that forwards",
        ));
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        for (field, sm) in
            [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)]
        {
            let Some(sm) = sm else { continue };
            let p = join(&mp, field);
            if sm.matcher() == StringMatcher::Any {
                is.push(Issue::warning(
                    &p,
                    format!("`{field}: {{}}` sets none of exact, prefix, regex, so it matches every request"),
                    "set exact, prefix or regex, or remove the field",
                ));
            }
            check_string_match(is, &p, sm);
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, sm) in map {
                let p = format!("{mp}.{field}.{name}");
                if field != "queryParams" && (!is_header_name(name) || name.to_ascii_lowercase() != *name) {
                    is.push(Issue::error(
                        &p,
                        format!("`{name}` is not a lowercase header name"),
                        "header names in matches are lowercase tokens, e.g. x-user",
                    ));
                }
                check_string_match(is, &p, sm);
            }
        }
        if let Some(p) = m.port {
            check_port(is, &join(&mp, "port"), p);
        }
    }
    for (i, d) in r.route.iter().enumerate() {
        let dp = format!("{path}.route[{i}]");
        validate_destination(is, &join(&dp, "destination"), &d.destination);
        if let Some(h) = &d.headers {
            validate_headers(is, &join(&dp, "headers"), h);
        }
    }
    if has_route {
        check_weights(is, &join(path, "route"), &r.route.iter().map(|d| d.weight).collect::<Vec<_>>());
    }
    if let Some(red) = &r.redirect {
        let rp = join(path, "redirect");
        if let Some(code) = red.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            is.push(Issue::error(
                join(&rp, "redirectCode"),
                format!("{code} is not a redirect status"),
                "use 301, 302, 303, 307 or 308",
            ));
        }
        if let Some(p) = red.port {
            check_port(is, &join(&rp, "port"), p);
        }
        if red.uri.is_some() && red.prefix_rewrite.is_some() {
            is.push(Issue::error(
                join(&rp, "prefixRewrite"),
                "`uri` and `prefixRewrite` are mutually exclusive",
                "replace the whole path with uri, or its matched prefix with prefixRewrite",
            ));
        }
    }
    if let Some(dr) = &r.direct_response
        && !(200..=599).contains(&dr.status)
    {
        is.push(Issue::error(
            join(path, "directResponse.status"),
            format!("status {} is not an HTTP status between 200 and 599", dr.status),
            "use a status such as 200, 404 or 503",
        ));
    }
    if let Some(d) = &r.delegate
        && d.name.as_deref().unwrap_or("").is_empty()
    {
        is.push(Issue::error(
            join(path, "delegate.name"),
            "delegate needs the name of a VirtualService",
            "set delegate.name (and delegate.namespace if it lives elsewhere)",
        ));
    }
    if let Some(rw) = &r.rewrite {
        let rp = join(path, "rewrite");
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rw.uri.is_some() {
                is.push(Issue::error(
                    join(&rp, "uriRegexRewrite"),
                    "`uri` and `uriRegexRewrite` are mutually exclusive",
                    "rewrite the path with one of them",
                ));
            }
            match &rr.pattern {
                Some(re) => check_regex(is, &join(&rp, "uriRegexRewrite.match"), re),
                None => is.push(Issue::error(
                    join(&rp, "uriRegexRewrite.match"),
                    "uriRegexRewrite needs a `match` regex",
                    "e.g. match: ^/service/([^/]+)(/.*)$, rewrite: \\2/instance/\\1",
                )),
            }
        }
    }
    if let Some(t) = &r.retries {
        let rp = join(path, "retries");
        check_non_negative(is, &join(&rp, "attempts"), t.attempts);
        if let Some(d) = &t.per_try_timeout {
            check_min_duration(is, &join(&rp, "perTryTimeout"), d);
        }
        if let Some(on) = &t.retry_on {
            for policy in on.split(',').map(str::trim) {
                let status_code = policy.parse::<u32>().is_ok_and(|c| (100..=599).contains(&c));
                if !status_code && !RETRY_ON.contains(&policy) {
                    is.push(Issue::error(
                        join(&rp, "retryOn"),
                        format!("`{policy}` is not a retry policy"),
                        "use Envoy's policies (5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, ...) or HTTP status codes, comma separated",
                    ));
                }
            }
        }
    }
    if let Some(f) = &r.fault {
        let fp = join(path, "fault");
        if f.delay.is_none() && f.abort.is_none() {
            is.push(Issue::error(
                &fp,
                "fault injection needs a delay or an abort",
                "add fault.delay or fault.abort",
            ));
        }
        if let Some(d) = &f.delay {
            let dp = join(&fp, "delay");
            if d.exponential_delay.is_some() {
                is.push(Issue::error(
                    join(&dp, "exponentialDelay"),
                    "exponentialDelay is not supported",
                    "use fixedDelay",
                ));
            } else if d.fixed_delay.is_none() {
                is.push(Issue::error(
                    join(&dp, "fixedDelay"),
                    "a delay fault needs fixedDelay",
                    "e.g. fixedDelay: 5s",
                ));
            }
            if let Some(fd) = &d.fixed_delay {
                check_min_duration(is, &join(&dp, "fixedDelay"), fd);
            }
            if let Some(p) = d.percent {
                check_percent(is, &join(&dp, "percent"), f64::from(p));
            }
            if let Some(p) = &d.percentage {
                check_percent(is, &join(&dp, "percentage.value"), p.get());
            }
        }
        if let Some(a) = &f.abort {
            let ap = join(&fp, "abort");
            if a.http2_error.is_some() {
                is.push(Issue::error(
                    join(&ap, "http2Error"),
                    "HTTP/2 error abort faults are not supported",
                    "abort with httpStatus or grpcStatus",
                ));
            } else if a.http_status.is_none() && a.grpc_status.is_none() {
                is.push(Issue::error(
                    &ap,
                    "an abort fault needs httpStatus or grpcStatus",
                    "e.g. httpStatus: 503",
                ));
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                is.push(Issue::error(
                    join(&ap, "httpStatus"),
                    format!("HTTP status {s} is not between 200 and 599"),
                    "abort with a status such as 500 or 503",
                ));
            }
            if let Some(p) = &a.percentage {
                check_percent(is, &join(&ap, "percentage.value"), p.get());
            }
        }
    }
    if let Some(m) = &r.mirror {
        validate_destination(is, &join(path, "mirror"), m);
        if !r.mirrors.is_empty() {
            is.push(Issue::error(
                join(path, "mirrors"),
                "`mirror` and `mirrors` are mutually exclusive",
                "list every mirror under mirrors",
            ));
        }
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let mp = format!("{path}.mirrors[{i}]");
        validate_destination(is, &join(&mp, "destination"), &m.destination);
        if let Some(p) = &m.percentage {
            check_percent(is, &join(&mp, "percentage.value"), p.get());
        }
    }
    if let Some(p) = r.mirror_percent {
        check_percent(is, &join(path, "mirrorPercent"), f64::from(p));
    }
    if let Some(p) = &r.mirror_percentage {
        check_percent(is, &join(path, "mirrorPercentage.value"), p.get());
    }
    if let Some(c) = &r.cors_policy {
        let cp = join(path, "corsPolicy");
        for (i, o) in c.allow_origins.iter().enumerate() {
            check_string_match(is, &format!("{cp}.allowOrigins[{i}]"), o);
        }
        if !c.allow_origin.is_empty() {
            is.push(Issue::warning(
                join(&cp, "allowOrigin"),
                "allowOrigin is deprecated",
                "use allowOrigins with exact/prefix/regex matches",
            ));
        }
        for (field, names) in [("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)] {
            for (i, n) in names.iter().enumerate() {
                if n != "*" && !is_header_name(n) {
                    is.push(Issue::error(
                        format!("{cp}.{field}[{i}]"),
                        format!("`{n}` is not a valid header name"),
                        "header names are tokens such as x-request-id",
                    ));
                }
            }
        }
        if let Some(m) = &c.max_age
            && m.as_std().subsec_nanos() != 0
        {
            is.push(Issue::error(
                join(&cp, "maxAge"),
                format!("maxAge `{m}` is not whole seconds"),
                "CORS max age is sent in seconds, e.g. 24h or 86400s",
            ));
        }
    }
    if let Some(h) = &r.headers {
        validate_headers(is, &join(path, "headers"), h);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::kinds::testing::{has, parse, parse_err, patched, round_trips};

    fn virtual_service() -> Value {
        json!({
            "hosts": ["reviews.prod.svc.cluster.local", "reviews.example.com"],
            "gateways": ["mesh", "istio-system/public-gw"],
            "http": [{
                "name": "reviews-v2-routes",
                "match": [{
                    "name": "v2",
                    "uri": {"prefix": "/wpcatalog"},
                    "scheme": {"exact": "https"},
                    "method": {"exact": "GET"},
                    "authority": {"regex": "reviews\\.example\\.(com|org)"},
                    "headers": {"end-user": {"exact": "jason"}, "x-canary": {}},
                    "port": 8080,
                    "sourceLabels": {"app": "productpage"},
                    "gateways": ["mesh"],
                    "queryParams": {"ver": {"regex": "^v[0-9]+$"}},
                    "ignoreUriCase": true,
                    "withoutHeaders": {"x-skip": {"prefix": "yes"}},
                    "sourceNamespace": "frontend",
                    "statPrefix": "reviews-v2"
                }],
                "rewrite": {"uri": "/newcatalog", "authority": "reviews.internal"},
                "route": [{
                    "destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v2", "port": {"number": 9080}},
                    "weight": 75,
                    "headers": {
                        "request": {"set": {"x-route": "v2"}, "add": {"x-trace": "1"}, "remove": ["x-debug"]},
                        "response": {"remove": ["server"]}
                    }
                }, {
                    "destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v3"},
                    "weight": 25
                }],
                "timeout": "10s",
                "retries": {
                    "attempts": 3,
                    "perTryTimeout": "2s",
                    "retryOn": "gateway-error,connect-failure,refused-stream,503",
                    "retryRemoteLocalities": true,
                    "retryIgnorePreviousHosts": false,
                    "backoff": "25ms"
                },
                "fault": {
                    "delay": {"fixedDelay": "5s", "percentage": {"value": 0.1}},
                    "abort": {"httpStatus": 400, "percentage": {"value": 10}}
                },
                "mirrors": [{"destination": {"host": "reviews-shadow"}, "percentage": {"value": 50}}],
                "corsPolicy": {
                    "allowOrigins": [{"exact": "https://example.com"}, {"regex": "https://.*\\.example\\.com"}],
                    "allowMethods": ["POST", "GET"],
                    "allowHeaders": ["x-custom-header"],
                    "exposeHeaders": ["x-request-id"],
                    "maxAge": "24h",
                    "allowCredentials": false,
                    "unmatchedPreflights": "IGNORE"
                },
                "headers": {"response": {"set": {"x-served-by": "mesh"}}}
            }, {
                "name": "legacy",
                "match": [{"uri": {"exact": "/old"}}],
                "redirect": {"uri": "/new", "authority": "new.example.com", "derivePort": "FROM_REQUEST_PORT", "scheme": "https", "redirectCode": 301}
            }, {
                "match": [{"uri": {"prefix": "/health"}}],
                "directResponse": {"status": 200, "body": {"string": "ok"}}
            }, {
                "match": [{"uri": {"prefix": "/api"}}],
                "rewrite": {"uriRegexRewrite": {"match": "^/api/(.*)$", "rewrite": "/\\1"}},
                "route": [{"destination": {"host": "api"}}],
                "mirror": {"host": "api-shadow"},
                "mirrorPercentage": {"value": 5.5}
            }, {
                "name": "delegated",
                "match": [{"uri": {"prefix": "/productpage"}}],
                "delegate": {"name": "productpage", "namespace": "nsA"}
            }, {
                "route": [{"destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v1"}}],
                "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}}},
                "mirror": {"host": "mirror.example"},
                "mirrorPercent": 10
            }],
            "tls": [{
                "match": [{"sniHosts": ["login.bookinfo.com"], "destinationSubnets": ["10.0.0.0/8"], "port": 443,
                           "sourceLabels": {"app": "a"}, "gateways": ["mesh"], "sourceNamespace": "ns"}],
                "route": [{"destination": {"host": "login.prod.svc.cluster.local"}}]
            }],
            "tcp": [{
                "match": [{"destinationSubnets": ["10.1.0.0/16", "10.2.0.1"], "port": 27017, "sourceSubnet": "10.3.0.0/16",
                           "sourceLabels": {"app": "b"}, "gateways": ["mesh"], "sourceNamespace": "ns"}],
                "route": [
                    {"destination": {"host": "mongo.backup.svc.cluster.local", "port": {"number": 5555}}, "weight": 20},
                    {"destination": {"host": "mongo.prod.svc.cluster.local", "port": {"number": 5555}}, "weight": 80}
                ]
            }],
            "exportTo": [".", "istio-system"]
        })
    }

    #[test]
    fn virtual_service_example_parses_validates_and_round_trips() {
        let vs: VirtualServiceSpec = round_trips(virtual_service());
        assert_eq!(vs.hosts()[0], "reviews.prod.svc.cluster.local");
        let m = &vs.http[0].matches[0];
        assert_eq!(m.uri.as_ref().expect("present").matcher(), StringMatcher::Prefix("/wpcatalog"));
        assert_eq!(m.headers["x-canary"].matcher(), StringMatcher::Any);
        assert_eq!(
            vs.http[0].timeout.as_ref().expect("present").as_std(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(
            vs.http[0]
                .fault
                .as_ref()
                .expect("present")
                .delay
                .as_ref()
                .expect("present")
                .percentage
                .as_ref()
                .expect("present")
                .get(),
            0.1
        );
        assert_eq!(
            vs.http[1].redirect.as_ref().expect("present").derive_port,
            Some(RedirectPortSelection::FromRequestPort)
        );
        assert_eq!(vs.validate(), vec![]);
    }

    #[test]
    fn virtual_service_rules() {
        let base = virtual_service();
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            ("/hosts", json!([]), "hosts", "needs at least one host"),
            ("/hosts/0", json!("*"), "hosts[0]", "wildcard host `*` is not allowed"),
            ("/http/0/route/1/weight", json!(30), "http[0].route", "destination weights sum to 105, not 100"),
            ("/http/0/route/1/weight", json!(-5), "http[0].route[1].weight", "weight -5 is negative"),
            ("/http/3/route/0/weight", json!(50), "http[3].route", "destination weights sum to 50, not 100"),
            ("/tcp/0/route/0/weight", json!(10), "tcp[0].route", "destination weights sum to 90, not 100"),
            (
                "/http/0/match/0/uri",
                json!({"regex": "(unclosed"}),
                "http[0].match[0].uri.regex",
                "is not a valid RE2 regex",
            ),
            (
                "/http/0/match/0/headers/end-user",
                json!({"regex": "(?=look)"}),
                "http[0].match[0].headers.end-user.regex",
                "is not a valid RE2 regex",
            ),
            (
                "/http/0/match/0/headers/End-User",
                json!({"exact": "x"}),
                "http[0].match[0].headers.End-User",
                "is not a lowercase header name",
            ),
            ("/http/0/match/0/uri", json!({}), "http[0].match[0].uri", "sets none of exact, prefix, regex"),
            ("/http/0/match/0/port", json!(70000), "http[0].match[0].port", "port 70000 is out of range"),
            (
                "/http/0/fault/delay/percentage/value",
                json!(120),
                "http[0].fault.delay.percentage.value",
                "percentage 120 is out of range",
            ),
            (
                "/http/0/fault/abort/percentage/value",
                json!(-1),
                "http[0].fault.abort.percentage.value",
                "percentage -1 is out of range",
            ),
            (
                "/http/0/fault/abort/httpStatus",
                json!(600),
                "http[0].fault.abort.httpStatus",
                "HTTP status 600 is not between 200 and 599",
            ),
            (
                "/http/0/fault/abort",
                json!({"percentage": {"value": 1}}),
                "http[0].fault.abort",
                "needs httpStatus or grpcStatus",
            ),
            (
                "/http/0/fault/abort",
                json!({"http2Error": "x"}),
                "http[0].fault.abort.http2Error",
                "not supported",
            ),
            (
                "/http/0/fault/delay",
                json!({"exponentialDelay": "1s"}),
                "http[0].fault.delay.exponentialDelay",
                "not supported",
            ),
            (
                "/http/0/fault/delay",
                json!({"percentage": {"value": 1}}),
                "http[0].fault.delay.fixedDelay",
                "needs fixedDelay",
            ),
            ("/http/0/fault", json!({}), "http[0].fault", "needs a delay or an abort"),
            (
                "/http/0/redirect",
                json!({"uri": "/x"}),
                "http[0].redirect",
                "`route` and `redirect` are mutually exclusive",
            ),
            (
                "/http/0/directResponse",
                json!({"status": 503}),
                "http[0].directResponse",
                "`route` and `directResponse` are mutually exclusive",
            ),
            (
                "/http/2/directResponse/status",
                json!(700),
                "http[2].directResponse.status",
                "status 700 is not an HTTP status",
            ),
            (
                "/http/1/redirect/redirectCode",
                json!(200),
                "http[1].redirect.redirectCode",
                "200 is not a redirect status",
            ),
            (
                "/http/1/redirect/prefixRewrite",
                json!("/p"),
                "http[1].redirect.prefixRewrite",
                "mutually exclusive",
            ),
            (
                "/http/1/rewrite",
                json!({"uri": "/x"}),
                "http[1].rewrite",
                "has no effect together with redirect",
            ),
            (
                "/http/5/route",
                json!([]),
                "http[5]",
                "needs one of route, redirect, directResponse or delegate",
            ),
            (
                "/http/4/delegate/name",
                Value::Null,
                "http[4].delegate.name",
                "needs the name of a VirtualService",
            ),
            (
                "/http/3/rewrite/uri",
                json!("/x"),
                "http[3].rewrite.uriRegexRewrite",
                "`uri` and `uriRegexRewrite` are mutually exclusive",
            ),
            (
                "/http/3/rewrite/uriRegexRewrite/match",
                json!("a{2,1}"),
                "http[3].rewrite.uriRegexRewrite.match",
                "is not a valid RE2 regex",
            ),
            ("/http/0/retries/attempts", json!(-1), "http[0].retries.attempts", "-1 is negative"),
            (
                "/http/0/retries/perTryTimeout",
                json!("0s"),
                "http[0].retries.perTryTimeout",
                "shorter than 1ms",
            ),
            (
                "/http/0/retries/retryOn",
                json!("5xx,bogus"),
                "http[0].retries.retryOn",
                "`bogus` is not a retry policy",
            ),
            (
                "/http/0/mirrors/0/percentage/value",
                json!(101),
                "http[0].mirrors[0].percentage.value",
                "out of range",
            ),
            (
                "/http/3/mirrorPercentage/value",
                json!(200.5),
                "http[3].mirrorPercentage.value",
                "percentage 200.5 is out of range",
            ),
            ("/http/5/mirrorPercent", json!(101), "http[5].mirrorPercent", "percentage 101 is out of range"),
            (
                "/http/0/mirror",
                json!({"host": "m"}),
                "http[0].mirrors",
                "`mirror` and `mirrors` are mutually exclusive",
            ),
            (
                "/http/0/route/0/destination/host",
                json!(""),
                "http[0].route[0].destination.host",
                "destination host is empty",
            ),
            (
                "/http/0/route/0/destination/subset",
                json!("V2_"),
                "http[0].route[0].destination.subset",
                "is not a DNS label",
            ),
            (
                "/http/0/route/0/headers/request/remove/0",
                json!("bad header"),
                "http[0].route[0].headers.request.remove",
                "is not a valid header name",
            ),
            (
                "/http/0/corsPolicy/allowOrigins/1",
                json!({"regex": "*"}),
                "http[0].corsPolicy.allowOrigins[1].regex",
                "is not a valid RE2 regex",
            ),
            ("/http/0/corsPolicy/maxAge", json!("1.5s"), "http[0].corsPolicy.maxAge", "is not whole seconds"),
            ("/http/0/corsPolicy/allowOrigin", json!(["*"]), "http[0].corsPolicy.allowOrigin", "deprecated"),
            ("/tls/0/match/0/sniHosts", json!([]), "tls[0].match[0].sniHosts", "needs at least one SNI host"),
            ("/tls/0/match", json!([]), "tls[0].match", "needs at least one match"),
            (
                "/tcp/0/match/0/destinationSubnets/1",
                json!("10.2.0.300"),
                "tcp[0].match[0].destinationSubnets[1]",
                "is not an IP address or CIDR",
            ),
            (
                "/tcp/0/match/0/sourceSubnet",
                json!("nope"),
                "tcp[0].match[0].sourceSubnet",
                "is not an IP address or CIDR",
            ),
            ("/tcp/0/route", json!([]), "tcp[0].route", "needs at least one destination"),
            ("/exportTo/1", json!("~"), "exportTo[1]", "`~` (export to nobody) is combined"),
            ("/exportTo/1", json!("Not_A_Namespace"), "exportTo[1]", "is not a namespace name"),
        ];
        for (pointer, value, path, message) in cases {
            let vs: VirtualServiceSpec = parse(patched(&base, pointer, value));
            has(&vs.validate(), path, message);
        }
        let empty = VirtualServiceSpec { hosts: vec!["a".into()], ..Default::default() };
        has(&empty.validate(), "", "needs http, tls or tcp routes");
    }

    #[test]
    fn virtual_service_oneofs_are_rejected_naming_the_fields() {
        let err = parse_err::<StringMatch>(json!({"exact": "/a", "prefix": "/b"}));
        assert_eq!(err, "StringMatch sets `exact` and `prefix`; set only one of `exact`, `prefix`, `regex`");
        let err = parse_err::<VirtualServiceSpec>(patched(
            &virtual_service(),
            "/http/0/match/0/uri",
            json!({"prefix": "/a", "regex": "/b"}),
        ));
        assert!(err.contains("StringMatch sets `prefix` and `regex`"), "{err}");
        let err = parse_err::<HttpRedirect>(json!({"port": 8080, "derivePort": "FROM_REQUEST_PORT"}));
        assert!(err.contains("redirect sets `port` and `derivePort`"), "{err}");
        let err = parse_err::<Abort>(json!({"httpStatus": 503, "grpcStatus": "UNAVAILABLE"}));
        assert!(err.contains("fault.abort sets `httpStatus` and `grpcStatus`"), "{err}");
        let err = parse_err::<Delay>(json!({"fixedDelay": "1s", "exponentialDelay": "1s"}));
        assert!(err.contains("fault.delay sets `fixedDelay` and `exponentialDelay`"), "{err}");
        let err = parse_err::<HttpBody>(json!({"string": "a", "bytes": "YQ=="}));
        assert!(err.contains("body sets `string` and `bytes`"), "{err}");
    }

    #[test]
    fn virtual_service_unknown_fields_are_rejected_by_name() {
        for (pointer, field) in [
            ("/http/0/routes", "routes"),
            ("/http/0/match/0/url", "url"),
            ("/http/0/route/0/destination/hostname", "hostname"),
            ("/http/0/retries/attempt", "attempt"),
            ("/http/0/corsPolicy/allowOrigns", "allowOrigns"),
            ("/http/0/match/0/uri/suffix", "suffix"),
            ("/export_to", "export_to"),
        ] {
            let err = parse_err::<VirtualServiceSpec>(patched(&virtual_service(), pointer, json!(1)));
            assert!(err.contains(&format!("unknown field `{field}`")), "{pointer}: {err}");
        }
    }

    #[test]
    fn virtual_service_wrong_types_are_rejected() {
        for (pointer, value) in [
            ("/hosts", json!("reviews")),
            ("/http/0/route/0/weight", json!("75")),
            ("/http/0/route/0/weight", json!(7.5)),
            ("/http/0/timeout", json!(10)),
            ("/http/0/timeout", json!("10 seconds")),
            ("/http/0/match/0/ignoreUriCase", json!("yes")),
            ("/http/0/match/0/uri", json!("/prefix")),
            ("/http/0/fault/delay/percentage/value", json!("0.1")),
            ("/http/0/corsPolicy/unmatchedPreflights", json!("ignore")),
            ("/http/1/redirect/derivePort", json!("REQUEST_PORT")),
            ("/http/2/directResponse/status", json!(-1)),
        ] {
            let r = serde_json::from_value::<VirtualServiceSpec>(patched(
                &virtual_service(),
                pointer,
                value.clone(),
            ));
            assert!(r.is_err(), "{pointer} = {value} was accepted");
        }
        let err = parse_err::<VirtualServiceSpec>(patched(
            &virtual_service(),
            "/http/0/timeout",
            json!("10 seconds"),
        ));
        assert!(err.contains("`10 seconds` is not a duration; write e.g. 5s, 250ms, 1m"), "{err}");
    }
}
