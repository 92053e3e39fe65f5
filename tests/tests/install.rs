//! The CNI installer end to end: a real agent process installs the plugin binary and appends
//! itself to a real conflist (kindnet's, as a kind node has it), restores itself when the primary
//! CNI rewrites the file, keeps it through an upgrade and a restart, and on uninstall leaves the
//! file byte-identical to what the primary CNI wrote.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sluice_e2e::{Cluster, cluster::scaled, require_root, wait_until};

const CONFLIST: &str = "10-kindnet.conflist";

fn fixture() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/cni").join(CONFLIST);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn plugins(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("conflist");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the agent wrote valid JSON");
    v["plugins"].as_array().expect("plugins").clone()
}

fn ends_with_sluice(path: &Path) -> bool {
    plugins(path).last().is_some_and(|p| p["type"] == "sluice-cni")
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(10), f), "timed out waiting until {what}");
}

#[test]
fn the_agent_installs_keeps_and_uninstalls_its_cni_plugin() {
    if !require_root("the_agent_installs_keeps_and_uninstalls_its_cni_plugin") {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config(
        "namespaces.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n",
    )
    .expect("config");
    let bin: PathBuf = c.scratch_dir("cni-bin").expect("bin dir");
    let conf: PathBuf = c.scratch_dir("net.d").expect("conf dir");
    let conflist = conf.join(CONFLIST);
    let original = fixture();
    std::fs::write(&conflist, &original).expect("write conflist");
    c.agent_args.lock().expect("args").extend(
        ["--cni-bin-dir", bin.to_str().expect("utf-8"), "--cni-conf-dir", conf.to_str().expect("utf-8")]
            .map(String::from),
    );
    c.start_agent(1).expect("agent");

    // Installed: the binary answers as a CNI plugin; the conflist ends with it, pointing at this
    // agent's socket, and the primary's plugins are untouched.
    let plugin = bin.join("sluice-cni");
    let out = Command::new(&plugin).env("CNI_COMMAND", "VERSION").output().expect("run the installed plugin");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && version.contains("supportedVersions"), "{version}");
    let list = plugins(&conflist);
    assert_eq!(
        list.iter().map(|p| p["type"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        ["ptp", "portmap", "sluice-cni"]
    );
    assert_eq!(list[2]["agentSocket"], c.agent_socket(1).to_str().expect("utf-8"));

    // The primary CNI rewrites its file (as kindnet does on restart): sluice is back at once.
    std::fs::write(&conflist, &original).expect("rewrite");
    wait_for("sluice-cni is appended again", || ends_with_sluice(&conflist));
    let installed = std::fs::read_to_string(&conflist).expect("read");

    // An upgrade keeps it (the old agent handed over and does not remove it)...
    let mut old = c.upgrade_agent(1, &[]).expect("upgrade");
    old.terminate(scaled(Duration::from_secs(20))).expect("old agent exits");
    assert_eq!(std::fs::read_to_string(&conflist).expect("read"), installed, "changed by the upgrade");
    // ...and so does terminating an agent with a file config (`--cni-cleanup auto`: only a
    // DaemonSet being deleted uninstalls), so pods cannot start outside the mesh meanwhile.
    let st = c.terminate_agent(1, scaled(Duration::from_secs(20))).expect("terminate");
    assert!(st.success(), "{st}");
    assert!(c.agent_log(1).contains("enrollment and the CNI plugin stay for the next agent"));
    assert_eq!(std::fs::read_to_string(&conflist).expect("read"), installed, "a restart removed the plugin");

    // An enrolled pod, and a plain one to talk to.
    c.start_agent_with(1, &["--cni-cleanup", "always"]).expect("the last agent");
    let app = c.add_pod(1, "mesh", "app").expect("app");
    let other = c.add_pod(1, "plain", "other").expect("other");
    let p = sluice_e2e::probe::Probe::new(env!("CARGO_BIN_EXE_sl-probe"));
    p.serve(&c, &other, &[8080]).expect("serve");
    let to_other = std::net::SocketAddr::new(other.ipv4, 8080);
    assert!(p.client(&c, &app, to_other, 4096, 0).expect("meshed").ok);
    let redirected = c
        .metric(1, "sluice_redirect_decisions_total", &[("decision", "outbound_redirected")])
        .expect("metrics");
    assert!(redirected > 0.0, "the app's traffic is captured while installed");

    // Uninstall: an agent told to clean up leaves the primary's file byte for byte, releases the
    // pods and removes its pins, so the node keeps working without sluice.
    let st = c.terminate_agent(1, scaled(Duration::from_secs(20))).expect("exits");
    assert!(st.success(), "{st}");
    assert_eq!(
        std::fs::read_to_string(&conflist).expect("read"),
        original,
        "uninstall did not restore the file"
    );
    assert!(!plugin.exists(), "the plugin binary is left behind");
    let log = c.agent_log(1);
    assert!(log.contains("uninstalled: removed the CNI plugin from the node"), "{log}");
    assert!(log.contains("uninstalled: released every pod"), "{log}");
    assert!(!c.node_bpffs(1).exists(), "pins left in {}", c.node_bpffs(1).display());
    // With no agent at all, the formerly enrolled pod talks directly (nothing captures it).
    let r = p.client(&c, &app, to_other, 4096, 0).expect("after uninstall");
    assert!(r.ok, "the node does not work after uninstall: {}", r.error);
}

#[test]
fn pods_running_before_the_install_are_enrolled_without_a_restart() {
    if !require_root("pods_running_before_the_install_are_enrolled_without_a_restart") {
        return;
    }
    use sluice_e2e::{cluster::PodSpec, probe::Probe};
    use std::net::SocketAddr;
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n")
        .expect("config");
    // Node 1's pods start before sluice is there: the runtime's chain has no sluice-cni.
    let old = c.add_pod_spec(1, PodSpec::new("mesh", "old").before_sluice()).expect("old pod");
    let p = Probe::new(env!("CARGO_BIN_EXE_sl-probe"));
    p.serve(&c, &old, &[8080]).expect("old pod serves");
    let outsider = c.add_pod_spec(2, PodSpec::new("plain", "outsider").before_sluice()).expect("outsider");
    let to_old = SocketAddr::new(old.ipv4, 8080);
    let plain = p.client(&c, &outsider, to_old, 4096, 0).expect("before install");
    assert!(plain.ok, "{}", plain.error);

    // sluice is installed (agents start), then the namespace is enabled: the running pod is found
    // in its network namespace by its addresses and enrolled, with no restart and no CNI call.
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    c.write_config(
        "namespaces.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n",
    )
    .expect("label the namespace");
    wait_for("the agent enrolls the running pod", || {
        c.agent_get(1, "/debug/pods").is_ok_and(|s| s.contains("\"old\"") && s.contains("\"enrolled\": true"))
    });
    assert!(
        c.agent_log(1).contains("found a pod that ran before sluice; enrolling it"),
        "{}",
        c.agent_log(1)
    );
    // Its inbound traffic now goes through the agent (sk_lookup steering): plaintext from outside
    // the mesh arrives through the capture listener and is counted as inbound.
    let opened = |c: &Cluster| {
        c.metric(
            1,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), ("destination_workload", "old")],
        )
        .expect("metrics")
    };
    let before = opened(&c);
    let r = p.client(&c, &outsider, to_old, 4096, 0).expect("after install");
    assert!(r.ok, "{}", r.error);
    assert_eq!(opened(&c), before + 1.0, "the running pod's inbound traffic is not captured");
    // The same server process (never restarted) now also gets mTLS from a mesh pod.
    let client = c.add_pod(2, "mesh", "client").expect("mesh client");
    let r = p.client(&c, &client, to_old, 64 * 1024, 0).expect("mesh to old");
    assert!(r.ok, "{}", r.error);
    assert_eq!(opened(&c), before + 2.0);
}
