//! The kernel matrix: the end-to-end suite (or a named subset) inside a virtual machine booted on
//! another kernel, from this machine.
//!
//! The VM is only a different launcher for the same test binaries: the host builds them, lists
//! their tests, writes a plan, and boots the kernel with virtme-ng over this machine's own root
//! filesystem (read-only, with overlays); inside the guest `xtask vm-guest` runs the kernel
//! feature check and the planned tests with `SLUICE_TIME_SCALE` set (the guest runs under TCG
//! emulation), writing everything into a results directory shared read-write with the host, which
//! then parses libtest's per-test lines.
//!
//! Kernels come from Debian's archive (`apt-get download` with a private apt configuration, so the
//! machine's own sources are left alone) and are extracted, never installed, under the cache
//! directory ([`cache_dir`]): the first use downloads, later ones only check.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// A kernel line of the matrix.
pub struct Series {
    /// What users type: `--kernel 6.1`. Matches Debian versions `NAME.*`.
    pub name: &'static str,
    /// Who runs it.
    pub note: &'static str,
}

/// Every kernel line `--kernels all` runs, oldest first.
pub const SERIES: &[Series] = &[
    Series { name: "5.10", note: "Debian 11, Amazon Linux 2 (below the minimum: the agent must refuse)" },
    Series { name: "6.1", note: "Debian 12" },
    Series { name: "6.12", note: "Debian 13, Debian 12 backports" },
    Series { name: "7", note: "Debian 13 backports (newest)" },
];

/// The kernels `cargo xtask test` (and so CI) runs the smoke scenarios on.
pub const CI_KERNELS: &[&str] = &["5.10", "6.1", "6.12"];

/// The smoke scenarios: kernel support, redirection (outbound and inbound capture) and secure L4
/// (mTLS between nodes with verified identities, L4 authorization). `binary::test name`.
pub const SMOKE: &[(&str, &str)] = &[
    ("kernel", "the_agent_starts_on_a_supported_kernel_and_refuses_an_older_one_naming_what_is_missing"),
    ("redirect", "outbound_tcp_is_captured_byte_exact_with_real_peer"),
    ("redirect", "inbound_tcp_from_outside_the_mesh_is_captured_on_any_port"),
    ("tunnel", "cross_node_mesh_traffic_is_tls13_on_the_wire_with_verified_identities"),
    ("policy", "authorization_policies_at_l4"),
];

/// Boots per kernel when the guest never reaches its plan (see [`boot_and_collect`]).
const BOOT_ATTEMPTS: u32 = 2;

/// The test binary whose tests still run on a kernel the agent refuses (they check the refusal).
const REFUSAL_BINARY: &str = "kernel";

/// How much slower than this machine the emulated guest is, for the tests' timeouts
/// (`SLUICE_TIME_SCALE`, read by `tests/src/cluster.rs`). Measured: CPU-bound work about 10x,
/// process start-up far more; agent start-up and mesh connections are dominated by CPU work.
pub const TCG_TIME_SCALE: u32 = 10;

/// virtme-ng release this launcher was written against.
const VIRTME_NG_VERSION: &str = "1.42";

/// virtiofsd release (crates.io) that shares the root filesystem with the guest; Debian 12 has no
/// package of it. Boots take about 13 s with it against about 24 s over 9p (measured on 6.1).
const VIRTIOFSD_VERSION: &str = "1.14.0";

/// Debian packages the launcher needs, and why.
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "boots the test kernels (TCG emulation; no KVM here)"),
    ("libseccomp-dev", "virtiofsd links libseccomp"),
    ("libcap-ng-dev", "virtiofsd links libcap-ng"),
    ("kmod", "depmod for the extracted kernels' modules (virtme-ng)"),
    ("file", "virtme-ng reads a kernel image's version with it"),
    ("busybox-static", "virtme-ng's initramfs for modular kernels"),
];

/// Where kernels and the private apt state live, outside the clone: `$SLUICE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`. Not under /var/cache: the guest sees
/// /var/cache as an empty tmpfs, and it must read the kernel's modules from here.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("sluice");
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("/root/.cache/sluice"), |h| PathBuf::from(h).join(".cache/sluice"))
}

