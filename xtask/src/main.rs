//! `cargo xtask <verb>`: the only entry points a newcomer needs.
//!
//! - `setup`  installs every prerequisite, idempotently (fast no-op when all is present)
//! - `build`  builds everything in release mode
//! - `test`   setup, fmt, clippy (host and eBPF), unit and integration tests, end-to-end suite, then
//!   the smoke scenarios on other kernels in VMs; `--kernel V|all` runs the suite in VMs only
//! - `demo`   setup, build, run the demo on a simulated two-node cluster
//! - `bench`  mesh versus direct benchmarks and the mesh-config compile benchmark (`--quick`: smoke)
//! - `manifests` / `vagrant-lint`  the offline deployment checks `test` runs (manifests and chart;
//!   Vagrantfile and scripts)
//! - `fuzz`   fuzz the parsers of outside input with cargo-fuzz on nightly (`--target T --time SECS --save`)
mod chart;
mod cmd;
mod fuzz;
mod image;
mod manifests;
mod setup;
mod test;
mod vagrant;
mod vm;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sluice's build, test and demo entry points")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install every prerequisite (Debian packages, nightly rust-src, bpf-linker). Idempotent.
    Setup,
    /// Build everything in release mode (the eBPF object is compiled and embedded by the agent build).
    Build,
    /// Run setup, formatting and lint checks, unit/integration tests and the end-to-end suite.
    Test(test::TestArgs),
    /// Run setup, build, then the demo on a simulated two-node cluster (needs root and BPF).
    Demo,
    /// Benchmarks: mesh versus direct, ratios measured in one run (needs root and BPF).
    Bench {
        /// A short run (smoke test): checks that valid numbers come out, never a speed.
        #[arg(long)]
        quick: bool,
        /// Run only these measurement groups (throughput, latency, churn, idle) and mesh scenarios
        /// (sluice_same_node, sluice_cross_node_mtls; direct always runs), comma-separated,
        /// and skip the config-compile benchmark; for profiling one of them.
        #[arg(long)]
        only: Option<String>,
    },
    /// Build the container image as an OCI archive (target/image/, offline, buildah) and check it.
    Image,
    /// Validate the Kubernetes manifests under deploy/ offline and strictly, and check that the Helm
    /// chart's default render equals them (also part of `test`).
    Manifests,
    /// Check vagrant/: the Vagrantfile parses (`ruby -c`), every script passes shellcheck (also part
    /// of `test`). The VM itself runs on a workstation (vagrant/README.md).
    VagrantLint,
    /// Fuzz the parsers of outside input (cargo-fuzz, nightly), one target after another. Not part
    /// of `test` (which replays the committed corpus on stable).
    Fuzz {
        /// Only this target (default: every one).
        #[arg(long)]
        target: Option<String>,
        /// How long to run each target, in seconds.
        #[arg(long, default_value_t = 300)]
        time: u64,
        /// Minimise the corpus afterwards and write it to agent/fuzz/corpus-min (committed).
        #[arg(long)]
        save: bool,
    },
    /// Inside a kernel-matrix VM: run the plan in DIR (started by `test --kernel`).
    #[command(hide = true)]
    VmGuest { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build => build(),
        Command::Test(args) => test::run(&args),
        Command::Demo => demo(),
        Command::Bench { quick, only } => bench(quick, only.as_deref()),
        Command::Fuzz { target, time, save } => fuzz::run(target.as_deref(), time, save),
        Command::Manifests => manifests::check(),
        Command::VagrantLint => vagrant::check(),
        Command::Image => image::run().map(|_| ()),
        Command::VmGuest { dir } => vm::guest(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    setup::run()?;
    cmd::cargo(&["build", "--release", "--all-targets"])
}

fn bench(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    setup::run()?;
    // Release builds: the numbers are about the data path, not debug assertions.
    cmd::cargo(&["build", "--release", "-p", "sluice", "-p", "sluice-e2e", "--bins"])?;
    let root = cmd::workspace_root();
    let mut c = std::process::Command::new(root.join("target/release/sluice-bench"));
    c.env("SLUICE_BIN", root.join("target/release/sluice")).arg("--out").arg(root.join("target/bench"));
    if quick {
        c.arg("--quick");
    }
    if let Some(groups) = only {
        c.arg("--only").arg(groups);
    }
    cmd::run(&mut c)?;
    if only.is_some() {
        return Ok(());
    }
    // The mesh-config compile benchmark (10k pods, 2k services, 5k policies; a tenth with --quick).
    let out = root.join("target/bench");
    let out = out.to_str().context("the workspace path is not UTF-8")?;
    let mut args = vec!["bench", "-p", "sluice", "--bench", "config_compile", "--", "--out", out];
    if quick {
        args.push("--quick");
    }
    cmd::cargo(&args)
}

fn demo() -> anyhow::Result<()> {
    setup::run()?;
    // The debug profile shares its artifacts with `cargo xtask test`, so a first demo builds fast.
    cmd::cargo(&["build", "-p", "sluice", "-p", "sluice-e2e", "--bins"])?;
    let root = cmd::workspace_root();
    let demo = root.join("target/debug/sluice-demo");
    let sluice = root.join("target/debug/sluice");
    cmd::run(
        std::process::Command::new(&demo)
            .env("SLUICE_BIN", &sluice)
            .env("SLUICE_EXAMPLES", root.join("examples")),
    )
}
