//! `cargo xtask bench`: mesh versus direct on the netns cluster, every number a ratio to the
//! direct path measured in the same run (the machine is shared and noisy).
//!
//! Scenarios: direct (both pods outside the mesh), two plaintext relays (the floor of any design
//! with a proxy on each node: `sl-load relay` on both nodes, three TCP legs, no TLS/HTTP/2),
//! sluice same-node, sluice cross-node (HBONE mTLS). `--only` picks measurement groups and
//! scenarios (direct always runs).
//! Metrics per scenario:
//! - bulk throughput (iperf3, 1 and 8 streams), agent CPU seconds and peak RSS during each run
//!   (the kernel's high-water mark is reset before each run through `/proc/PID/clear_refs`);
//! - request/response latency at a fixed rate: `sl-load latency`, 1 KiB requests echoed over one
//!   long-lived connection at 1,000 requests/s, open loop (each request's latency counts from its
//!   scheduled send time, so a stall is not hidden by coordinated omission); p50/p90/p99/p99.9 and
//!   the added p50 of the mesh over direct;
//! - connection churn: `sl-load churn`, new connections per second from a few workers, each with a
//!   1 KiB exchange (the server closes first), and the error count (must be 0);
//! - HTTP/2 requests (`h2load` against `nghttpd`, h2c, 1 KiB responses): requests/s with 4
//!   connections x 8 streams, and the mean time per request one at a time, for direct, the mesh at
//!   L4, and through a waypoint (`sluice_waypoint`: the client's namespace uses a waypoint on the
//!   client's node that forwards to the server on the other node); the waypoint's CPU seconds and
//!   requests served per waypoint CPU second;
//! - agent idle RSS, and RSS with N idle tunnelled connections from a mesh pod to a mesh pod on the
//!   other node (`sl-load idle`; N = 10,000, 500 with `--quick`), as KiB per connection per agent.
//!
//! Each load runs inside the client pod's network namespace and cgroup (`Cluster::pod_command`,
//! like `sl-probe`) against `sl-load serve` in the server pod. Every record carries the issue-6
//! target it is judged against, if any, and whether it meets it; targets never fail a run.
//! `--quick` (2 s per run) only checks that valid numbers came out: finite, non-negative (but the
//! `added_*` differences), no errors, every idle connection established. Writes `results.json` and `results.md` to `--out`
//! and prints the table.
use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sluice_e2e::{Cluster, Pod, sys};

/// Measurement groups, selectable with `--only` (for profiling one of them).
const GROUPS: [&str; 5] = ["throughput", "latency", "churn", "idle", "http"];

struct Args {
    quick: bool,
    out: PathBuf,
    /// Groups to run; all when empty.
    only: Vec<String>,
    /// Mesh scenarios to run (direct always runs: it is what the ratios divide by); all when empty.
    scenarios: Vec<String>,
}

impl Args {
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
    fn measures(&self, scenario: &str) -> bool {
        scenario == "direct" || self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == scenario)
    }
}

