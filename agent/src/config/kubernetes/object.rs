//! API objects -> mesh config documents: the JSON value an object would have as a YAML document
//! (apiVersion, kind, metadata, spec, status), minus noise, with a `kubernetes:Kind/ns/name`
//! origin so every diagnostic names the object it is about.
//!
//! What is dropped and why:
//! - `metadata.managedFields` and the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation: bookkeeping of the API server and kubectl, large and never read by the compiler.
//! - the addresses of pods that do not own them: `hostNetwork` pods report the node's address and
//!   finished pods (`Succeeded`/`Failed`) keep reporting an address the node may already have
//!   given to another pod. Both would otherwise be "address already used" errors that reject the
//!   whole config. The pod itself stays (its labels still count).
use std::path::PathBuf;

use kube::core::DynamicObject;
use serde_json::{Map, Value};

use super::kinds::WatchedKind;
use crate::config::yaml;

/// Annotations removed before compiling.
pub const NOISE_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// The origin path diagnostics print for an object: `kubernetes:Kind/namespace/name`
/// (`kubernetes:Kind/name` for cluster-scoped kinds).
pub fn origin(kind: &str, namespace: Option<&str>, name: &str) -> PathBuf {
    match namespace {
        Some(ns) => PathBuf::from(format!("kubernetes:{kind}/{ns}/{name}")),
        None => PathBuf::from(format!("kubernetes:{kind}/{name}")),
    }
}

/// The document (and its origin) the compiler sees for `obj`. List items carry no apiVersion or
/// kind, so both are always set from the watched kind.
pub fn to_document(
    kind: &WatchedKind,
    obj: &DynamicObject,
) -> Result<(PathBuf, yaml::Document), serde_json::Error> {
    let value = serde_json::to_value(obj)?;
    let mut map = match value {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    map.insert("apiVersion".into(), Value::String(kind.api_version()));
    map.insert("kind".into(), Value::String(kind.kind.to_string()));
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        strip_metadata(meta);
    }
    if kind.group.is_empty() && kind.kind == "Pod" {
        drop_unowned_pod_addresses(&mut map);
    }
    let origin =
        origin(kind.kind, obj.metadata.namespace.as_deref(), obj.metadata.name.as_deref().unwrap_or(""));
    Ok((origin, yaml::Document::from_value(Value::Object(map))))
}

fn strip_metadata(meta: &mut Map<String, Value>) {
    meta.remove("managedFields");
    if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
        for a in NOISE_ANNOTATIONS {
            ann.remove(*a);
        }
        if ann.is_empty() {
            meta.remove("annotations");
        }
    }
}

fn drop_unowned_pod_addresses(pod: &mut Map<String, Value>) {
    let host_network =
        pod.get("spec").and_then(|s| s.get("hostNetwork")).and_then(Value::as_bool) == Some(true);
    let Some(Value::Object(status)) = pod.get_mut("status") else { return };
    let finished = matches!(status.get("phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    if host_network || finished {
        status.remove("podIP");
        status.remove("podIPs");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::kubernetes::kinds::WATCHED;

    fn kind(name: &str) -> &'static WatchedKind {
        WATCHED.iter().find(|k| k.kind == name).expect("watched kind")
    }

    #[test]
    fn list_items_get_type_fields_and_lose_noise() {
        // A list item exactly as the API server sends it: no apiVersion/kind.
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                "labels": {"app": "web"}
            },
            "spec": {"nodeName": "n1"},
            "status": {"podIP": "10.0.0.1", "phase": "Running"}
        }))
        .expect("object");
        let (origin, doc) = to_document(kind("Pod"), &obj).expect("document");
        assert_eq!(origin, PathBuf::from("kubernetes:Pod/shop/web"));
        assert_eq!(doc.value["apiVersion"], "v1");
        assert_eq!(doc.value["kind"], "Pod");
        assert_eq!(doc.value["metadata"]["labels"]["app"], "web");
        assert!(doc.value["metadata"].get("managedFields").is_none());
        assert!(doc.value["metadata"].get("annotations").is_none());
        assert_eq!(doc.value["status"]["podIP"], "10.0.0.1");
    }

    #[test]
    fn host_network_and_finished_pods_do_not_claim_addresses() {
        for (spec, phase) in
            [(json!({"hostNetwork": true}), "Running"), (json!({}), "Succeeded"), (json!({}), "Failed")]
        {
            let obj: DynamicObject = serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": spec,
                "status": {"phase": phase, "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]}
            }))
            .expect("object");
            let (_, doc) = to_document(kind("Pod"), &obj).expect("document");
            assert!(doc.value["status"].get("podIP").is_none(), "{phase}");
            assert!(doc.value["status"].get("podIPs").is_none(), "{phase}");
        }
    }

    #[test]
    fn cluster_scoped_origin_and_crd_api_version() {
        let ns: DynamicObject =
            serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("object");
        assert_eq!(
            to_document(kind("Namespace"), &ns).expect("doc").0,
            PathBuf::from("kubernetes:Namespace/shop")
        );
        let pa: DynamicObject = serde_json::from_value(
            json!({"metadata": {"name": "d", "namespace": "istio-system"}, "spec": {}}),
        )
        .expect("object");
        let (_, doc) = to_document(kind("PeerAuthentication"), &pa).expect("doc");
        assert_eq!(doc.value["apiVersion"], "security.istio.io/v1");
    }
}
