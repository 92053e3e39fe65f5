//! `cargo xtask test`: every check CI runs, in order, with one closing `N passed, N failed` line.
//!
//! Tiers: formatting and lints (host crates and the eBPF crate), unit and in-process integration
//! tests (`cargo test` on every host crate but the e2e one), then the end-to-end suite (`tests/`, real
//! agents in network namespaces; needs root and a BPF-capable kernel). Without root the end-to-end
//! tier is skipped with a loud message and counted as skipped, never as passed.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::Context as _;
use clap::Args;

use crate::{cmd, setup, vm};

#[derive(Args)]
pub struct TestArgs {
    /// Skip formatting and lint checks.
    #[arg(long)]
    no_lint: bool,
    /// Skip the end-to-end suite.
    #[arg(long)]
    no_e2e: bool,
    /// Run only the end-to-end suite.
    #[arg(long, conflicts_with = "no_e2e")]
    e2e_only: bool,
    /// Skip the smoke scenarios on other kernels (VMs) that the default run ends with.
    #[arg(long)]
    no_kernels: bool,
    /// Run the end-to-end suite (or FILTER's subset) only, inside a VM booted on this kernel line
    /// (5.10, 6.1, 6.12, 7; `all`, or a comma-separated list). Repeatable. `--kernels` works too.
    #[arg(long = "kernel", alias = "kernels", value_name = "VERSION|all")]
    kernels: Vec<String>,
    /// With --kernel: only the smoke scenarios (kernel support, redirection, secure L4).
    #[arg(long, requires = "kernels")]
    smoke: bool,
    /// Only run tests whose name contains this (passed to the test harness).
    filter: Option<String>,
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    skipped: u64,
    failures: Vec<String>,
    skips: Vec<String>,
}

impl Tally {
    fn step(&mut self, name: &str, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_string());
        }
    }
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    setup::run()?;
    let mut t = Tally::default();

    if !args.kernels.is_empty() {
        let series = vm::parse_kernels(&args.kernels)?;
        if !cmd::is_root() {
            anyhow::bail!(
                "--kernel needs root (it installs kernels and qemu, and the suite needs root in the VM)"
            );
        }
        let bins = vm::build_tests(args.filter.as_deref(), args.smoke)?;
        kernel_tier(&series, &bins, true, &mut t)?;
        return finish(&t);
    }

    if !args.no_lint && !args.e2e_only {
        t.step("cargo fmt --check", cmd::run(&mut cmd::cargo_cmd(&["fmt", "--all", "--check"])).is_ok());
        t.step(
            "cargo clippy (host)",
            cmd::run(&mut cmd::cargo_cmd(&["clippy", "--all-targets", "--", "-D", "warnings"])).is_ok(),
        );
        t.step("cargo clippy (eBPF)", cmd::run(&mut ebpf_clippy()).is_ok());
        t.step(
            "deploy/ manifests (kubernetes-validate --strict) and Helm chart (offline render)",
            reported(crate::manifests::check()),
        );
        t.step("vagrant/ (ruby -c Vagrantfile, shellcheck *.sh)", reported(crate::vagrant::check()));
    }

    if !args.e2e_only {
        // Default members minus the e2e crate (the eBPF crate only builds for the bpf target).
        let mut a = vec!["test", "-p", "sluice", "-p", "sluice-common", "-p", "xtask"];
        if let Some(f) = &args.filter {
            a.extend(["--", f.as_str()]);
        }
        run_tests("unit and integration tests", cmd::cargo_cmd(&a), &mut t)?;
    }

    if !args.no_e2e {
        if cmd::is_root() {
            cmd::cargo(&["build", "-p", "sluice", "--bins"])
                .context("building the agent for the e2e suite")?;
            let sluice = cmd::workspace_root().join("target/debug/sluice");
            let mut a = vec!["test", "-p", "sluice-e2e"];
            if let Some(f) = &args.filter {
                a.extend(["--", f.as_str()]);
            }
            let mut c = cmd::cargo_cmd(&a);
            c.env("SLUICE_BIN", &sluice);
            run_tests("end-to-end suite", c, &mut t)?;
            if args.filter.is_none() {
                bench_smoke(&sluice, &mut t)?;
            }
        } else {
            let msg = "END-TO-END SUITE SKIPPED: not running as root. It needs root and a BPF-capable kernel \
                       (network namespaces, cgroup2, bpffs). Run `sudo cargo xtask test`.";
            eprintln!("\n{}\n{msg}\n{}\n", "!".repeat(100), "!".repeat(100));
            t.skipped += 1;
            t.skips.push(msg.to_string());
        }
    }

    if !args.no_e2e && !args.no_kernels && args.filter.is_none() {
        if cmd::is_root() {
            // The smoke scenarios on the kernels users run, one VM at a time.
            let bins = vm::build_tests(None, true)?;
            kernel_tier(vm::CI_KERNELS, &bins, false, &mut t)?;
        } else {
            t.skipped += 1;
            t.skips.push("kernel matrix smoke: needs root (VMs, and the suite inside them)".to_string());
        }
    }

    finish(&t)
}

