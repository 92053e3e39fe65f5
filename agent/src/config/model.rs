//! The mesh model and its compiled, immutable snapshot.
//!
//! This first cut compiles what enrollment needs (Namespaces and Pods with their labels); the other
//! Istio kinds are recognised and reported as not enforced yet, never silently dropped.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::Value;

use super::{
    diag::{Diagnostic, Diagnostics, Severity},
    yaml::Document,
};

/// Istio's ambient enrollment label.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A pod (or light `Workload` entry) as the config describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub service_account: String,
}

/// Whether a pod is in the mesh, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum EnrollDecision {
    Enrolled,
    /// Not enrolled; the reason is shown in status and logs.
    NotEnrolled(&'static str),
}

/// Kinds recognised but not compiled yet; accepted with a warning naming them.
const KNOWN_NOT_ENFORCED: &[&str] = &[
    "Service",
    "ServiceEntry",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "Telemetry",
];

/// The compiled mesh config. Immutable; replaced whole on every change.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub namespaces: HashMap<String, Namespace>,
    /// Keyed by (namespace, name).
    #[serde(skip)]
    pub pods: HashMap<(String, String), PodEntry>,
}

impl Snapshot {
    /// Decides enrollment for a pod by Istio's ambient rules: the pod's own
    /// `istio.io/dataplane-mode` label wins (`none` opts out, `ambient` opts in); otherwise the
    /// namespace's label decides.
    pub fn enrollment(&self, namespace: &str, pod: &str) -> EnrollDecision {
        let pod_mode = self
            .pods
            .get(&(namespace.to_string(), pod.to_string()))
            .and_then(|p| p.labels.get(DATAPLANE_MODE_LABEL));
        match pod_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_NONE) => {
                return EnrollDecision::NotEnrolled("pod label istio.io/dataplane-mode=none");
            }
            Some(DATAPLANE_MODE_AMBIENT) => return EnrollDecision::Enrolled,
            _ => {}
        }
        let ns_mode = self
            .namespaces
            .get(namespace)
            .and_then(|n| n.labels.get(DATAPLANE_MODE_LABEL));
        match ns_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_AMBIENT) => EnrollDecision::Enrolled,
            _ => EnrollDecision::NotEnrolled("namespace not labelled istio.io/dataplane-mode=ambient"),
        }
    }

    /// The service account of a pod (`default` when the config does not say).
    pub fn service_account(&self, namespace: &str, pod: &str) -> String {
        self.pods
            .get(&(namespace.to_string(), pod.to_string()))
            .map(|p| p.service_account.clone())
            .unwrap_or_else(|| "default".to_string())
    }

    /// Compiles parsed documents (with their file names) into a snapshot, collecting every problem.
    pub fn compile(docs: &[(PathBuf, Document)], diags: &mut Diagnostics) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for (file, doc) in docs {
            let mut cx = Cx {
                file,
                doc,
                diags,
                object: None,
            };
            let Some(kind) = cx.string("kind", true) else {
                continue;
            };
            let name = cx.string("metadata.name", true).unwrap_or_default();
            let namespace = cx.string("metadata.namespace", false);
            cx.object = Some(match &namespace {
                Some(ns) => format!("{kind}/{ns}/{name}"),
                None => format!("{kind}/{name}"),
            });
            if let Some(id) = cx.object.clone() {
                if let Some((f, l)) = seen.get(&id) {
                    cx.error(
                        "metadata.name",
                        format!("duplicate object, first defined at {}:{l}", f.display()),
                        "remove one of the two definitions",
                    );
                    continue;
                }
                seen.insert(id, (file.clone(), doc.start.line));
            }
            let labels = cx.labels("metadata.labels");
            match kind.as_str() {
                "Namespace" => {
                    snap.namespaces.insert(name.clone(), Namespace { name, labels });
                }
                "Pod" | "Workload" => {
                    let sa_path = if kind == "Pod" {
                        "spec.serviceAccountName"
                    } else {
                        "spec.serviceAccount"
                    };
                    let service_account = cx.string(sa_path, false).unwrap_or_else(|| "default".into());
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    snap.pods.insert(
                        (namespace.clone(), name.clone()),
                        PodEntry {
                            namespace,
                            name,
                            labels,
                            service_account,
                        },
                    );
                }
                k if KNOWN_NOT_ENFORCED.contains(&k) => cx.warning(
                    "kind",
                    format!("{k} is recognised but not enforced by this version of sluice"),
                    "see README.md feature status",
                ),
                other => cx.warning(
                    "kind",
                    format!("unknown kind `{other}` ignored"),
                    "check the spelling; sluice reads Istio and Kubernetes kinds",
                ),
            }
        }
        snap
    }
}

