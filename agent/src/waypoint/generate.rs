//! `sluice waypoint generate`: the Kubernetes objects that turn a Gateway of class
//! `istio-waypoint` into a running waypoint, printed as YAML for `kubectl apply -f -` (as
//! `istioctl waypoint generate` does; no controller process runs in the cluster).
//!
//! Printed: the Gateway (unless `--no-gateway`), a ServiceAccount named after it (the waypoint's
//! identity, the one agents expect), a Deployment running `sluice waypoint` as non-root with every
//! capability dropped, a Service selecting it by `gateway.networking.k8s.io/gateway-name`, and a
//! ClusterRoleBinding giving the service account the agents' read-only ClusterRole (the waypoint
//! reads the same mesh config).
use serde_json::{Value, json};

use crate::cli::GenerateArgs;

/// The pod label that ties waypoint pods to their Gateway (Gateway API's convention).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The unprivileged user the waypoint runs as.
pub const WAYPOINT_UID: u32 = 1337;
const CA_MOUNT: &str = "/etc/sluice/ca";

/// The objects as one YAML stream.
pub fn generate(a: &GenerateArgs) -> String {
    let docs: Vec<String> = objects(a).iter().map(to_yaml).collect();
    docs.join("---\n")
}

/// The objects, in apply order.
pub fn objects(a: &GenerateArgs) -> Vec<Value> {
    let (name, ns) = (a.name.as_str(), a.namespace.as_str());
    let labels = json!({
        GATEWAY_NAME_LABEL: name,
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "waypoint",
        "app.kubernetes.io/managed-by": "sluice",
    });
    let mut args = vec![
        "waypoint".to_string(),
        "--config=kubernetes".to_string(),
        format!("--name={name}"),
        format!("--namespace={ns}"),
        format!("--service-account={name}"),
        format!("--ca-dir={CA_MOUNT}"),
    ];
    if a.trust_domain != crate::cli::DEFAULT_TRUST_DOMAIN {
        args.push(format!("--trust-domain={}", a.trust_domain));
    }
    let mut out = Vec::new();
    if !a.no_gateway {
        out.push(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "labels": {"istio.io/waypoint-for": a.waypoint_for}},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        }));
    }
    out.push(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    }));
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": a.replicas,
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {
                    // The waypoint is not captured by the agents: it speaks HBONE itself.
                    "labels": merge(&labels, json!({"istio.io/dataplane-mode": "none"})),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "15020",
                        "prometheus.io/path": "/stats/prometheus",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": WAYPOINT_UID,
                        "runAsGroup": WAYPOINT_UID,
                        // The CA secret's files are mode 0440: readable through this group.
                        "fsGroup": WAYPOINT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "waypoint",
                        "image": a.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": args,
                        "env": [{"name": "SLUICE_LOG", "value": a.log_level}],
                        "ports": [
                            {"name": "hbone", "containerPort": 15008, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz/ready", "port": 15020},
                            "periodSeconds": 5,
                        },
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "64Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "privileged": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "ca", "mountPath": CA_MOUNT, "readOnly": true}],
                    }],
                    "volumes": [{
                        "name": "ca",
                        "secret": {"secretName": a.ca_secret, "defaultMode": 0o440},
                    }],
                },
            },
        },
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": [
                {"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"},
                {"name": "metrics", "port": 15020, "targetPort": 15020, "protocol": "TCP"},
            ],
        },
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name(ns, name), "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sluice-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }));
    out
}

/// The ClusterRoleBinding's name: a dot separates namespace and name (neither can contain one), so
/// no two waypoints share a binding.
pub fn binding_name(ns: &str, name: &str) -> String {
    format!("sluice-waypoint.{ns}.{name}")
}

