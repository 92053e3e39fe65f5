//! `cargo xtask fuzz [--target NAME] [--time SECS] [--save]`: runs the fuzz targets of `agent/fuzz`
//! with cargo-fuzz on nightly (installing cargo-fuzz when it is missing), one after another, each
//! for SECS seconds. Not part of `cargo xtask test`, which replays the committed corpus on stable
//! instead (`agent/tests/fuzz_corpus.rs`).
//!
//! The nightly, sanitizer-instrumented build goes to a target directory in the cache
//! ([`crate::vm::cache_dir`]`/fuzz-target`), shared by every checkout on the machine, so a run after
//! the first rebuilds only what changed. Each target's working corpus (`agent/fuzz/corpus/<t>`,
//! not committed) is seeded from the committed one (`agent/fuzz/corpus-min/<t>`, and the Istio
//! example configs for `config_yaml`); `--save` minimises it (`cargo fuzz cmin`) and writes the
//! result back to `corpus-min` (inputs up to 16 KiB; the hand-written `seed-*` files stay), for the
//! stable replay.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Largest input `--save` keeps in the committed corpus.
const MAX_SAVED: u64 = 16 * 1024;

pub fn run(target: Option<&str>, seconds: u64, save: bool) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let fuzz = root.join("agent/fuzz");
    let all = targets(&fs::read_to_string(fuzz.join("Cargo.toml")).context("reading agent/fuzz/Cargo.toml")?);
    let targets: Vec<&str> = match target {
        Some(t) if all.iter().any(|a| a == t) => vec![t],
        Some(t) => bail!("no fuzz target {t}; the targets are {}", all.join(", ")),
        None => all.iter().map(String::as_str).collect(),
    };
    if cmd::output(Command::new(cmd::cargo_bin()).args(["fuzz", "--version"])).is_none() {
        cmd::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let cache = crate::vm::cache_dir().join("fuzz-target");
    for t in targets {
        let corpus = fuzz.join("corpus").join(t);
        let committed = fuzz.join("corpus-min").join(t);
        seed(&corpus, &committed)?;
        if t == "config_yaml" {
            seed(&corpus, &root.join("tests/fixtures/istio"))?;
        }
        let time = format!("-max_total_time={seconds}");
        cmd::run(fuzz_cmd(&root, &cache).args(["run", t, "--", &time, "-rss_limit_mb=2048", "-timeout=10"]))?;
        if save {
            cmd::run(fuzz_cmd(&root, &cache).args(["cmin", t]))?;
            // The hand-written seeds (`seed-*`, which unit tests name) stay; the rest is replaced.
            for e in fs::read_dir(&committed)? {
                let e = e?;
                if !e.file_name().to_string_lossy().starts_with("seed-") {
                    fs::remove_file(e.path())?;
                }
            }
            seed(&committed, &corpus)?;
        }
        let (n, bytes) = size(&corpus)?;
        let (kept, kept_bytes) = size(&committed)?;
        eprintln!(
            "fuzz {t}: {seconds} s; corpus {n} inputs, {bytes} bytes; committed corpus {kept} inputs, {kept_bytes} bytes"
        );
    }
    Ok(())
}

/// The targets: the `[[bin]]` names of the fuzz crate's manifest (the replay test checks they
/// match `sluice::fuzzing::TARGETS`).
fn targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(v) = line.strip_prefix("name = ") {
            out.push(v.trim_matches('"').to_string());
        }
    }
    out
}

fn fuzz_cmd(root: &Path, cache: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz"])
        .current_dir(root.join("agent"))
        .env("CARGO_TARGET_DIR", cache)
        .env("PATH", cmd::path_with_cargo_bin());
    c
}

/// Copies the files of `from` (up to [`MAX_SAVED`] bytes each) into `to`.
fn seed(to: &Path, from: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_file() && meta.len() <= MAX_SAVED {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Number of files and their total size in `dir`.
fn size(dir: &Path) -> anyhow::Result<(usize, u64)> {
    let mut n = 0;
    let mut bytes = 0;
    for e in fs::read_dir(dir)? {
        let meta = e?.metadata()?;
        if meta.is_file() {
            n += 1;
            bytes += meta.len();
        }
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_are_the_bin_names_of_the_fuzz_manifest() {
        let m = "[package]\nname = \"sluice-fuzz\"\n[dependencies]\n[[bin]]\nname = \"a\"\npath = \"x\"\n[workspace]\n[[bin]]\nname = \"b\"\n";
        assert_eq!(super::targets(m), ["a", "b"]);
    }
}
