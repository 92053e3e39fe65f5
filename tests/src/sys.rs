//! The harness's raw syscalls: entering a network namespace and a cgroup in a child before exec,
//! and running a closure on a thread inside a namespace.
#![allow(unsafe_code, reason = "setns and pre_exec have no safe std equivalent")]

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::Command,
};

/// Makes `cmd` start inside the netns at `netns` and, if given, the cgroup directory `cgroup`.
pub fn enter_on_spawn(cmd: &mut Command, netns: &Path, cgroup: Option<&Path>) -> io::Result<()> {
    let ns = File::open(netns)?;
    let procs = match cgroup {
        Some(c) => Some(std::fs::OpenOptions::new().write(true).open(c.join("cgroup.procs"))?),
        None => None,
    };
    // SAFETY: the closure only calls async-signal-safe syscalls on fds opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                let zero = b"0";
                if libc::write(p.as_raw_fd(), zero.as_ptr().cast(), zero.len()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the netns at `netns`.
pub fn in_netns<R: Send + 'static>(netns: &Path, f: impl FnOnce() -> R + Send + 'static) -> io::Result<R> {
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the thread ends right after f.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("thread in netns panicked"))?
}

/// Mounts a private bpffs at `dir`.
pub fn mount_bpffs(dir: &Path) -> io::Result<()> {
    run_ok(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir))
}

/// Lazily unmounts `dir`.
pub fn umount(dir: &Path) -> io::Result<()> {
    run_ok(Command::new("umount").arg("-l").arg(dir))
}

/// Runs a command; error if it fails, with its stderr.
pub fn run_ok(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )))
    }
}

/// Sends SIGINT to a process.
/// Sends SIGTERM to `pid` (what the kubelet sends a pod's containers).
pub fn terminate(pid: u32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn interrupt(pid: u32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Effective uid is 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Records SIGINT/SIGTERM in a flag instead of dying, so the caller can unwind and clean up.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// True once SIGINT or SIGTERM arrived after [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}
