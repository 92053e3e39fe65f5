//! Kernel support: the agent starts on a kernel that has what sluice needs and refuses an older
//! one, naming the missing features and the minimum kernel, before it loads or pins anything.
//! Runs on the host and in every kernel-matrix VM (`cargo xtask test --kernel ...`).
use sluice_e2e::{Cluster, cluster::sluice_bin, require_root};

/// The documented minimum (docs/kernels.md), stated independently of the agent's probe: the
/// test judges the probe against the kernel's version, so a probe that wrongly refuses or
/// wrongly accepts fails here.
const MINIMUM: (u32, u32) = (5, 15);

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_string()
}

fn major_minor(release: &str) -> (u32, u32) {
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let n = |s: Option<&str>| s.and_then(|s| s.parse().ok()).expect("kernel release starts with MAJOR.MINOR");
    (n(it.next()), n(it.next()))
}

#[test]
fn the_agent_starts_on_a_supported_kernel_and_refuses_an_older_one_naming_what_is_missing() {
    if !require_root("the_agent_starts_on_a_supported_kernel_and_refuses_an_older_one_naming_what_is_missing")
    {
        return;
    }
    let release = release();
    let supported = major_minor(&release) >= MINIMUM;
    let c = Cluster::new(1).expect("cluster");
    c.write_config(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n",
    )
    .expect("config");
    let check = std::process::Command::new(sluice_bin()).arg("kernel-check").output().expect("kernel-check");
    let table = String::from_utf8_lossy(&check.stdout).into_owned();
    let started = c.start_agent(1);
    if supported {
        assert!(check.status.success(), "kernel-check refused supported kernel {release}:\n{table}");
        assert!(table.trim_end().ends_with("\nsupported"), "{table}");
        started.unwrap_or_else(|e| panic!("the agent did not start on {release}: {e:#}"));
        // The kernel's decision counters are read from the loaded maps.
        let metrics = c.agent_get(1, "/stats/prometheus").expect("metrics");
        assert!(
            metrics.contains("sluice_redirect_decisions_total{decision=\"outbound_redirected\"}"),
            "{metrics}"
        );
    } else {
        assert!(!check.status.success(), "kernel-check accepted {release}:\n{table}");
        assert!(
            table.contains("helper bpf_get_netns_cookie in sock_ops") && table.contains("MISSING"),
            "{table}"
        );
        assert!(table.contains("\nNOT SUPPORTED: "), "{table}");
        let err = format!("{:#}", started.expect_err("the agent must refuse to start"));
        assert!(err.contains(&release), "the refusal names the kernel: {err}");
        assert!(
            err.contains("bpf_get_netns_cookie in sock_ops (Linux 5.15+"),
            "the refusal names the missing helper and where it arrived: {err}"
        );
        assert!(err.contains("SO_NETNS_COOKIE (Linux 5.14+"), "{err}");
        assert!(err.contains("sluice needs Linux 5.15 or newer"), "{err}");
        // Refused before loading: nothing was pinned for the next agent to trip over.
        let pinned = c.node_bpffs(1).read_dir().map(|d| d.count()).unwrap_or(0);
        assert_eq!(pinned, 0, "the refused agent pinned something in its bpffs");
    }
}

#[test]
fn kernel_releases_parse() {
    assert_eq!(major_minor("5.10.0-46-amd64"), (5, 10));
    assert_eq!(major_minor("6.18.44-fc-v782"), (6, 18));
    assert_eq!(major_minor("7.3.4+deb13-amd64"), (7, 3));
    assert!(major_minor("5.10.0") < MINIMUM && major_minor("6.1.0") >= MINIMUM);
}

/// (soft, hard) "Max open files" of process `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let mut n = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    (n.next().expect("soft"), n.next().expect("hard"))
}

#[test]
fn the_agent_raises_its_open_file_limit_to_the_hard_limit_and_reports_it() {
    if !require_root("the_agent_raises_its_open_file_limit_to_the_hard_limit_and_reports_it") {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n",
    )
    .expect("config");
    c.start_agent(1).expect("agent");
    let pid = c.agent_pid(1).expect("agent pid");
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "the agent runs with its soft open-file limit raised to the hard one");
    let reported = c.metric(1, "sluice_open_files_limit", &[]).expect("metric");
    assert_eq!(reported, soft as f64, "sluice_open_files_limit reports the limit in force");
}
