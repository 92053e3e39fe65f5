//! What the kind files share: the [`Issue`] every `validate()` reports, the protobuf-isms of
//! Istio's APIs (checked `oneof`s, [`Double`], [`Percent`]), the field types several kinds embed
//! ([`Labels`], [`WorkloadSelector`], [`PolicyTargetReference`], [`PortSelector`], [`StringMatch`])
//! and the checks more than one kind runs (ports, percentages, regexes, durations, `exportTo`,
//! subnets, selector versus targetRefs).
//!
//! It imports no kind file and nothing of the snapshot compiler: kinds build on it, never the other
//! way round. Something two kinds need goes here, not into one of them.
//!
//! Shape rules every kind follows: every struct rejects unknown fields (a typo must be an error,
//! never ignored); a field the author may omit is an `Option` (or an empty list/map) that is skipped
//! when absent, so a spec read and written again equals its input; protobuf `oneof`s are checked
//! while parsing (two members set is an error naming both, [`oneof_checked`]); durations are
//! [`Duration`](crate::config::duration::Duration); doubles keep their JSON number ([`Double`]) so
//! `50` stays `50` and `0.5` stays `0.5`.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::duration::Duration;

/// Kubernetes labels (also the `matchLabels` of selectors), sorted by key.
pub type Labels = BTreeMap<String, String>;

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
// Field types several kinds embed

/// `WorkloadSelector` of policies (`{matchLabels: ...}`): PeerAuthentication, AuthorizationPolicy,
/// RequestAuthentication, Telemetry, DestinationRule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
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

pub(crate) fn check_string_match(issues: &mut Vec<Issue>, path: &str, m: &StringMatch) {
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

pub(crate) fn check_min_duration(issues: &mut Vec<Issue>, path: &str, d: &Duration) {
    if d.as_std() < std::time::Duration::from_millis(1) {
        issues.push(Issue::error(
            path,
            format!("duration `{d}` is shorter than 1ms"),
            "write a duration of at least 1ms, e.g. 1s",
        ));
    }
}

pub(crate) fn check_non_negative(issues: &mut Vec<Issue>, path: &str, v: Option<i32>) {
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

pub(crate) fn check_export_to(issues: &mut Vec<Issue>, export_to: &[String]) {
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

pub(crate) fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

pub(crate) fn check_subnets(issues: &mut Vec<Issue>, path: &str, subnets: &[String]) {
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
pub(crate) fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::kinds::testing::round_trips;

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
