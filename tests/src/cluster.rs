//! Topology builder: router, nodes, pods, agents; RAII cleanup.
use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::sys;

static COUNTER: AtomicU32 = AtomicU32::new(0);
const CNI_DIR: &str = "/usr/lib/cni";
const METRICS_PORT: u16 = 15020;
const ADMIN_PORT: u16 = 15000;

/// A pod: its sandbox netns, cgroup, addresses and identity.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: usize,
    pub netns: String,
    pub cgroup: PathBuf,
    pub ipv4: IpAddr,
    pub ipv6: Option<IpAddr>,
    pub labels: Vec<(String, String)>,
    pub service_account: String,
    pub unpublished: bool,
    container_id: String,
    cni_result: Value,
}

/// What a test asks for when it creates a pod (the API server's Pod object).
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Defaults to the pod's name, so every test pod has its own SPIFFE identity.
    pub service_account: Option<String>,
    /// Do not publish the Pod object before sluice-cni runs (an agent that has not seen it yet).
    pub unpublished: bool,
    /// Created before sluice was installed: the runtime's chain had no sluice-cni.
    pub before_sluice: bool,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        PodSpec { namespace: namespace.into(), name: name.into(), ..Default::default() }
    }

    pub fn label(mut self, k: &str, v: &str) -> PodSpec {
        self.labels.push((k.into(), v.into()));
        self
    }

    pub fn service_account(mut self, sa: &str) -> PodSpec {
        self.service_account = Some(sa.into());
        self
    }

    /// A pod that was running before sluice was installed (no sluice-cni ADD).
    pub fn before_sluice(mut self) -> PodSpec {
        self.before_sluice = true;
        self
    }
}

/// A Service (the API server's object): VIP, ports, selector.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub vips: Vec<IpAddr>,
    /// (port, targetPort)
    pub ports: Vec<(u16, u16)>,
    /// Names of ports that have one (a `tcp-*` name selects opaque TCP at a waypoint).
    pub port_names: Vec<(u16, String)>,
    pub selector: Vec<(String, String)>,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
    }
}

struct Node {
    name: String,
    netns: String,
    cgroup: PathBuf,
    state: PathBuf,
    bpffs: PathBuf,
    agent: Mutex<Option<Child>>,
}

/// An agent process outside the cluster's bookkeeping (the previous agent of an upgrade, or one
/// started to be killed mid-handover); killed when dropped, so a failing test leaves none behind.
pub struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl AgentProcess {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL: nothing runs in the agent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    /// Terminates the agent as the kubelet does (SIGTERM) and waits up to `within` for it to exit;
    /// returns its exit status and how long it took. Kills it if it does not exit in time.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let start = Instant::now();
        sys::terminate(self.0.id())?;
        loop {
            if let Some(st) = self.0.try_wait()? {
                return Ok((st, start.elapsed()));
            }
            if start.elapsed() > within {
                let _ = self.0.kill();
                let _ = self.0.wait();
                bail!("agent {} did not exit within {within:?} of SIGTERM", self.0.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running packet capture.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
    /// Kept open so tcpdump's closing statistics do not hit a closed pipe; read at stop.
    stderr: std::process::ChildStderr,
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Capture {
    /// Stops tcpdump (flushing the file) and returns the capture file and tcpdump's report.
    pub fn stop(mut self) -> anyhow::Result<(PathBuf, String)> {
        use std::io::Read as _;
        // SIGINT lets tcpdump flush and close the file.
        sys::interrupt(self.child.id())?;
        self.child.wait()?;
        let mut report = String::new();
        let _ = self.stderr.read_to_string(&mut report);
        Ok((self.file.clone(), report))
    }
}

/// A simulated cluster. Drop removes everything it created.
pub struct Cluster {
    pub id: String,
    tmp: PathBuf,
    bpffs: PathBuf,
    cgroup: PathBuf,
    router: String,
    nodes: Vec<Node>,
    /// The mesh config directory every agent watches.
    pub mesh_dir: PathBuf,
    cni_bin: PathBuf,
    sluice: PathBuf,
    pods: Mutex<Vec<Pod>>,
    services: Mutex<Vec<ServiceSpec>>,
    procs: Mutex<Vec<Child>>,
    /// Extra arguments for every agent started from now on.
    pub agent_args: Mutex<Vec<String>>,
    /// Numbers the agents' cgroups.
    agent_seq: std::sync::atomic::AtomicUsize,
}

/// How many times slower than this machine the suite runs: `SLUICE_TIME_SCALE` (an integer the
/// kernel-matrix VM launcher sets, because it knows its guests run under emulation), else 1.
/// Every timeout of the harness is multiplied by it, so a slow machine waits longer for the same
/// readiness signals rather than failing; nothing sleeps in place of waiting for readiness.
pub fn time_scale() -> u32 {
    static SCALE: OnceLock<u32> = OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("SLUICE_TIME_SCALE")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|s| *s >= 1)
            .unwrap_or(1)
    })
}

/// `d` stretched by [`time_scale`]: use for every timeout and deadline in tests.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// Where clusters keep their files: `$TMPDIR/sluice-e2e` (`/tmp/sluice-e2e` by default; the
/// kernel-matrix guest points TMPDIR at its own tmpfs).
fn e2e_root() -> PathBuf {
    std::env::temp_dir().join("sluice-e2e")
}

/// The sluice binary under test: `SLUICE_BIN`, else `target/debug/sluice`.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice")
}

fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    sys::run_ok(Command::new("ip").args(args)).map_err(Into::into)
}

fn ipn(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    sys::run_ok(Command::new("ip").arg("-n").arg(netns).args(args)).map_err(Into::into)
}

fn sysctl_in(netns: &str, kv: &[&str]) -> anyhow::Result<()> {
    let mut c = Command::new("sysctl");
    c.arg("-qw").args(kv);
    sys::enter_on_spawn(&mut c, &PathBuf::from("/var/run/netns").join(netns), None)?;
    sys::run_ok(&mut c).map_err(Into::into)
}

impl Cluster {
    /// Builds `nodes` nodes (not started: call [`Cluster::start_agent`]) joined by a router.
    pub fn new(nodes: usize) -> anyhow::Result<Cluster> {
        sweep_stale();
        let sluice = sluice_bin();
        let sluice = sluice.canonicalize().unwrap_or(sluice);
        if !sluice.exists() {
            bail!(
                "sluice binary {} not found: build it (`cargo build -p sluice`) or set SLUICE_BIN",
                sluice.display()
            );
        }
        let id = format!("{:x}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let tmp = e2e_root().join(&id);
        let cgroup = cgroup2_root()?.join("sluice-e2e").join(&id);
        let mut c = Cluster {
            router: format!("sl{id}r"),
            bpffs: tmp.join("bpffs"),
            mesh_dir: tmp.join("mesh"),
            cni_bin: tmp.join("cni-bin"),
            tmp,
            cgroup,
            nodes: Vec::new(),
            id,
            sluice,
            pods: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            services: Mutex::new(Vec::new()),
            agent_args: Mutex::new(Vec::new()),
            agent_seq: Default::default(),
        };
        c.build(nodes)?;
        Ok(c)
    }

    fn build(&mut self, nodes: usize) -> anyhow::Result<()> {
        fs::create_dir_all(&self.bpffs)?;
        fs::create_dir_all(&self.mesh_dir)?;
        fs::create_dir_all(&self.cni_bin)?;
        fs::create_dir_all(&self.cgroup)?;
        sys::mount_bpffs(&self.bpffs)?;
        std::os::unix::fs::symlink(&self.sluice, self.cni_bin.join("sluice-cni"))?;
        let ca = self.tmp.join("ca");
        sys::run_ok(Command::new(&self.sluice).args(["ca", "init", "--dir"]).arg(&ca))?;
        ip(&["netns", "add", &self.router])?;
        ipn(&self.router, &["link", "set", "lo", "up"])?;
        sysctl_in(&self.router, &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        for i in 1..=nodes {
            let name = format!("node{i}");
            let netns = format!("sl{}n{i}", self.id);
            let node_if = format!("sl{}n{i}", self.id);
            let rtr_if = format!("sl{}r{i}", self.id);
            ip(&["netns", "add", &netns])?;
            ipn(&netns, &["link", "set", "lo", "up"])?;
            sysctl_in(&netns, &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
            ip(&[
                "link",
                "add",
                &node_if,
                "netns",
                &netns,
                "type",
                "veth",
                "peer",
                "name",
                &rtr_if,
                "netns",
                &self.router,
            ])?;
            ipn(&netns, &["addr", "add", &format!("10.255.{i}.2/24"), "dev", &node_if])?;
            ipn(&netns, &["addr", "add", &format!("fd00:255:{i}::2/64"), "dev", &node_if, "nodad"])?;
            ipn(&netns, &["link", "set", &node_if, "up"])?;
            ipn(&netns, &["route", "add", "default", "via", &format!("10.255.{i}.1")])?;
            ipn(&netns, &["-6", "route", "add", "default", "via", &format!("fd00:255:{i}::1")])?;
            ipn(&self.router, &["addr", "add", &format!("10.255.{i}.1/24"), "dev", &rtr_if])?;
            ipn(&self.router, &["addr", "add", &format!("fd00:255:{i}::1/64"), "dev", &rtr_if, "nodad"])?;
            ipn(&self.router, &["link", "set", &rtr_if, "up"])?;
            ipn(
                &self.router,
                &["route", "add", &format!("10.10.{i}.0/24"), "via", &format!("10.255.{i}.2")],
            )?;
            ipn(
                &self.router,
                &["-6", "route", "add", &format!("fd00:10:{i}::/64"), "via", &format!("fd00:255:{i}::2")],
            )?;
            let cgroup = self.cgroup.join(&name);
            fs::create_dir_all(cgroup.join("agent"))?;
            let state = self.tmp.join(&name);
            fs::create_dir_all(&state)?;
            self.nodes.push(Node {
                bpffs: self.bpffs.join(&name),
                name,
                netns,
                cgroup,
                state,
                agent: Mutex::new(None),
            });
        }
        Ok(())
    }

    fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    /// Path of node `n`'s netns.
    pub fn node_netns(&self, n: usize) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.node(n).netns)
    }

    /// A directory of this run's own (created, removed with the cluster), for a test's files.
    pub fn scratch_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.tmp.join("scratch").join(name);
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// This cluster's CA directory (shared by its agents).
    pub fn ca_dir(&self) -> PathBuf {
        self.tmp.join("ca")
    }

    /// A scratch directory removed with the cluster.
    pub fn scratch(&self) -> PathBuf {
        self.tmp.clone()
    }

    /// Issues a leaf certificate with URI SAN `uri` from the CA in `ca` (`sluice ca issue`) into
    /// the scratch directory as `name.crt`/`name.key`; returns the `--cert C --key K` arguments of
    /// `sl-hbone`.
    pub fn issue_cert(&self, ca: &Path, uri: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let out = self.tmp.join(name);
        let utf8 = |p: &Path| p.to_str().map(str::to_string).context("path is not UTF-8");
        self.sluice(&["ca", "issue", "--dir", &utf8(ca)?, "--uri", uri, "--out", &utf8(&out)?])?;
        let with = |ext: &str| out.with_extension(ext).to_string_lossy().into_owned();
        Ok(vec!["--cert".into(), with("crt"), "--key".into(), with("key")])
    }

    /// Runs the sluice binary under test with `args`; its stdout, or an error with stderr.
    pub fn sluice(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.sluice).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("sluice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The router's interface towards node `n` (the link every packet between node `n` and the
    /// rest of the cluster crosses).
    pub fn router_link(&self, n: usize) -> String {
        format!("sl{}r{n}", self.id)
    }

    /// Starts `tcpdump` in netns `netns` on `iface`; stop it with [`Capture::stop`] to read the file.
    pub fn capture(&self, netns: &Path, iface: &str, filter: &str) -> anyhow::Result<Capture> {
        let file = self.tmp.join(format!("{iface}-{}.pcap", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let mut c = Command::new("tcpdump");
        c.args(["-i", iface, "-s", "0", "-U", "-n", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null());
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        sys::enter_on_spawn(&mut c, netns, None)?;
        let mut child = c.spawn().context("starting tcpdump")?;
        // tcpdump reports "listening on" once the capture is open.
        let mut err = child.stderr.take().context("tcpdump stderr")?;
        let mut seen = Vec::new();
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            use std::io::Read as _;
            let mut buf = [0u8; 256];
            let n = err.read(&mut buf)?;
            if n == 0 || Instant::now() > deadline {
                bail!("tcpdump did not start: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(Capture { child, file, stderr: err })
    }

    /// The router namespace (a host outside the mesh).
    pub fn router_netns(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.router)
    }

    /// Writes a mesh config file (agents reload it).
    pub fn write_config(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.mesh_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.mesh_dir.join(file))?;
        Ok(())
    }

    /// Writes a mesh config file and waits until every running agent has loaded a newer snapshot
    /// (the file source rejects a broken change; then this times out with the agent's log).
    pub fn apply_config(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let generation = |n: usize| -> anyhow::Result<u64> {
            let dump: Value = serde_json::from_str(&self.agent_get(n, "/debug/config_dump")?)?;
            Ok(dump["generation"].as_u64().unwrap_or(0))
        };
        let running: Vec<usize> = (1..=self.nodes.len())
            .filter(|n| self.node(*n).agent.lock().map(|a| a.is_some()).unwrap_or(false))
            .collect();
        let before: Vec<u64> = running.iter().map(|n| generation(*n)).collect::<anyhow::Result<_>>()?;
        self.write_config(file, yaml)?;
        for (n, g0) in running.iter().zip(before) {
            let deadline = Instant::now() + scaled(Duration::from_secs(5));
            while generation(*n)? <= g0 {
                if Instant::now() > deadline {
                    bail!("agent on node{n} did not load {file}:\n{}", self.agent_log(*n));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Spawns an agent process for node `n` (in the node's netns and the node's agent cgroup), with
    /// `extra` arguments after the cluster's own; does not wait for it.
    pub fn spawn_agent(&self, n: usize, extra: &[&str]) -> anyhow::Result<AgentProcess> {
        self.spawn_agent_child(n, extra).map(AgentProcess)
    }

    fn spawn_agent_child(&self, n: usize, extra: &[&str]) -> anyhow::Result<Child> {
        let node = self.node(n);
        let log = fs::OpenOptions::new().create(true).append(true).open(node.state.join("agent.log"))?;
        let mut cmd = Command::new(&self.sluice);
        cmd.args(["agent", "--log-level", "info,sluice=debug", "--node-name", &node.name])
            .arg("--config")
            .arg(&self.mesh_dir)
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(&node.bpffs)
            .arg("--state-dir")
            .arg(node.state.join("run"))
            .args(["--metrics-addr", &format!("0.0.0.0:{METRICS_PORT}")])
            .args(["--admin-addr", &format!("127.0.0.1:{ADMIN_PORT}")])
            .arg("--ca-dir")
            .arg(self.tmp.join("ca"))
            // The node's pod namespaces as a runtime pins them (only this node's: the machine's
            // /var/run/netns and /proc hold every test's).
            .arg("--pod-netns-dir")
            .arg(node.state.join("netns"))
            .args(["--pod-netns-proc", "false"])
            .args(self.agent_args.lock().map(|a| a.clone()).unwrap_or_default())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Each agent process in a cgroup of its own (as each agent pod is its own container).
        let k = self.agent_seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cg = node.cgroup.join("agent").join(format!("a{k}"));
        fs::create_dir_all(&cg)?;
        sys::enter_on_spawn(&mut cmd, &self.node_netns(n), Some(&cg))?;
        cmd.spawn().context("spawning the agent")
    }

    /// Waits until `child` serves node `n`'s admin port (its pid answers on /debug/agent).
    fn wait_serving(&self, n: usize, child: &mut Child) -> anyhow::Result<()> {
        let ready_within = scaled(Duration::from_secs(20));
        let deadline = Instant::now() + ready_within;
        let pid = format!("\"pid\": {}", child.id());
        loop {
            if let Some(st) = child.try_wait()? {
                bail!("agent on node{n} exited during start-up ({st}):\n{}", self.agent_log(n));
            }
            let ready = self.agent_get(n, "/healthz/ready").map(|b| b.starts_with("ready")).unwrap_or(false);
            if ready && self.agent_get(n, "/debug/agent").map(|b| b.contains(&pid)).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("agent on node{n} not ready in {ready_within:?}:\n{}", self.agent_log(n));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts (or restarts) node `n`'s agent and waits until it is ready.
    pub fn start_agent(&self, n: usize) -> anyhow::Result<()> {
        self.start_agent_with(n, &[])
    }

    /// Like [`Cluster::start_agent`], with `extra` arguments.
    pub fn start_agent_with(&self, n: usize, extra: &[&str]) -> anyhow::Result<()> {
        let mut child = self.spawn_agent_child(n, extra)?;
        self.wait_serving(n, &mut child)?;
        *self.node(n).agent.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(child);
        Ok(())
    }

    /// Upgrades node `n`'s agent the way the DaemonSet does (maxSurge 1): starts a second agent
    /// beside the running one, waits until it has taken the pods over and serves, and returns the
    /// previous agent's process (still running, draining; terminate it).
    pub fn upgrade_agent(&self, n: usize, extra: &[&str]) -> anyhow::Result<AgentProcess> {
        let mut child = self.spawn_agent_child(n, extra)?;
        self.wait_serving(n, &mut child)?;
        let mut slot = self.node(n).agent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        slot.replace(child)
            .map(AgentProcess)
            .ok_or_else(|| anyhow::anyhow!("node{n} had no agent to upgrade"))
    }

    /// The process id of node `n`'s agent, if it runs.
    pub fn agent_pid(&self, n: usize) -> Option<u32> {
        self.node(n).agent.lock().ok().and_then(|a| a.as_ref().map(Child::id))
    }

    /// SIGTERMs node `n`'s agent (as the kubelet does) and waits up to `within` for it to exit.
    pub fn terminate_agent(&self, n: usize, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.node(n).agent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take();
        let mut agent = AgentProcess(child.ok_or_else(|| anyhow::anyhow!("node{n} runs no agent"))?);
        Ok(agent.terminate(within)?.0)
    }

    /// SIGKILLs node `n`'s agent (no cleanup runs in it).
    pub fn kill_agent(&self, n: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.node(n).agent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Runs `sluice ready-check` as the readiness probe of the container of agent `pid` would: in
    /// node `n`'s network namespace and that agent's cgroup. True when it passes.
    pub fn ready_check(&self, n: usize, pid: u32) -> anyhow::Result<bool> {
        let cg = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let rel = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| anyhow::anyhow!("agent {pid} has no cgroup2 path"))?;
        let root = self
            .node(n)
            .cgroup
            .ancestors()
            .find(|p| p.join("cgroup.procs").exists() && !p.join("cgroup.events").exists());
        let root = root.ok_or_else(|| anyhow::anyhow!("no cgroup2 root above the node cgroup"))?;
        let mut cmd = Command::new(&self.sluice);
        cmd.args(["ready-check", "--admin", &format!("127.0.0.1:{ADMIN_PORT}")]);
        sys::enter_on_spawn(&mut cmd, &self.node_netns(n), Some(&root.join(rel.trim_start_matches('/'))))?;
        Ok(cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?.success())
    }

    /// Node `n`'s bpffs directory (the agent's `--bpffs`).
    pub fn node_bpffs(&self, n: usize) -> PathBuf {
        self.node(n).bpffs.clone()
    }

    /// The agent's log so far.
    pub fn agent_log(&self, n: usize) -> String {
        fs::read_to_string(self.node(n).state.join("agent.log")).unwrap_or_default()
    }

    /// GET `path` from node `n`'s agent (admin port for `/debug/*`, metrics port otherwise); the body.
    pub fn agent_get(&self, n: usize, path: &str) -> anyhow::Result<String> {
        match self.agent_request(n, "GET", path)? {
            (200, body) => Ok(body),
            (status, body) => bail!("GET {path}: {status} {body}"),
        }
    }

    /// `method path` to node `n`'s agent (admin port for `/debug/*`, metrics port otherwise); the
    /// status and the body, whatever the status.
    pub fn agent_request(&self, n: usize, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let port = if path.starts_with("/debug/") { ADMIN_PORT } else { METRICS_PORT };
        let (method, path) = (method.to_string(), path.to_string());
        sys::in_netns(&self.node_netns(n), move || -> anyhow::Result<(u16, String)> {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                scaled(Duration::from_secs(2)),
            )?;
            s.set_read_timeout(Some(scaled(Duration::from_secs(5))))?;
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            let (head, body) = buf.split_once("\r\n\r\n").context("malformed HTTP response")?;
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .with_context(|| format!("{method} {path}: no status in {head:?}"))?;
            Ok((status, body.to_string()))
        })?
    }

    /// Sum of a metric's samples on node `n` whose labels contain every `k="v"` in `labels`.
    pub fn metric(&self, n: usize, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let text = self.agent_get(n, "/stats/prometheus")?;
        Ok(sum_metric(&text, name, labels))
    }

    /// Waits (up to 10 s, scaled) until a metric on node `n` exceeds `above`; its value. The
    /// readiness signal for "the agent has carried that connection", instead of a sleep.
    pub fn wait_metric_above(
        &self,
        n: usize,
        name: &str,
        labels: &[(&str, &str)],
        above: f64,
    ) -> anyhow::Result<f64> {
        let within = scaled(Duration::from_secs(10));
        let deadline = Instant::now() + within;
        loop {
            let v = self.metric(n, name, labels)?;
            if v > above {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{name}{labels:?} on node{n} stayed at {v} (waited {within:?} for more than {above})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates a pod on node `n` the way a container runtime does: sandbox netns, `loopback`, then
    /// the conflist `ptp` (host-local IPAM, v4+v6) -> `sluice-cni` with prevResult.
    pub fn add_pod(&self, n: usize, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        let (pod, result) = self.try_add_pod(n, namespace, name)?;
        result.map_err(|e| anyhow::anyhow!("CNI ADD for {namespace}/{name} failed: {e}"))?;
        Ok(pod)
    }

    /// Like [`Cluster::add_pod`] but returns the sluice-cni outcome (stdout JSON on failure)
    /// instead of failing, for tests of the CNI's error path.
    pub fn try_add_pod(
        &self,
        n: usize,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<(Pod, Result<(), String>)> {
        self.try_add_pod_spec(n, PodSpec::new(namespace, name))
    }

    /// Creates a pod from a spec (labels, service account); fails the test on a CNI error.
    pub fn add_pod_spec(&self, n: usize, spec: PodSpec) -> anyhow::Result<Pod> {
        let (ns, name) = (spec.namespace.clone(), spec.name.clone());
        let (pod, result) = self.try_add_pod_spec(n, spec)?;
        result.map_err(|e| anyhow::anyhow!("CNI ADD for {ns}/{name} failed: {e}"))?;
        Ok(pod)
    }

    /// Like [`Cluster::add_pod_spec`] but returns the sluice-cni outcome. As in Kubernetes, the
    /// Pod object (labels, service account, and its IPs once the primary CNI assigned them) is
    /// published to the mesh config before sluice-cni runs; the agents have seen it by then.
    pub fn try_add_pod_spec(&self, n: usize, spec: PodSpec) -> anyhow::Result<(Pod, Result<(), String>)> {
        let (namespace, name) = (spec.namespace.as_str(), spec.name.as_str());
        let node = self.node(n);
        let idx = self.pods.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len();
        let netns = format!("sl{}p{idx}", self.id);
        ip(&["netns", "add", &netns])?;
        let cgroup = node.cgroup.join(name);
        fs::create_dir_all(&cgroup)?;
        let container_id = format!("{}-{idx}", self.id);
        let uid = format!("uid-{}-{idx}", self.id);
        let mut pod = Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            node: n,
            netns,
            cgroup,
            ipv4: IpAddr::from([0, 0, 0, 0]),
            ipv6: None,
            labels: spec.labels.clone(),
            service_account: spec.service_account.clone().unwrap_or_else(|| name.to_string()),
            unpublished: spec.unpublished,
            container_id,
            cni_result: Value::Null,
        };
        // The pod is tracked from here on so cleanup removes its netns and cgroup on any failure.
        self.pods.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(pod.clone());
        sysctl_in(&pod.netns, &["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        self.cni(n, &pod, "ADD", json!({"type": "loopback"}), None).map_err(anyhow::Error::msg)?;
        let ptp = self.cni(n, &pod, "ADD", self.ptp_conf(n), None).map_err(anyhow::Error::msg)?;
        pod.cni_result = ptp.clone();
        for ipc in ptp["ips"].as_array().into_iter().flatten() {
            let addr: IpAddr =
                ipc["address"].as_str().unwrap_or("").split('/').next().unwrap_or("").parse()?;
            if addr.is_ipv4() { pod.ipv4 = addr } else { pod.ipv6 = Some(addr) }
        }
        if let Some(p) = self
            .pods
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter_mut()
            .find(|p| p.netns == pod.netns)
        {
            *p = pod.clone();
        }
        let pinned = node.state.join("netns");
        fs::create_dir_all(&pinned)?;
        std::os::unix::fs::symlink(pod.netns_path(), pinned.join(&pod.netns))?;
        self.publish_objects()?;
        if spec.before_sluice {
            return Ok((pod, Ok(())));
        }
        let sluice = self.cni(n, &pod, "ADD", self.sluice_conf(n), Some(ptp)).map(|_| ());
        Ok((pod, sluice))
    }

    /// Declares a Service (written to the mesh config; waits until every running agent has it).
    pub fn add_service(&self, svc: ServiceSpec) -> anyhow::Result<()> {
        self.services.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(svc);
        self.publish_objects()
    }

    /// Writes every pod with addresses and every Service as the API server would hold them
    /// (`runtime.yaml` in the mesh config), then waits until each running agent has loaded it.
    fn publish_objects(&self) -> anyhow::Result<()> {
        let mut docs = Vec::new();
        for p in self.pods.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
            if p.ipv4.is_unspecified() || p.unpublished {
                continue;
            }
            let labels: serde_json::Map<String, Value> =
                p.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            let ips: Vec<Value> =
                std::iter::once(p.ipv4).chain(p.ipv6).map(|ip| json!({"ip": ip.to_string()})).collect();
            docs.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": labels, "uid": p.uid},
                "spec": {"serviceAccountName": p.service_account, "nodeName": self.node(p.node).name},
                "status": {"podIPs": ips},
            }));
        }
        for s in self.services.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
            let selector: serde_json::Map<String, Value> =
                s.selector.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|(p, t)| match s.port_names.iter().find(|(n, _)| n == p) {
                    Some((_, name)) => json!({"name": name, "port": p, "targetPort": t}),
                    None => json!({"port": p, "targetPort": t}),
                })
                .collect();
            let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
            docs.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": {"clusterIPs": vips, "ports": ports, "selector": selector},
            }));
        }
        // JSON is YAML: one document per object.
        let text: Vec<String> = docs.iter().map(Value::to_string).collect();
        let expected_docs = docs.len();
        self.write_config("runtime.yaml", &text.join("\n---\n"))?;
        for n in 1..=self.nodes.len() {
            if self.node(n).agent.lock().map(|a| a.is_none()).unwrap_or(true) {
                continue;
            }
            let within = scaled(Duration::from_secs(10));
            let deadline = Instant::now() + within;
            loop {
                let dump: Value = serde_json::from_str(&self.agent_get(n, "/debug/config_dump")?)?;
                let count = |k: &str| dump[k].as_array().map_or(0, Vec::len);
                // Other files may define pods too; the runtime objects must all be there.
                if count("workloads") + count("services") >= expected_docs
                    && docs.iter().all(|d| {
                        let kind = if d["kind"] == "Pod" { "workloads" } else { "services" };
                        dump[kind].as_array().is_some_and(|a| {
                            a.iter().any(|w| {
                                w["name"] == d["metadata"]["name"]
                                    && w["namespace"] == d["metadata"]["namespace"]
                                    && (kind == "services"
                                        || w["ips"]
                                            == json!(d["status"]["podIPs"].as_array().map(|v| {
                                                v.iter().map(|i| i["ip"].clone()).collect::<Vec<_>>()
                                            })))
                            })
                        })
                    })
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("agent on node{n} did not load the published pods/services within {within:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Deletes a pod as the runtime does (CNI DEL in reverse order), then its netns.
    /// Sends the CNI DEL a runtime sends for an older sandbox of `pod` (another container ID), as
    /// runtimes do when they clean up after a sandbox was recreated.
    pub fn del_older_sandbox(&self, pod: &Pod) -> anyhow::Result<()> {
        let mut old = pod.clone();
        old.container_id = format!("{}-old", pod.container_id);
        self.cni(pod.node, &old, "DEL", self.sluice_conf(pod.node), Some(pod.cni_result.clone()))
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub fn remove_pod(&self, pod: &Pod) -> anyhow::Result<()> {
        let prev = Some(pod.cni_result.clone());
        self.cni(pod.node, pod, "DEL", self.sluice_conf(pod.node), prev.clone())
            .map_err(anyhow::Error::msg)?;
        self.cni(pod.node, pod, "DEL", self.ptp_conf(pod.node), prev).map_err(anyhow::Error::msg)?;
        let _ = fs::remove_file(self.node(pod.node).state.join("netns").join(&pod.netns));
        ip(&["netns", "del", &pod.netns])?;
        Ok(())
    }

    fn ptp_conf(&self, n: usize) -> Value {
        json!({
            "type": "ptp", "ipMasq": false, "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "dataDir": self.tmp.join("ipam").join(n.to_string()),
                "ranges": [[{"subnet": format!("10.10.{n}.0/24")}], [{"subnet": format!("fd00:10:{n}::/64")}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        })
    }

    /// Node `n`'s agent CNI socket.
    pub fn agent_socket(&self, n: usize) -> PathBuf {
        self.node(n).state.join("run/cni.sock")
    }

    fn sluice_conf(&self, n: usize) -> Value {
        json!({"type": "sluice-cni", "agentSocket": self.node(n).state.join("run/cni.sock")})
    }

    /// Runs one CNI plugin in node `n`'s netns; Ok(result JSON) or Err(stdout+stderr).
    pub fn cni(
        &self,
        n: usize,
        pod: &Pod,
        command: &str,
        mut conf: Value,
        prev: Option<Value>,
    ) -> Result<Value, String> {
        let typ = conf["type"].as_str().unwrap_or_default().to_string();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("sluice-e2e");
        if let Some(p) = prev {
            conf["prevResult"] = p;
        }
        let bin = [self.cni_bin.join(&typ), Path::new(CNI_DIR).join(&typ)]
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| {
            format!("CNI plugin {typ} not found in {} or {CNI_DIR}", self.cni_bin.display())
        })?;
        let mut cmd = Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.netns_path())
            .env("CNI_IFNAME", if typ == "loopback" { "lo" } else { "eth0" })
            .env("CNI_PATH", format!("{}:{CNI_DIR}", self.cni_bin.display()))
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.uid
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::enter_on_spawn(&mut cmd, &self.node_netns(n), None).map_err(|e| e.to_string())?;
        let out = run_with_stdin(cmd, conf.to_string().as_bytes()).map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "{typ} {command} exit {}: {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if stdout.trim().is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&stdout).map_err(|e| e.to_string())
        }
    }

    /// A command that will run inside `pod` (its netns and cgroup); not started.
    pub fn pod_command(&self, pod: &Pod, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let mut c = Command::new(program);
        sys::enter_on_spawn(&mut c, &pod.netns_path(), Some(&pod.cgroup))?;
        Ok(c)
    }

    /// Starts a long-running process in `pod`; it is killed when the cluster drops. Returns its pid.
    pub fn spawn_in_pod(&self, pod: &Pod, mut cmd: Command) -> anyhow::Result<u32> {
        let _ = pod;
        let child = cmd.stdin(Stdio::null()).spawn()?;
        let pid = child.id();
        self.procs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(child);
        Ok(pid)
    }

    /// Starts `sluice waypoint` for the waypoint Gateway `gateway` (in the pod's namespace) inside
    /// `pod`, which carries `gateway.networking.k8s.io/gateway-name: <gateway>` and opts out of
    /// capture, and waits until it is ready. Logs go to [`Cluster::waypoint_log`]. Returns its pid.
    pub fn start_waypoint(&self, pod: &Pod, gateway: &str) -> anyhow::Result<u32> {
        self.start_waypoint_with(pod, gateway, &[])
    }

    /// [`Cluster::start_waypoint`] with extra `sluice waypoint` arguments.
    pub fn start_waypoint_with(&self, pod: &Pod, gateway: &str, extra: &[String]) -> anyhow::Result<u32> {
        let log = fs::File::create(self.tmp.join(format!("waypoint-{}.log", pod.name)))?;
        let mut cmd = self.pod_command(pod, &self.sluice)?;
        cmd.args([
            "waypoint",
            "--log-level",
            "info,sluice=debug",
            "--name",
            gateway,
            "--namespace",
            &pod.namespace,
        ])
        .args(["--service-account", &pod.service_account, "--config"])
        .arg(&self.mesh_dir)
        .arg("--ca-dir")
        .arg(self.ca_dir())
        .args(extra)
        .stdout(log.try_clone()?)
        .stderr(log);
        let pid = self.spawn_in_pod(pod, cmd)?;
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        loop {
            let out = self.run_in_netns(
                &pod.netns_path(),
                "curl",
                &["-sf", "-m", "1", &format!("http://127.0.0.1:{METRICS_PORT}/healthz/ready")],
            )?;
            if out.status.success() {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!("waypoint in {} not ready:\n{}", pod.name, self.waypoint_log(pod));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log of the waypoint started in `pod`.
    pub fn waypoint_log(&self, pod: &Pod) -> String {
        fs::read_to_string(self.tmp.join(format!("waypoint-{}.log", pod.name))).unwrap_or_default()
    }

    /// Runs a command to completion inside netns `netns` (no cgroup), with a timeout.
    pub fn run_in_netns(&self, netns: &Path, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut c = Command::new(program);
        c.args(args);
        sys::enter_on_spawn(&mut c, netns, None)?;
        Ok(c.stdin(Stdio::null()).output()?)
    }

    fn cleanup(&mut self) {
        let mut errors = Vec::new();
        if let Ok(mut procs) = self.procs.lock() {
            for c in procs.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for n in &self.nodes {
            if let Ok(mut a) = n.agent.lock()
                && let Some(mut c) = a.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let pods: Vec<Pod> = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
        for p in &pods {
            kill_cgroup(&p.cgroup);
            if let Err(e) = ip(&["netns", "del", &p.netns]) {
                errors.push(e.to_string());
            }
        }
        for n in &self.nodes {
            kill_cgroup(&n.cgroup.join("agent"));
            let _ = ip(&["netns", "del", &n.netns]);
        }
        let _ = ip(&["netns", "del", &self.router]);
        remove_cgroup_tree(&self.cgroup);
        // The shared parent goes too once no other run uses it (fails harmlessly otherwise).
        if let Some(parent) = self.cgroup.parent() {
            let _ = fs::remove_dir(parent);
        }
        if let Err(e) = sys::umount(&self.bpffs) {
            errors.push(e.to_string());
        }
        if std::env::var_os("SLUICE_E2E_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.tmp);
            if let Some(parent) = self.tmp.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        if !errors.is_empty() {
            eprintln!("cluster {} cleanup: {}", self.id, errors.join("; "));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=self.nodes.len() {
                let log = self.agent_log(n);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("---- agent log node{n} (last 60 lines) ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        self.cleanup();
    }
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> std::io::Result<Output> {
    use std::io::Write as _;
    let mut child = cmd.spawn()?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(input)?;
    }
    child.wait_with_output()
}

/// Kills every process in a cgroup (cgroup.kill) and waits for it to empty.
fn kill_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = fs::write(cg.join("cgroup.kill"), "1");
    let deadline = Instant::now() + scaled(Duration::from_secs(2));
    while Instant::now() < deadline {
        // `populated` covers the whole subtree (agents run in child cgroups).
        match fs::read_to_string(cg.join("cgroup.events")) {
            Ok(s) if s.lines().any(|l| l == "populated 0") => return,
            Err(_) => return,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn remove_cgroup_tree(cg: &Path) {
    if let Ok(entries) = fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    kill_cgroup(cg);
    let _ = fs::remove_dir(cg);
}

/// Removes resources of earlier runs whose process is gone (a SIGKILLed test cannot clean up).
/// Only names this harness creates (`sl<pid>x<n>...`, `$TMPDIR/sluice-e2e/<pid>x<n>`) are touched.
fn sweep_stale() {
    let dead = |id: &str| -> bool {
        id.split_once('x')
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(rest) = name.strip_prefix("sl")
                && rest.contains('x')
                && dead(rest)
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(root) = cgroup2_root()
        && let Ok(entries) = fs::read_dir(root.join("sluice-e2e"))
    {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(e2e_root()) {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                let _ = sys::umount(&e.path().join("bpffs"));
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Sums the samples of `name` whose label set contains every `k="v"`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_matching_series() {
        let t =
            "# HELP x\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\ny_total 9\nx_total_other 1\n";
        assert_eq!(super::sum_metric(t, "x_total", &[("a", "1")]), 7.0);
        assert_eq!(super::sum_metric(t, "x_total", &[("b", "3")]), 4.0);
        assert_eq!(super::sum_metric(t, "y_total", &[]), 9.0);
        assert_eq!(super::sum_metric(t, "z", &[]), 0.0);
    }
}