fn args() -> anyhow::Result<Args> {
    let mut a =
        Args { quick: false, out: PathBuf::from("target/bench"), only: Vec::new(), scenarios: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = PathBuf::from(it.next().context("--out needs a directory")?),
            "--only" => {
                let list = it.next().context("--only needs a comma-separated list of groups")?;
                for g in list.split(',') {
                    if GROUPS.contains(&g) {
                        a.only.push(g.to_string());
                    } else if SCENARIOS.contains(&g) || g == WAYPOINT_SCENARIO {
                        a.scenarios.push(g.to_string());
                    } else {
                        bail!(
                            "--only: unknown group or scenario {g:?}; groups are {}, scenarios {}",
                            GROUPS.join(", "),
                            [SCENARIOS.as_slice(), &[WAYPOINT_SCENARIO]].concat().join(", ")
                        );
                    }
                }
            }
            other => bail!(
                "unknown argument {other}; usage: sluice-bench [--quick] [--out DIR] [--only {}]",
                GROUPS.join(",")
            ),
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

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: wp, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: wp}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";

/// The HTTP group's scenario through a waypoint.
const WAYPOINT_SCENARIO: &str = "sluice_waypoint";
/// `nghttpd` (h2c) port in the HTTP group's server pods, and the waypoint Service's VIP.
const HTTP_PORT: u16 = 8080;
const WAYPOINT_VIP: [u8; 4] = [10, 96, 200, 1];

/// `sl-load serve` ports in every server pod.
const ECHO_PORT: u16 = 7000;
const ONCE_PORT: u16 = 7001;
/// Request size for latency and churn.
const REQ_BYTES: usize = 1024;
/// Latency load: requests per second.
const RATE: u32 = 1000;
/// Churn: concurrent workers.
const CHURN_WORKERS: u32 = 4;
/// File descriptors wanted for the agents and the load: each idle tunnelled connection costs each
/// agent one socket (the pod-side one; the HBONE connection is pooled), the load and the echo
/// server one each.
const NOFILE: u64 = 65_536;

/// Raises this process's RLIMIT_NOFILE to at least [`NOFILE`] (soft and hard; raising the hard
/// limit needs CAP_SYS_RESOURCE, without it the soft limit goes up to the hard one). The agents and
/// every load process the harness starts inherit it. Returns the soft limit now in force.
#[allow(unsafe_code, reason = "getrlimit and setrlimit have no safe std equivalent")]
fn raise_nofile() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        let want = NOFILE as libc::rlim_t;
        if lim.rlim_cur < want {
            let up = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return Ok(NOFILE);
            }
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error()).context("setrlimit RLIMIT_NOFILE");
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Open file descriptors of process `pid`.
fn fds_of(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// The soft "Max open files" limit of process `pid`.
fn nofile_of(pid: u32) -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no Max open files in /proc/PID/limits")
}

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

/// Resets the agents' peak-RSS mark (VmHWM) so the next reading is the peak of one run.
fn reset_peak(pids: &[u32]) {
    for p in pids {
        // Best effort: on a kernel without it the peak is the process's lifetime peak.
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// CPU seconds and peak RSS (KiB) of the agents over `f`.
fn measured<T>(pids: &[u32], f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64, u64)> {
    reset_peak(pids);
    let before: Vec<(f64, u64)> = pids.iter().map(|p| agent_usage(*p)).collect::<anyhow::Result<_>>()?;
    let r = f()?;
    let after: Vec<(f64, u64)> = pids.iter().map(|p| agent_usage(*p)).collect::<anyhow::Result<_>>()?;
    let cpu: f64 = after.iter().zip(&before).map(|(x, y)| x.0 - y.0).sum();
    let peak: u64 = after.iter().map(|x| x.1).max().unwrap_or(0);
    Ok((r, cpu, peak))
}

/// Runs iperf3 from the run's client to its server; bits per second received.
fn iperf(c: &Cluster, run: &Run, secs: u32, streams: u32) -> anyhow::Result<f64> {
    let mut srv = c.pod_command(run.server, "iperf3")?;
    srv.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    c.spawn_in_pod(run.server, srv)?;
    wait_listening(run.server, IPERF_PORT)?;
    let to = run.addr(IPERF_PORT);
    let mut cli = c.pod_command(run.client, "iperf3")?;
    cli.args([
        "-c",
        &to.ip().to_string(),
        "-p",
        &to.port().to_string(),
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

/// Starts `sl-load serve` in `pod` and waits until both ports accept (checked over the pod's
/// loopback, which the mesh leaves alone).
fn serve(c: &Cluster, load: &Path, pod: &Pod) -> anyhow::Result<()> {
    let mut cmd = c.pod_command(pod, load)?;
    cmd.args(["serve", &ECHO_PORT.to_string(), &ONCE_PORT.to_string(), &REQ_BYTES.to_string()])
        .stdout(Stdio::null());
    c.spawn_in_pod(pod, cmd)?;
    for port in [ECHO_PORT, ONCE_PORT] {
        wait_listening(pod, port)?;
    }
    Ok(())
}

/// Waits (up to 4 s) until a socket in `pod`'s network namespace listens on TCP `port`, read
/// from the kernel's socket table rather than probed with a connection (a probe would be
/// iperf3's one-off server's one client).
fn wait_listening(pod: &Pod, port: u16) -> anyhow::Result<()> {
    // In /proc/net/tcp{,6}: "sl local_address rem_address st ...", local as HEX_IP:HEX_PORT,
    // state 0A = LISTEN. thread-self: the table of the netns this thread entered.
    let port_hex = format!(":{port:04X}");
    let listens = move || {
        ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"].iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let mut cols = l.split_whitespace().skip(1);
                    let local = cols.next().unwrap_or_default();
                    let state = cols.nth(1).unwrap_or_default();
                    local.ends_with(&port_hex) && state == "0A"
                })
            })
        })
    };
    let ok = sys::in_netns(&pod.netns_path(), move || {
        (0..200).any(|_| {
            listens() || {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        })
    })?;
    if !ok {
        bail!("nothing in {} listens on {port}", pod.name);
    }
    Ok(())
}