/// Checks a Kubernetes object name (an RFC 1123 label: what a Service name must be).
pub fn check_name(what: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {v:?} is not a valid Kubernetes name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

fn merge(a: &Value, b: Value) -> Value {
    let mut m = a.as_object().cloned().unwrap_or_default();
    if let Value::Object(b) = b {
        m.extend(b);
    }
    Value::Object(m)
}

/// Block-style YAML of a JSON value; every string is double-quoted (JSON escaping is valid YAML),
/// so no value can change meaning.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                let key = if k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                    k.clone()
                } else {
                    Value::String(k.clone()).to_string()
                };
                if is_block(val) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    emit(val, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", scalar(val)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // The first line of the item goes after the dash.
                    let mut inner = String::new();
                    emit(item, indent + 2, &mut inner);
                    let trimmed = inner.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> GenerateArgs {
        let mut argv =
            vec!["sluice", "waypoint", "generate", "--name", "shop-waypoint", "--namespace", "shop"];
        argv.extend(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Waypoint(w) => match w.action {
                Some(crate::cli::WaypointAction::Generate(g)) => g,
                None => panic!("not generate"),
            },
            _ => panic!("not waypoint"),
        }
    }

    #[test]
    fn the_yaml_round_trips_to_the_same_objects() {
        let a = args(&[]);
        let text = generate(&a);
        let docs = crate::config::yaml::parse(&text).expect("valid YAML");
        let parsed: Vec<Value> = docs.into_iter().map(|d| d.value).collect();
        assert_eq!(parsed, objects(&a));
        assert_eq!(parsed.len(), 5);
    }

    #[test]
    fn the_waypoint_runs_unprivileged_as_the_gateways_identity() {
        let objs = objects(&args(&["--trust-domain", "example.org"]));
        let dep = objs.iter().find(|o| o["kind"] == "Deployment").expect("deployment");
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "shop-waypoint");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], WAYPOINT_UID);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        let labels = &dep["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels[GATEWAY_NAME_LABEL], "shop-waypoint");
        assert_eq!(labels["istio.io/dataplane-mode"], "none");
        // The container's arguments are a valid `sluice waypoint` command line.
        let mut argv = vec!["sluice".to_string()];
        argv.extend(c["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("str").to_string()));
        let Command::Waypoint(w) = Cli::try_parse_from(&argv).expect("args parse").command else {
            panic!("not a waypoint command")
        };
        assert!(w.action.is_none());
        let run = w.run;
        assert_eq!((run.name.as_deref(), run.namespace.as_deref()), (Some("shop-waypoint"), Some("shop")));
        assert_eq!(run.service_account.as_deref(), Some("shop-waypoint"));
        assert_eq!(run.identity.trust_domain, "example.org");
        let svc = objs.iter().find(|o| o["kind"] == "Service").expect("service");
        assert_eq!(svc["spec"]["selector"][GATEWAY_NAME_LABEL], "shop-waypoint");
        let crb = objs.iter().find(|o| o["kind"] == "ClusterRoleBinding").expect("binding");
        assert_eq!(crb["subjects"][0]["name"], "shop-waypoint");
        assert_eq!(crb["roleRef"]["name"], "sluice-agent");
        assert_ne!(binding_name("a-b", "c"), binding_name("a", "b-c"));
    }

    #[test]
    fn the_gateway_is_a_waypoint_the_config_accepts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = generate(&args(&["--for", "all"]));
        std::fs::write(dir.path().join("waypoint.yaml"), &text).expect("write");
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
        std::fs::write(dir.path().join("ns.yaml"), ns).expect("write");
        let (snap, diags) =
            crate::config::files::load_dir(dir.path(), &Default::default()).expect("the config accepts it");
        assert_eq!(diags.errors().count(), 0);
        let kind = snap.waypoint_for.get(&("shop".to_string(), "shop-waypoint".to_string()));
        assert_eq!(kind, Some(&crate::config::waypoints::WaypointFor::All));
        let without = objects(&args(&["--no-gateway"]));
        assert!(without.iter().all(|o| o["kind"] != "Gateway"), "--no-gateway printed a Gateway");
        assert_eq!(without.len(), 4);
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        assert!(check_name("--name", "shop-waypoint").is_ok());
        for bad in ["", "Shop", "a_b", "-a", "a-", "a.b", &"x".repeat(64)] {
            let e = check_name("--name", bad).expect_err(bad);
            assert!(e.contains("--name") && e.contains("lowercase"), "{e}");
        }
    }

    #[test]
    fn deploy_waypoint_example_is_what_generate_prints() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/waypoint-example.yaml");
        let file = std::fs::read_to_string(&path).expect("deploy/waypoint-example.yaml");
        let body: String = file.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
        let want = generate(&args(&["--no-gateway", "--image", "sluice:0.1.0"]));
        assert_eq!(
            body, want,
            "regenerate: sluice waypoint generate --name shop-waypoint --namespace shop --no-gateway"
        );
    }
}
