//! Kernel redirection end to end: real agents, real CNI plugins, real sockets, real eBPF hooks.
use std::net::{IpAddr, SocketAddr};

use sluice_e2e::{
    Cluster, Pod,
    cluster::{PodSpec, scaled},
    probe::Probe,
    require_root,
};

const MIB: usize = 1 << 20;

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_sl-probe"))
}

fn namespaces(mesh_labelled: bool) -> String {
    let label = if mesh_labelled { "\n  labels:\n    istio.io/dataplane-mode: ambient" } else { "" };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh{label}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n"
    )
}

/// Two nodes with agents, the mesh namespace labelled, an enrolled client on node 1, enrolled
/// servers on both nodes.
struct World {
    c: Cluster,
    client: Pod,
    near: Pod,
    far: Pod,
}

fn world() -> World {
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", &namespaces(true)).expect("config");
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let client = c.add_pod(1, "mesh", "client").expect("client pod");
    let near = c.add_pod(1, "mesh", "near").expect("near pod");
    let far = c.add_pod(2, "mesh", "far").expect("far pod");
    let p = probe();
    p.serve(&c, &near, &[8080, 9090]).expect("near server");
    p.serve(&c, &far, &[8080, 9090]).expect("far server");
    World { c, client, near, far }
}

fn redirected(c: &Cluster, node: usize) -> f64 {
    c.metric(node, "sluice_redirect_decisions_total", &[("decision", "outbound_redirected")])
        .expect("metrics")
}

fn opened_by(c: &Cluster, node: usize, workload: &str, dst: SocketAddr) -> f64 {
    let dst = dst.to_string();
    c.metric(
        node,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("source_workload", workload),
            ("destination_service", &dst),
            ("response_flags", "-"),
        ],
    )
    .expect("metrics")
}

#[test]
fn outbound_tcp_is_captured_byte_exact_with_real_peer() {
    if !require_root("outbound_tcp_is_captured_byte_exact_with_real_peer") {
        return;
    }
    let w = world();
    let p = probe();
    let v6 = |pod: &Pod| pod.ipv6.expect("pod has IPv6");
    let rows: Vec<(&str, IpAddr, u16)> = vec![
        ("cross-node v4 8080", w.far.ipv4, 8080),
        ("cross-node v4 9090", w.far.ipv4, 9090),
        ("cross-node v6 8080", v6(&w.far), 8080),
        ("same-node v4 8080", w.near.ipv4, 8080),
        ("same-node v6 9090", v6(&w.near), 9090),
    ];
    for (name, ip, port) in rows {
        let dst = SocketAddr::new(ip, port);
        let before = redirected(&w.c, 1);
        let opened_before = opened_by(&w.c, 1, "client", dst);
        let r = p.client(&w.c, &w.client, dst, MIB, 0).expect(name);
        assert!(r.ok, "{name}: {}", r.error);
        assert_eq!(r.bytes as usize, MIB, "{name}");
        assert_eq!(r.peer, dst.to_string(), "{name}: getpeername must show the real peer");
        let client_ip = if ip.is_ipv4() { w.client.ipv4 } else { v6(&w.client) };
        assert_eq!(ip_of(&r.server_saw), client_ip, "{name}: the server must see the client pod's address");
        assert!(redirected(&w.c, 1) > before, "{name}: the kernel did not redirect the connect");
        assert_eq!(
            opened_by(&w.c, 1, "client", dst),
            opened_before + 1.0,
            "{name}: the agent did not report it"
        );
    }
}

fn ip_of(addr: &str) -> IpAddr {
    addr.parse::<SocketAddr>().map(|a| a.ip()).unwrap_or_else(|e| panic!("{addr:?}: {e}"))
}

fn steered(c: &Cluster, node: usize) -> f64 {
    c.metric(node, "sluice_redirect_decisions_total", &[("decision", "inbound_steered")]).expect("metrics")
}

fn inbound_opened(c: &Cluster, node: usize, workload: &str) -> f64 {
    c.metric(
        node,
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination"), ("destination_workload", workload)],
    )
    .expect("metrics")
}

