//! Agent upgrade end to end: a second agent process takes the pods (and their in-pod listening
//! sockets) over from the running one while traffic flows, the old one drains; and a kill -9 in
//! the middle of a handover leaves every enrolled pod captured (fail closed) until an agent
//! re-adopts it.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_e2e::{Cluster, Pod, cluster::scaled, probe::Probe, require_root, wait_until};

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_sl-probe"))
}

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n";

/// Two nodes; an enrolled client on node 1 and an enrolled server on node 2, both serving 8080.
struct World {
    c: Cluster,
    client: Pod,
    server: Pod,
}

fn world(drain: &str) -> World {
    let c = Cluster::new(2).expect("cluster");
    c.agent_args.lock().expect("args").extend(["--drain-timeout".to_string(), drain.to_string()]);
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let server = c.add_pod(2, "mesh", "server").expect("server");
    let p = probe();
    p.serve(&c, &client, &[8080]).expect("client serves");
    p.serve(&c, &server, &[8080]).expect("server serves");
    World { c, client, server }
}

/// New connections from `from` to `to`, one after another until `stop`: (succeeded, failures).
fn churn(
    c: Arc<Cluster>,
    from: Pod,
    to: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let p = probe();
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match p.client(&c, &from, to, 2048, 0) {
                Ok(r) if r.ok => ok += 1,
                Ok(r) => failed.push(r.error),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    })
}

