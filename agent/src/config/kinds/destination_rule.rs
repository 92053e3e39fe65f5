//! Istio's DestinationRule (networking.istio.io v1/v1beta1/v1alpha3): subsets, load balancing,
//! connection pools, outlier detection and client TLS for one host, parsed from its `spec` exactly
//! as Istio spells the fields, and the checks Istio's validation performs on it.
//!
//! This module owns the wire shape and its validation. Applying the policies belongs to the
//! waypoint (`waypoint::upstream`, `waypoint::resilience`); compiling the object into the snapshot
//! to `Snapshot::compile`. It imports only [`super::common`] and the duration type, never another
//! kind nor the compiler.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::{
    Double, Issue, Labels, PortSelector, WorkloadSelector, at_most_one, check_export_to, check_min_duration,
    check_non_negative, check_percent, check_port, is_dns_label, join, oneof_checked,
};
use crate::config::duration::Duration;

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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::kinds::testing::{has, parse, parse_err, patched, round_trips};

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
}
