//! Start-up kernel feature probe: before loading anything, the agent asks the running kernel for
//! every program type, helper, map type and socket option the eBPF object and the data path use,
//! and refuses to start with a message naming what is missing and the kernel that has it.
//!
//! The probe asks the kernel, never its version string: distributions backport BPF features, and
//! a kernel older than the documented minimum that has everything works. One eBPF object serves
//! every kernel; nothing is built per kernel.
//!
//! The documented minimum is [`MINIMUM_KERNEL`] (see docs/kernels.md for why and for the kernels
//! tested): `bpf_get_netns_cookie()` in sock_ops programs arrived in 5.15 and `SO_NETNS_COOKIE` in
//! 5.14; everything else is older.
use std::{fmt, os::fd::AsFd as _, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The oldest kernel line that has every feature sluice needs.
pub const MINIMUM_KERNEL: &str = "5.15";

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Present,
    Missing,
    /// The probe itself failed (permissions, an unexpected errno); the text says why.
    Unknown(String),
}

/// One kernel feature the agent needs (or reports).
#[derive(Clone, Debug)]
pub struct Feature {
    /// What it is, as the kernel documentation names it.
    pub name: &'static str,
    /// The first upstream kernel that has it.
    pub since: &'static str,
    /// What sluice uses it for.
    pub used_for: &'static str,
    /// Whether the agent refuses to start without it (false: reported only).
    pub required: bool,
    pub status: Status,
}

/// The result of [`probe`].
#[derive(Clone, Debug)]
pub struct Report {
    /// The running kernel's release (`uname -r`), for messages only.
    pub release: String,
    pub features: Vec<Feature>,
}

/// The agent refuses to start on this kernel.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks what sluice needs: {missing}. sluice needs Linux {MINIMUM_KERNEL} or \
     newer (or a kernel with these features backported); run the agent on such a node \
     (`sluice kernel-check` lists every feature and what it is for)"
)]
pub struct Unsupported {
    pub release: String,
    /// Each missing or unprobeable required feature with the kernel that has it.
    pub missing: String,
}

impl Report {
    /// Required features that are not present (missing, or the probe could not tell).
    pub fn blocking(&self) -> Vec<&Feature> {
        self.features.iter().filter(|f| f.required && f.status != Status::Present).collect()
    }

