//! Istio's networking kinds (networking.istio.io v1 / v1alpha3): VirtualService, DestinationRule,
//! ServiceEntry (with its WorkloadEntry endpoints) and the Istio Gateway, parsed from their `spec`
//! exactly as Istio spells the fields, plus the [`Issue`] type every kind's `validate()` reports.
//!
//! This module owns the wire shape of those kinds and the semantic checks Istio's own validation
//! performs on them. It does not compile them into routes (the snapshot compiler does).
//!
//! Shape rules: every struct rejects unknown fields (a typo must be an error, never ignored); a
//! field the author may omit is an `Option` (or an empty list/map) that is skipped when absent, so a
//! spec read and written again equals its input; protobuf `oneof`s are checked while parsing (two
//! members set is an error naming both); durations are [`Duration`]; doubles keep their JSON number
//! ([`Double`]) so `50` stays `50` and `0.5` stays `0.5`.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::model::Labels;
pub use super::security::WorkloadSelector;

// ---------------------------------------------------------------------------------------------
// Issues

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum IssueSeverity {
    Error,
    Warning,
}

/// One problem `validate()` found in a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Field path under `spec`, e.g. `http[0].route[1].weight`.
    pub path: String,
    pub message: String,
    /// How to fix it.
    pub hint: String,
    pub severity: IssueSeverity,
}

impl Issue {
    pub fn error(path: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
            severity: IssueSeverity::Error,
        }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
            severity: IssueSeverity::Warning,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == IssueSeverity::Error
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
        };
        write!(f, "{sev}: {}: {}", self.path, self.message)?;
        if !self.hint.is_empty() {
            write!(f, " ({})", self.hint)?;
        }
        Ok(())
    }
}

/// Joins a parent path and a field: `join("", "hosts") == "hosts"`, `join("http[0]", "route")`.
pub(crate) fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() { field.to_string() } else { format!("{parent}.{field}") }
}

// ---------------------------------------------------------------------------------------------
// Protobuf-isms shared by the kinds

/// Implements `Serialize`/`Deserialize` for a struct derived with `#[serde(remote = "Self")]`,
/// running its `check_oneof()` after parsing: a protobuf `oneof` with two members set is rejected
/// with a message naming them.
macro_rules! oneof_checked {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <$ty>::deserialize(d)?;
                v.check_oneof().map_err(<D::Error as serde::de::Error>::custom)?;
                Ok(v)
            }
        }
    };
}
pub(crate) use oneof_checked;

/// `Err` naming the members when more than one of a oneof's members is set.
pub(crate) fn at_most_one(what: &str, members: &[(&str, bool)]) -> Result<(), String> {
    let set: Vec<String> = members.iter().filter(|m| m.1).map(|m| format!("`{}`", m.0)).collect();
    if set.len() > 1 {
        let all: Vec<String> = members.iter().map(|m| format!("`{}`", m.0)).collect();
        return Err(format!("{what} sets {}; set only one of {}", set.join(" and "), all.join(", ")));
    }
    Ok(())
}

/// A protobuf `double` (or `DoubleValue`) that keeps its JSON number, so a spec round-trips
/// byte-for-byte (`50` stays an integer, `0.5` a float).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Double(serde_json::Number);

impl Double {
    /// `None` for NaN and infinities.
    pub fn new(v: f64) -> Option<Self> {
        serde_json::Number::from_f64(v).map(Double)
    }

    pub fn get(&self) -> f64 {
        self.0.as_f64().unwrap_or(f64::NAN)
    }
}

/// `istio.networking.v1alpha3.Percent`: `{value: 0.5}` means half a percent, 0..=100.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Double>,
}

impl Percent {
    pub fn get(&self) -> f64 {
        self.value.as_ref().map_or(0.0, Double::get)
    }
}

/// `PortSelector`: a port by number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

/// `istio.type.v1beta1.PolicyTargetReference` (`targetRef`/`targetRefs` of policies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2). An empty `{}` is accepted: in
/// `headers` Istio reads it as "the header is present".
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}
oneof_checked!(StringMatch);

/// What a [`StringMatch`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMatcher<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
    /// `{}`: any value (for headers: present).
    Any,
}