/// Runs `sl-load ARGS` in `pod` to completion; its JSON report, which must say `"ok": true`.
fn load(c: &Cluster, bin: &Path, pod: &Pod, args: &[String]) -> anyhow::Result<Value> {
    let mut cmd = c.pod_command(pod, bin)?;
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running sl-load {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "sl-load {} printed {stdout:?}, stderr {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["ok"] != Value::Bool(true) {
        bail!("sl-load {} in {}: {v}", args.join(" "), pod.name);
    }
    Ok(v)
}

/// Starts `nghttpd` (HTTP/2 without TLS) in `pod`, serving a 1 KiB file.
fn start_nghttpd(c: &Cluster, pod: &Pod) -> anyhow::Result<()> {
    let dir = c.scratch().join("www");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("index.html"), vec![b'x'; REQ_BYTES])?;
    let mut cmd = c.pod_command(pod, "nghttpd")?;
    cmd.arg("--no-tls")
        .arg("-d")
        .arg(&dir)
        .arg(HTTP_PORT.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn_in_pod(pod, cmd)?;
    wait_listening(pod, HTTP_PORT)
}

/// What one h2load run reported.
struct H2Load {
    req_per_sec: f64,
    mean_us: f64,
    failed: f64,
}

/// Parses an h2load duration (`83us`, `1.20ms`, `2.5s`) into microseconds.
fn h2load_us(v: &str) -> f64 {
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * mul)
}

/// Runs `h2load` in `client` against `url`.
fn h2load(c: &Cluster, client: &Pod, url: &str, n: u32, conns: u32, streams: u32) -> anyhow::Result<H2Load> {
    let mut cmd = c.pod_command(client, "h2load")?;
    cmd.args(["-n", &n.to_string(), "-c", &conns.to_string(), "-m", &streams.to_string(), url])
        .stdin(Stdio::null());
    let out = cmd.output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = H2Load { req_per_sec: f64::NAN, mean_us: f64::NAN, failed: f64::NAN };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            r.req_per_sec = rest
                .split(", ")
                .nth(1)
                .and_then(|x| x.strip_suffix(" req/s"))
                .and_then(|x| x.parse().ok())
                .unwrap_or(f64::NAN);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            r.failed = rest
                .split(", ")
                .find_map(|x| x.strip_suffix(" failed"))
                .and_then(|x| x.parse().ok())
                .unwrap_or(f64::NAN);
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            r.mean_us = rest.split_whitespace().nth(2).map_or(f64::NAN, h2load_us);
        }
    }
    if r.req_per_sec.is_nan() {
        bail!("h2load {url} in {}: {text}\n{}", client.name, String::from_utf8_lossy(&out.stderr));
    }
    Ok(r)
}