/// Whether a check passed; its error, if any, is printed (the tally only keeps the step's name).
fn reported(r: anyhow::Result<()>) -> bool {
    r.inspect_err(|e| eprintln!("xtask: error: {e:#}")).is_ok()
}

/// `cargo xtask bench --quick` as a smoke test on the debug build the suite just used: it checks
/// that every measurement came out valid (finite, no connection errors, every idle connection
/// established), never a speed (a debug build on a shared CI machine says nothing about speed).
fn bench_smoke(sluice: &std::path::Path, t: &mut Tally) -> anyhow::Result<()> {
    cmd::cargo(&["build", "-p", "sluice-e2e", "--bins"]).context("building the benchmark binaries")?;
    let root = cmd::workspace_root();
    let out = root.join("target/bench-smoke");
    let mut c = Command::new(root.join("target/debug/sluice-bench"));
    c.env("SLUICE_BIN", sluice).arg("--quick").arg("--out").arg(&out);
    t.step("benchmark smoke (sluice-bench --quick)", cmd::run(&mut c).is_ok());
    let out = out.to_str().context("the workspace path is not UTF-8")?;
    let compile = [
        "bench",
        "-p",
        "sluice",
        "--bench",
        "config_compile",
        "--profile",
        "dev",
        "--",
        "--quick",
        "--out",
        out,
    ];
    t.step("benchmark smoke (config compile --quick)", cmd::run(&mut cmd::cargo_cmd(&compile)).is_ok());
    Ok(())
}

/// Runs the planned tests on each kernel and adds every test's outcome to the tally.
fn kernel_tier(
    series: &[&'static str],
    bins: &[vm::TestBinary],
    virtiofs: bool,
    t: &mut Tally,
) -> anyhow::Result<()> {
    for r in vm::run_matrix(series, bins, virtiofs)? {
        let k = format!("kernel {}", r.series);
        t.passed += r.passed.len() as u64;
        for f in &r.failed {
            t.step(&format!("{k}: {f}"), false);
        }
        for (test, why) in &r.skipped {
            t.skipped += 1;
            t.skips.push(format!("{k}: {test}: {why}"));
        }
        if let Some(e) = &r.error {
            t.step(&format!("{k}: {e}"), false);
        }
    }
    Ok(())
}

fn finish(t: &Tally) -> anyhow::Result<()> {
    eprintln!();
    for s in &t.skips {
        eprintln!("skipped: {s}");
    }
    for f in &t.failures {
        eprintln!("failed: {f}");
    }
    let mut line = format!("xtask: {} passed, {} failed", t.passed, t.failed);
    if t.skipped > 0 {
        line.push_str(&format!(", {} skipped", t.skipped));
    }
    println!("{line}");
    if t.failed > 0 {
        anyhow::bail!("{} check(s) or test(s) failed", t.failed);
    }
    Ok(())
}

fn ebpf_clippy() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "clippy", "-p", "sluice-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"])
        .current_dir(cmd::workspace_root())
        .env("PATH", cmd::path_with_cargo_bin())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    c
}

/// Runs a `cargo test` command, streaming its output, and adds its per-binary results to the tally.
fn run_tests(tier: &str, mut c: Command, t: &mut Tally) -> anyhow::Result<()> {
    eprintln!("+ {} ({tier})", cmd::display(&c));
    let mut child =
        c.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start {}", cmd::display(&c)))?;
    let mut saw_result = false;
    let failed_before = t.failed;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            if let Some((p, f, i)) = parse_result(&line) {
                saw_result = true;
                t.passed += p;
                t.failed += f;
                t.skipped += i;
            }
            if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
                t.failures.push(format!("{tier}: {name}"));
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && !saw_result {
        // Compilation failure or a crashed harness: count the tier as one failure.
        t.step(&format!("{tier} (did not run: {status})"), false);
    } else if !status.success() && t.failed == failed_before {
        t.step(&format!("{tier} ({status})"), false);
    }
    Ok(())
}

/// Parses libtest's `test result: ok. 5 passed; 0 failed; 1 ignored; ...` line.
fn parse_result(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| -> u64 {
        rest.split(';')
            .find_map(|part| {
                let part = part.trim();
                let part = part.split_once(". ").map_or(part, |(_, p)| p);
                let (n, w) = part.split_once(' ')?;
                (w == word).then(|| n.parse().ok()).flatten()
            })
            .unwrap_or(0)
    };
    Some((num("passed"), num("failed"), num("ignored")))
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn parses_libtest_summary() {
        let l =
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(parse_result(l), Some((5, 0, 1)));
        let l = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_result(l), Some((3, 2, 0)));
        assert_eq!(parse_result("running 5 tests"), None);
    }
}
