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

/// The agent's eBPF programs: (verified instructions, run time ns, runs) summed over its program
/// fds, from `/proc/PID/fdinfo` (run time needs `kernel.bpf_stats_enabled=1`).
fn prog_stats(pid: u32) -> (u64, u64, u64) {
    let mut sum = (0, 0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        if !info.contains("prog_id:") {
            continue;
        }
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().parse::<u64>().unwrap_or(0)))
                .unwrap_or(0)
        };
        sum.0 += field("verified_insns:");
        sum.1 += field("run_time_ns:");
        sum.2 += field("run_cnt:");
    }
    sum
}

/// Sets `kernel.bpf_stats_enabled` for the measurement and puts the previous value back.
struct BpfStats(String);

impl BpfStats {
    fn on() -> BpfStats {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let was = std::fs::read_to_string(path).expect("bpf_stats_enabled").trim().to_string();
        std::fs::write(path, "1").expect("enable bpf stats");
        BpfStats(was)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Measures what the decision log costs (docs/performance.md): connection churn through a
/// captured same-node path with the log off and on, alternating, plus the kernel programs' own
/// time per run and their verified size. Not an assertion, a measurement:
/// `cargo test -p sluice-e2e --test klog -- --ignored --nocapture`; `SLUICE_KLOG_MODES` (default
/// `off,on,off,on,off,on`) picks the runs; `off` only works with an agent that predates the log.
#[test]
#[ignore = "a measurement; run it on purpose"]
fn measure_the_decision_log_cost() {
    if !require_root("measure_the_decision_log_cost") {
        return;
    }
    let modes = std::env::var("SLUICE_KLOG_MODES").unwrap_or_else(|_| "off,on,off,on,off,on".into());
    let secs: f64 = std::env::var("SLUICE_KLOG_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let c = Cluster::new(1).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent");
    let client = c.add_pod(1, "mesh", "client").expect("client pod");
    let server = c.add_pod(1, "mesh", "server").expect("server pod");
    let load = env!("CARGO_BIN_EXE_sl-load");
    let mut srv = c.pod_command(&server, load).expect("serve");
    srv.args(["serve", "7000", "7001", "1024"]).stdout(std::process::Stdio::piped());
    c.spawn_in_pod(&server, srv).expect("serve");
    std::thread::sleep(Duration::from_millis(500));
    let _stats = BpfStats::on();
    let dst = SocketAddr::new(server.ipv4, 7001).to_string();
    for mode in modes.split(',') {
        c.kill_agent(1).expect("kill");
        match mode {
            "on" => c.start_agent_with(1, &["--log-level", "info,sluice=debug,kernel=debug"]),
            _ => c.start_agent(1),
        }
        .expect("agent");
        // Let the restarted agent re-enroll the pods before measuring.
        std::thread::sleep(Duration::from_secs(1));
        let pid = c.agent_pid(1).expect("pid");
        let before = prog_stats(pid);
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let out = c
            .pod_command(&client, load)
            .expect("churn")
            .args(["churn", &dst, &secs.to_string(), "4"])
            .output()
            .expect("churn");
        let after = prog_stats(pid);
        let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (runs, ns) = (after.2 - before.2, after.1 - before.1);
        println!(
            "mode={mode} verified_insns={} prog_runs={runs} prog_ns_per_run={:.0} loadavg_before={} churn={report}",
            after.0,
            ns as f64 / runs.max(1) as f64,
            loadavg.split_whitespace().take(3).collect::<Vec<_>>().join("/"),
        );
    }
}