    /// Ok when every required feature is present; else the refusal naming each missing one.
    pub fn check(&self) -> Result<(), Unsupported> {
        let blocking = self.blocking();
        if blocking.is_empty() {
            return Ok(());
        }
        let missing = blocking
            .iter()
            .map(|f| match &f.status {
                Status::Unknown(why) => format!("{} (could not probe: {why}; Linux {}+)", f.name, f.since),
                _ => format!("{} (Linux {}+, for {})", f.name, f.since, f.used_for),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(Unsupported { release: self.release.clone(), missing })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} (sluice needs {MINIMUM_KERNEL}+)", self.release)?;
        for feat in &self.features {
            let status = match &feat.status {
                Status::Present => "ok".to_string(),
                Status::Missing if feat.required => "MISSING".to_string(),
                Status::Missing => "missing (optional)".to_string(),
                Status::Unknown(why) => format!("UNKNOWN ({why})"),
            };
            writeln!(f, "  {:<52} {:<6} {:<20} {}", feat.name, feat.since, status, feat.used_for)?;
        }
        match self.check() {
            Ok(()) => write!(f, "supported"),
            Err(e) => write!(f, "NOT SUPPORTED: {e}"),
        }
    }
}

fn status_of<E: fmt::Display>(r: Result<bool, E>) -> Status {
    match r {
        Ok(true) => Status::Present,
        Ok(false) => Status::Missing,
        Err(e) => Status::Unknown(e.to_string()),
    }
}

/// The running kernel's release string.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// `SO_NETNS_COOKIE` on a socket of the agent's own namespace: ENOPROTOOPT before 5.14.
fn so_netns_cookie() -> Status {
    let sock = match std::net::UdpSocket::bind("127.0.0.1:0") {
        Ok(s) => s,
        Err(e) => return Status::Unknown(format!("cannot open a probe socket: {e}")),
    };
    match super::sys::netns_cookie(sock.as_fd()) {
        Ok(_) => Status::Present,
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Status::Missing,
        Err(e) => Status::Unknown(e.to_string()),
    }
}

/// Asks the running kernel for every feature (needs root or CAP_BPF for the program probes).
pub fn probe() -> Report {
    let prog = |t| status_of(is_program_supported(t));
    let helper = |t, h| status_of(is_helper_supported(t, h));
    let map = |t| status_of(is_map_supported(t));
    let feature =
        |name, since, used_for, required, status| Feature { name, since, used_for, required, status };
    let features = vec![
        feature(
            "cgroup2 mount",
            "4.5",
            "scope of the outbound hooks",
            true,
            if super::kernel::cgroup2_root().is_ok() { Status::Present } else { Status::Missing },
        ),
        feature(
            "program type cgroup/sock_addr (connect4/6)",
            "4.17",
            "outbound capture",
            true,
            prog(ProgramType::CgroupSockAddr),
        ),
        feature(
            "program type sock_ops",
            "4.13",
            "original destination by source port",
            true,
            prog(ProgramType::SockOps),
        ),
        feature(
            "program type sk_lookup",
            "5.9",
            "inbound capture (implies getpeername 5.8, bpf_link 5.7)",
            true,
            prog(ProgramType::SkLookup),
        ),
        feature(
            "helper bpf_get_netns_cookie in cgroup/sock_addr",
            "5.7",
            "enrolled-pod gate",
            true,
            helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_netns_cookie),
        ),
        feature(
            "helper bpf_get_netns_cookie in sock_ops",
            "5.15",
            "original-destination key",
            true,
            helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie),
        ),
        feature(
            "helper bpf_get_socket_cookie in cgroup/sock_addr",
            "5.0",
            "per-socket original destination",
            true,
            helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_socket_cookie),
        ),
        feature(
            "helper bpf_get_socket_cookie in sock_ops",
            "5.0",
            "per-socket original destination",
            true,
            helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_socket_cookie),
        ),
        feature(
            "helper bpf_sk_assign in sk_lookup",
            "5.9",
            "steering to the 15006 listener",
            true,
            helper(ProgramType::SkLookup, BpfHelper::BPF_FUNC_sk_assign),
        ),
        feature("map type LRU hash", "4.10", "original destinations", true, map(MapType::LruHash)),
        feature("map type sockhash", "4.18", "inbound listeners", true, map(MapType::SockHash)),
        feature("map type per-CPU array", "4.6", "decision counters", true, map(MapType::PerCpuArray)),
        feature(
            "socket option SO_NETNS_COOKIE",
            "5.14",
            "pod netns cookie at enrollment",
            true,
            so_netns_cookie(),
        ),
        feature(
            "kernel BTF (/sys/kernel/btf/vmlinux)",
            "5.4",
            "not needed by today's programs; reported for bug reports",
            false,
            if Path::new("/sys/kernel/btf/vmlinux").exists() { Status::Present } else { Status::Missing },
        ),
    ];
    Report { release: kernel_release(), features }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[(&'static str, bool, Status)]) -> Report {
        Report {
            release: "5.10.0-test".into(),
            features: statuses
                .iter()
                .map(|(name, required, status)| Feature {
                    name,
                    since: "5.15",
                    used_for: "testing",
                    required: *required,
                    status: status.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn refusal_names_each_missing_required_feature_and_the_minimum() {
        let r = report(&[
            ("helper a", true, Status::Present),
            ("helper b", true, Status::Missing),
            ("btf", false, Status::Missing),
            ("helper c", true, Status::Unknown("EPERM".into())),
        ]);
        let e = r.check().expect_err("must refuse").to_string();
        assert!(e.contains("5.10.0-test"), "{e}");
        assert!(e.contains("helper b (Linux 5.15+, for testing)"), "{e}");
        assert!(e.contains("helper c (could not probe: EPERM"), "{e}");
        assert!(!e.contains("helper a") && !e.contains("btf"), "{e}");
        assert!(e.contains(&format!("Linux {MINIMUM_KERNEL} or newer")), "{e}");
    }

    #[test]
    fn optional_features_never_block() {
        let r = report(&[("helper a", true, Status::Present), ("btf", false, Status::Missing)]);
        assert!(r.check().is_ok());
        assert!(r.to_string().ends_with("supported"));
    }
}
