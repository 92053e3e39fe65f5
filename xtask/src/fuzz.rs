//! `cargo xtask fuzz [--time SECS]`: seeds the corpus and runs the `config_yaml` fuzz target with
//! cargo-fuzz on the nightly toolchain (installing cargo-fuzz when it is missing). Not part of
//! `cargo xtask test`: it runs for minutes and needs nightly.
use std::process::Command;

use crate::cmd;

/// Runs the fuzzer for `seconds`.
pub fn run(seconds: u64) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    if cmd::output(Command::new(cmd::cargo_bin()).args(["fuzz", "--version"])).is_none() {
        cmd::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    cmd::run(&mut Command::new(root.join("agent/fuzz/seed.sh")))?;
    let time = format!("-max_total_time={seconds}");
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz", "run", "config_yaml", "--", &time])
        .current_dir(root.join("agent"))
        .env("PATH", cmd::path_with_cargo_bin());
    cmd::run(&mut c)
}
