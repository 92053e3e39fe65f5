//! Running child processes from xtask with the command line echoed and failures named.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The cargo that invoked us (so `cargo +toolchain xtask` stays consistent).
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs `cargo ARGS` in the workspace root, inheriting stdio.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(&mut cargo_cmd(args))
}

/// `cargo ARGS` in the workspace root with `$CARGO_HOME/bin` (bpf-linker) first on PATH.
pub fn cargo_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(cargo_bin());
    c.args(args).current_dir(workspace_root()).env("PATH", path_with_cargo_bin());
    c
}

/// PATH with `$CARGO_HOME/bin` in front, so builds find bpf-linker even from a bare environment.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs = vec![crate::setup::cargo_home_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Runs a command inheriting stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("could not start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout if it succeeded; None if it failed or could not start.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}