/// Resolves `--kernel`/`--kernels` values (`all`, or comma-separated names) to series names.
pub fn parse_kernels(values: &[String]) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()) {
        if v == "all" {
            out.extend(SERIES.iter().map(|s| s.name));
            continue;
        }
        let Some(s) = SERIES.iter().find(|s| s.name == v) else {
            let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
            bail!("--kernel {v}: unknown kernel line; use one of {} or `all`", known.join(", "));
        };
        out.push(s.name);
    }
    out.dedup();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Installation (idempotent)

fn scripts_dir() -> anyhow::Result<PathBuf> {
    let out = cmd::output(
        Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]),
    )
    .context("python3 is needed for virtme-ng (pip package) and did not run")?;
    Ok(PathBuf::from(out.trim()))
}

fn vng() -> anyhow::Result<PathBuf> {
    Ok(scripts_dir()?.join("vng"))
}

/// Installs qemu, the helpers and virtme-ng if missing (a few seconds of checks otherwise), and
/// with `virtiofs` also builds virtiofsd. It pays for its 3 minutes of building only over many boots
/// and long runs (`--kernel`); the smoke tier uses it if it is there, else 9p (about 11 s more a boot).
pub fn ensure_tools(virtiofs: bool) -> anyhow::Result<()> {
    crate::setup::ensure_packages(PACKAGES)?;
    let vng = vng()?;
    let have = cmd::output(Command::new(&vng).arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|w| w.trim() == VIRTME_NG_VERSION));
    if !have {
        crate::setup::pip_install("virtme-ng", VIRTME_NG_VERSION)?;
    }
    let virtiofsd = crate::setup::cargo_home_bin().join("virtiofsd");
    let have = cmd::output(Command::new(&virtiofsd).arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|w| w == VIRTIOFSD_VERSION));
    if virtiofs && !have {
        eprintln!("vm: building virtiofsd {VIRTIOFSD_VERSION} (about 3 minutes on 2 cores, once)");
        cmd::run(Command::new(cmd::cargo_bin()).args([
            "install",
            "--locked",
            "--quiet",
            "virtiofsd",
            "--version",
            VIRTIOFSD_VERSION,
        ]))
        .context("cargo install virtiofsd failed; is crates.io reachable?")?;
    }
    Ok(())
}

/// A kernel extracted in the cache.
pub struct Kernel {
    pub series: &'static str,
    /// Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    pub vmlinuz: PathBuf,
}

/// The suites searched for kernels (the machine's own apt sources are not touched).
const APT_SOURCES: &str = "\
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
deb http://deb.debian.org/debian trixie-backports main
";

struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new() -> anyhow::Result<Apt> {
        let dir = cache_dir().join("apt");
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("archives/partial"))?;
        fs::write(dir.join("sources.list"), APT_SOURCES)?;
        Ok(Apt { dir })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = |p: &str| self.dir.join(p).display().to_string();
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", d("sources.list")))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", d("lists")))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.dir.display()))
            .arg("-o")
            .arg(format!("Dir::Cache::Archives={}", d("archives")))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    }

    fn update(&self) -> anyhow::Result<()> {
        let mut c = self.cmd("apt-get");
        c.args(["update", "-q"]);
        cmd::run(&mut c)
            .context("apt-get update for the kernel suites failed; is the Debian archive reachable?")
    }

    fn query(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.cmd("apt-cache");
        c.args(args);
        cmd::output(&mut c).with_context(|| format!("apt-cache {} failed", args.join(" ")))
    }
}

/// Versions of `linux-image-amd64` the archive offers, newest first.
fn metapackage_versions(apt: &Apt) -> anyhow::Result<Vec<String>> {
    let text = apt.query(&["madison", "linux-image-amd64"])?;
    let mut v: Vec<String> =
        text.lines().filter_map(|l| l.split('|').nth(1)).map(|s| s.trim().to_string()).collect();
    v.sort_by(|a, b| debian_version_cmp(b, a));
    v.dedup();
    Ok(v)
}

