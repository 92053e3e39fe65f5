//! The kernel programs' decision log (docs/redirection.md, "Why wasn't my pod's traffic captured?"):
//! with `--log-level ...,kernel=debug` the agent's log names each hook decision by its label, for a
//! captured connection and for one from a pod outside the mesh; with the default filter (the
//! harness runs `info,sluice=debug`) the programs are loaded without it and no such line appears.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sluice_e2e::{Cluster, cluster::scaled, probe::Probe, require_root};

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n";

/// The agent's log written after byte `from`.
fn log_since(c: &Cluster, from: usize) -> String {
    c.agent_log(1).get(from..).unwrap_or_default().to_string()
}

/// Waits until a line of the agent's log after `from` contains every part of one of `wanted`'s
/// entries, for each entry; returns the log on time-out for the assertion's message.
fn wait_lines(c: &Cluster, from: usize, wanted: &[&[String]]) -> Result<(), String> {
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    loop {
        let log = log_since(c, from);
        let found = |parts: &&[String]| log.lines().any(|l| parts.iter().all(|p| l.contains(p.as_str())));
        if wanted.iter().all(found) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(log);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_kernel_decision_log_names_captured_and_not_enrolled_connections_only_when_on() {
    if !require_root("the_kernel_decision_log_names_captured_and_not_enrolled_connections_only_when_on") {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent_with(1, &["--log-level", "info,sluice=debug,kernel=debug"]).expect("agent, log on");
    let client = c.add_pod(1, "mesh", "client").expect("client pod");
    let outsider = c.add_pod(1, "plain", "outsider").expect("outsider pod");
    let server = c.add_pod(1, "mesh", "server").expect("server pod");
    let p = Probe::new(env!("CARGO_BIN_EXE_sl-probe"));
    p.serve(&c, &server, &[8080]).expect("server");
    let dst = SocketAddr::new(server.ipv4, 8080);
    let target = [format!("dst={} ", dst.ip()), format!("dst_port={}", dst.port())];
    let line = |label: &str| -> Vec<String> {
        let mut parts = vec![format!(" kernel: decision={label} ")];
        parts.extend(target.iter().cloned());
        parts
    };

    let on = log_since(&c, 0);
    assert!(on.contains("decision_log=true"), "the agent did not switch the decision log on:\n{on}");
    let from = c.agent_log(1).len();
    for (name, pod) in [("enrolled client", &client), ("outsider", &outsider)] {
        let r = p.client(&c, pod, dst, 1024, 0).expect(name);
        assert!(r.ok, "{name}: {}", r.error);
    }
    let want_on = [line("outbound_redirected"), line("outbound_not_enrolled"), line("inbound_steered")];
    let want_on: Vec<&[String]> = want_on.iter().map(Vec::as_slice).collect();
    if let Err(log) = wait_lines(&c, from, &want_on) {
        panic!("the decision log lacks a line for {want_on:?}:\n{log}");
    }

    // Off (the default filter): a restart loads the programs without it.
    c.kill_agent(1).expect("kill the agent");
    let from = c.agent_log(1).len();
    c.start_agent(1).expect("agent, log off");
    let redirected = || {
        c.metric(1, "sluice_redirect_decisions_total", &[("decision", "outbound_redirected")])
            .expect("metrics")
    };
    let before = redirected();
    for (name, pod) in [("enrolled client", &client), ("outsider", &outsider)] {
        let r = p.client(&c, pod, dst, 1024, 0).expect(name);
        assert!(r.ok, "{name}, log off: {}", r.error);
    }
    assert!(redirected() > before, "the restarted agent's programs did not capture the client");
    // Give stray records the time the first half needed to show up.
    std::thread::sleep(scaled(Duration::from_millis(500)));
    let off = log_since(&c, from);
    assert!(off.contains("decision_log=false"), "the agent did not report the decision log off:\n{off}");
    let stray: Vec<&str> =
        off.lines().filter(|l| l.contains("decision=") || l.contains(" kernel: ")).collect();
    assert!(stray.is_empty(), "decision-log lines with the log off:\n{}", stray.join("\n"));
}
