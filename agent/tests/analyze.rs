//! `sluice analyze` as a user runs it: the real binary on real files.
use std::process::Command;

fn analyze(dir: &std::path::Path, json: bool) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.arg("analyze");
    if json {
        c.args(["--output", "json"]);
    }
    let out = c.arg(dir).output().expect("run sluice");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write");
}

const GOOD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nstatus: {podIP: 10.0.0.5}\n";

#[test]
fn exit_status_is_0_clean_1_warnings_2_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", GOOD);
    assert_eq!(analyze(dir.path(), false).0, 0);

    write(
        dir.path(),
        "b.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: shop}\nspec:\n  selector:\n    matchLabels: {app: wbe}\n",
    );
    let (code, text) = analyze(dir.path(), false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("b.yaml:6:18") && text.contains("selects no workload"), "{text}");
    assert!(
        text.contains("6 |     matchLabels: {app: wbe}") && text.contains("^"),
        "caret view missing:\n{text}"
    );

    write(
        dir.path(),
        "c.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\nspec: {ports: [{port: 99999}]}\n",
    );
    let (code, text) = analyze(dir.path(), false);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("c.yaml:4:") && text.contains("spec.ports[0].port"), "{text}");

    let (code, json) = analyze(dir.path(), true);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json output");
    let sev: Vec<&str> = v.as_array().expect("array").iter().filter_map(|d| d["severity"].as_str()).collect();
    assert_eq!(sev, vec!["warning", "error"], "{json}");
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["analyze", "/nonexistent/mesh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mesh"));
}

/// The sample mesh in examples/ is clean: no errors, and no warnings either (its Services come at
/// run time, so whether a waypoint serves them cannot be judged offline).
#[test]
fn the_example_mesh_is_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    let (code, json) = analyze(&dir, true);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json output");
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{json}");
    assert_eq!(code, 0, "{json}");
}

/// A broken initial config makes the agent refuse to start, printing every diagnostic, before it
/// touches the kernel.
#[test]
fn the_agent_refuses_to_start_on_a_broken_initial_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "m.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: 1}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: a}\nspec: {action: ALOW}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("agent")
        .arg("--config")
        .arg(dir.path())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("mesh config rejected: 2 error(s)"), "{err}");
    assert!(err.contains("m.yaml:3:33: error: Namespace/a: field `metadata.labels.x`"), "{err}");
    assert!(
        err.contains(
            "m.yaml:8:16: error: AuthorizationPolicy/a/p: field `spec.action`: unknown variant `ALOW`"
        ),
        "{err}"
    );
    assert!(!dir.path().join("state").exists(), "nothing was set up before the config was checked");
}
