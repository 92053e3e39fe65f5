//! `cargo xtask bench`: mesh versus direct on the netns cluster, every number a ratio to the
//! direct path measured in the same run (the machine is shared and noisy).
//!
//! Scenarios: direct (both pods outside the mesh), sluice same-node, sluice cross-node (HBONE mTLS).
//! Metrics: bulk throughput (iperf3, 1 and 8 streams), agent CPU seconds and peak RSS per run, idle
//! RSS. Writes `results.json` and `results.md` to `--out` and prints the table.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sluice_e2e::{Cluster, Pod, sys};

struct Args {
    quick: bool,
    out: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { quick: false, out: PathBuf::from("target/bench") };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = PathBuf::from(it.next().context("--out needs a directory")?),
            other => bail!("unknown argument {other}; usage: sluice-bench [--quick] [--out DIR]"),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    if !sys::is_root() {
        eprintln!("sluice-bench needs root (network namespaces, cgroups, bpffs, eBPF)");
        return ExitCode::from(2);
    }
    match args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n";

/// Agent CPU seconds (user+system) and peak RSS in KiB, from /proc.
fn agent_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((ticks / 100.0, hwm))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs iperf3 from `client` to `server`; bits per second received.
fn iperf(c: &Cluster, client: &Pod, server: &Pod, secs: u32, streams: u32) -> anyhow::Result<f64> {
    let mut srv = c.pod_command(server, "iperf3")?;
    srv.args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c.spawn_in_pod(server, srv)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut cli = c.pod_command(client, "iperf3")?;
    cli.args([
        "-c",
        &server.ipv4.to_string(),
        "-p",
        "5201",
        "-J",
        "-t",
        &secs.to_string(),
        "-P",
        &streams.to_string(),
    ]);
    let out = cli.output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 reported no throughput")
}

fn run(a: &Args) -> anyhow::Result<()> {
    let secs = if a.quick { 2 } else { 10 };
    let c = Cluster::new(2)?;
    c.write_config("namespaces.yaml", NAMESPACES)?;
    c.start_agent(1)?;
    c.start_agent(2)?;
    let pods = |ns: &str| -> anyhow::Result<(Pod, Pod, Pod)> {
        Ok((
            c.add_pod(1, ns, &format!("{ns}-a"))?,
            c.add_pod(1, ns, &format!("{ns}-b"))?,
            c.add_pod(2, ns, &format!("{ns}-c"))?,
        ))
    };
    let (pa, _pb, pc) = pods("plain")?;
    let (ma, mb, mc) = pods("mesh")?;
    let pids = [c.agent_pid(1).context("agent 1")?, c.agent_pid(2).context("agent 2")?];
    let idle_rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    let mut records = Vec::new();
    for streams in [1u32, 8] {
        let direct = iperf(&c, &pa, &pc, secs, streams)?;
        records.push(json!({"scenario": "direct", "metric": format!("throughput_{streams}_streams"), "value": direct / 1e6, "unit": "Mbit/s", "ratio_to_direct": 1.0}));
        for (scenario, client, server) in
            [("sluice_same_node", &ma, &mb), ("sluice_cross_node_mtls", &ma, &mc)]
        {
            let before: Vec<(f64, u64)> =
                pids.iter().map(|p| agent_usage(*p)).collect::<anyhow::Result<_>>()?;
            let bps = iperf(&c, client, server, secs, streams)?;
            let after: Vec<(f64, u64)> =
                pids.iter().map(|p| agent_usage(*p)).collect::<anyhow::Result<_>>()?;
            let cpu: f64 = after.iter().zip(&before).map(|(x, y)| x.0 - y.0).sum();
            let peak: u64 = after.iter().map(|x| x.1).max().unwrap_or(0);
            records.push(json!({"scenario": scenario, "metric": format!("throughput_{streams}_streams"), "value": bps / 1e6, "unit": "Mbit/s", "ratio_to_direct": bps / direct}));
            records.push(json!({"scenario": scenario, "metric": format!("agent_cpu_seconds_{streams}_streams"), "value": cpu, "unit": "s", "ratio_to_direct": Value::Null}));
            records.push(json!({"scenario": scenario, "metric": "agent_peak_rss", "value": peak as f64 / 1024.0, "unit": "MiB", "ratio_to_direct": Value::Null}));
        }
    }
    for (i, kib) in idle_rss.iter().enumerate() {
        records.push(json!({"scenario": format!("agent_node{}", i + 1), "metric": "idle_rss", "value": *kib as f64 / 1024.0, "unit": "MiB", "ratio_to_direct": Value::Null}));
    }
    for r in &records {
        let v = r["value"].as_f64().unwrap_or(f64::NAN);
        if !v.is_finite() || v < 0.0 {
            bail!("invalid measurement {r}");
        }
    }
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&records)?)?;
    let mut md =
        String::from("| scenario | metric | value | unit | ratio to direct |\n|---|---|---|---|---|\n");
    for r in &records {
        let ratio = r["ratio_to_direct"].as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        md.push_str(&format!(
            "| {} | {} | {:.2} | {} | {ratio} |\n",
            r["scenario"].as_str().unwrap_or(""),
            r["metric"].as_str().unwrap_or(""),
            r["value"].as_f64().unwrap_or(0.0),
            r["unit"].as_str().unwrap_or("")
        ));
    }
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    println!(
        "wrote {} and results.md ({} s per run{})",
        a.out.join("results.json").display(),
        secs,
        if a.quick { ", quick" } else { "" }
    );
    Ok(())
}