/// The HTTP group: direct, the mesh at L4, and through a waypoint.
#[allow(clippy::too_many_arguments)]
fn http_group(
    a: &Args,
    c: &Cluster,
    pids: &[u32],
    pa: &Pod,
    pc: &Pod,
    ma: &Pod,
    mc: &Pod,
    records: &mut Vec<Rec>,
) -> anyhow::Result<()> {
    use sluice_e2e::cluster::{PodSpec, ServiceSpec};
    let wa = c.add_pod(1, "wp", "wp-a")?;
    let wc = c.add_pod_spec(2, PodSpec::new("wp", "wp-c").label("app", "web"))?;
    let gw = c.add_pod_spec(
        1,
        PodSpec::new("wp", "wp-0")
            .label("gateway.networking.k8s.io/gateway-name", "wp")
            .label("istio.io/dataplane-mode", "none")
            .service_account("wp"),
    )?;
    c.add_service(ServiceSpec {
        namespace: "wp".into(),
        name: "web".into(),
        vips: vec![WAYPOINT_VIP.into()],
        ports: vec![(HTTP_PORT, HTTP_PORT)],
        port_names: vec![],
        selector: vec![("app".into(), "web".into())],
    })?;
    let wp_pid = c.start_waypoint(&gw, "wp")?;
    for p in [pc, mc, &wc] {
        start_nghttpd(c, p)?;
    }
    let n: u32 = if a.quick { 2_000 } else { 20_000 };
    let one_by_one: u32 = if a.quick { 200 } else { 2_000 };
    let url = |ip: std::net::IpAddr| format!("http://{ip}:{HTTP_PORT}/index.html");
    let runs = [
        ("direct", pa, url(pc.ipv4)),
        ("sluice_cross_node_mtls", ma, url(mc.ipv4)),
        (WAYPOINT_SCENARIO, &wa, url(WAYPOINT_VIP.into())),
    ];
    let (mut direct_rps, mut direct_us) = (f64::NAN, f64::NAN);
    let mut all = pids.to_vec();
    all.push(wp_pid);
    for (scenario, client, url) in runs.iter().filter(|r| a.measures(r.0)) {
        let (wp_before, _) = agent_usage(wp_pid)?;
        let (load, cpu, _) = measured(&all, || h2load(c, client, url, n, 4, 8))?;
        let (wp_after, _) = agent_usage(wp_pid)?;
        let single = h2load(c, client, url, one_by_one, 1, 1)?;
        eprintln!("http {scenario}: {:.0} req/s, {:.0} us one by one", load.req_per_sec, single.mean_us);
        if *scenario == "direct" {
            (direct_rps, direct_us) = (load.req_per_sec, single.mean_us);
        }
        records.push(
            Rec::new(scenario, "http2_requests_per_second", load.req_per_sec, "req/s").ratio(direct_rps),
        );
        records.push(Rec::new(scenario, "http2_request_time_mean", single.mean_us, "us").ratio(direct_us));
        records.push(Rec::new(scenario, "http2_failed_requests", load.failed + single.failed, "count"));
        if *scenario != "direct" {
            records.push(Rec::new(scenario, "http2_added_request_time", single.mean_us - direct_us, "us"));
            records.push(Rec::new(scenario, "cpu_seconds_http2", cpu, "s"));
        }
        if *scenario == WAYPOINT_SCENARIO {
            let wp_cpu = wp_after - wp_before;
            records.push(Rec::new(scenario, "waypoint_cpu_seconds_http2", wp_cpu, "s"));
            // Requests one waypoint core serves per second of CPU (clock ticks: 10 ms resolution).
            let per_core = if wp_cpu > 0.0 { f64::from(n) / wp_cpu } else { f64::NAN };
            records.push(Rec::new(scenario, "requests_per_waypoint_cpu_second", per_core, "req/s"));
        }
    }
    Ok(())
}

/// One result row.
struct Rec {
    scenario: String,
    metric: String,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
    /// The issue-6 target, as text, and whether the value meets it.
    target: Option<(String, bool)>,
}

