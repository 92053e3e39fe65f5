//! Istio's Telemetry kind (telemetry.istio.io v1/v1alpha1): tracing, metrics and access-logging
//! overrides for a namespace or workload, parsed from its `spec` exactly as Istio spells the fields,
//! and the checks Istio's validation performs on it.
//!
//! This module owns the wire shape and its validation; applying the overrides belongs to the
//! telemetry module. Every struct rejects unknown fields.
//! It imports only [`super::common`] and the duration type, never another kind nor the compiler.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{
    Double, Issue, PolicyTargetReference, WorkloadSelector, at_most_one, check_percent,
    check_selector_target, join, oneof_checked,
};
use crate::config::duration::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// Which side of a connection an override applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    ClientAndServer,
    Client,
    Server,
}

/// `{mode: CLIENT}`: the `match` of tracing and access logging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRef {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<ModeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<Double>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_context_propagation: Option<bool>,
}

/// `Tracing.CustomTag`: exactly one of `literal`, `environment`, `header`, `formatter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatter: Option<FormatterTag>,
}
oneof_checked!(CustomTag);

impl CustomTag {
    fn check_oneof(&self) -> Result<(), String> {
        let members = [
            ("literal", self.literal.is_some()),
            ("environment", self.environment.is_some()),
            ("header", self.header.is_some()),
            ("formatter", self.formatter.is_some()),
        ];
        at_most_one("customTag", &members)?;
        if members.iter().all(|m| !m.1) {
            return Err(
                "customTag sets none of `literal`, `environment`, `header`, `formatter`; set exactly one"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiteralTag {
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatterTag {
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

/// `MetricSelector`; `metric` and `customMetric` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct MetricSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}
oneof_checked!(MetricSelector);

impl MetricSelector {
    fn check_oneof(&self) -> Result<(), String> {
        at_most_one(
            "metrics match",
            &[("metric", self.metric.is_some()), ("customMetric", self.custom_metric.is_some())],
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct MetricsOverrides {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<MetricSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    Upsert,
    Remove,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// A CEL expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<ModeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression, e.g. `response.code >= 400`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

fn check_providers(is: &mut Vec<Issue>, path: &str, providers: &[ProviderRef]) {
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            is.push(Issue::error(
                format!("{path}[{i}].name"),
                "provider name is empty",
                "name an extension provider of the mesh config, e.g. prometheus or envoy",
            ));
        }
    }
}

impl TelemetrySpec {
    /// Istio's semantic checks of a Telemetry.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        check_selector_target(
            is,
            self.selector.is_some(),
            self.target_ref.is_some(),
            !self.target_refs.is_empty(),
        );
        for (i, t) in self.tracing.iter().enumerate() {
            let tp = format!("tracing[{i}]");
            check_providers(is, &join(&tp, "providers"), &t.providers);
            if let Some(p) = &t.random_sampling_percentage {
                check_percent(is, &join(&tp, "randomSamplingPercentage"), p.get());
            }
            for (name, tag) in &t.custom_tags {
                let cp = format!("{tp}.customTags.{name}");
                for (field, empty) in [
                    ("environment.name", tag.environment.as_ref().is_some_and(|e| e.name.is_empty())),
                    ("header.name", tag.header.as_ref().is_some_and(|h| h.name.is_empty())),
                ] {
                    if empty {
                        is.push(Issue::error(
                            join(&cp, field),
                            "name is empty",
                            "name the variable or header to read",
                        ));
                    }
                }
            }
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let mp = format!("metrics[{i}]");
            check_providers(is, &join(&mp, "providers"), &m.providers);
            if let Some(d) = &m.reporting_interval
                && d.is_zero()
            {
                is.push(Issue::error(
                    join(&mp, "reportingInterval"),
                    "reportingInterval is 0",
                    "use a positive interval, e.g. 15s",
                ));
            }
            for (j, o) in m.overrides.iter().enumerate() {
                let op = format!("{mp}.overrides[{j}]");
                if let Some(c) = o.matches.as_ref().and_then(|s| s.custom_metric.as_deref())
                    && c.is_empty()
                {
                    is.push(Issue::error(
                        join(&op, "match.customMetric"),
                        "customMetric is empty",
                        "name the metric",
                    ));
                }
                for (tag, ov) in &o.tag_overrides {
                    let tp = format!("{op}.tagOverrides.{tag}");
                    match (ov.operation.unwrap_or(TagOperation::Upsert), &ov.value) {
                        (TagOperation::Upsert, None) => is.push(Issue::error(
                            join(&tp, "value"),
                            "an UPSERT tag override needs a value",
                            "set value to a CEL expression, e.g. request.host",
                        )),
                        (TagOperation::Remove, Some(_)) => is.push(Issue::error(
                            join(&tp, "value"),
                            "a REMOVE tag override takes no value",
                            "remove the value, or use operation UPSERT",
                        )),
                        _ => {}
                    }
                }
            }
        }
        for (i, a) in self.access_logging.iter().enumerate() {
            let ap = format!("accessLogging[{i}]");
            check_providers(is, &join(&ap, "providers"), &a.providers);
            if let Some(f) = &a.filter
                && f.expression.as_deref().unwrap_or("").trim().is_empty()
            {
                is.push(Issue::error(
                    join(&ap, "filter.expression"),
                    "filter expression is empty",
                    "write a CEL expression, e.g. response.code >= 400",
                ));
            }
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn example() -> Value {
        json!({
            "selector": {"matchLabels": {"service.istio.io/canonical-name": "frontend"}},
            "tracing": [{
                "match": {"mode": "CLIENT"},
                "providers": [{"name": "zipkin"}],
                "randomSamplingPercentage": 10,
                "disableSpanReporting": false,
                "customTags": {
                    "cluster": {"literal": {"value": "east"}},
                    "pod": {"environment": {"name": "POD_NAME", "defaultValue": "unknown"}},
                    "user": {"header": {"name": "x-user", "defaultValue": "anon"}},
                    "path": {"formatter": {"value": "%REQ(:PATH)%"}}
                },
                "useRequestIdForTraceSampling": true,
                "enableIstioTags": true,
                "disableContextPropagation": false
            }],
            "metrics": [{
                "providers": [{"name": "prometheus"}],
                "reportingInterval": "15s",
                "overrides": [{
                    "match": {"metric": "REQUEST_COUNT", "mode": "CLIENT_AND_SERVER"},
                    "tagOverrides": {
                        "request_host": {"value": "request.host"},
                        "response_flags": {"operation": "REMOVE"}
                    }
                }, {
                    "match": {"customMetric": "my_metric", "mode": "SERVER"},
                    "disabled": true
                }]
            }],
            "accessLogging": [{
                "match": {"mode": "SERVER"},
                "providers": [{"name": "envoy"}],
                "disabled": false,
                "filter": {"expression": "response.code >= 400"}
            }]
        })
    }

    fn parse(v: Value) -> TelemetrySpec {
        serde_json::from_value(v).expect("the spec parses")
    }

    fn one(spec: &TelemetrySpec) -> Issue {
        let issues = spec.validate();
        assert_eq!(issues.len(), 1, "{issues:?}");
        issues.into_iter().next().expect("one issue")
    }

    #[test]
    fn example_parses_validates_and_round_trips() {
        let spec = parse(example());
        assert_eq!(spec.tracing[0].random_sampling_percentage.as_ref().expect("present").get(), 10.0);
        assert_eq!(spec.tracing[0].custom_tags.len(), 4);
        assert_eq!(
            spec.metrics[0].overrides[0].matches.as_ref().expect("present").metric,
            Some(IstioMetric::RequestCount)
        );
        assert_eq!(spec.validate(), vec![]);
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), example());
    }

    #[test]
    fn fractional_sampling_round_trips() {
        let v = json!({"tracing": [{"randomSamplingPercentage": 0.5}]});
        assert_eq!(serde_json::to_value(parse(v.clone())).expect("serializes"), v);
    }

    #[test]
    fn sampling_percentage_is_bounded() {
        let i = one(&parse(json!({"tracing": [{"randomSamplingPercentage": 150}]})));
        assert_eq!(i.path, "tracing[0].randomSamplingPercentage");
        assert_eq!(i.message, "percentage 150 is out of range");
    }

    #[test]
    fn custom_tag_needs_exactly_one_kind() {
        let err = serde_json::from_value::<TelemetrySpec>(json!({"tracing": [{"customTags": {
            "x": {"literal": {"value": "a"}, "header": {"name": "x-a"}}
        }}]}))
        .expect_err("must be rejected")
        .to_string();
        assert!(err.contains("customTag sets `literal` and `header`"), "{err}");
        let err = serde_json::from_value::<TelemetrySpec>(json!({"tracing": [{"customTags": {"x": {}}}]}))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains("customTag sets none of"), "{err}");
    }

    #[test]
    fn metric_and_custom_metric_are_exclusive() {
        let err = serde_json::from_value::<TelemetrySpec>(json!({"metrics": [{"overrides": [{
            "match": {"metric": "REQUEST_COUNT", "customMetric": "x"}
        }]}]}))
        .expect_err("must be rejected")
        .to_string();
        assert!(err.contains("`metric` and `customMetric`"), "{err}");
    }

    #[test]
    fn tag_override_operations_are_checked() {
        let i = one(&parse(
            json!({"metrics": [{"overrides": [{"tagOverrides": {"a": {"operation": "UPSERT"}}}]}]}),
        ));
        assert_eq!(i.path, "metrics[0].overrides[0].tagOverrides.a.value");
        assert_eq!(i.message, "an UPSERT tag override needs a value");
        let i = one(&parse(
            json!({"metrics": [{"overrides": [{"tagOverrides": {"a": {"operation": "REMOVE", "value": "x"}}}]}]}),
        ));
        assert_eq!(i.message, "a REMOVE tag override takes no value");
    }

    #[test]
    fn providers_intervals_and_filters_are_checked() {
        let i = one(&parse(json!({"accessLogging": [{"providers": [{"name": ""}]}]})));
        assert_eq!(i.path, "accessLogging[0].providers[0].name");
        assert_eq!(i.message, "provider name is empty");
        let i = one(&parse(json!({"metrics": [{"reportingInterval": "0s"}]})));
        assert_eq!(i.path, "metrics[0].reportingInterval");
        let i = one(&parse(json!({"accessLogging": [{"filter": {"expression": " "}}]})));
        assert_eq!(i.path, "accessLogging[0].filter.expression");
    }

    #[test]
    fn selector_and_target_refs_are_exclusive() {
        let i = one(&parse(json!({
            "selector": {"matchLabels": {"app": "a"}},
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "w"}]
        })));
        assert_eq!(i.path, "targetRefs");
        assert_eq!(i.message, "`selector` and `targetRefs` are both set");
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = serde_json::from_value::<TelemetrySpec>(json!({"tracing": [{"samplingPercentage": 5}]}))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains("unknown field `samplingPercentage`"), "{err}");
        let err =
            serde_json::from_value::<TelemetrySpec>(json!({"accessLogging": [{"filter": {"expr": "x"}}]}))
                .expect_err("must be rejected")
                .to_string();
        assert!(err.contains("unknown field `expr`"), "{err}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        for bad in [
            json!({"tracing": {"providers": []}}),
            json!({"tracing": [{"randomSamplingPercentage": "10"}]}),
            json!({"metrics": [{"overrides": [{"match": {"metric": "REQUESTS"}}]}]}),
            json!({"accessLogging": [{"disabled": "true"}]}),
            json!({"metrics": [{"reportingInterval": 15}]}),
        ] {
            assert!(serde_json::from_value::<TelemetrySpec>(bad.clone()).is_err(), "{bad}");
        }
    }
}