/// Per-document compile context: typed field access that records diagnostics.
struct Cx<'a> {
    file: &'a Path,
    doc: &'a Document,
    diags: &'a mut Diagnostics,
    object: Option<String>,
}

impl Cx<'_> {
    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.doc.value, |v, k| v.get(k))
    }

    fn push(&mut self, severity: Severity, field: &str, message: String, hint: &str) {
        let pos = self.doc.pos(field);
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            object: self.object.clone(),
            field: Some(field.to_string()),
            message,
            hint: Some(hint.to_string()),
        });
    }

    fn error(&mut self, field: &str, message: String, hint: &str) {
        self.push(Severity::Error, field, message, hint);
    }

    fn warning(&mut self, field: &str, message: String, hint: &str) {
        self.push(Severity::Warning, field, message, hint);
    }

    fn string(&mut self, path: &str, required: bool) -> Option<String> {
        match self.get(path) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.error(path, "is required".into(), "add it");
                None
            }
            Some(other) => {
                self.error(
                    path,
                    format!("must be a non-empty string, found {other}"),
                    "quote the value",
                );
                None
            }
        }
    }

    fn labels(&mut self, path: &str) -> Labels {
        match self.get(path).cloned() {
            None | Some(Value::Null) => Labels::new(),
            Some(Value::Object(m)) => {
                let mut out = Labels::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => self.error(
                            &format!("{path}.{k}"),
                            format!("label values must be strings, found {other}"),
                            "quote the value, e.g. \"true\"",
                        ),
                    }
                }
                out
            }
            Some(other) => {
                self.error(
                    path,
                    format!("must be a map of strings, found {other}"),
                    "write key: \"value\" pairs",
                );
                Labels::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    fn compile(text: &str) -> (Snapshot, Diagnostics) {
        let docs = yaml::parse(text).expect("yaml");
        let docs: Vec<_> = docs
            .into_iter()
            .map(|d| (PathBuf::from("mesh.yaml"), d))
            .collect();
        let mut diags = Diagnostics::default();
        let s = Snapshot::compile(&docs, &mut diags);
        (s, diags)
    }

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: shop, labels: {istio.io/dataplane-mode: none}}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: legacy, labels: {istio.io/dataplane-mode: ambient}}
spec: {serviceAccountName: api-sa}
"#;

    #[test]
    fn enrollment_rules() {
        let (s, d) = compile(MESH);
        assert!(!d.has_errors(), "{d}");
        let cases = [
            ("shop", "web", true),
            ("shop", "batch", false),
            ("legacy", "old", false),
            ("legacy", "api", true),
            ("absent", "x", false),
        ];
        for (ns, pod, want) in cases {
            assert_eq!(
                s.enrollment(ns, pod) == EnrollDecision::Enrolled,
                want,
                "{ns}/{pod}"
            );
        }
        assert_eq!(s.service_account("legacy", "api"), "api-sa");
        assert_eq!(s.service_account("shop", "web"), "default");
    }

    #[test]
    fn errors_name_file_line_object_and_field() {
        let (_, d) = compile("kind: Namespace\nmetadata:\n  name: a\n  labels:\n    on: 3\n");
        let e: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("mesh.yaml:5:9: error: Namespace/a: field `metadata.labels.on`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn missing_kind_and_duplicates_are_errors_unknown_kinds_warn() {
        let (_, d) = compile(
            "metadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Frobnicator\nmetadata: {name: f}\n",
        );
        let errors: Vec<String> = d.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("field `kind`: is required"), "{}", errors[0]);
        assert!(
            errors[1].contains("duplicate object, first defined at mesh.yaml:3"),
            "{}",
            errors[1]
        );
        assert!(
            d.warnings()
                .any(|w| w.message.contains("unknown kind `Frobnicator`"))
        );
    }
}