/// Orders Debian versions well enough for kernel versions (`6.12.95-1~bpo12+1`): numeric runs
/// compare as numbers, `~` sorts before anything.
fn debian_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for ch in s.chars() {
            let digit = ch.is_ascii_digit();
            match out.last_mut() {
                Some((d, run)) if *d == digit && digit => run.push(ch),
                _ => out.push((digit, ch.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => x.parse::<u64>().unwrap_or(0).cmp(&y.parse::<u64>().unwrap_or(0)),
            ((_, x), (_, y)) if x == "~" || y == "~" => (x != "~").cmp(&(y != "~")),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    let tilde_last = |p: &[(bool, String)], n: usize| p.get(n).is_some_and(|(_, s)| s == "~");
    match pa.len().cmp(&pb.len()) {
        std::cmp::Ordering::Greater if tilde_last(&pa, pb.len()) => std::cmp::Ordering::Less,
        std::cmp::Ordering::Less if tilde_last(&pb, pa.len()) => std::cmp::Ordering::Greater,
        o => o,
    }
}

/// The packages of one kernel build: the metapackage's dependencies pinned to its own version,
/// followed recursively (image, and on newer kernels the split binary/modules/base packages).
fn kernel_packages(apt: &Apt, version: &str) -> anyhow::Result<Vec<String>> {
    let mut todo = vec![format!("linux-image-amd64={version}")];
    let mut seen = Vec::new();
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        if seen.contains(&p) {
            continue;
        }
        seen.push(p.clone());
        let show = apt.query(&["show", &p])?;
        let record = show.split("\n\n").next().unwrap_or_default();
        let depends = record.lines().find_map(|l| l.strip_prefix("Depends: ")).unwrap_or_default();
        for alt in depends.split(',') {
            let alt = alt.trim();
            let pinned = format!("(= {version})");
            if let Some(name) = alt.strip_suffix(&pinned).map(str::trim)
                && !name.contains('|')
            {
                todo.push(format!("{name}={version}"));
                out.push(format!("{name}={version}"));
            }
        }
    }
    if out.is_empty() {
        bail!("linux-image-amd64={version} depends on no package of its own version");
    }
    Ok(out)
}

fn find_vmlinuz(root: &Path) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with("vmlinuz") {
                // boot/vmlinuz-RELEASE, or usr/lib/modules/RELEASE/vmlinuz (Debian 13 and later).
                return Some(p);
            }
        }
    }
    None
}

