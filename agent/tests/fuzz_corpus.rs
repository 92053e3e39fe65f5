//! Replays the committed fuzz corpus (`agent/fuzz/corpus-min/<target>/`, plus the Istio example
//! configs for `config_yaml`) through the fuzz targets' bodies on stable, in every test run: an
//! input that once crashed a parser and was added to the corpus stays fixed without nightly.
//! Also checks that every target in `sluice::fuzzing::TARGETS` is built by `agent/fuzz` and has
//! a corpus, so a new target cannot be left out of either.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use sluice::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The replayed inputs of `target`, sorted (stable order for a failure report).
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut dirs = vec![fuzz_dir().join("corpus-min").join(target)];
    if target == "config_yaml" {
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio"));
    }
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| fs::read_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_is_built_by_the_fuzz_crate_and_has_a_corpus() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("agent/fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "agent/fuzz/Cargo.toml has no [[bin]] for the target {name}"
        );
        let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let body = fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(
            body.contains(&format!("sluice::fuzzing::{name}(data)")),
            "{} does not call sluice::fuzzing::{name}",
            src.display()
        );
        assert!(!inputs(name).is_empty(), "no corpus for the fuzz target {name}");
    }
    // And the other way: every binary of the fuzz crate is a target the replay runs.
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
            let name = name.trim_matches('"');
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "agent/fuzz/Cargo.toml builds {name}, which sluice::fuzzing::TARGETS does not list (so its corpus is never replayed)"
            );
        }
    }
}

#[test]
fn the_committed_corpus_replays_cleanly() {
    for (name, run) in TARGETS {
        let started = Instant::now();
        let files = inputs(name);
        for f in &files {
            let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            // A panic names the input: the test harness prints it with the panic.
            eprintln!("replaying {}", f.display());
            run(&data);
        }
        eprintln!("{name}: {} inputs in {:?}", files.len(), started.elapsed());
    }
}
