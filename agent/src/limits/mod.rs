//! Process limits a proxy needs: the open-file limit raised from its soft to its hard value at
//! start (as ztunnel does). Every carried connection holds descriptors; a runtime's default soft
//! limit of 1,024 would otherwise cap a node's connections at a few hundred and then reset
//! connections to every pod on the node. Imports nothing from the crate.
//!
//! - [`caps`]: per-pod and per-source connection caps and the node's descriptor budget.
//! - [`accept`]: backing off when `accept` fails (EMFILE) instead of spinning.
pub mod accept;
pub mod caps;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) as they are afterwards.
/// The hard limit itself is the runtime's to set (a DaemonSet can raise it with SYS_RESOURCE).
pub fn raise_nofile() -> Result<(u64, u64), nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    getrlimit(Resource::RLIMIT_NOFILE)
}

/// Raises the limit and logs the result (a warning when it stays low or cannot be raised).
pub fn raise_and_log() -> Option<u64> {
    match raise_nofile() {
        Ok((soft, hard)) => {
            if soft < 65_536 {
                tracing::warn!(
                    soft,
                    hard,
                    "open-file limit is low: each carried connection needs descriptors; \
                               raise the hard limit of the agent's container (RLIMIT_NOFILE)"
                );
            } else {
                tracing::info!(soft, hard, "open-file limit");
            }
            Some(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE); keeping it");
            None
        }
    }
}

/// Hands memory that is free in the C heap back to the kernel (glibc `malloc_trim`: every arena,
/// whole free pages inside them too, not only the top). After a large config is replaced its
/// parse and its old snapshot leave tens of MiB free but resident, spread over the arenas of the
/// threads that parsed it; without this the process's RSS stays at its peak. Returns whether
/// anything was released. A no-op outside glibc.
#[allow(unsafe_code)] // one libc call, see SAFETY
pub fn return_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and trims the allocator's own free lists, takes its
        // arena locks itself, and has no pointer arguments.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
