//! `cargo xtask setup`: installs every prerequisite on a fresh Debian 12 machine of this kind,
//! idempotently. When everything is present it only checks (one dpkg query, one rustup query, one
//! file test) and returns in well under a second.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::cmd;

/// LLVM major version bpf-linker is built against (Debian bookworm-security ships it).
const LLVM_MAJOR: u32 = 22;
/// bpf-linker release known to build against LLVM 22 with rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links the eBPF object with LLVM 22"),
    ("libpolly-22-dev", "bpf-linker's LLVM 22 link dependency"),
    ("libzstd-dev", "bpf-linker's LLVM 22 link dependency"),
    ("iproute2", "ip netns / veth / routes for the test cluster"),
    ("containernetworking-plugins", "ptp/bridge/host-local/loopback CNI plugins wire test pods"),
    ("iptables", "tests assert sluice adds no iptables rules"),
    ("nftables", "tests assert sluice adds no nftables rules"),
    ("curl", "HTTP client in tests and demo"),
    ("python3", "HTTP test servers behind the waypoint (/usr/bin/python3)"),
    ("python3-grpcio", "gRPC client and server for the waypoint's gRPC scenario"),
    ("openssl", "TLS client (s_client) in tests"),
    ("socat", "TCP client/server in tests"),
    ("iperf3", "throughput benchmarks"),
    ("nghttp2-client", "h2load for HTTP/2 benchmarks"),
    ("nghttp2-server", "nghttpd, the HTTP/2 server behind the waypoint in benchmarks"),
    ("wrk", "HTTP/1.1 load generator"),
    ("hyperfine", "command timing"),
    ("tcpdump", "packet capture to prove encryption"),
    ("tshark", "protocol decoding in tests"),
    ("procps", "sysctl/ps in the harness"),
    ("ruby", "`ruby -c` checks that vagrant/Vagrantfile parses"),
    ("shellcheck", "lints the VM's provisioning and smoke scripts (vagrant/*.sh)"),
];

pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let mut did = Vec::new();

    let missing = missing_packages(PACKAGES);
    if !missing.is_empty() {
        install_packages(&missing, PACKAGES)?;
        did.push(format!("installed Debian packages: {}", missing.join(" ")));
    }

    if !nightly_has_rust_src() {
        install_rust_src()?;
        did.push("installed nightly toolchain component rust-src".to_string());
    }

    if !bpf_linker_ok() {
        install_bpf_linker()?;
        did.push(format!("built bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}"));
    }

    let took = start.elapsed();
    if did.is_empty() {
        eprintln!("setup: everything already installed (checked in {:.2}s)", took.as_secs_f64());
    } else {
        for d in &did {
            eprintln!("setup: {d}");
        }
        eprintln!("setup: done in {:.0}s", took.as_secs_f64());
    }
    Ok(())
}

/// Installs those of the named setup packages that are missing (a no-op check otherwise), for a
/// command that needs them without running the whole setup.
pub fn ensure_setup_packages(names: &[&str]) -> anyhow::Result<()> {
    let wanted: Vec<(&str, &str)> = PACKAGES.iter().copied().filter(|(n, _)| names.contains(n)).collect();
    if wanted.len() != names.len() {
        bail!("not all of {} are setup packages", names.join(", "));
    }
    ensure_packages(&wanted)
}

/// Installs those of `packages` (name, why) that are missing; a no-op check otherwise.
pub fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    install_packages(&missing, packages)
}

fn missing_packages(packages: &[(&str, &str)]) -> Vec<String> {
    let names: Vec<&str> = packages.iter().map(|(n, _)| *n).collect();
    // dpkg-query exits non-zero when any name is unknown to it, so read stdout whatever the status.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${db:Status-Abbrev}\n")
        .args(&names)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let status = it.next()?;
            (status == "ii").then_some(name)
        })
        .collect();
    names.iter().filter(|n| !installed.contains(n)).map(|n| n.to_string()).collect()
}

fn install_packages(missing: &[String], packages: &[(&str, &str)]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        let why: Vec<String> = packages
            .iter()
            .filter(|(n, _)| missing.iter().any(|m| m == n))
            .map(|(n, w)| format!("  {n}: {w}"))
            .collect();
        bail!(
            "missing Debian packages and not root, so cannot install them:\n{}\nrun `sudo cargo xtask setup` \
             or `sudo apt-get install -y {}`",
            why.join("\n"),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed; is the Debian archive (with bookworm-security) reachable?")
}

fn nightly_has_rust_src() -> bool {
    cmd::output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn install_rust_src() -> anyhow::Result<()> {
    let have_nightly = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if have_nightly {
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
    } else {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
    }
}

/// Installs `package==version` with pip (quietly, as root without pip's warning).
pub fn pip_install(package: &str, version: &str) -> anyhow::Result<()> {
    eprintln!("setup: installing {package} {version} (pip)");
    cmd::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        &format!("{package}=={version}"),
    ]))
    .with_context(|| format!("pip install {package} failed; is PyPI reachable?"))
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_home_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

fn bpf_linker_ok() -> bool {
    let bin = cargo_home_bin().join("bpf-linker");
    cmd::output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    if !PathBuf::from(&prefix).join("bin/llvm-config").exists() {
        bail!("{prefix}/bin/llvm-config is missing: llvm-{LLVM_MAJOR}-dev did not install correctly");
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (a few minutes on 2 cores)"
    );
    cmd::run(
        Command::new(cmd::cargo_bin())
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", &format!("llvm-{LLVM_MAJOR}")])
            .env("LLVM_PREFIX", &prefix),
    )
}