impl Rec {
    fn new(scenario: &str, metric: impl Into<String>, value: f64, unit: &'static str) -> Rec {
        Rec { scenario: scenario.into(), metric: metric.into(), value, unit, ratio: None, target: None }
    }
    fn ratio(mut self, direct: f64) -> Rec {
        self.ratio = Some(if direct > 0.0 { self.value / direct } else { f64::NAN });
        self
    }
    fn target(mut self, text: impl Into<String>, meets: bool) -> Rec {
        self.target = Some((text.into(), meets));
        self
    }
    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "ratio_to_direct": self.ratio,
            "target": self.target.as_ref().map(|t| t.0.clone()),
            "meets": self.target.as_ref().map(|t| t.1),
        })
    }
}

const SCENARIOS: [&str; 4] = ["direct", "two_plain_relays", "sluice_same_node", "sluice_cross_node_mtls"];

/// Ports the reference relays listen on: node 1's relay on `port + RELAY_IN`, node 2's on
/// `port + RELAY_OUT`, for each of iperf3's, the echo and the once port.
const RELAY_IN: u16 = 10_000;
const RELAY_OUT: u16 = 20_000;
const IPERF_PORT: u16 = 5201;

/// One scenario's client and server, and how the client reaches the server.
struct Run<'a> {
    scenario: &'static str,
    client: &'a Pod,
    server: &'a Pod,
    /// Through the reference relays (see [`start_relays`]) instead of to the server's address.
    relayed: bool,
}

impl Run<'_> {
    /// Where the client connects to reach the server's `port`.
    fn addr(&self, port: u16) -> SocketAddr {
        if self.relayed {
            SocketAddr::from(([127, 0, 0, 1], port + RELAY_IN))
        } else {
            SocketAddr::from((self.server.ipv4, port))
        }
    }
    fn is_mesh(&self) -> bool {
        self.scenario.starts_with("sluice")
    }
}

/// The `two_plain_relays` reference: a plaintext `sl-load relay` in the client pod (node 1)
/// forwarding to one in the server pod (node 2) that forwards to the server on its loopback:
/// three TCP connections and two user-space copies per byte, as any mesh with a proxy on each
/// node has, without TLS, HTTP/2 or policy. Both pods are outside the mesh.
fn start_relays(c: &Cluster, load: &Path, client: &Pod, server: &Pod) -> anyhow::Result<()> {
    let ports = [IPERF_PORT, ECHO_PORT, ONCE_PORT];
    let mut near = c.pod_command(client, load)?;
    near.arg("relay").stdout(Stdio::null());
    let mut far = c.pod_command(server, load)?;
    far.arg("relay").stdout(Stdio::null());
    for p in ports {
        near.arg(format!("{}={}", p + RELAY_IN, SocketAddr::from((server.ipv4, p + RELAY_OUT))));
        far.arg(format!("{}=127.0.0.1:{p}", p + RELAY_OUT));
    }
    c.spawn_in_pod(server, far)?;
    c.spawn_in_pod(client, near)?;
    for p in ports {
        wait_listening(server, p + RELAY_OUT)?;
        wait_listening(client, p + RELAY_IN)?;
    }
    Ok(())
}

