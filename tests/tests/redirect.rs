//! Kernel redirection end to end: real agents, real CNI plugins, real sockets, real eBPF hooks.
use std::net::{IpAddr, SocketAddr};

use sluice_e2e::{Cluster, Pod, probe::Probe, require_root};

const MIB: usize = 1 << 20;

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_sl-probe"))
}

fn namespaces(mesh_labelled: bool) -> String {
    let label = if mesh_labelled {
        "\n  labels:\n    istio.io/dataplane-mode: ambient"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh{label}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n"
    )
}

const OPTOUT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: optout\n  namespace: mesh\n  labels:\n    istio.io/dataplane-mode: none\n";

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
    c.write_config("namespaces.yaml", &namespaces(true))
        .expect("config");
    c.write_config("pods.yaml", OPTOUT_POD).expect("config");
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
    c.metric(
        node,
        "sluice_redirect_decisions_total",
        &[("decision", "outbound_redirected")],
    )
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
        assert_eq!(
            r.peer,
            dst.to_string(),
            "{name}: getpeername must show the real peer"
        );
        assert!(
            redirected(&w.c, 1) > before,
            "{name}: the kernel did not redirect the connect"
        );
        assert_eq!(
            opened_by(&w.c, 1, "client", dst),
            opened_before + 1.0,
            "{name}: the agent did not report it"
        );
    }
}

#[test]
#[ignore = "debugging aid: builds the world and waits"]
fn debug_hold() {
    let w = world();
    eprintln!(
        "client {:?} near {:?} far {:?}",
        w.client, w.near.ipv4, w.far.ipv4
    );
    std::thread::sleep(std::time::Duration::from_secs(600));
}
