//! `cargo xtask demo`: a two-node cluster in network namespaces running real sluice agents, the
//! sample mesh config from `examples/mesh`, sample workloads, real traffic, and what happened to
//! it. Everything it creates is removed at the end, also on Ctrl-C.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use sluice_e2e::{
    Cluster, Pod,
    cluster::{PodSpec, ServiceSpec, sum_metric},
    probe::Probe,
    sys,
};

fn main() -> ExitCode {
    if !sys::is_root() {
        eprintln!(
            "sluice demo needs root: it creates network namespaces, cgroups and a bpffs mount, and loads eBPF.\n\
             Run `sudo cargo xtask demo` on a machine with a BPF-capable kernel (6.1+)."
        );
        return ExitCode::from(2);
    }
    sys::catch_interrupts();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if sys::interrupted() => {
            eprintln!("demo interrupted; everything it created has been removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_interrupt() -> anyhow::Result<()> {
    if sys::interrupted() {
        anyhow::bail!("interrupted; cleaning up");
    }
    Ok(())
}

fn examples_dir() -> PathBuf {
    std::env::var_os("SLUICE_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples"))
}

fn probe() -> anyhow::Result<Probe> {
    let me = std::env::current_exe()?;
    let bin = me.parent().context("exe has no directory")?.join("sl-probe");
    anyhow::ensure!(bin.exists(), "{} not found (build the sluice-e2e binaries)", bin.display());
    Ok(Probe::new(bin))
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn run() -> anyhow::Result<()> {
    let p = probe()?;
    step("1. A two-node cluster: router + node1 + node2 network namespaces, one sluice agent per node");
    let c = Cluster::new(2)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir().join("mesh"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in &files {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_name().and_then(|n| n.to_str()).context("example file name")?;
        c.write_config(name, &text)?;
        println!("   mesh config: examples/mesh/{name}");
    }
    println!("   (STRICT mTLS in shop; backend allows only the frontend's identity; legacy is denied)");
    c.start_agent(1)?;
    c.start_agent(2)?;
    println!("   agents ready (eBPF loaded and pinned per node, cgroup-scoped)");
    check_interrupt()?;

    step("2. Pods, created the way a container runtime does: loopback, ptp + host-local, then sluice-cni");
    let frontend = c.add_pod_spec(1, PodSpec::new("shop", "frontend"))?;
    let backend = c.add_pod_spec(2, PodSpec::new("shop", "backend").label("app", "backend"))?;
    let reports =
        c.add_pod_spec(1, PodSpec::new("shop", "reports").label("istio.io/dataplane-mode", "none"))?;
    let batch = c.add_pod_spec(2, PodSpec::new("legacy", "batch"))?;
    c.add_service(ServiceSpec {
        namespace: "shop".into(),
        name: "backend".into(),
        vips: vec!["10.96.0.20".parse()?],
        ports: vec![(80, 8080)],
        port_names: vec![],
        selector: vec![("app".into(), "backend".into())],
    })?;
    println!("   Service shop/backend: VIP 10.96.0.20:80 -> pods labelled app=backend, port 8080");
    for n in 1..=2 {
        let pods: serde_json::Value = serde_json::from_str(&c.agent_get(n, "/debug/pods")?)?;
        for pod in pods.as_array().into_iter().flatten() {
            println!(
                "   node{n}  {:<16} {:<36} enrolled={:<5} ({})",
                format!("{}/{}", pod["namespace"].as_str().unwrap_or(""), pod["name"].as_str().unwrap_or("")),
                pod["ips"].to_string(),
                pod["enrolled"],
                pod["reason"].as_str().unwrap_or("")
            );
        }
    }
    p.serve(&c, &backend, &[8080])?;
    p.serve(&c, &reports, &[8080])?;
    check_interrupt()?;

    step("3. Traffic (1 MiB echoed back and compared byte for byte; mesh-to-mesh goes over HBONE mTLS)");
    let v6 = backend.ipv6.context("backend has no IPv6")?;
    type Flow<'a> = (&'a str, &'a Pod, SocketAddr, usize, usize, bool);
    let flows: Vec<Flow> = vec![
        (
            "frontend -> backend (cross-node, IPv4)",
            &frontend,
            SocketAddr::new(backend.ipv4, 8080),
            1,
            2,
            true,
        ),
        ("frontend -> backend (cross-node, IPv6)", &frontend, SocketAddr::new(v6, 8080), 1, 2, true),
        (
            "frontend -> Service VIP 10.96.0.20:80 (shop/backend)",
            &frontend,
            SocketAddr::from(([10, 96, 0, 20], 80)),
            1,
            2,
            true,
        ),
        ("batch (outside mesh) -> backend", &batch, SocketAddr::new(backend.ipv4, 8080), 2, 2, false),
        ("frontend -> reports (opted out)", &frontend, SocketAddr::new(reports.ipv4, 8080), 1, 1, true),
        ("batch -> reports (both outside)", &batch, SocketAddr::new(reports.ipv4, 8080), 2, 1, true),
    ];
    for (name, from, to, src_node, dst_node, expect_ok) in flows {
        check_interrupt()?;
        let before = counters(&c, src_node, dst_node)?;
        let r = p.client(&c, from, to, 1 << 20, 0)?;
        let after = counters(&c, src_node, dst_node)?;
        println!("   {name}");
        if !r.ok && !expect_ok {
            println!(
                "      refused, as PeerAuthentication shop/default (STRICT) says: plaintext from outside the mesh"
            );
            continue;
        }
        if !r.ok {
            println!("      FAILED: {}", r.error);
            continue;
        }
        if !expect_ok {
            println!("      UNEXPECTED: the connection was allowed");
        }
        println!(
            "      bytes ok={}  client getpeername={}  server saw client as {}",
            r.bytes, r.peer, r.server_saw
        );
        let how = if after.2 > before.2 {
            "HBONE (mutual TLS, verified SPIFFE identities)"
        } else if after.1 > before.1 {
            "plaintext, steered by sk_lookup"
        } else {
            "not captured"
        };
        println!(
            "      outbound captured by node{src_node} agent: {}   arrived at node{dst_node}: {how}",
            yes(after.0 > before.0)
        );
    }

    step("4. What the agents report (Istio metric names, Prometheus text on :15020/stats/prometheus)");
    for n in 1..=2 {
        let text = c.agent_get(n, "/stats/prometheus")?;
        for l in text.lines().filter(|l| l.starts_with("istio_tcp_connections_opened_total")) {
            println!("   node{n} {}", shorten(l));
        }
    }

    step("5. Remove the namespace label: the mesh releases `shop` pods without restarting them");
    let unlabelled = std::fs::read_to_string(examples_dir().join("mesh/namespaces.yaml"))?.replace(
        "    istio.io/dataplane-mode: ambient   # Istio's ambient label: every pod of `shop` is enrolled\n",
        "",
    );
    c.write_config("namespaces.yaml", &unlabelled)?;
    std::thread::sleep(std::time::Duration::from_millis(800));
    let before = counters(&c, 1, 2)?;
    let r = p.client(&c, &frontend, SocketAddr::new(backend.ipv4, 8080), 4096, 0)?;
    let after = counters(&c, 1, 2)?;
    println!(
        "   frontend -> backend: ok={}  captured={}  server saw {}",
        r.ok,
        yes(after.0 > before.0 || after.1 > before.1),
        r.server_saw
    );

    step("6. Cleaning up: agents, pods, namespaces, cgroups and the bpffs mount are removed");
    drop(c);
    println!("   done; nothing left behind (check `ip netns list`)");
    Ok(())
}

/// (outbound redirects on `src`, inbound steers on `dst`, mTLS connections reported by `dst`)
fn counters(c: &Cluster, src: usize, dst: usize) -> anyhow::Result<(f64, f64, f64)> {
    let src_text = c.agent_get(src, "/stats/prometheus")?;
    let dst_text = c.agent_get(dst, "/stats/prometheus")?;
    let out =
        sum_metric(&src_text, "sluice_redirect_decisions_total", &[("decision", "outbound_redirected")]);
    let inb = sum_metric(&dst_text, "sluice_redirect_decisions_total", &[("decision", "inbound_steered")]);
    let mtls = sum_metric(
        &dst_text,
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination"), ("connection_security_policy", "mutual_tls")],
    );
    Ok((out, inb, mtls))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Keeps the labels a reader cares about.
fn shorten(line: &str) -> String {
    let keep = [
        "reporter",
        "source_workload=",
        "source_principal",
        "destination_workload=",
        "destination_service",
        "connection_security_policy",
    ];
    let (series, value) = line.rsplit_once(' ').unwrap_or((line, ""));
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    let kept: Vec<&str> = labels
        .trim_end_matches('}')
        .split("\",")
        .filter(|kv| keep.iter().any(|k| kv.starts_with(k)))
        .collect();
    format!("{name}{{{}\"}} {value}", kept.join("\","))
}