/// Opens `n` idle connections from a mesh pod on node 1 to a mesh pod on node 2 of a new cluster
/// and records what they cost each agent (RSS from before the first to after the last, per
/// connection; file descriptors likewise). Fewer than `n` established is a problem of the run.
fn idle_connections(
    load_bin: &Path,
    n: usize,
    records: &mut Vec<Rec>,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let c = Cluster::new(2)?;
    c.write_config("namespaces.yaml", NAMESPACES)?;
    c.start_agent(1)?;
    c.start_agent(2)?;
    let client = c.add_pod(1, "mesh", "idle-a")?;
    let server = c.add_pod(2, "mesh", "idle-c")?;
    serve(&c, load_bin, &server)?;
    let pids = [c.agent_pid(1).context("agent 1")?, c.agent_pid(2).context("agent 2")?];
    let to = SocketAddr::from((server.ipv4, ECHO_PORT));
    std::thread::sleep(Duration::from_millis(500));
    let base: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let base_fds: Vec<u64> = pids.iter().map(|p| fds_of(*p)).collect();
    let mut cmd = c.pod_command(&client, load_bin)?;
    cmd.args(["idle", &to.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("spawning sl-load idle")?;
    let stdout = child.stdout.take().context("sl-load idle stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading sl-load idle's report")?;
    let v: Value =
        serde_json::from_str(line.trim()).with_context(|| format!("sl-load idle printed {line:?}"))?;
    let established = v["established"].as_u64().unwrap_or(0);
    // Let both agents finish their side (the last streams' bookkeeping), then read RSS.
    std::thread::sleep(Duration::from_secs(1));
    let with: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let with_fds: Vec<u64> = pids.iter().map(|p| fds_of(*p)).collect();
    // Closing its stdin tells sl-load to close the connections and exit.
    drop(child.stdin.take());
    let status = child.wait()?;
    let complete = status.success() && established == n as u64;
    if !complete {
        problems.push(format!("idle connections: {established} of {n} established ({v})"));
    }
    let scenario = "sluice_cross_node_mtls";
    records.push(Rec::new(scenario, "idle_connections_established", established as f64, "count"));
    for (i, (b, w)) in base.iter().zip(&with).enumerate() {
        let agent = if i == 0 { "client_agent" } else { "server_agent" };
        records.push(Rec::new(
            scenario,
            format!("{agent}_rss_with_{established}_idle_connections"),
            *w as f64 / 1024.0,
            "MiB",
        ));
        let per = (*w as f64 - *b as f64) / established.max(1) as f64;
        let target = if complete {
            "<= 8 KiB".to_string()
        } else {
            format!("<= 8 KiB (not judged: {established} of {n} connections)")
        };
        records.push(
            Rec::new(scenario, format!("{agent}_rss_per_idle_connection"), per.max(0.0), "KiB")
                .target(target, complete && per <= 8.0),
        );
        let fds = (with_fds[i] as f64 - base_fds[i] as f64) / established.max(1) as f64;
        records.push(Rec::new(scenario, format!("{agent}_fds_per_idle_connection"), fds.max(0.0), "fds"));
    }
    Ok(())
}

fn run(a: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let secs: u32 = if a.quick { 2 } else { 10 };
    let idle_n: usize = if a.quick { 500 } else { 10_000 };
    let nofile = raise_nofile()?;
    let me = std::env::current_exe()?;
    let load_bin = me.parent().context("exe has no directory")?.join("sl-load");
    if !load_bin.exists() {
        bail!(
            "{} not found: build the sluice-e2e binaries (`cargo build --release -p sluice-e2e --bins`)",
            load_bin.display()
        );
    }
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
    for (i, p) in pids.iter().enumerate() {
        let have = nofile_of(*p)?;
        if have < idle_n as u64 + 1024 {
            bail!(
                "agent on node {} may open only {have} files, too few for {idle_n} idle connections \
                 (this process has {nofile}; the harness's start_agent in tests/src/cluster.rs \
                 must raise RLIMIT_NOFILE in the spawned agent's pre_exec)",
                i + 1
            );
        }
    }
    let idle_rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    for server in [&pc, &mb, &mc] {
        serve(&c, &load_bin, server)?;
    }
    start_relays(&c, &load_bin, &pa, &pc)?;
    let run = |scenario, client, server, relayed| Run { scenario, client, server, relayed };
    let runs: Vec<Run> = [
        run(SCENARIOS[0], &pa, &pc, false),
        run(SCENARIOS[1], &pa, &pc, true),
        run(SCENARIOS[2], &ma, &mb, false),
        run(SCENARIOS[3], &ma, &mc, false),
    ]
    .into_iter()
    .filter(|r| a.measures(r.scenario))
    .collect();

    let mut records: Vec<Rec> = Vec::new();
    // Bulk throughput.
    let streams_list: &[u32] = if a.runs("throughput") { &[1, 8] } else { &[] };
    for &streams in streams_list {
        let mut direct = f64::NAN;
        for run in &runs {
            let scenario = run.scenario;
            let (bps, cpu, peak) = measured(&pids, || iperf(&c, run, secs, streams))?;
            let mbit = bps / 1e6;
            if scenario == "direct" {
                direct = mbit;
            }
            let mut r =
                Rec::new(scenario, format!("throughput_{streams}_streams"), mbit, "Mbit/s").ratio(direct);
            let want = match scenario {
                "sluice_same_node" => Some(0.7),
                "sluice_cross_node_mtls" => Some(0.5),
                _ => None,
            };
            if let (Some(w), Some(ratio)) = (want, r.ratio) {
                r = r.target(format!(">= {w} x direct"), ratio >= w);
            }
            records.push(r);
            if run.is_mesh() {
                records.push(Rec::new(scenario, format!("agent_cpu_seconds_{streams}_streams"), cpu, "s"));
                records.push(Rec::new(
                    scenario,
                    format!("agent_peak_rss_{streams}_streams"),
                    peak as f64 / 1024.0,
                    "MiB",
                ));
            }
        }
    }

    // Request/response latency at a fixed rate, open loop.
    let mut direct_lat = Value::Null;
    for run in runs.iter().filter(|_| a.runs("latency")) {
        let (scenario, client) = (run.scenario, run.client);
        let to = run.addr(ECHO_PORT);
        let args = [
            "latency".to_string(),
            to.to_string(),
            RATE.to_string(),
            secs.to_string(),
            REQ_BYTES.to_string(),
        ];
        let (v, cpu, _) = measured(&pids, || load(&c, &load_bin, client, &args))?;
        if scenario == "direct" {
            direct_lat = v.clone();
        }
        for (key, metric) in [
            ("p50_us", "latency_p50"),
            ("p90_us", "latency_p90"),
            ("p99_us", "latency_p99"),
            ("p999_us", "latency_p99.9"),
        ] {
            let val = v[key].as_f64().unwrap_or(f64::NAN);
            let direct = direct_lat[key].as_f64().unwrap_or(f64::NAN);
            let mut r = Rec::new(scenario, metric, val, "us").ratio(direct);
            if key == "p99_us" && run.is_mesh() {
                let limit = 3.0 * direct + 1000.0;
                r = r.target(format!("<= 3 x direct + 1 ms ({limit:.0} us)"), val <= limit);
            }
            records.push(r);
        }
        if scenario != "direct" {
            // For the relays too: what terminating TCP twice costs without TLS and HTTP/2.
            let added =
                v["p50_us"].as_f64().unwrap_or(f64::NAN) - direct_lat["p50_us"].as_f64().unwrap_or(f64::NAN);
            let mut r = Rec::new(scenario, "added_latency_p50", added, "us");
            if scenario == "sluice_cross_node_mtls" {
                r = r.target("<= 150 us", added <= 150.0);
            }
            records.push(r);
            if run.is_mesh() {
                records.push(Rec::new(scenario, "agent_cpu_seconds_latency", cpu, "s"));
            }
        }
        let late = v["late_sends"].as_f64().unwrap_or(f64::NAN);
        records.push(Rec::new(scenario, "latency_late_sends", late, "count"));
    }

    // Connection churn.
    let mut direct_cps = f64::NAN;
    let mut direct_conn = Value::Null;
    for run in runs.iter().filter(|_| a.runs("churn")) {
        let (scenario, client) = (run.scenario, run.client);
        let to = run.addr(ONCE_PORT);
        let args = [
            "churn".to_string(),
            to.to_string(),
            secs.to_string(),
            CHURN_WORKERS.to_string(),
            REQ_BYTES.to_string(),
        ];
        // A run with errors still reports them (the check below fails it), so do not require ok.
        let (v, cpu, _) = measured(&pids, || {
            let mut cmd = c.pod_command(client, &load_bin)?;
            cmd.args(&args).stdin(Stdio::null());
            let out = cmd.output().context("running sl-load churn")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str::<Value>(stdout.trim())
                .with_context(|| format!("sl-load churn printed {stdout:?}"))
        })?;
        eprintln!("churn {scenario}: {v}");
        if v["connections"].is_null() {
            bail!("sl-load churn in {}: {v}", client.name);
        }
        let cps = v["per_sec"].as_f64().unwrap_or(f64::NAN);
        if scenario == "direct" {
            direct_cps = cps;
        }
        let mut r = Rec::new(scenario, "connections_per_second", cps, "conn/s").ratio(direct_cps);
        if scenario == "sluice_cross_node_mtls" {
            r = r.target(">= 5000 conn/s", cps >= 5000.0);
        }
        records.push(r);
        for (key, metric) in [("conn_p50_us", "connection_time_p50"), ("conn_p99_us", "connection_time_p99")]
        {
            let val = v[key].as_f64().unwrap_or(f64::NAN);
            let direct =
                if scenario == "direct" { val } else { direct_conn[key].as_f64().unwrap_or(f64::NAN) };
            records.push(Rec::new(scenario, metric, val, "us").ratio(direct));
        }
        if scenario == "direct" {
            direct_conn = v.clone();
        }
        let errors = v["errors"].as_f64().unwrap_or(f64::NAN);
        records.push(Rec::new(scenario, "connection_errors", errors, "count"));
        if errors != 0.0 {
            eprintln!("{scenario}: churn errors: {}", v["first_error"]);
        }
        if run.is_mesh() {
            records.push(Rec::new(scenario, "agent_cpu_seconds_churn", cpu, "s"));
        }
    }

    if a.runs("http") {
        http_group(a, &c, &pids, &pa, &pc, &ma, &mc, &mut records)?;
    }

    // Idle RSS at start-up (pods enrolled, no traffic yet).
    for (i, kib) in idle_rss.iter().enumerate() {
        let mib = *kib as f64 / 1024.0;
        records.push(
            Rec::new(&format!("agent_node{}", i + 1), "idle_rss", mib, "MiB")
                .target("<= 20 MiB", mib <= 20.0),
        );
    }

    // Many idle tunnelled connections, on a fresh pair of agents: after the runs above the
    // allocator holds freed memory that new connections would reuse, hiding their cost; and the
    // cost of 10,000 connections must not be retained into the other runs' peak RSS.
    drop(c);
    let mut problems: Vec<String> = Vec::new();
    if a.runs("idle") {
        idle_connections(&load_bin, idle_n, &mut records, &mut problems)?;
    }

    // Validity: finite, non-negative (an `added_*` value is a difference of two measurements: on
    // the same-node path it is about zero and run-to-run noise makes it negative as often as not),
    // no errors. Never a speed.
    for r in &records {
        let difference = r.metric.starts_with("added_");
        if !r.value.is_finite() || (r.value < 0.0 && !difference) {
            problems.push(format!("invalid measurement {} {}: {}", r.scenario, r.metric, r.value));
        }
        if r.metric == "http2_failed_requests" && r.value != 0.0 {
            problems.push(format!("{}: {} failed HTTP/2 requests", r.scenario, r.value));
        }
        if r.metric == "connection_errors" && r.value != 0.0 {
            problems.push(format!("{}: {} connection errors during churn", r.scenario, r.value));
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let json: Vec<Value> = records.iter().map(Rec::json).collect();
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let mut md = String::from(
        "| scenario | metric | value | unit | ratio to direct | target | meets |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &records {
        let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}"));
        let (target, meets) = match &r.target {
            Some((t, m)) => (t.as_str(), if *m { "yes" } else { "no" }),
            None => ("-", "-"),
        };
        md.push_str(&format!(
            "| {} | {} | {:.2} | {} | {ratio} | {target} | {meets} |\n",
            r.scenario, r.metric, r.value, r.unit
        ));
    }
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    println!(
        "wrote {} and results.md ({} s per run, {} idle connections{}; {:.0} s in all)",
        a.out.join("results.json").display(),
        secs,
        idle_n,
        if a.quick { ", quick" } else { "" },
        started.elapsed().as_secs_f64()
    );
    if !problems.is_empty() {
        bail!("invalid run:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