impl StringMatch {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one(
            "StringMatch",
            &[
                ("exact", self.exact.is_some()),
                ("prefix", self.prefix.is_some()),
                ("regex", self.regex.is_some()),
            ],
        )
    }

    pub fn exact(s: impl Into<String>) -> Self {
        StringMatch { exact: Some(s.into()), ..Default::default() }
    }

    pub fn prefix(s: impl Into<String>) -> Self {
        StringMatch { prefix: Some(s.into()), ..Default::default() }
    }

    pub fn regex(s: impl Into<String>) -> Self {
        StringMatch { regex: Some(s.into()), ..Default::default() }
    }

    pub fn matcher(&self) -> StringMatcher<'_> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), _, _) => StringMatcher::Exact(e),
            (_, Some(p), _) => StringMatcher::Prefix(p),
            (_, _, Some(r)) => StringMatcher::Regex(r),
            _ => StringMatcher::Any,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks

/// Reports a regex that RE2 (checked with the `regex` crate, which shares its syntax: no
/// backreferences, no lookaround) would not compile.
pub(crate) fn check_regex(issues: &mut Vec<Issue>, path: &str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        let detail = e.to_string();
        let last = detail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        issues.push(Issue::error(
            path,
            format!("`{re}` is not a valid RE2 regex: {last}"),
            "use RE2 syntax (no backreferences or lookaround); escape literal dots as \\.",
        ));
    }
}

fn check_string_match(issues: &mut Vec<Issue>, path: &str, m: &StringMatch) {
    if let Some(re) = &m.regex {
        check_regex(issues, &join(path, "regex"), re);
    }
}

pub(crate) fn check_percent(issues: &mut Vec<Issue>, path: &str, v: f64) {
    if !(0.0..=100.0).contains(&v) {
        issues.push(Issue::error(
            path,
            format!("percentage {v} is out of range"),
            "a percentage is between 0 and 100 (0.5 means half a percent)",
        ));
    }
}

pub(crate) fn check_port(issues: &mut Vec<Issue>, path: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        issues.push(Issue::error(
            path,
            format!("port {port} is out of range"),
            "a port number is between 1 and 65535",
        ));
    }
}

fn check_min_duration(issues: &mut Vec<Issue>, path: &str, d: &Duration) {
    if d.as_std() < std::time::Duration::from_millis(1) {
        issues.push(Issue::error(
            path,
            format!("duration `{d}` is shorter than 1ms"),
            "write a duration of at least 1ms, e.g. 1s",
        ));
    }
}

fn check_non_negative(issues: &mut Vec<Issue>, path: &str, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        issues.push(Issue::error(path, format!("{v} is negative"), "use a value >= 0"));
    }
}

/// DNS-1123 label: lowercase alphanumerics and `-`, starts and ends alphanumeric, <= 63 chars.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `targetRef`, `targetRefs` and `selector` pick a policy's workloads in three ways; Istio accepts
/// only one of them.
pub(crate) fn check_selector_target(
    issues: &mut Vec<Issue>,
    selector: bool,
    target_ref: bool,
    target_refs: bool,
) {
    let set: Vec<&str> = [("selector", selector), ("targetRef", target_ref), ("targetRefs", target_refs)]
        .into_iter()
        .filter(|f| f.1)
        .map(|f| f.0)
        .collect();
    if set.len() > 1 {
        issues.push(Issue::error(
            set[1],
            format!("`{}` and `{}` are both set", set[0], set[1]),
            "select workloads with one of selector, targetRef or targetRefs",
        ));
    }
}

fn check_export_to(issues: &mut Vec<Issue>, export_to: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, ns) in export_to.iter().enumerate() {
        let path = format!("exportTo[{i}]");
        if ns == "~" && export_to.len() > 1 {
            issues.push(Issue::error(
                &path,
                "`~` (export to nobody) is combined with other namespaces",
                "use `~` alone, or list the namespaces",
            ));
        } else if ns != "." && ns != "*" && ns != "~" && !is_dns_label(ns) {
            issues.push(Issue::error(
                &path,
                format!("`{ns}` is not a namespace name, `.`, `*` or `~`"),
                "exportTo takes `.` (this namespace), `*` (all), `~` (none) or namespace names",
            ));
        }
        if !seen.insert(ns) {
            issues.push(Issue::warning(&path, format!("`{ns}` is listed twice"), "remove the duplicate"));
        }
    }
}

fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

fn check_subnets(issues: &mut Vec<Issue>, path: &str, subnets: &[String]) {
    for (i, s) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            issues.push(Issue::error(
                format!("{path}[{i}]"),
                format!("`{s}` is not an IP address or CIDR"),
                "write e.g. 10.0.0.1 or 10.0.0.0/16",
            ));
        }
    }
}