#[test]
fn inbound_tcp_from_outside_the_mesh_is_captured_on_any_port() {
    if !require_root("inbound_tcp_from_outside_the_mesh_is_captured_on_any_port") {
        return;
    }
    let w = world();
    let p = probe();
    let outsider = w.c.add_pod(1, "plain", "outsider").expect("outsider pod");
    let rows: Vec<(&str, IpAddr, u16)> = vec![
        ("v4 8080", w.far.ipv4, 8080),
        ("v4 9090", w.far.ipv4, 9090),
        ("v6 9090", w.far.ipv6.expect("v6"), 9090),
    ];
    for (name, ip, port) in rows {
        let dst = SocketAddr::new(ip, port);
        let (s0, o0, r0) = (steered(&w.c, 2), inbound_opened(&w.c, 2, "far"), redirected(&w.c, 1));
        let r = p.client(&w.c, &outsider, dst, MIB, 0).expect(name);
        assert!(r.ok, "{name}: {}", r.error);
        assert_eq!(r.peer, dst.to_string(), "{name}");
        // The source port differs: the client's 4-tuple is held by the agent's accepted socket.
        assert_eq!(ip_of(&r.server_saw), ip_of(&r.local), "{name}: the app must see the real client address");
        assert_eq!(redirected(&w.c, 1), r0, "{name}: a pod outside the mesh must not be captured outbound");
        assert!(steered(&w.c, 2) > s0, "{name}: sk_lookup did not steer the connection");
        assert_eq!(
            inbound_opened(&w.c, 2, "far"),
            o0 + 1.0,
            "{name}: the destination agent did not report it"
        );
    }
}

#[test]
fn pods_outside_the_mesh_and_opted_out_pods_are_untouched() {
    if !require_root("pods_outside_the_mesh_and_opted_out_pods_are_untouched") {
        return;
    }
    let w = world();
    let p = probe();
    let plain_client = w.c.add_pod(1, "plain", "plain-client").expect("pod");
    let plain_server = w.c.add_pod(2, "plain", "plain-server").expect("pod");
    let optout =
        w.c.add_pod_spec(1, PodSpec::new("mesh", "optout").label("istio.io/dataplane-mode", "none"))
            .expect("pod");
    p.serve(&w.c, &plain_server, &[8080]).expect("server");
    p.serve(&w.c, &optout, &[8080]).expect("server");
    let status = w.c.agent_get(1, "/debug/pods").expect("status");
    let pods: serde_json::Value = serde_json::from_str(&status).expect("json");
    let enrolled = |name: &str| {
        pods.as_array().expect("array").iter().find(|p| p["name"] == name).map(|p| p["enrolled"] == true)
    };
    assert_eq!(enrolled("optout"), Some(false), "{status}");
    assert_eq!(enrolled("plain-client"), Some(false), "{status}");
    assert_eq!(enrolled("client"), Some(true), "{status}");
    let rows: Vec<(&str, &Pod, &Pod)> = vec![
        ("plain -> plain", &plain_client, &plain_server),
        ("opted-out -> plain", &optout, &plain_server),
        ("plain -> opted-out", &plain_client, &optout),
    ];
    for (name, from, to) in rows {
        let dst = SocketAddr::new(to.ipv4, 8080);
        let before: Vec<f64> = (1..=2).flat_map(|n| [redirected(&w.c, n), steered(&w.c, n)]).collect();
        let r = p.client(&w.c, from, dst, 64 * 1024, 0).expect(name);
        assert!(r.ok, "{name}: {}", r.error);
        assert_eq!(r.server_saw, r.local, "{name}: the server must see the client's own address");
        let after: Vec<f64> = (1..=2).flat_map(|n| [redirected(&w.c, n), steered(&w.c, n)]).collect();
        assert_eq!(before, after, "{name}: no kernel program may act on pods outside the mesh");
    }
}

#[test]
fn label_removal_stops_capture_quickly_and_keeps_established_connections() {
    if !require_root("label_removal_stops_capture_quickly_and_keeps_established_connections") {
        return;
    }
    let w = world();
    let p = probe();
    let dst = SocketAddr::new(w.far.ipv4, 8080);
    // A captured connection that stays open across both label changes (8 s of trickled bytes),
    // established (counted by the agent) before the first change.
    let opened = opened_by(&w.c, 1, "client", dst);
    let long = p.client_bg(&w.c, &w.client, dst, 256 * 1024, 8000).expect("long client");
    let labels = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service", &*dst.to_string()),
        ("response_flags", "-"),
    ];
    w.c.wait_metric_above(1, "istio_tcp_connections_opened_total", &labels, opened).expect("long connection");

    w.c.write_config("namespaces.yaml", &namespaces(false)).expect("unlabel");
    let released = wait_for(|| {
        let r0 = redirected(&w.c, 1);
        let r = p.client(&w.c, &w.client, dst, 1024, 0).expect("client");
        r.ok && redirected(&w.c, 1) == r0
    });
    let budget = scaled(std::time::Duration::from_secs(2)).as_secs_f64();
    assert!(
        released.is_some_and(|t| t <= budget),
        "capture still on {released:?} s after removing the label"
    );

    w.c.write_config("namespaces.yaml", &namespaces(true)).expect("relabel");
    let resumed = wait_for(|| {
        let r0 = redirected(&w.c, 1);
        let r = p.client(&w.c, &w.client, dst, 1024, 0).expect("client");
        r.ok && redirected(&w.c, 1) > r0
    });
    assert!(resumed.is_some_and(|t| t <= budget), "capture not back {resumed:?} s after re-adding the label");

    let r = long.join().expect("thread").expect("report");
    assert!(r.ok, "the established connection broke: {}", r.error);
}