#[test]
fn upgrade_hands_over_with_no_failed_connection_and_drains_established_ones() {
    if !require_root("upgrade_hands_over_with_no_failed_connection_and_drains_established_ones") {
        return;
    }
    let World { c, client, server } = world("15s");
    let c = Arc::new(c);
    let p = probe();
    let dst = SocketAddr::new(server.ipv4, 8080);
    assert!(p.client(&c, &client, dst, 4096, 0).expect("before").ok);

    // A long connection that spans both handovers and ends within the drain deadline.
    let hold = scaled(Duration::from_secs(8));
    let long = p.client_bg(&c, &client, dst, 512 * 1024, hold.as_millis() as u64).expect("long");
    let stop = Arc::new(AtomicBool::new(false));
    let load = churn(c.clone(), client.clone(), dst, stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    // The server's node first (inbound HBONE), then the client's (outbound capture).
    let t0 = Instant::now();
    let mut old2 = c.upgrade_agent(2, &[]).expect("upgrade node 2");
    let up2 = t0.elapsed();
    let t1 = Instant::now();
    let mut old1 = c.upgrade_agent(1, &[]).expect("upgrade node 1");
    let up1 = t1.elapsed();
    // The readiness probe (`sluice ready-check`, run in each agent's own cgroup as in its
    // container) passes for the new agents and no longer for the old ones.
    for (n, old) in [(1, &old1), (2, &old2)] {
        let new = c.agent_pid(n).expect("new agent");
        assert!(c.ready_check(n, new).expect("probe"), "node{n}: the new agent is not ready");
        assert!(!c.ready_check(n, old.id()).expect("probe"), "node{n}: the old agent still looks ready");
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    // Terminated as the DaemonSet controller does once the new pods are ready: each old agent
    // exits when its last carried connection ends (the long one), not at once and not at the
    // deadline.
    let (st1, took1) = old1.terminate(scaled(Duration::from_secs(30))).expect("old agent 1 exits");
    let (st2, _) = old2.terminate(scaled(Duration::from_secs(30))).expect("old agent 2 exits");
    assert!(st1.success() && st2.success(), "old agents exit cleanly: {st1} {st2}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.join().expect("churn thread");
    let long = long.join().expect("long thread").expect("long report");

    eprintln!(
        "upgrade: {ok} new connections, {} failed; the long connection: {}; old agent 1 exited {took1:?} after SIGTERM; \
         new agent start to serving: node2 {up2:?}, node1 {up1:?}",
        failed.len(),
        long.ok
    );
    let log1 = c.agent_log(1);
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed during the upgrade: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 10, "too little traffic during the upgrade to prove anything: {ok} connections");
    assert!(long.ok, "the established connection did not survive the upgrade byte-exact: {}", long.error);
    assert!(
        took1 < hold + scaled(Duration::from_secs(5)),
        "old agent 1 took {took1:?} to drain after SIGTERM (the long connection holds {hold:?}) after {:?}",
        started.elapsed()
    );
    for (n, log) in [(1, &log1), (2, &c.agent_log(2))] {
        assert!(log.contains("took over from the running agent"), "node{n}: {log}");
        assert!(log.contains("pods handed over; no longer accepting"), "node{n}: {log}");
        assert!(log.contains("drained; exiting left=0"), "node{n}: the old agent cut connections: {log}");
    }
    // The new agents carry everything now: new connections are theirs, and both pods are still
    // enrolled (nothing was released by the old agents).
    let before = c
        .metric(
            1,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source"), ("source_workload", "client")],
        )
        .expect("metrics");
    assert!(p.client(&c, &client, dst, 64 * 1024, 0).expect("after").ok);
    let after = c
        .metric(
            1,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source"), ("source_workload", "client")],
        )
        .expect("metrics");
    assert!(after > before, "the new agent on node 1 does not carry new connections");
    for n in [1, 2] {
        let pods = c.agent_get(n, "/debug/pods").expect("pods");
        assert!(pods.contains("\"enrolled\": true"), "node{n}: {pods}");
    }
}

#[test]
fn kill_9_mid_handover_stays_fail_closed_and_the_next_agent_readopts() {
    if !require_root("kill_9_mid_handover_stays_fail_closed_and_the_next_agent_readopts") {
        return;
    }
    let World { c, client, server } = world("5s");
    let p = probe();
    let dst = SocketAddr::new(server.ipv4, 8080);
    let outsider = c.add_pod(2, "plain", "outsider").expect("outsider");
    let inbound = SocketAddr::new(client.ipv4, 8080);

    // A new agent on node 1 that stops in the middle of the handover: it has enrolled the pods
    // with the sockets it received, the old agent still holds them and has not been told.
    let mut new = c.spawn_agent(1, &["--handover-pause", "120s"]).expect("new agent");
    let paused = wait_until(Duration::from_secs(20), || {
        c.agent_log(1).contains("pausing in the middle of the handover")
    });
    assert!(paused, "the new agent never reached the pause:\n{}", c.agent_log(1));
    let r = p.client(&c, &client, dst, 4096, 0).expect("mid-handover");
    assert!(r.ok, "traffic mid-handover: {}", r.error);
    // Its readiness probe fails: the admin port is still the old agent's (an HTTP probe on the
    // shared host port would have passed).
    assert!(!c.ready_check(1, new.id()).expect("probe"), "the new agent looks ready before it took over");
    assert!(
        c.ready_check(1, c.agent_pid(1).expect("old agent")).expect("probe"),
        "the old agent is not ready"
    );

    // kill -9 the new agent: the old one notices and keeps serving.
    new.kill().expect("kill -9 the new agent");
    let noticed = wait_until(Duration::from_secs(10), || {
        c.agent_log(1).contains("handover aborted; this agent keeps serving its pods")
    });
    assert!(noticed, "the old agent did not notice:\n{}", c.agent_log(1));
    for _ in 0..3 {
        let r = p.client(&c, &client, dst, 4096, 0).expect("after the new one died");
        assert!(r.ok, "the old agent stopped serving: {}", r.error);
    }
    // It still owns the CNI socket too: the new agent publishes its own only after the handover.
    let late = c.add_pod(1, "mesh", "late").expect("a pod created after the failed handover is enrolled");
    let r = p.client(&c, &late, dst, 4096, 0).expect("late pod");
    assert!(r.ok, "late pod: {}", r.error);

    // kill -9 the old agent too: no agent at all. Enrolled pods stay captured and fail closed:
    // outbound is refused rather than sent around the mesh, inbound plaintext never reaches the
    // application.
    c.kill_agent(1).expect("kill -9 the old agent");
    // Both are refused at once with a reset (docs/redirection.md), not left to time out.
    let down = p.client(&c, &client, dst, 4096, 0).expect("outbound, no agent");
    assert!(!down.ok, "an outbound connection bypassed the mesh with no agent");
    assert!(down.error.contains("refused"), "outbound with no agent: {}", down.error);
    let down = p.client(&c, &outsider, inbound, 4096, 0).expect("inbound, no agent");
    assert!(!down.ok, "an inbound connection reached the app with no agent");
    assert!(down.error.contains("refused"), "inbound with no agent: {}", down.error);

    // The next agent re-adopts both pods from the registry.
    c.start_agent(1).expect("next agent");
    let r = p.client(&c, &client, dst, 64 * 1024, 0).expect("outbound after");
    assert!(r.ok, "outbound after re-adoption: {}", r.error);
    let r = p.client(&c, &outsider, inbound, 4096, 0).expect("inbound after");
    assert!(r.ok, "inbound after re-adoption: {}", r.error);
    let pods = c.agent_get(1, "/debug/pods").expect("pods");
    assert!(pods.contains("\"enrolled\": true"), "{pods}");
}