/// Downloads and extracts the newest Debian kernel of `series` into the cache, once.
pub fn ensure_kernel(series: &'static str) -> anyhow::Result<Kernel> {
    let dir = cache_dir().join("kernels").join(series);
    let ready = dir.join("READY");
    if let Ok(text) = fs::read_to_string(&ready) {
        let mut lines = text.lines();
        if let (Some(version), Some(vmlinuz)) = (lines.next(), lines.next())
            && Path::new(vmlinuz).exists()
        {
            return Ok(Kernel { series, version: version.to_string(), vmlinuz: PathBuf::from(vmlinuz) });
        }
    }
    if !cmd::is_root() {
        bail!("kernel {series} is not in {} and installing it needs root", dir.display());
    }
    let started = Instant::now();
    let apt = Apt::new()?;
    apt.update()?;
    let prefix = format!("{series}.");
    let version = metapackage_versions(&apt)?
        .into_iter()
        .find(|v| v.starts_with(&prefix))
        .with_context(|| format!("no linux-image-amd64 {series}.* in the kernel suites"))?;
    let packages = kernel_packages(&apt, &version)?;
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let mut c = apt.cmd("apt-get");
    c.arg("download").args(&packages).current_dir(&debs);
    cmd::run(&mut c).with_context(|| format!("downloading kernel {version}"))?;
    let tmp = cache_dir().join("kernels").join(format!("{series}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    for p in &packages {
        let (name, v) = p.split_once('=').unwrap_or((p, ""));
        // apt names files NAME_VERSION_ARCH.deb with ':' in the version escaped as %3a.
        let file = debs.join(format!("{name}_{}_amd64.deb", v.replace(':', "%3a")));
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&file).arg(&tmp))
            .with_context(|| format!("extracting {}", file.display()))?;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    let vmlinuz = find_vmlinuz(&dir).with_context(|| format!("no vmlinuz in the packages of {version}"))?;
    fs::write(&ready, format!("{version}\n{}\n", vmlinuz.display()))?;
    // The .debs are not needed once extracted.
    for p in &packages {
        let (name, _) = p.split_once('=').unwrap_or((p, ""));
        if let Ok(entries) = fs::read_dir(&debs) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("{name}_")) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    eprintln!(
        "vm: kernel {version} installed in {} ({:.0}s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Kernel { series, version, vmlinuz })
}

// ---------------------------------------------------------------------------------------------
// Test binaries and the plan

/// One end-to-end test binary (`tests/tests/NAME.rs`) and its tests selected for a run.
pub struct TestBinary {
    pub name: String,
    pub path: PathBuf,
    pub tests: Vec<String>,
}

/// Builds the end-to-end test binaries and lists the tests selected by `filter` (a libtest
/// substring filter) or, with `smoke`, the smoke scenarios.
pub fn build_tests(filter: Option<&str>, smoke: bool) -> anyhow::Result<Vec<TestBinary>> {
    cmd::cargo(&["build", "-p", "sluice", "--bins"]).context("building the agent")?;
    let mut c = cmd::cargo_cmd(&["test", "-p", "sluice-e2e", "--no-run", "--message-format=json"]);
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    eprintln!("+ {}", cmd::display(&c));
    let out = c.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test = v["reason"] == "compiler-artifact"
            && v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"))
            && v["profile"]["test"] == true;
        if let (true, Some(exe), Some(name)) =
            (is_test, v["executable"].as_str(), v["target"]["name"].as_str())
        {
            // The library's own unit tests are not end-to-end scenarios.
            if name != "sluice_e2e" {
                bins.push(TestBinary { name: name.to_string(), path: PathBuf::from(exe), tests: Vec::new() });
            }
        }
    }
    for b in &mut bins {
        let mut c = Command::new(&b.path);
        c.args(["--list", "--format", "terse"]);
        let listed = cmd::output(&mut c).with_context(|| format!("{} --list", b.path.display()))?;
        b.tests = listed
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|t| match (smoke, filter) {
                (true, _) => SMOKE.iter().any(|(bin, name)| *bin == b.name && name == t),
                (false, Some(f)) => t.contains(f),
                (false, None) => true,
            })
            .map(str::to_string)
            .collect();
    }
    bins.retain(|b| !b.tests.is_empty());
    bins.sort_by(|a, b| a.name.cmp(&b.name));
    if smoke {
        for (bin, name) in SMOKE {
            if !bins.iter().any(|b| b.name == *bin && b.tests.iter().any(|t| t == name)) {
                bail!("smoke scenario {bin}::{name} does not exist (renamed?); update xtask/src/vm.rs SMOKE");
            }
        }
    }
    Ok(bins)
}

// ---------------------------------------------------------------------------------------------
// Running a VM

/// What one kernel's run found.
pub struct KernelResult {
    pub series: &'static str,
    pub version: String,
    pub release: String,
    pub supported: Option<bool>,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// (test, reason)
    pub skipped: Vec<(String, String)>,
    pub boot_and_run: Duration,
    /// Set when the VM itself failed (no results).
    pub error: Option<String>,
}

impl KernelResult {
    /// Nothing found yet for `series`.
    fn empty(series: &'static str, version: String) -> KernelResult {
        KernelResult {
            series,
            version,
            release: String::new(),
            supported: None,
            passed: Vec::new(),
            failed: Vec::new(),
            skipped: Vec::new(),
            boot_and_run: Duration::ZERO,
            error: None,
        }
    }
}

