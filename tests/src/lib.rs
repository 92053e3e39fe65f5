//! The end-to-end harness: a simulated cluster on one machine.
//!
//! Each node is a network namespace running a real `sluice agent` process (inside the node's own
//! cgroup); each pod is a network namespace wired to its node by Debian's `ptp` CNI plugin with
//! `host-local` IPAM (IPv4 and IPv6), chained with `sluice-cni` exactly as a container runtime would
//! run a conflist; pod processes run in the pod's netns and in a per-pod cgroup below the node's.
//! Nodes reach each other through a router namespace. Every name carries a per-run id; everything
//! is removed when the [`Cluster`] drops, also while a test panics, and leftovers of runs whose
//! process died are swept at the next start. See `tests/README.md`.
pub mod cluster;
pub mod probe;
pub mod sys;

pub use cluster::{Cluster, Pod};

/// Call first in every end-to-end test: returns false (after a loud message) when the test must be
/// skipped because we are not root and `SLUICE_E2E_ALLOW_SKIP=1` is set; panics when not root
/// without that opt-out, so a missing capability never passes silently.
pub fn require_root(test: &str) -> bool {
    if sys::is_root() {
        return true;
    }
    if std::env::var("SLUICE_E2E_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root (network namespaces, cgroups, bpffs)");
        return false;
    }
    panic!(
        "{test} needs root (network namespaces, cgroups, bpffs); run as root or set SLUICE_E2E_ALLOW_SKIP=1"
    );
}

/// Polls `ok` every 50 ms for up to `within` (scaled for slow kernels, see
/// [`cluster::scaled`]); true once it held.
pub fn wait_until(within: std::time::Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + cluster::scaled(within);
    loop {
        if ok() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
