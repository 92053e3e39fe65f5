//! Fuzz target: arbitrary bytes (as lossy UTF-8) through the YAML front end and, when they parse,
//! through the compiler. Any panic, stack overflow, timeout or runaway allocation is a bug.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use sluice::config::{Diagnostics, Snapshot, yaml};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(docs) = yaml::parse(&text) {
        let docs: Vec<_> = docs.into_iter().map(|d| (PathBuf::from("fuzz.yaml"), d)).collect();
        let mut diags = Diagnostics::default();
        let snap = Snapshot::compile(&docs, &mut diags);
        snap.check_references(&docs, &mut diags);
        // Every diagnostic must render.
        let _ = diags.to_string();
    }
});