/// Polls `f` every 100 ms for up to 5 s (scaled); the seconds it took to become true.
fn wait_for(mut f: impl FnMut() -> bool) -> Option<f64> {
    let start = std::time::Instant::now();
    while start.elapsed() < scaled(std::time::Duration::from_secs(5)) {
        if f() {
            return Some(start.elapsed().as_secs_f64());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

#[test]
fn killed_agent_restarts_and_readopts_its_pods() {
    if !require_root("killed_agent_restarts_and_readopts_its_pods") {
        return;
    }
    let w = world();
    let p = probe();
    let dst = SocketAddr::new(w.far.ipv4, 9090);
    assert!(p.client(&w.c, &w.client, dst, 4096, 0).expect("before").ok);

    w.c.kill_agent(1).expect("kill -9");
    // While the agent is down, enrolled pods fail closed: the connect is still redirected to the
    // (now absent) capture listener and refused, never sent around the mesh.
    let down = p.client(&w.c, &w.client, dst, 4096, 0).expect("during");
    assert!(!down.ok, "a connection bypassed the mesh while the agent was down");

    w.c.start_agent(1).expect("restart");
    let before = redirected(&w.c, 1);
    let r = p.client(&w.c, &w.client, dst, MIB, 0).expect("after");
    assert!(r.ok, "after restart: {}", r.error);
    assert_eq!(r.peer, dst.to_string());
    assert!(redirected(&w.c, 1) > before, "not captured after the restart");
    assert!(w.c.agent_log(1).contains("re-adopted pods from the registry pods=2"), "{}", w.c.agent_log(1));
    // Inbound to a pod of the restarted node is captured again too: plaintext from outside the
    // mesh through sk_lookup, and HBONE from a mesh pod on the other node.
    let outsider = w.c.add_pod(2, "plain", "outsider").expect("outsider");
    let (s0, o0) = (steered(&w.c, 1), inbound_opened(&w.c, 1, "near"));
    let r = p.client(&w.c, &outsider, SocketAddr::new(w.near.ipv4, 8080), 4096, 0).expect("inbound");
    assert!(r.ok, "plaintext inbound after restart: {}", r.error);
    assert!(steered(&w.c, 1) > s0, "sk_lookup steering is back");
    let r = p.client(&w.c, &w.far, SocketAddr::new(w.near.ipv4, 8080), 4096, 0).expect("hbone");
    assert!(r.ok, "HBONE inbound after restart: {}", r.error);
    assert_eq!(inbound_opened(&w.c, 1, "near"), o0 + 2.0);
}

#[test]
fn dual_stack_sockets_to_v4_mapped_addresses_are_captured() {
    if !require_root("dual_stack_sockets_to_v4_mapped_addresses_are_captured") {
        return;
    }
    let w = world();
    let mapped: IpAddr = format!("::ffff:{}", w.far.ipv4).parse().expect("mapped");
    let before = redirected(&w.c, 1);
    let r = probe().client(&w.c, &w.client, SocketAddr::new(mapped, 8080), 64 * 1024, 0).expect("client");
    assert!(r.ok, "{}", r.error);
    assert_eq!(r.peer, SocketAddr::new(w.far.ipv4, 8080).to_string(), "getpeername shows the real peer");
    assert!(redirected(&w.c, 1) > before);
}

#[test]
fn a_late_del_for_an_older_sandbox_keeps_the_pod_enrolled_and_unknown_pods_are_refused() {
    if !require_root("a_late_del_for_an_older_sandbox_keeps_the_pod_enrolled_and_unknown_pods_are_refused") {
        return;
    }
    let w = world();
    w.c.del_older_sandbox(&w.client).expect("late DEL");
    let status = w.c.agent_get(1, "/debug/pods").expect("status");
    assert!(status.contains("\"client\"") && status.contains("\"enrolled\": true"), "{status}");
    let before = redirected(&w.c, 1);
    assert!(probe().client(&w.c, &w.client, SocketAddr::new(w.far.ipv4, 8080), 4096, 0).expect("client").ok);
    assert!(redirected(&w.c, 1) > before, "the pod must still be captured after a stale DEL");

    // An ambient pod the agent has not seen in the config yet: ADD fails so the runtime retries.
    let spec = PodSpec { unpublished: true, ..PodSpec::new("mesh", "early") };
    let (_, res) = w.c.try_add_pod_spec(1, spec).expect("pod");
    let err = res.expect_err("ADD must fail for a pod unknown to the config");
    assert!(err.contains("\"code\":11") && err.contains("not in the mesh config"), "{err}");
}

#[test]
fn sluice_adds_no_iptables_or_nftables_rules() {
    if !require_root("sluice_adds_no_iptables_or_nftables_rules") {
        return;
    }
    let w = world();
    let p = probe();
    assert!(p.client(&w.c, &w.client, SocketAddr::new(w.far.ipv4, 8080), 4096, 0).expect("traffic").ok);
    let namespaces = [
        ("node1", w.c.node_netns(1)),
        ("node2", w.c.node_netns(2)),
        ("client", w.client.netns_path()),
        ("far", w.far.netns_path()),
    ];
    for (name, ns) in namespaces {
        let ipt = w.c.run_in_netns(&ns, "iptables-save", &[]).expect("iptables-save");
        let rules: Vec<String> = String::from_utf8_lossy(&ipt.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(str::to_string)
            .collect();
        assert!(rules.is_empty(), "{name}: iptables rules present: {rules:?}");
        let nft = w.c.run_in_netns(&ns, "nft", &["list", "ruleset"]).expect("nft");
        assert!(nft.status.success(), "{name}: nft failed: {}", String::from_utf8_lossy(&nft.stderr));
        let ruleset = String::from_utf8_lossy(&nft.stdout);
        assert!(!ruleset.contains("table"), "{name}: nftables ruleset present: {ruleset}");
    }
}

#[test]
fn cni_add_fails_while_the_agent_is_down_and_bad_invocations_do_not_disturb_it() {
    if !require_root("cni_add_fails_while_the_agent_is_down_and_bad_invocations_do_not_disturb_it") {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config("namespaces.yaml", &namespaces(true)).expect("config");
    let (_, res) = c.try_add_pod(1, "mesh", "early").expect("pod");
    let err = res.expect_err("ADD must fail without an agent");
    assert!(err.contains("\"code\":11") && err.contains("not reachable"), "{err}");

    c.start_agent(1).expect("agent");
    let pod = c.add_pod(1, "mesh", "web").expect("pod");
    let bad: Vec<(&str, serde_json::Value)> = vec![
        ("not chained", serde_json::json!({"type": "sluice-cni"})),
        (
            "wrong socket",
            serde_json::json!({"type": "sluice-cni", "agentSocket": "/nonexistent.sock", "prevResult": {"ips": []}}),
        ),
    ];
    for (name, conf) in bad {
        let e = c.cni(1, &pod, "ADD", conf, None).expect_err(name);
        let json_line = e.find('{').map_or("", |i| e[i..].lines().next().unwrap_or(""));
        let v: serde_json::Value = serde_json::from_str(json_line).unwrap_or_default();
        assert!(
            v["code"].as_u64().is_some() && v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {e}"
        );
    }
    assert!(c.agent_get(1, "/healthz/ready").expect("agent alive").starts_with("ready"));
    let st = c.agent_get(1, "/debug/pods").expect("status");
    assert!(st.contains("\"web\"") && st.contains("\"enrolled\": true"), "{st}");
    c.remove_pod(&pod).expect("DEL");
    let st = c.agent_get(1, "/debug/pods").expect("status");
    assert!(!st.contains("\"web\""), "DEL did not remove the pod: {st}");
}

/// Packets in a pcap file (records after the 24-byte global header, each with a 16-byte header).
fn pcap_packets(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut at = 24;
    while at + 16 <= raw.len() {
        let len = u32::from_le_bytes([raw[at + 8], raw[at + 9], raw[at + 10], raw[at + 11]]) as usize;
        at += 16 + len;
        n += 1;
    }
    n
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn fwmark_reflect(pod: &Pod) -> (String, String) {
    sluice_e2e::sys::in_netns(&pod.netns_path(), || {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
        (read("/proc/sys/net/ipv4/fwmark_reflect"), read("/proc/sys/net/ipv6/fwmark_reflect"))
    })
    .expect("in netns")
}

#[test]
fn a_closed_port_answers_at_once_and_the_pods_rst_stays_in_the_pod() {
    if !require_root("a_closed_port_answers_at_once_and_the_pods_rst_stays_in_the_pod") {
        return;
    }
    let w = world();
    let p = probe();
    let outsider = w.c.add_pod(2, "plain", "outsider").expect("outsider");
    let v6 = |pod: &Pod| pod.ipv6.expect("pod has IPv6");
    // Enrollment turned fwmark_reflect on in the pod (both families).
    assert_eq!(fwmark_reflect(&w.near), ("1".into(), "1".into()));
    // Nothing listens on 7777 (mesh clients) nor 7778 (plaintext from outside the mesh). Any packet
    // of port 7777 on a server pod's own link is the pod's RST leaving it: the mesh legs are HBONE
    // (15008) or stay inside the node.
    let caps: Vec<_> = [&w.near, &w.far]
        .iter()
        .map(|pod| w.c.capture(&pod.netns_path(), "eth0", "tcp port 7777").expect("capture"))
        .collect();
    let rows: Vec<(&str, &Pod, IpAddr, u16)> = vec![
        ("HBONE CONNECT cross-node v4", &w.client, w.far.ipv4, 7777),
        ("HBONE CONNECT cross-node v6", &w.client, v6(&w.far), 7777),
        ("same-node v4", &w.client, w.near.ipv4, 7777),
        ("same-node v6", &w.client, v6(&w.near), 7777),
        ("captured plaintext v4", &outsider, w.near.ipv4, 7778),
        ("captured plaintext v6", &outsider, v6(&w.near), 7778),
    ];
    for (name, from, ip, port) in &rows {
        // The path itself is warm first (a fresh link's neighbour discovery can take seconds): what
        // is timed is the closed port's answer.
        let warm = p.client(&w.c, from, SocketAddr::new(*ip, 8080), 16, 0).expect(name);
        assert!(warm.ok, "{name}: the open port: {}", warm.error);
        let start = std::time::Instant::now();
        let r = p.client(&w.c, from, SocketAddr::new(*ip, *port), 1024, 0).expect(name);
        let took = start.elapsed();
        assert!(!r.ok, "{name}: nothing listens there: {r:?}");
        eprintln!("{name}: failed after {took:?} ({})", r.error);
        assert!(
            took < scaled(std::time::Duration::from_secs(1)),
            "{name}: took {took:?} (the connect timeout?)"
        );
    }
    for (pod, cap) in [&w.near, &w.far].iter().zip(caps) {
        let (file, report) = cap.stop().expect("stop capture");
        let n = pcap_packets(&std::fs::read(&file).expect("pcap"));
        assert_eq!(n, 0, "{}: {n} packets of port 7777 left the pod (tcpdump: {report})", pod.name);
    }

    // A port scan: the agents do not hold a descriptor per closed port for the connect timeout.
    let pids = [w.c.agent_pid(1).expect("agent 1"), w.c.agent_pid(2).expect("agent 2")];
    let base: Vec<usize> = pids.iter().map(|pid| open_fds(*pid)).collect();
    let scan: Vec<_> = (7001..7021)
        .map(|port| p.client_bg(&w.c, &w.client, SocketAddr::new(w.far.ipv4, port), 16, 0).expect("client"))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let during: Vec<usize> = pids.iter().map(|pid| open_fds(*pid)).collect();
    let start = std::time::Instant::now();
    for c in scan {
        assert!(!c.join().expect("join").expect("report").ok);
    }
    let rest = start.elapsed();
    eprintln!("open descriptors of the agents: before the scan {base:?}, 0.7 s into it {during:?}");
    for i in 0..2 {
        assert!(
            during[i] <= base[i] + 4,
            "agent {}: {} descriptors before, {} during the scan",
            i + 1,
            base[i],
            during[i]
        );
    }
    assert!(rest < scaled(std::time::Duration::from_secs(2)), "the scan took {rest:?} more");

    // Releasing the pod (its namespace leaves the mesh) restores the sysctls it had.
    w.c.write_config("namespaces.yaml", &namespaces(false)).expect("unlabel");
    assert!(
        sluice_e2e::wait_until(scaled(std::time::Duration::from_secs(10)), || {
            w.c.agent_get(1, "/debug/pods").is_ok_and(|s| !s.contains("\"enrolled\": true"))
        }),
        "pods not released"
    );
    assert_eq!(fwmark_reflect(&w.near), ("0".into(), "0".into()));
}