/// Boots `kernel` and runs `bins` inside; results in `target/vm/<series>/`.
pub fn run_kernel(kernel: &Kernel, bins: &[TestBinary], sluice: &Path) -> KernelResult {
    let started = Instant::now();
    let mut r = KernelResult::empty(kernel.series, kernel.version.clone());
    match boot_and_collect(kernel, bins, sluice, &mut r) {
        Ok(()) => {}
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r.boot_and_run = started.elapsed();
    r
}

fn boot_and_collect(
    kernel: &Kernel,
    bins: &[TestBinary],
    sluice: &Path,
    r: &mut KernelResult,
) -> anyhow::Result<()> {
    let out = cmd::workspace_root().join("target/vm").join(kernel.series);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    // The plan: one line per test binary, the tests to run in it.
    let mut plan = fs::File::create(out.join("plan"))?;
    writeln!(plan, "sluice\t{}", sluice.display())?;
    writeln!(plan, "scale\t{TCG_TIME_SCALE}")?;
    for b in bins {
        writeln!(plan, "test\t{}\t{}\t{}", b.name, b.path.display(), b.tests.join(" "))?;
    }
    drop(plan);
    let xtask = std::env::current_exe().context("path of the running xtask")?;
    let guest = format!("{} vm-guest {}", xtask.display(), out.display());
    // A guest that never reached its plan (qemu or the emulated kernel died during boot: vng
    // exited 255 within 4 s, seen twice on the 6.12 kernel) says nothing about sluice on that
    // kernel; it is booted once more, and the end of each console is printed. A guest that started
    // its plan and did not finish is a result, never retried.
    for attempt in 1..=BOOT_ATTEMPTS {
        let status = boot(kernel, &out, &guest)?;
        if !fs::read_to_string(out.join("done")).unwrap_or_default().is_empty() {
            break;
        }
        let console = out.join("console.log");
        eprintln!("vm: kernel {}: the end of {}:\n{}", kernel.series, console.display(), tail(&console, 30));
        if out.join("release").exists() || attempt == BOOT_ATTEMPTS {
            bail!("the guest did not finish its plan (vng {status}); see {}", console.display());
        }
        eprintln!(
            "vm: kernel {}: the guest never started its plan (vng {status}); booting once more",
            kernel.series
        );
        let _ = fs::rename(&console, out.join(format!("console.{attempt}.log")));
    }
    r.release = fs::read_to_string(out.join("release")).unwrap_or_default().trim().to_string();
    let probe = fs::read_to_string(out.join("kernel-check.out")).unwrap_or_default();
    r.supported = Some(probe.lines().any(|l| l.trim() == "supported"));
    let refusal = probe
        .lines()
        .find_map(|l| l.strip_prefix("NOT SUPPORTED: "))
        .map(|s| s.split(". sluice needs").next().unwrap_or(s).to_string());
    for b in bins {
        let text = fs::read_to_string(out.join(format!("{}.out", b.name))).unwrap_or_default();
        let outcome = parse_outcomes(&text);
        for t in &b.tests {
            let full = format!("{}::{t}", b.name);
            match outcome.get(t.as_str()) {
                Some(Outcome::Ok) => r.passed.push(full),
                Some(Outcome::Failed) => r.failed.push(full),
                Some(Outcome::Ignored) => r.skipped.push((full, "ignored".into())),
                None if b.name != REFUSAL_BINARY && r.supported == Some(false) => r.skipped.push((
                    full,
                    refusal.clone().unwrap_or_else(|| "the agent refuses this kernel".to_string()),
                )),
                None => r.failed.push(format!("{full} (no result: crashed or timed out)")),
            }
        }
    }
    Ok(())
}

/// SIGKILLs `pid` and every process descended from it (found through /proc).
/// Boots `kernel` once with `guest` as the command and waits for it (bounded); the console goes
/// to `out/console.log`.
fn boot(kernel: &Kernel, out: &Path, guest: &str) -> anyhow::Result<std::process::ExitStatus> {
    let console = fs::File::create(out.join("console.log"))?;
    let mut c = Command::new(vng()?);
    c.arg("--run")
        .arg(&kernel.vmlinuz)
        .args(["--disable-kvm", "--cpus", "2", "--memory", "4G", "--name", "sluice-vm"])
        .arg("--rwdir")
        .arg(out)
        .arg("--exec")
        .arg(guest)
        .current_dir(cmd::workspace_root())
        // vng finds virtiofsd on PATH (in $CARGO_HOME/bin); without it, it falls back to 9p.
        .env("PATH", cmd::path_with_cargo_bin())
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    eprintln!("+ {} (console: {})", cmd::display(&c), out.join("console.log").display());
    let mut child = c.spawn().context("starting vng")?;
    // Bounded: the slowest full run stays well under this; a hung guest must not hang CI.
    let limit = Duration::from_secs(60 * 60);
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if t0.elapsed() > limit {
            // vng runs virtme-run, which forks qemu: end the whole tree, not only vng.
            kill_tree(child.id());
            let _ = child.wait();
            bail!("the VM did not finish within {} min; see {}", limit.as_secs() / 60, out.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last `n` lines of a text file (lossy), for a failure report.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn kill_tree(pid: u32) {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may contain spaces, so read after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.entry(ppid).or_default().push(p);
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(parents.get(&tree[i]).cloned().unwrap_or_default());
        i += 1;
    }
    for p in tree {
        let _ = Command::new("kill").args(["-KILL", &p.to_string()]).status();
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Failed,
    Ignored,
}

/// libtest's `test NAME ... ok|FAILED|ignored` lines (output of other tests may share the line).
fn parse_outcomes(text: &str) -> BTreeMap<&str, Outcome> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.find("test ").map(|i| &line[i + 5..]) else { continue };
        let Some((name, result)) = rest.split_once(" ... ") else { continue };
        let o = match result.split_whitespace().next() {
            Some("ok") => Outcome::Ok,
            Some("FAILED") => Outcome::Failed,
            Some("ignored") | Some("ignored,") => Outcome::Ignored,
            _ => continue,
        };
        m.insert(name.trim(), o);
    }
    m
}

/// Runs `bins` on each kernel, one VM at a time, and prints the per-kernel report.
pub fn run_matrix(
    series: &[&'static str],
    bins: &[TestBinary],
    virtiofs: bool,
) -> anyhow::Result<Vec<KernelResult>> {
    ensure_tools(virtiofs)?;
    let sluice = cmd::workspace_root().join("target/debug/sluice");
    let mut results = Vec::new();
    for s in series {
        let kernel = match ensure_kernel(s) {
            Ok(k) => k,
            Err(e) => {
                results.push(KernelResult {
                    error: Some(format!("{e:#}")),
                    ..KernelResult::empty(s, String::new())
                });
                continue;
            }
        };
        eprintln!(
            "vm: kernel {} ({}): {} test(s)",
            s,
            kernel.version,
            bins.iter().map(|b| b.tests.len()).sum::<usize>()
        );
        let r = run_kernel(&kernel, bins, &sluice);
        print_result(&r);
        results.push(r);
    }
    print_table(&results);
    Ok(results)
}

fn print_result(r: &KernelResult) {
    eprintln!(
        "vm: kernel {} {} ({}): {} passed, {} failed, {} skipped in {:.0}s",
        r.series,
        r.release,
        r.version,
        r.passed.len(),
        r.failed.len(),
        r.skipped.len(),
        r.boot_and_run.as_secs_f64()
    );
    for f in &r.failed {
        eprintln!("vm:   failed: {f}");
    }
    if let Some(e) = &r.error {
        eprintln!("vm:   error: {e}");
    }
}

/// The per-kernel table, in the form docs/kernels.md keeps it.
fn print_table(results: &[KernelResult]) {
    println!("\n| kernel | runs on | release | agent | passed | failed | skipped (reason) | time |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in results {
        let agent = match r.supported {
            Some(true) => "starts",
            Some(false) => "refuses",
            None => "-",
        };
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, why) in &r.skipped {
            *reasons.entry(why.as_str()).or_default() += 1;
        }
        let skipped = if r.skipped.is_empty() {
            "0".to_string()
        } else {
            let why: Vec<String> = reasons.iter().map(|(w, n)| format!("{n}: {w}")).collect();
            format!("{} ({})", r.skipped.len(), why.join("; "))
        };
        let failed = match &r.error {
            Some(e) => format!("VM error: {e}"),
            None if r.failed.is_empty() => "0".to_string(),
            None => format!("{} ({})", r.failed.len(), r.failed.join(", ")),
        };
        let note = SERIES.iter().find(|s| s.name == r.series).map_or("", |s| s.note);
        println!(
            "| {} | {note} | {} | {agent} | {} | {failed} | {skipped} | {:.0} s |",
            r.series,
            if r.release.is_empty() { &r.version } else { &r.release },
            r.passed.len(),
            r.boot_and_run.as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Inside the guest

/// `xtask vm-guest DIR`: runs in the VM. Reads `DIR/plan`, writes the kernel check and each test
/// binary's output to DIR, then `DIR/done`. Never fails early: every planned binary gets a result
/// file, so the host can tell what ran.
pub fn guest(dir: &Path) -> anyhow::Result<()> {
    let plan = fs::read_to_string(dir.join("plan")).context("reading the plan")?;
    let mut sluice = PathBuf::from("sluice");
    let mut scale = "1".to_string();
    let mut tests = Vec::new();
    for line in plan.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["sluice", p] => sluice = PathBuf::from(p),
            ["scale", s] => scale = s.to_string(),
            ["test", name, path, names] => {
                tests.push((name.to_string(), PathBuf::from(path), names.to_string()))
            }
            _ => {}
        }
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    fs::write(dir.join("release"), &release)?;
    // The guest's /tmp is an overlay on the host's live /tmp, which other processes change
    // underneath (newer kernels then answer ESTALE), and it may hold the workspace itself, so it
    // cannot be replaced: the tests' TMPDIR is a directory on the guest's own tmpfs /run.
    let tmpdir = Path::new("/run/sluice-tmp");
    fs::create_dir_all(tmpdir)?;
    let t0 = Instant::now();
    let check = Command::new(&sluice).arg("kernel-check").stdin(Stdio::null()).output();
    let (check_out, supported) = match check {
        Ok(o) => (
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
            o.status.success(),
        ),
        Err(e) => (format!("cannot run {}: {e}", sluice.display()), false),
    };
    fs::write(dir.join("kernel-check.out"), &check_out)?;
    let mut log = format!("kernel-check: {:.1}s supported={supported}\n", t0.elapsed().as_secs_f64());
    for (name, path, names) in tests {
        if !supported && name != REFUSAL_BINARY {
            continue;
        }
        let t = Instant::now();
        let out = fs::File::create(dir.join(format!("{name}.out")))?;
        let mut c = Command::new(&path);
        c.args(["--exact", "--test-threads=1"])
            .args(names.split(' ').filter(|n| !n.is_empty()))
            .env("SLUICE_BIN", &sluice)
            .env("SLUICE_TIME_SCALE", &scale)
            .env("TMPDIR", tmpdir)
            .env("RUST_BACKTRACE", "1")
            .current_dir(path.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let status = c.status().map(|s| s.to_string()).unwrap_or_else(|e| format!("did not start: {e}"));
        log.push_str(&format!("{name}: {status} in {:.1}s\n", t.elapsed().as_secs_f64()));
    }
    fs::write(dir.join("done"), log)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_debian_kernel_versions() {
        let mut v = vec![
            "6.1.176-1",
            "7.3.4-1~bpo13+1",
            "5.10.262-1",
            "6.12.95-1~bpo12+1",
            "6.1.192-2",
            "5.10.223-1",
        ];
        v.sort_by(|a, b| debian_version_cmp(b, a));
        assert_eq!(
            v,
            ["7.3.4-1~bpo13+1", "6.12.95-1~bpo12+1", "6.1.192-2", "6.1.176-1", "5.10.262-1", "5.10.223-1"]
        );
        assert!(debian_version_cmp("6.12.95-1~bpo12+1", "6.12.95-1").is_lt());
    }

    #[test]
    fn parses_libtest_outcomes_even_after_interleaved_output() {
        let text = "running 3 tests\ntest a ... ok\nnoise test b ... FAILED\ntest c ... ignored, slow\n\
                    test result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        let m = parse_outcomes(text);
        assert_eq!(m.get("a"), Some(&Outcome::Ok));
        assert_eq!(m.get("b"), Some(&Outcome::Failed));
        assert_eq!(m.get("c"), Some(&Outcome::Ignored));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn kill_tree_ends_grandchildren_too() {
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 60 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("pid");
        let grandchild: u32 = line.trim().parse().expect("pid");
        kill_tree(sh.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        // A killed grandchild is reaped by init; until then it is a zombie (state Z).
        let alive = || {
            fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
        };
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "the grandchild {grandchild} survived");
        sh.wait().expect("wait");
    }

    #[test]
    fn kernel_lists_resolve() {
        assert_eq!(parse_kernels(&["6.1,6.12".into()]).expect("ok"), ["6.1", "6.12"]);
        assert_eq!(parse_kernels(&["all".into()]).expect("ok").len(), SERIES.len());
        assert!(parse_kernels(&["4.19".into()]).is_err());
        for k in CI_KERNELS {
            assert!(SERIES.iter().any(|s| s.name == *k));
        }
    }
}
