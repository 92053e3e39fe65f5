//! Overload protection end to end (issue 17, item 3): a flood of held plaintext connections from
//! outside the mesh to one enrolled (PERMISSIVE) pod is refused beyond the per-source and per-pod
//! caps, the refusals are counted by reason, and meanwhile another pod's new connections, plaintext
//! and HBONE, keep succeeding with p99 < 100 ms and readiness keeps answering.
use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    time::Duration,
};

use sluice_e2e::{Cluster, Pod, cluster::scaled, probe::Probe, require_root, sys::in_netns};

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n";

/// The caps agent 1 runs with: small, so the flood is quick.
const PER_SOURCE: usize = 100;
const PER_POD: usize = 150;
/// Connections each flooding client opens and holds.
const FLOOD: usize = 300;

/// Opens `n` connections to `to` from inside `netns`, one after another; keeps the ones the
/// server greeted (carried by the agent) and counts the others (reset at once by the agent).
fn flood(netns: &Path, to: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    in_netns(netns, move || {
        let (mut held, mut refused) = (Vec::new(), 0);
        for _ in 0..n {
            let Ok(s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                refused += 1;
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            match BufReader::new(&s).read_line(&mut line) {
                Ok(n) if n > 0 && line.starts_with("PEER ") => held.push(s),
                _ => refused += 1,
            }
        }
        (held, refused)
    })
    .expect("flood in the client's netns")
}

/// `sl-load churn` from `pod` to `to` for 3 s, one worker: new connections, each a 1 KiB echo.
fn churn(c: &Cluster, pod: &Pod, to: SocketAddr) -> serde_json::Value {
    let mut cmd = c.pod_command(pod, env!("CARGO_BIN_EXE_sl-load")).expect("command");
    cmd.args(["churn", &to.to_string(), "3", "1"]);
    let out = cmd.stdin(Stdio::null()).output().expect("sl-load churn");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("sl-load output {stdout:?}: {e}; stderr {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// Starts `sl-load serve` in `pod` (echo on 7000, once on 7001) and waits until it listens.
fn serve_load(c: &Cluster, pod: &Pod) {
    let mut cmd = c.pod_command(pod, env!("CARGO_BIN_EXE_sl-load")).expect("command");
    cmd.args(["serve", "7000", "7001"]).stdout(Stdio::null());
    c.spawn_in_pod(pod, cmd).expect("sl-load serve");
    let addr = SocketAddr::from(([127, 0, 0, 1], 7000));
    let ok = in_netns(&pod.netns_path(), move || {
        sluice_e2e::wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_ok())
    })
    .expect("netns");
    assert!(ok, "sl-load did not listen in {}", pod.name);
}

fn failures(c: &Cluster, reason: &str) -> f64 {
    c.metric(1, "sluice_proxy_failures_total", &[("direction", "inbound"), ("reason", reason)])
        .expect("metrics")
}

fn p99_ms(report: &serde_json::Value) -> f64 {
    report["conn_p99_us"].as_f64().unwrap_or(f64::MAX) / 1000.0
}

#[test]
fn a_plaintext_flood_is_capped_per_source_and_per_pod_while_another_pod_stays_fast() {
    if !require_root("a_plaintext_flood_is_capped_per_source_and_per_pod_while_another_pod_stays_fast") {
        return;
    }
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    let (src, pod) = (PER_SOURCE.to_string(), PER_POD.to_string());
    c.start_agent_with(1, &["--max-conns-per-source", &src, "--max-conns-per-pod", &pod]).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let target = c.add_pod(1, "mesh", "flooded").expect("target");
    let other = c.add_pod(1, "mesh", "bystander").expect("other");
    let outsider = c.add_pod(2, "plain", "flooder-a").expect("outsider a");
    let outsider2 = c.add_pod(2, "plain", "flooder-b").expect("outsider b");
    let mesh_client = c.add_pod(2, "mesh", "mesh-client").expect("mesh client");
    Probe::new(env!("CARGO_BIN_EXE_sl-probe")).serve(&c, &target, &[8080]).expect("serve");
    serve_load(&c, &other);
    let to = SocketAddr::new(target.ipv4, 8080);

    // One client: held up to the per-source cap, the rest reset at once.
    let (held_a, refused_a) = flood(&outsider.netns_path(), to, FLOOD);
    assert_eq!((held_a.len(), refused_a), (PER_SOURCE, FLOOD - PER_SOURCE), "per-source cap");
    // A second client: held until the pod's cap, the rest reset.
    let (held_b, refused_b) = flood(&outsider2.netns_path(), to, FLOOD);
    assert_eq!(
        (held_b.len(), refused_b),
        (PER_POD - PER_SOURCE, FLOOD - (PER_POD - PER_SOURCE)),
        "per-pod cap"
    );
    assert_eq!(failures(&c, "overload_source") as usize, FLOOD - PER_SOURCE);
    assert_eq!(failures(&c, "overload_pod") as usize, FLOOD - (PER_POD - PER_SOURCE));
    assert!(c.agent_log(1).contains("connection refused: overload"), "no overload log line");
    // The pod is full for HBONE too: a mesh client's stream is refused (503, a reset for the
    // client) and counted by the destination agent.
    let r = Probe::new(env!("CARGO_BIN_EXE_sl-probe")).client(&c, &mesh_client, to, 100, 0).expect("client");
    assert!(!r.ok, "an HBONE stream to the full pod was carried");
    assert_eq!(failures(&c, "overload_pod") as usize, FLOOD - (PER_POD - PER_SOURCE) + 1);

    // While the flood is held: another pod's new connections, plaintext from the flooding client
    // itself (under its cap) and HBONE from a mesh pod on the other node.
    let plain = churn(&c, &outsider2, SocketAddr::new(other.ipv4, 7001));
    let hbone = churn(&c, &mesh_client, SocketAddr::new(other.ipv4, 7001));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("during the flood (loadavg {}): plaintext {plain}\nHBONE {hbone}", load.trim());
    for (name, r) in [("plaintext", &plain), ("HBONE", &hbone)] {
        assert_eq!(r["ok"], true, "{name}: {r}");
        assert_eq!(r["errors"], 0, "{name}: {r}");
        assert!(r["connections"].as_u64().unwrap_or(0) > 50, "{name}: too few connections: {r}");
        assert!(p99_ms(r) < 100.0, "{name}: p99 {} ms during the flood", p99_ms(r));
    }
    assert!(c.agent_get(1, "/healthz/ready").is_ok(), "readiness during the flood");
    let hbone_streams = c
        .metric(
            1,
            "istio_tcp_connections_opened_total",
            &[("destination_workload", "bystander"), ("connection_security_policy", "mutual_tls")],
        )
        .expect("metrics");
    assert!(hbone_streams > 50.0, "the HBONE churn did not reach the bystander over HBONE ({hbone_streams})");

    // Released on close: the first client gets in again.
    drop(held_a);
    let ok = sluice_e2e::wait_until(scaled(Duration::from_secs(5)), || {
        let (held, _) = flood(&outsider.netns_path(), to, 1);
        !held.is_empty()
    });
    assert!(ok, "the caps were not given back when the held connections closed");
    drop(held_b);
}

/// Descriptors the agent process holds now.
fn agent_fds(c: &Cluster, n: usize) -> usize {
    let pid = c.agent_pid(n).expect("agent pid");
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn plaintext_cannot_take_the_budget_share_kept_for_hbone() {
    if !require_root("plaintext_cannot_take_the_budget_share_kept_for_hbone") {
        return;
    }
    // A budget of 2,000 descriptors: plaintext may hold 1,000 of them (500 connections); the
    // per-source and per-pod caps are out of the way.
    const BUDGET: usize = 2000;
    const FLOOD: usize = 1500;
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent_with(
        1,
        &["--connection-budget", "2000", "--max-conns-per-source", "100000", "--max-conns-per-pod", "100000"],
    )
    .expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let target = c.add_pod(1, "mesh", "budget-flooded").expect("target");
    let other = c.add_pod(1, "mesh", "budget-bystander").expect("other");
    let outsider = c.add_pod(2, "plain", "budget-flooder").expect("outsider");
    let mesh_client = c.add_pod(2, "mesh", "budget-mesh-client").expect("mesh client");
    Probe::new(env!("CARGO_BIN_EXE_sl-probe")).serve(&c, &target, &[8080]).expect("serve");
    serve_load(&c, &other);
    let before = agent_fds(&c, 1);

    let (held, refused) = flood(&outsider.netns_path(), SocketAddr::new(target.ipv4, 8080), FLOOD);
    assert_eq!((held.len(), refused), (BUDGET / 4, FLOOD - BUDGET / 4), "plaintext share of the budget");
    assert_eq!(failures(&c, "overload_budget") as usize, FLOOD - BUDGET / 4);
    let during = agent_fds(&c, 1);
    eprintln!("agent descriptors: {before} before, {during} with {} plaintext connections held", held.len());
    assert!(during <= before + BUDGET / 2 + 64, "the agent holds {during} descriptors (before: {before})");

    // HBONE still has its share.
    let hbone = churn(&c, &mesh_client, SocketAddr::new(other.ipv4, 7001));
    eprintln!("HBONE during the flood: {hbone}");
    assert_eq!(hbone["errors"], 0, "{hbone}");
    assert!(p99_ms(&hbone) < 100.0, "HBONE p99 {} ms during the flood", p99_ms(&hbone));
    let used = c.metric(1, "sluice_connection_budget_used_fds", &[]).expect("metrics");
    assert!(used >= (BUDGET / 2) as f64, "sluice_connection_budget_used_fds = {used}");
    drop(held);
}

#[test]
fn idle_connections_to_the_metrics_port_are_closed_and_readiness_answers() {
    if !require_root("idle_connections_to_the_metrics_port_are_closed_and_readiness_answers") {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent 1");
    let before = agent_fds(&c, 1);
    // 200 connections to 15020 that never send a byte (as in the issue).
    let idle: Vec<TcpStream> = in_netns(&c.node_netns(1), || {
        (0..200).map(|_| TcpStream::connect(("127.0.0.1", 15020)).expect("connect")).collect()
    })
    .expect("netns");
    std::thread::sleep(Duration::from_millis(500));
    let held = agent_fds(&c, 1);
    assert!(
        held <= before + 64 + 8,
        "the agent holds {held} descriptors for 200 idle connections (before {before})"
    );
    assert!(c.agent_get(1, "/healthz/ready").is_ok(), "readiness with 200 idle connections");
    // All closed by the agent after the 10 s idle timeout.
    let is_closed = |s: &TcpStream| {
        let _ = s.set_nonblocking(true);
        let mut r = s;
        match std::io::Read::read(&mut r, &mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    let t = std::time::Instant::now();
    let closed = sluice_e2e::wait_until(scaled(Duration::from_secs(15)), || idle.iter().all(is_closed));
    eprintln!("all 200 closed after {:?}", t.elapsed());
    assert!(closed, "idle connections to 15020 were not closed");
    let evicted = c
        .metric(
            1,
            "sluice_admin_connections_closed_total",
            &[("listener", "metrics"), ("reason", "evicted_idle")],
        )
        .expect("metrics");
    let timed_out = c
        .metric(
            1,
            "sluice_admin_connections_closed_total",
            &[("listener", "metrics"), ("reason", "idle_timeout")],
        )
        .expect("metrics");
    eprintln!(
        "agent descriptors: {before} before, {held} with 200 idle connections; evicted {evicted}, timed out {timed_out}"
    );
    // Each of the 200 was either evicted for a newer one or timed out (the readiness and metrics
    // requests' own connections closed normally).
    assert!(evicted >= 136.0 && evicted + timed_out >= 200.0, "evicted {evicted}, timed out {timed_out}");
}

#[test]
fn silent_connections_to_15008_take_only_the_handshake_share_and_established_hbone_goes_on() {
    if !require_root(
        "silent_connections_to_15008_take_only_the_handshake_share_and_established_hbone_goes_on",
    ) {
        return;
    }
    // A budget of 400 descriptors: connections to 15008 whose TLS handshake has not verified the
    // peer may hold a quarter of it (100, one descriptor each), whoever opens them.
    const BUDGET: usize = 400;
    const SILENT: usize = 420;
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent_with(1, &["--connection-budget", "400"]).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let target = c.add_pod(1, "mesh", "pretls-flooded").expect("target");
    let other = c.add_pod(1, "mesh", "pretls-bystander").expect("other");
    let outsider = c.add_pod(2, "plain", "pretls-flooder").expect("outsider");
    let mesh_client = c.add_pod(2, "mesh", "pretls-mesh-client").expect("mesh client");
    serve_load(&c, &other);
    // The mesh client's agent has an HBONE connection to the bystander before the flood.
    let before = churn(&c, &mesh_client, SocketAddr::new(other.ipv4, 7001));
    assert_eq!(before["errors"], 0, "{before}");

    // Plain TCP to the target's HBONE port that never starts TLS: held until the handshake
    // timeout (10 s) if the agent keeps it.
    let to = SocketAddr::new(target.ipv4, 15008);
    let silent = in_netns(&outsider.netns_path(), move || {
        (0..SILENT)
            .filter_map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok())
            .collect::<Vec<_>>()
    })
    .expect("netns");
    // Every connection the agent accepted beyond the handshake share is reset at once (some of
    // the 420 may fail or time out in a full listen queue instead and never reach it: a loaded CI
    // machine made 246); enough must get past the share for the test to mean something.
    let beyond = silent.len().saturating_sub(BUDGET / 4);
    assert!(beyond >= 50, "only {} silent connections were made", silent.len());
    let refused = sluice_e2e::wait_until(scaled(Duration::from_secs(3)), || {
        failures(&c, "overload_budget") as usize >= beyond
    });
    // The gauge is refreshed every second: the handshake share, the pooled HBONE connection.
    let used = || c.metric(1, "sluice_connection_budget_used_fds", &[]).unwrap_or(0.0);
    sluice_e2e::wait_until(scaled(Duration::from_secs(3)), || used() >= (BUDGET / 4) as f64);
    let used = used();
    let r = churn(&c, &mesh_client, SocketAddr::new(other.ipv4, 7001));
    let budget = failures(&c, "overload_budget");
    eprintln!(
        "{} silent connections to 15008: budget used {used}, refused {budget}; HBONE churn {r}",
        silent.len()
    );
    assert!(refused, "silent connections beyond the handshake share were not refused ({budget})");
    assert!(budget as usize <= SILENT - BUDGET / 4, "more refused than beyond the handshake share: {budget}");
    assert!(
        ((BUDGET / 4) as f64..=(BUDGET / 4 + 8) as f64).contains(&used),
        "sluice_connection_budget_used_fds = {used}"
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["errors"], 0, "silent connections to 15008 starved established HBONE: {r}");
    assert!(r["connections"].as_u64().unwrap_or(0) > 50, "too few connections: {r}");
    drop(silent);
}

#[test]
fn one_mesh_pods_outbound_connections_are_capped_per_pod_and_another_pod_keeps_working() {
    if !require_root("one_mesh_pods_outbound_connections_are_capped_per_pod_and_another_pod_keeps_working") {
        return;
    }
    // A budget of 400 descriptors (200 outbound connections) and 50 connections per pod: without
    // the per-pod cap on outbound, one pod's 220 held connections would take the whole budget.
    const PER_POD: usize = 50;
    const HELD: usize = 220;
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent_with(1, &["--connection-budget", "400", "--max-conns-per-pod", "50"]).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let hog = c.add_pod(1, "mesh", "outbound-hog").expect("hog");
    let other = c.add_pod(1, "mesh", "outbound-bystander").expect("other");
    let mesh_client = c.add_pod(2, "mesh", "outbound-mesh-client").expect("mesh client");
    serve_load(&c, &other);
    // A process in the hog's cgroup holds captured outbound connections to the bystander.
    let script = format!(
        "import socket,time\nh=[]\nfor i in range({HELD}):\n  try:\n    h.append(socket.create_connection(('{}',7000),2))\n  except Exception: pass\nprint(len(h),flush=True)\ntime.sleep(15)\n",
        other.ipv4
    );
    let mut cmd = c.pod_command(&hog, "python3").expect("command");
    cmd.args(["-c", &script]).stdout(Stdio::null());
    c.spawn_in_pod(&hog, cmd).expect("python3 in the hog");
    let outbound_pod = || {
        c.metric(1, "sluice_proxy_failures_total", &[("direction", "outbound"), ("reason", "overload_pod")])
            .unwrap_or(0.0) as usize
    };
    let capped = sluice_e2e::wait_until(scaled(Duration::from_secs(5)), || outbound_pod() >= HELD - PER_POD);
    // The gauge is refreshed every second: the hog's 50 connections, 2 descriptors each.
    let used = || c.metric(1, "sluice_connection_budget_used_fds", &[]).unwrap_or(0.0);
    sluice_e2e::wait_until(scaled(Duration::from_secs(3)), || used() >= (2 * PER_POD) as f64);
    let used = used();
    let r = churn(&c, &mesh_client, SocketAddr::new(other.ipv4, 7001));
    eprintln!(
        "hog: {} outbound refused (overload_pod), budget used {used}; HBONE churn to the bystander {r}",
        outbound_pod()
    );
    assert!(capped, "the hog's outbound connections were not capped per pod ({})", outbound_pod());
    assert_eq!(outbound_pod(), HELD - PER_POD, "the hog holds exactly its pod's cap");
    assert!(
        ((2 * PER_POD) as f64..=(2 * PER_POD + 8) as f64).contains(&used),
        "the hog holds more than its pod's cap: sluice_connection_budget_used_fds = {used}"
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["errors"], 0, "one mesh pod's outbound connections starved another pod: {r}");
    assert!(r["connections"].as_u64().unwrap_or(0) > 50, "too few connections: {r}");
}
