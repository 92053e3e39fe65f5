//! The kernel programs' decision log: why a connection was or was not captured, from the hooks
//! themselves, as debug events on the tracing target [`TARGET`] (`kernel`).
//!
//! Off by default and free when off: the eBPF object carries the logging code behind a load-time
//! switch (`sluice_common::LOG_DECISIONS_GLOBAL`) that [`super::Kernel::load`] sets only when the
//! agent's log filter enables debug for [`TARGET`] (`--log-level info,kernel=debug`, or `SLUICE_LOG`).
//! With the switch off the verifier removes that code. The switch is read once, at load: changing it
//! needs an agent restart (which keeps enrollment, docs/redirection.md).
//!
//! When on, the programs write aya-log records (`decision=<label>` in the `sluice_common::Decision`
//! vocabulary, then the facts) to aya-log's ring buffer; [`spawn`] drains it on the tokio runtime
//! and [`Bridge`] turns each record into a tracing event. This module owns that bridge only; it
//! touches no map and no program.
use aya::Ebpf;
use aya_log::EbpfLogger;
use tracing::{debug, warn};

/// The tracing target of the decision log. Deliberately not below `sluice`: tracing's filter
/// matches targets by prefix, and `sluice=debug` (which the test harness and the benchmarks run
/// with) must not switch kernel logging on; plain `debug` does.
pub const TARGET: &str = "kernel";

/// Whether the installed tracing filter wants the decision log (debug for [`TARGET`]).
pub fn wanted() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// Forwards aya-log records (a `log::Log`) into tracing under [`TARGET`], at their own level.
pub struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{msg}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{msg}"),
            log::Level::Info => tracing::info!(target: TARGET, "{msg}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{msg}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Takes aya-log's ring buffer out of `bpf` and drains it on the current tokio runtime for the
/// rest of the process (the task owns the logger: dropping it would close the ring buffer).
/// Returns false, having logged why, when the log cannot run; the programs then write records no
/// one reads, which costs them a failed ring-buffer reservation each once it is full.
pub fn spawn(bpf: &mut Ebpf) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        warn!(target: TARGET, "the kernel decision log needs the agent's async runtime; not started");
        return false;
    };
    let logger = match EbpfLogger::init_with_logger(bpf, Bridge) {
        Ok(l) => l,
        Err(e) => {
            warn!(target: TARGET, error = %e, "the kernel decision log could not start");
            return false;
        }
    };
    let _guard = rt.enter();
    let mut fd = match super::sys::async_log_reader(logger) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(target: TARGET, error = %e, "the kernel decision log could not poll its ring buffer");
            return false;
        }
    };
    rt.spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(e) => {
                    warn!(target: TARGET, error = %e, "the kernel decision log stopped");
                    return;
                }
            }
        }
    });
    debug!(target: TARGET, "kernel decision log on");
    true
}
