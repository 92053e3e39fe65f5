//! The command line of the `sluice` binary (clap definitions only; behaviour lives in the modules
//! each subcommand dispatches to).
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A sidecarless service-mesh data plane: eBPF capture, one per-node proxy, Istio config"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sluice=debug`; `kernel=debug` adds the
    /// eBPF programs' decision log (read at start). Given twice, the last one counts.
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "info", overrides_with = "log_level")]
    pub log_level: String,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::telemetry::logging::LogFormat;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Per-node agent: loads eBPF, enrolls pods, runs the tunnel proxy (DaemonSet).
    Agent(Box<AgentArgs>),
    /// L7 waypoint proxy: HBONE in, VirtualService/DestinationRule/L7 AuthorizationPolicy, HBONE out.
    /// `sluice waypoint generate` prints the Kubernetes objects that run one for a Gateway.
    Waypoint(Box<WaypointCli>),
    /// CNI plugin: run by the container runtime after the cluster's CNI (also works as `sluice-cni`).
    Cni,
    /// Validate mesh config files offline: file:line diagnostics; exit 0 clean, 1 warnings, 2 errors.
    Analyze {
        /// Files or directories to check.
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print an agent's live compiled config (workloads, services, policies, certificates).
    Config {
        /// Agent admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Manage the local certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Probe the running kernel for every eBPF feature the agent needs; exit 0 when supported, 1
    /// when not (the agent makes the same check at start-up and refuses to start).
    KernelCheck,
    /// Readiness probe of the agent container: exit 0 when the agent on the admin address runs in
    /// this process's own container (during an upgrade, only once the new agent has taken over).
    ReadyCheck {
        /// Agent admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Show an agent's pods (enrolled or not, and why) and certificates.
    Status {
        /// Agent admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Agent(_) => "agent",
            Command::Waypoint(_) => "waypoint",
            Command::Cni => "cni",
            Command::Ca(_) => "ca",
            Command::Analyze { .. } => "analyze",
            Command::Config { .. } => "config",
            Command::Status { .. } => "status",
            Command::KernelCheck => "kernel-check",
            Command::ReadyCheck { .. } => "ready-check",
        }
    }
}

/// Overload protection (docs/security.md, "Limits").
#[derive(Args, Debug, Clone)]
pub struct CapsArgs {
    /// Concurrent connections to and from one node-local pod (plaintext and HBONE streams to it,
    /// captured outbound connections it opens); more are refused (`overload_pod`).
    #[arg(long, default_value_t = crate::limits::caps::DEFAULT_PER_POD, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_conns_per_pod: usize,
    /// Concurrent connections and HBONE streams from one client address; more are refused
    /// (`overload_source`).
    #[arg(long, default_value_t = crate::limits::caps::DEFAULT_PER_SOURCE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_conns_per_source: usize,
    /// Descriptors all carried connections may hold together (default: 90% of the open-file
    /// limit; plaintext from outside the mesh may take half of it). More are refused
    /// (`overload_budget`). At least 2: a plaintext or outbound connection holds two.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..))]
    pub connection_budget: Option<usize>,
    /// Concurrent connections to each admin, metrics and readiness listener; more are closed at
    /// accept.
    #[arg(long, default_value_t = crate::limits::caps::DEFAULT_ADMIN_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_admin_conns: usize,
}

impl CapsArgs {
    /// The caps for a process whose open-file limit is `nofile`.
    pub fn caps(&self, nofile: u64) -> crate::limits::caps::Caps {
        crate::limits::caps::Caps::derive(
            nofile,
            self.connection_budget,
            self.max_conns_per_pod,
            self.max_conns_per_source,
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Mesh config: a directory of YAML files (watched), or the literal `kubernetes` to watch the
    /// API server (in-cluster service account or KUBECONFIG; RBAC in deploy/rbac.yaml).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Name of the node this agent serves.
    #[arg(long, env = "NODE_NAME", default_value = "node")]
    pub node_name: String,
    /// cgroup2 directory to attach the outbound programs to (default: the cgroup2 mount root, found
    /// in /proc/self/mountinfo). Every enrolled pod's processes must be below it.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for this agent's pinned programs and maps (re-adopted after a restart).
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    pub bpffs: PathBuf,
    /// Directory for the CNI socket and the persisted pod registry.
    #[arg(long, default_value = "/var/run/sluice")]
    pub state_dir: PathBuf,
    /// Metrics and readiness listener (Prometheus text at /stats/prometheus, /healthz/ready).
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness listener (/healthz/ready), Istio's 15021.
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub ready_addr: SocketAddr,
    /// Admin listener (/debug/pods, /debug/config_dump); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub config_limits: ConfigLimitArgs,
    #[command(flatten)]
    pub caps: CapsArgs,
    /// Timeout for connecting to an original destination.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: std::time::Duration,
    /// Certificate authority mode; `local` reads a CA from --ca-dir (shared by the cluster).
    #[arg(long, value_enum, default_value_t = CaMode::Local)]
    pub ca: CaMode,
    /// Pooled HBONE connections without streams are closed after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub pool_idle_timeout: std::time::Duration,
    /// After handing its pods to a newer agent (an upgrade), how long a terminated agent keeps
    /// carrying the connections it had before it exits (keep it below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Host directory to install the CNI plugin binary into (`sluice-cni`); with --cni-conf-dir the
    /// agent installs and keeps the plugin in the node's primary conflist (docs/install.md).
    #[arg(long, requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
    /// Host directory of the node's CNI network configs (the primary conflist is the first by name).
    #[arg(long, requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The agent's CNI socket as the plugin, run by the container runtime on the host, sees it
    /// (default: <state-dir>/cni.sock, right when the state directory is mounted at the same path).
    #[arg(long)]
    pub cni_agent_socket: Option<PathBuf>,
    /// When an agent that did not hand over is terminated, remove the plugin from the node's CNI
    /// config: `auto` only when its DaemonSet is being deleted (kubernetes config) and never with
    /// a file config; `always`; `never`. Pods created while no agent runs fail to start (fail
    /// closed) as long as the plugin stays.
    #[arg(long, value_enum, default_value_t = CniCleanup::Auto)]
    pub cni_cleanup: CniCleanup,
    /// The agent's DaemonSet (namespace from POD_NAMESPACE), checked by `--cni-cleanup auto`.
    #[arg(long, default_value = "sluice-agent")]
    pub daemonset: String,
    /// Where the node's pod network namespaces are pinned by the container runtime; pods that ran
    /// before sluice was installed are found there (by their addresses) and enrolled.
    #[arg(long, default_values = ["/var/run/netns"])]
    pub pod_netns_dir: Vec<PathBuf>,
    /// Also look for pods' network namespaces through /proc/<pid>/ns/net of every host process
    /// (needs hostPID); finds pods of runtimes that do not pin namespaces.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_netns_proc: bool,
    /// Testing only: pause this long in the middle of taking over from a running agent (after
    /// enrolling its pods, before telling it so), to kill an agent mid-handover.
    #[arg(long, hide = true, default_value = "0s", value_parser = parse_duration)]
    pub handover_pause: std::time::Duration,
}

/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// `sluice waypoint [generate]`.
#[derive(Args, Debug)]
#[command(subcommand_negates_reqs = true)]
pub struct WaypointCli {
    #[command(subcommand)]
    pub action: Option<WaypointAction>,
    /// Run a waypoint (the arguments below).
    #[command(flatten)]
    pub run: WaypointArgs,
}

#[derive(Subcommand, Debug)]
pub enum WaypointAction {
    /// Print the ServiceAccount, Deployment, Service and ClusterRoleBinding (and the Gateway) that
    /// run a waypoint for a Gateway of class istio-waypoint; pipe to `kubectl apply -f -`.
    Generate(GenerateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The Gateway's name (also the waypoint's service account and Deployment).
    #[arg(long)]
    pub name: String,
    /// The Gateway's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// What the waypoint serves (the Gateway's `istio.io/waypoint-for` label).
    #[arg(long = "for", default_value = "service", value_parser = ["service", "workload", "all", "none"])]
    pub waypoint_for: String,
    /// The sluice image.
    #[arg(long, default_value = concat!("sluice:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Instances.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Secret in the Gateway's namespace with the mesh CA (ca-cert.pem, ca-key.pem, root-cert.pem).
    #[arg(long, default_value = "sluice-ca")]
    pub ca_secret: String,
    /// The waypoint's log filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Do not print the Gateway (it exists already).
    #[arg(long)]
    pub no_gateway: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CniCleanup {
    Auto,
    Always,
    Never,
}

#[derive(Args, Debug, Clone)]
pub struct WaypointArgs {
    /// Mesh config, the same the agents read: a directory of YAML files (watched), or the literal
    /// `kubernetes` to watch the API server.
    #[arg(long, env = "SLUICE_CONFIG", required = true)]
    pub config: Option<PathBuf>,
    /// The waypoint's Gateway (gatewayClassName istio-waypoint): its name.
    #[arg(long, env = "SLUICE_WAYPOINT_NAME", required = true)]
    pub name: Option<String>,
    /// The Gateway's namespace (also the waypoint's identity's namespace).
    #[arg(long, env = "POD_NAMESPACE", required = true)]
    pub namespace: Option<String>,
    /// The waypoint's service account: its identity is spiffe://<trust-domain>/ns/<namespace>/sa/<this>.
    /// Agents expect a waypoint to run as the service account named after its Gateway (Istio's
    /// convention), which is the default.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// HBONE listener.
    #[arg(long, default_value = "[::]:15008")]
    pub listen: SocketAddr,
    /// Metrics and readiness listener (/stats/prometheus, /healthz/ready).
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub caps: CapsArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub config_limits: ConfigLimitArgs,
    /// Timeout for connecting to an endpoint.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: std::time::Duration,
    /// PEM file of CA certificates trusted (besides the system's) for fetching `jwksUri`.
    #[arg(long, env = "SLUICE_JWKS_CA")]
    pub jwks_ca: Option<PathBuf>,
}

/// Bounds on a mesh config directory, shared by the processes that read one (agent, waypoint).
#[derive(Args, Debug, Clone)]
pub struct ConfigLimitArgs {
    /// Most bytes of YAML a config directory may hold in all (e.g. 8MiB, 32MiB, 1GiB); a change
    /// beyond it is rejected and the last good config kept. A load peaks at about 35 times this in
    /// memory: raise the container's memory limit with it. See docs/config.md, "Directory limits".
    #[arg(long, env = "SLUICE_CONFIG_MAX_BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub config_max_bytes: u64,
}

impl ConfigLimitArgs {
    /// The walk and size bounds these flags give the file source.
    pub fn limits(&self) -> crate::config::files::Limits {
        crate::config::files::Limits { max_total_bytes: self.config_max_bytes, ..Default::default() }
    }
}

/// Identity and certificates, shared by the processes that mint their own (agent, waypoint).
#[derive(Args, Debug, Clone)]
pub struct IdentityArgs {
    /// SPIFFE trust domain of this mesh.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Directory of the local CA (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`); see `sluice ca init`.
    #[arg(long, env = "SLUICE_CA_DIR", default_value = "/etc/sluice/ca")]
    pub ca_dir: PathBuf,
    /// Lifetime of the certificates minted from the CA.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: std::time::Duration,
    /// Share of a certificate's lifetime after which it is replaced (0.05-0.95).
    #[arg(long, default_value_t = 0.5)]
    pub cert_rotate_after: f64,
}

impl IdentityArgs {
    /// The settings these flags give the certificate manager.
    pub fn settings(&self) -> crate::identity::CertSettings<'_> {
        crate::identity::CertSettings {
            ca_dir: &self.ca_dir,
            trust_domain: &self.trust_domain,
            lifetime: self.cert_lifetime,
            rotate_after: self.cert_rotate_after,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CaMode {
    /// A CA directory shared by the cluster; each agent mints certificates for its own pods.
    Local,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Creates a new root CA in a directory (refuses to overwrite an existing one).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Lifetime of the root certificate.
        #[arg(long, default_value = "8760h", value_parser = parse_duration)]
        lifetime: std::time::Duration,
    },
    /// Issues a leaf certificate for any URI SAN from the CA (for debugging and tests; agents mint
    /// their own). Writes `<out>.crt` and `<out>.key` (PEM).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The URI SAN, e.g. spiffe://cluster.local/ns/shop/sa/web.
        #[arg(long)]
        uri: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        lifetime: std::time::Duration,
        /// Output path prefix.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A byte count: plain (`67108864`) or with a binary unit (`64KiB`, `64MiB`, `1GiB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size like 67108864, 64MiB or 1GiB");
    let i = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..i].parse().map_err(|_| bad())?;
    let unit: u64 = match &s[i..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).filter(|b| *b > 0).ok_or_else(bad)
}

/// Parses `250ms`, `10s`, `5m`, `2h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 500ms, 10s or 5m"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        "h" => Ok(std::time::Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_design_subcommand_is_listed() {
        let cmd = Cli::command();
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        for want in ["agent", "waypoint", "cni", "analyze", "config", "status"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "0", "64MB", "-1", "99999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_caps_default_from_the_open_file_limit_and_are_set_by_flags() {
        let caps = |args: &[&str]| {
            let cli =
                Cli::try_parse_from([&["sluice", "agent", "--config", "/x"], args].concat()).expect("parse");
            let Command::Agent(a) = cli.command else { panic!("not the agent") };
            (a.caps.caps(20_000), a.caps.max_admin_conns)
        };
        let (c, admin) = caps(&[]);
        assert_eq!(
            (c.budget, c.plaintext_budget, c.per_pod, c.per_source, admin),
            (18_000, 9_000, 8192, 2048, 64)
        );
        let (c, admin) = caps(&[
            "--connection-budget=100",
            "--max-conns-per-pod=3",
            "--max-conns-per-source=2",
            "--max-admin-conns=5",
        ]);
        assert_eq!((c.budget, c.plaintext_budget, c.per_pod, c.per_source, admin), (100, 50, 3, 2, 5));
    }

    #[test]
    fn connection_caps_of_zero_are_refused_at_parse_time() {
        for bad in [
            "--connection-budget=0",
            "--connection-budget=1",
            "--max-conns-per-pod=0",
            "--max-conns-per-source=0",
            "--max-admin-conns=0",
        ] {
            let Err(e) = Cli::try_parse_from(["sluice", "agent", "--config", "/x", bad]) else {
                panic!("{bad} was accepted");
            };
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(std::time::Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(std::time::Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(std::time::Duration::from_secs(7)));
        assert_eq!(parse_duration("2h"), Ok(std::time::Duration::from_secs(7200)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("x").is_err());
    }
}