/// HTTP header names: RFC 7230 tokens; Istio also wants them lowercase in matches.
fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// VirtualService

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

// ---------------------------------------------------------------------------------------------
// DestinationRule

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub target_host: String,
    pub target_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Double>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    /// Deprecated: use LEAST_REQUEST.
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

/// `LoadBalancerSettings`; `simple` and `consistentHash` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated: use `warmup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}
oneof_checked!(LoadBalancerSettings);

impl LoadBalancerSettings {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one(
            "loadBalancer",
            &[("simple", self.simple.is_some()), ("consistentHash", self.consistent_hash.is_some())],
        )
    }
}

/// `ConsistentHashLB`: one hash key (`httpHeaderName`, `httpCookie`, `useSourceIp`,
/// `httpQueryParameterName`) and at most one algorithm (`ringHash`, `maglev`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}
oneof_checked!(ConsistentHashLb);

impl ConsistentHashLb {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one(
            "consistentHash",
            &[
                ("httpHeaderName", self.http_header_name.is_some()),
                ("httpCookie", self.http_cookie.is_some()),
                ("useSourceIp", self.use_source_ip.is_some()),
                ("httpQueryParameterName", self.http_query_parameter_name.is_some()),
            ],
        )?;
        at_most_one(
            "consistentHash",
            &[("ringHash", self.ring_hash.is_some()), ("maglev", self.maglev.is_some())],
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct MagLev {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLoadBalancerSetting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ZoneAwareLoadBalancerSetting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    pub duration: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<Double>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<Double>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: use `consecutive5xxErrors` / `consecutiveGatewayErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

impl DestinationRuleSpec {
    /// The service this rule applies to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Istio's semantic checks of a DestinationRule.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        if self.host.is_empty() {
            is.push(Issue::error(
                "host",
                "a DestinationRule needs a host",
                "name the service, e.g. host: reviews.default.svc.cluster.local",
            ));
        }
        if let Some(tp) = &self.traffic_policy {
            validate_traffic_policy(is, "trafficPolicy", tp);
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let sp = format!("subsets[{i}]");
            if !is_dns_label(&s.name) {
                is.push(Issue::error(
                    join(&sp, "name"),
                    format!("subset name `{}` is not a DNS label", s.name),
                    "use lowercase letters, digits and '-', e.g. v1",
                ));
            }
            if !names.insert(s.name.as_str()) {
                is.push(Issue::error(
                    join(&sp, "name"),
                    format!("subset `{}` is defined twice", s.name),
                    "give each subset a unique name",
                ));
            }
            if let Some(tp) = &s.traffic_policy {
                validate_traffic_policy(is, &join(&sp, "trafficPolicy"), tp);
            }
        }
        check_export_to(is, &self.export_to);
        issues
    }
}

fn validate_traffic_policy(is: &mut Vec<Issue>, path: &str, tp: &TrafficPolicy) {
    if *tp == TrafficPolicy::default() {
        is.push(Issue::error(
            path,
            "trafficPolicy sets nothing",
            "set loadBalancer, connectionPool, outlierDetection, tls, portLevelSettings, tunnel or proxyProtocol, or remove it",
        ));
    }
    validate_policy_parts(
        is,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        match pl.port.as_ref().and_then(|p| p.number) {
            None => is.push(Issue::error(
                join(&pp, "port.number"),
                "port level settings need a port number",
                "set port.number",
            )),
            Some(n) => {
                check_port(is, &join(&pp, "port.number"), n);
                if !ports.insert(n) {
                    is.push(Issue::error(
                        join(&pp, "port.number"),
                        format!("port {n} has settings twice"),
                        "merge the settings of one port into one entry",
                    ));
                }
            }
        }
        validate_policy_parts(
            is,
            &pp,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
    if let Some(t) = &tp.tunnel {
        let tp_ = join(path, "tunnel");
        if let Some(p) = &t.protocol
            && p != "CONNECT"
            && p != "POST"
        {
            is.push(Issue::error(
                join(&tp_, "protocol"),
                format!("tunnel protocol `{p}` is not CONNECT or POST"),
                "use CONNECT (default) or POST",
            ));
        }
        if t.target_host.is_empty() {
            is.push(Issue::error(join(&tp_, "targetHost"), "tunnel targetHost is empty", "name the host"));
        }
        check_port(is, &join(&tp_, "targetPort"), t.target_port);
    }
    if let Some(rb) = &tp.retry_budget
        && let Some(p) = &rb.percent
    {
        check_percent(is, &join(path, "retryBudget.percent"), p.get());
    }
}

fn validate_policy_parts(
    is: &mut Vec<Issue>,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let lp = join(path, "loadBalancer");
        if let Some(ch) = &lb.consistent_hash {
            let cp = join(&lp, "consistentHash");
            if let Some(c) = &ch.http_cookie
                && c.name.is_empty()
            {
                is.push(Issue::error(
                    join(&cp, "httpCookie.name"),
                    "cookie name is empty",
                    "name the cookie",
                ));
            }
            if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
                is.push(Issue::error(
                    join(&cp, "minimumRingSize"),
                    "the deprecated minimumRingSize is combined with ringHash or maglev",
                    "use ringHash.minimumRingSize",
                ));
            }
        }
        if let Some(l) = &lb.locality_lb_setting {
            let llp = join(&lp, "localityLbSetting");
            if !l.distribute.is_empty() && !l.failover.is_empty() {
                is.push(Issue::error(
                    join(&llp, "failover"),
                    "`distribute` and `failover` are mutually exclusive",
                    "either distribute traffic by weight or fail over between regions",
                ));
            }
            for (i, d) in l.distribute.iter().enumerate() {
                let sum: u64 = d.to.values().map(|v| u64::from(*v)).sum();
                if sum != 100 {
                    is.push(Issue::error(
                        format!("{llp}.distribute[{i}].to"),
                        format!("locality weights sum to {sum}, not 100"),
                        "make the weights of `to` add up to 100",
                    ));
                }
            }
            for (i, f) in l.failover.iter().enumerate() {
                if f.from.is_some() && f.from == f.to {
                    is.push(Issue::error(
                        format!("{llp}.failover[{i}]"),
                        "failover `from` and `to` are the same region",
                        "fail over to a different region",
                    ));
                }
            }
        }
        if lb.warmup.is_some() && lb.warmup_duration_secs.is_some() {
            is.push(Issue::error(
                join(&lp, "warmupDurationSecs"),
                "`warmupDurationSecs` and `warmup` are both set",
                "use warmup.duration only",
            ));
        }
        if let Some(w) = &lb.warmup {
            if let Some(p) = &w.minimum_percent {
                check_percent(is, &join(&lp, "warmup.minimumPercent"), p.get());
            }
            if let Some(a) = &w.aggression
                && a.get() < 1.0
            {
                is.push(Issue::error(
                    join(&lp, "warmup.aggression"),
                    format!("aggression {} is below 1", a.get()),
                    "aggression is >= 1 (1 = linear ramp)",
                ));
            }
        }
    }
    if let Some(pool) = pool {
        let pp = join(path, "connectionPool");
        if let Some(t) = &pool.tcp {
            let tp = join(&pp, "tcp");
            check_non_negative(is, &join(&tp, "maxConnections"), t.max_connections);
            for (f, d) in [
                ("connectTimeout", &t.connect_timeout),
                ("maxConnectionDuration", &t.max_connection_duration),
                ("idleTimeout", &t.idle_timeout),
            ] {
                if let Some(d) = d {
                    check_min_duration(is, &join(&tp, f), d);
                }
            }
        }
        if let Some(h) = &pool.http {
            let hp = join(&pp, "http");
            for (f, v) in [
                ("http1MaxPendingRequests", h.http1_max_pending_requests),
                ("http2MaxRequests", h.http2_max_requests),
                ("maxRequestsPerConnection", h.max_requests_per_connection),
                ("maxRetries", h.max_retries),
                ("maxConcurrentStreams", h.max_concurrent_streams),
            ] {
                check_non_negative(is, &join(&hp, f), v);
            }
            if let Some(d) = &h.idle_timeout {
                check_min_duration(is, &join(&hp, "idleTimeout"), d);
            }
        }
    }
    if let Some(od) = od {
        let op = join(path, "outlierDetection");
        for (f, v) in
            [("maxEjectionPercent", od.max_ejection_percent), ("minHealthPercent", od.min_health_percent)]
        {
            if let Some(v) = v {
                check_percent(is, &join(&op, f), f64::from(v));
            }
        }
        check_non_negative(is, &join(&op, "consecutiveErrors"), od.consecutive_errors);
        if od.consecutive_errors.is_some() {
            is.push(Issue::warning(
                join(&op, "consecutiveErrors"),
                "consecutiveErrors is deprecated",
                "use consecutive5xxErrors or consecutiveGatewayErrors",
            ));
        }
        for (f, d) in [("interval", &od.interval), ("baseEjectionTime", &od.base_ejection_time)] {
            if let Some(d) = d {
                check_min_duration(is, &join(&op, f), d);
            }
        }
        for (i, c) in od.outlier_detection_http_error_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                is.push(Issue::error(
                    format!("{op}.outlierDetectionHttpErrorCodes[{i}]"),
                    format!("{c} is not an HTTP status"),
                    "list HTTP statuses such as 503",
                ));
            }
        }
    }
    if let Some(t) = tls {
        let tp = join(path, "tls");
        let files_set =
            t.client_certificate.is_some() || t.private_key.is_some() || t.ca_certificates.is_some();
        match t.mode {
            Some(ClientTlsMode::IstioMutual) if files_set || t.credential_name.is_some() => {
                is.push(Issue::error(
                    join(&tp, "mode"),
                    "ISTIO_MUTUAL uses the mesh certificates; certificate fields must not be set",
                    "remove clientCertificate, privateKey, caCertificates and credentialName, or use MUTUAL",
                ));
            }
            Some(ClientTlsMode::Mutual)
                if t.credential_name.is_none()
                    && (t.client_certificate.is_none() || t.private_key.is_none()) =>
            {
                is.push(Issue::error(
                    join(&tp, "mode"),
                    "MUTUAL needs a client certificate",
                    "set credentialName, or clientCertificate and privateKey",
                ));
            }
            _ => {}
        }
        if t.credential_name.is_some() && files_set {
            is.push(Issue::error(
                join(&tp, "credentialName"),
                "credentialName is combined with certificate file paths",
                "use either credentialName or clientCertificate/privateKey/caCertificates",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

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
/// `{matchLabels: ...}`, [`WorkloadSelector`]).
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

// ---------------------------------------------------------------------------------------------
// Gateway (networking.istio.io)

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
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    fn parse<T: DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("the spec parses")
    }

    fn round_trips<T: DeserializeOwned + Serialize>(v: Value) -> T {
        let t: T = parse(v.clone());
        assert_eq!(serde_json::to_value(&t).expect("serializes"), v);
        t
    }

    fn parse_err<T: DeserializeOwned + fmt::Debug>(v: Value) -> String {
        serde_json::from_value::<T>(v).expect_err("must be rejected").to_string()
    }

    /// Asserts that `issues` has an issue at `path` whose message contains `message`.
    fn has(issues: &[Issue], path: &str, message: &str) {
        assert!(
            issues.iter().any(|i| i.path == path && i.message.contains(message)),
            "no issue at `{path}` containing `{message}` in {issues:#?}"
        );
    }

    /// Runs `check` on specs built from `base` with one JSON pointer replaced.
    fn patched(base: &Value, pointer: &str, value: Value) -> Value {
        let mut v = base.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
        let target = v.pointer_mut(parent).expect("the parent exists in the example");
        match target {
            Value::Array(a) => {
                let i: usize = key.parse().expect("an array index");
                if i < a.len() {
                    a[i] = value;
                } else {
                    a.push(value);
                }
            }
            Value::Object(o) => {
                if value.is_null() {
                    o.remove(key);
                } else {
                    o.insert(key.to_string(), value);
                }
            }
            _ => panic!("{pointer} is not in a container"),
        }
        v
    }

    // ---- VirtualService

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

    // ---- DestinationRule

    fn destination_rule() -> Value {
        json!({
            "host": "reviews.prod.svc.cluster.local",
            "trafficPolicy": {
                "loadBalancer": {
                    "simple": "LEAST_REQUEST",
                    "localityLbSetting": {
                        "enabled": true,
                        "distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}],
                        "failoverPriority": ["topology.istio.io/network"]
                    },
                    "warmup": {"duration": "60s", "minimumPercent": 10, "aggression": 1.5}
                },
                "connectionPool": {
                    "tcp": {
                        "maxConnections": 100,
                        "connectTimeout": "30ms",
                        "tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"},
                        "maxConnectionDuration": "1h",
                        "idleTimeout": "1h"
                    },
                    "http": {
                        "http1MaxPendingRequests": 1024,
                        "http2MaxRequests": 1024,
                        "maxRequestsPerConnection": 10,
                        "maxRetries": 3,
                        "idleTimeout": "1h",
                        "h2UpgradePolicy": "UPGRADE",
                        "useClientProtocol": false,
                        "maxConcurrentStreams": 100,
                        "http2KeepAlive": {"interval": "30s", "timeout": "5s"}
                    }
                },
                "outlierDetection": {
                    "splitExternalLocalOriginErrors": true,
                    "consecutiveLocalOriginFailures": 5,
                    "consecutiveGatewayErrors": 3,
                    "consecutive5xxErrors": 7,
                    "interval": "5m",
                    "baseEjectionTime": "15m",
                    "maxEjectionPercent": 50,
                    "minHealthPercent": 30,
                    "outlierDetectionHttpErrorCodes": [503, 504]
                },
                "tls": {"mode": "ISTIO_MUTUAL", "sni": "reviews.prod", "subjectAltNames": ["spiffe://cluster.local/ns/prod/sa/reviews"]},
                "portLevelSettings": [{
                    "port": {"number": 80},
                    "loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "path": "/", "ttl": "0s",
                        "attributes": [{"name": "SameSite", "value": "Strict"}]}, "ringHash": {"minimumRingSize": 1024}}},
                    "tls": {"mode": "MUTUAL", "clientCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem",
                            "caCertificates": "/etc/certs/ca.pem", "insecureSkipVerify": false, "caCrl": "/etc/certs/crl.pem"}
                }, {
                    "port": {"number": 9080},
                    "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "maglev": {"tableSize": 65537}}},
                    "connectionPool": {"tcp": {"maxConnections": 10}},
                    "outlierDetection": {"consecutive5xxErrors": 1}
                }],
                "tunnel": {"protocol": "CONNECT", "targetHost": "example.com", "targetPort": 443},
                "proxyProtocol": {"version": "V2"},
                "retryBudget": {"percent": 25, "minRetryConcurrency": 5, "budgetInterval": "10s"}
            },
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"useSourceIp": true}, "zoneAwareLbSetting": {
                        "enabled": true, "failover": [{"from": "a", "to": "b"}], "failoverPriority": ["x"], "minClusterSize": 3}}
                }},
                {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"httpQueryParameterName": "user", "minimumRingSize": 512},
                                     "warmupDurationSecs": "30s"},
                    "tls": {"mode": "SIMPLE", "credentialName": "client-credential"}
                }}
            ],
            "exportTo": ["*"],
            "workloadSelector": {"matchLabels": {"app": "ratings"}}
        })
    }

    #[test]
    fn destination_rule_example_parses_validates_and_round_trips() {
        let dr: DestinationRuleSpec = round_trips(destination_rule());
        assert_eq!(dr.host(), "reviews.prod.svc.cluster.local");
        let tp = dr.traffic_policy.as_ref().expect("present");
        assert_eq!(tp.load_balancer.as_ref().expect("present").simple, Some(SimpleLb::LeastRequest));
        assert_eq!(
            tp.connection_pool
                .as_ref()
                .expect("present")
                .tcp
                .as_ref()
                .expect("present")
                .connect_timeout
                .as_ref()
                .expect("present")
                .as_std(),
            std::time::Duration::from_millis(30)
        );
        assert_eq!(tp.outlier_detection.as_ref().expect("present").consecutive_5xx_errors, Some(7));
        assert_eq!(dr.validate(), vec![]);
    }

    #[test]
    fn destination_rule_rules() {
        let base = destination_rule();
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            ("/host", json!(""), "host", "needs a host"),
            ("/subsets/1/name", json!("v1"), "subsets[1].name", "subset `v1` is defined twice"),
            ("/subsets/1/name", json!("V_2"), "subsets[1].name", "is not a DNS label"),
            ("/subsets/0/trafficPolicy", json!({}), "subsets[0].trafficPolicy", "trafficPolicy sets nothing"),
            (
                "/trafficPolicy/outlierDetection/maxEjectionPercent",
                json!(150),
                "trafficPolicy.outlierDetection.maxEjectionPercent",
                "percentage 150 is out of range",
            ),
            (
                "/trafficPolicy/outlierDetection/minHealthPercent",
                json!(-1),
                "trafficPolicy.outlierDetection.minHealthPercent",
                "out of range",
            ),
            (
                "/trafficPolicy/outlierDetection/interval",
                json!("0s"),
                "trafficPolicy.outlierDetection.interval",
                "shorter than 1ms",
            ),
            (
                "/trafficPolicy/outlierDetection/consecutiveErrors",
                json!(5),
                "trafficPolicy.outlierDetection.consecutiveErrors",
                "deprecated",
            ),
            (
                "/trafficPolicy/outlierDetection/outlierDetectionHttpErrorCodes/1",
                json!(99),
                "trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]",
                "99 is not an HTTP status",
            ),
            (
                "/trafficPolicy/connectionPool/tcp/maxConnections",
                json!(-1),
                "trafficPolicy.connectionPool.tcp.maxConnections",
                "-1 is negative",
            ),
            (
                "/trafficPolicy/connectionPool/tcp/connectTimeout",
                json!("0s"),
                "trafficPolicy.connectionPool.tcp.connectTimeout",
                "shorter than 1ms",
            ),
            (
                "/trafficPolicy/connectionPool/http/maxRetries",
                json!(-3),
                "trafficPolicy.connectionPool.http.maxRetries",
                "-3 is negative",
            ),
            (
                "/trafficPolicy/connectionPool/http/idleTimeout",
                json!("0s"),
                "trafficPolicy.connectionPool.http.idleTimeout",
                "shorter than 1ms",
            ),
            (
                "/trafficPolicy/loadBalancer/localityLbSetting/failover",
                json!([{"from": "a", "to": "b"}]),
                "trafficPolicy.loadBalancer.localityLbSetting.failover",
                "`distribute` and `failover` are mutually exclusive",
            ),
            (
                "/trafficPolicy/loadBalancer/localityLbSetting/distribute/0/to",
                json!({"us-west/zone1/*": 80, "us-west/zone2/*": 30}),
                "trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
                "locality weights sum to 110, not 100",
            ),
            (
                "/trafficPolicy/loadBalancer/warmupDurationSecs",
                json!("10s"),
                "trafficPolicy.loadBalancer.warmupDurationSecs",
                "both set",
            ),
            (
                "/trafficPolicy/loadBalancer/warmup/minimumPercent",
                json!(101),
                "trafficPolicy.loadBalancer.warmup.minimumPercent",
                "out of range",
            ),
            (
                "/trafficPolicy/loadBalancer/warmup/aggression",
                json!(0.5),
                "trafficPolicy.loadBalancer.warmup.aggression",
                "below 1",
            ),
            (
                "/trafficPolicy/tls/credentialName",
                json!("cred"),
                "trafficPolicy.tls.mode",
                "ISTIO_MUTUAL uses the mesh certificates",
            ),
            (
                "/trafficPolicy/portLevelSettings/0/tls/clientCertificate",
                Value::Null,
                "trafficPolicy.portLevelSettings[0].tls.mode",
                "MUTUAL needs a client certificate",
            ),
            (
                "/trafficPolicy/portLevelSettings/0/tls/credentialName",
                json!("c"),
                "trafficPolicy.portLevelSettings[0].tls.credentialName",
                "combined with certificate file paths",
            ),
            (
                "/trafficPolicy/portLevelSettings/1/port/number",
                json!(80),
                "trafficPolicy.portLevelSettings[1].port.number",
                "port 80 has settings twice",
            ),
            (
                "/trafficPolicy/portLevelSettings/1/port",
                Value::Null,
                "trafficPolicy.portLevelSettings[1].port.number",
                "need a port number",
            ),
            (
                "/trafficPolicy/portLevelSettings/1/port/number",
                json!(0),
                "trafficPolicy.portLevelSettings[1].port.number",
                "port 0 is out of range",
            ),
            (
                "/trafficPolicy/portLevelSettings/0/loadBalancer/consistentHash/minimumRingSize",
                json!(10),
                "trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash.minimumRingSize",
                "deprecated minimumRingSize",
            ),
            (
                "/trafficPolicy/portLevelSettings/0/loadBalancer/consistentHash/httpCookie/name",
                json!(""),
                "trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash.httpCookie.name",
                "cookie name is empty",
            ),
            (
                "/trafficPolicy/tunnel/protocol",
                json!("GET"),
                "trafficPolicy.tunnel.protocol",
                "is not CONNECT or POST",
            ),
            ("/trafficPolicy/tunnel/targetPort", json!(0), "trafficPolicy.tunnel.targetPort", "out of range"),
            (
                "/trafficPolicy/retryBudget/percent",
                json!(120),
                "trafficPolicy.retryBudget.percent",
                "out of range",
            ),
            ("/exportTo/1", json!("~"), "exportTo[1]", "combined"),
        ];
        for (pointer, value, path, message) in cases {
            let dr: DestinationRuleSpec = parse(patched(&base, pointer, value));
            has(&dr.validate(), path, message);
        }
    }

    #[test]
    fn destination_rule_oneofs_are_rejected_naming_the_fields() {
        let err = parse_err::<LoadBalancerSettings>(
            json!({"simple": "ROUND_ROBIN", "consistentHash": {"useSourceIp": true}}),
        );
        assert_eq!(
            err,
            "loadBalancer sets `simple` and `consistentHash`; set only one of `simple`, `consistentHash`"
        );
        let err = parse_err::<ConsistentHashLb>(json!({"httpHeaderName": "x", "useSourceIp": true}));
        assert!(err.contains("consistentHash sets `httpHeaderName` and `useSourceIp`"), "{err}");
        let err = parse_err::<ConsistentHashLb>(json!({"useSourceIp": true, "ringHash": {}, "maglev": {}}));
        assert!(err.contains("consistentHash sets `ringHash` and `maglev`"), "{err}");
        let err = parse_err::<DestinationRuleSpec>(patched(
            &destination_rule(),
            "/trafficPolicy/portLevelSettings/1/loadBalancer/consistentHash/httpQueryParameterName",
            json!("q"),
        ));
        assert!(err.contains("consistentHash sets `httpHeaderName` and `httpQueryParameterName`"), "{err}");
    }

    #[test]
    fn destination_rule_unknown_fields_are_rejected_by_name() {
        for (pointer, field) in [
            ("/trafficPolicy/connectionPool/tcp/maxConnection", "maxConnection"),
            ("/trafficPolicy/outlierDetection/consecutive5xxError", "consecutive5xxError"),
            ("/trafficPolicy/tls/caCertificate", "caCertificate"),
            ("/subsets/0/label", "label"),
            ("/trafficPolicy/loadBalancer/sticky", "sticky"),
            ("/workloadSelector/labels", "labels"),
        ] {
            let err = parse_err::<DestinationRuleSpec>(patched(&destination_rule(), pointer, json!(1)));
            assert!(err.contains(&format!("unknown field `{field}`")), "{pointer}: {err}");
        }
    }

    #[test]
    fn destination_rule_wrong_types_are_rejected() {
        for (pointer, value) in [
            ("/host", json!(["a"])),
            ("/trafficPolicy/loadBalancer/simple", json!("round_robin")),
            ("/trafficPolicy/tls/mode", json!("STRICT")),
            ("/trafficPolicy/connectionPool/tcp/maxConnections", json!("100")),
            ("/trafficPolicy/outlierDetection/consecutive5xxErrors", json!(-1)),
            ("/trafficPolicy/outlierDetection/baseEjectionTime", json!("15 minutes")),
            ("/subsets/0/labels", json!(["version"])),
            ("/subsets/0", json!({"labels": {}})),
            ("/trafficPolicy/proxyProtocol/version", json!("V3")),
        ] {
            let r = serde_json::from_value::<DestinationRuleSpec>(patched(
                &destination_rule(),
                pointer,
                value.clone(),
            ));
            assert!(r.is_err(), "{pointer} = {value} was accepted");
        }
        let err = parse_err::<DestinationRuleSpec>(json!({"subsets": []}));
        assert!(err.contains("missing field `host`"), "{err}");
    }

    // ---- ServiceEntry

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

    // ---- Gateway (networking.istio.io)

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

    // ---- shared pieces

    #[test]
    fn doubles_keep_their_json_number() {
        for v in [json!({"value": 50}), json!({"value": 0.5}), json!({"value": 100.0}), json!({})] {
            let p: Percent = round_trips(v);
            assert!((0.0..=100.0).contains(&p.get()));
        }
        assert!(serde_json::from_value::<Percent>(json!({"value": "50"})).is_err());
        assert_eq!(Double::new(f64::NAN), None);
    }

    #[test]
    fn issues_display_path_message_and_hint() {
        let i = Issue::error("http[0].route", "weights sum to 90", "make them 100");
        assert_eq!(i.to_string(), "error: http[0].route: weights sum to 90 (make them 100)");
        assert!(i.is_error());
        assert!(!Issue::warning("a", "b", "").is_error());
    }
}
