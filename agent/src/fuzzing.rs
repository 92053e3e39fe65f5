//! The fuzz targets' bodies: one entry point per input an outsider or a bad day can hand the
//! agent, each taking arbitrary bytes. They must return without panicking, hanging or growing
//! without bound; a property an entry checks beyond that panics with what broke.
//!
//! `agent/fuzz` (cargo-fuzz, nightly) runs each under libFuzzer; `agent/tests/fuzz_corpus.rs`
//! replays the committed corpus (`agent/fuzz/corpus-min/<target>/`) through the same functions
//! on stable in every test run, so a fixed crash stays fixed without a nightly toolchain.
use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf};

use crate::{
    agent::handover::{self, Channel},
    config::{Diagnostics, Snapshot, yaml},
};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary in `agent/fuzz/Cargo.toml`.
pub const TARGETS: &[(&str, Target)] = &[("config_yaml", config_yaml), ("handover", handover)];

/// Mesh config: bytes (as lossy UTF-8) through the YAML front end and, when they parse, the
/// compiler and the cross-object checks; every diagnostic must render.
pub fn config_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(docs) = yaml::parse(&text) {
        let docs: Vec<_> = docs.into_iter().map(|d| (PathBuf::from("fuzz.yaml"), d)).collect();
        let mut diags = Diagnostics::default();
        let snap = Snapshot::compile(&docs, &mut diags);
        snap.check_references(&docs, &mut diags);
        let _ = diags.to_string();
    }
}

/// The upgrade handover, both sides, against a peer that sends anything: each line of `data` is
/// one message; a line starting with `#N ` (N a digit) carries N descriptors. The new agent's
/// side (`take_over`) and the old agent's (`greet`) must end in a result, never a panic or a
/// wait (the sender shuts its sending side when done, so a short conversation ends in EOF).
pub fn handover(data: &[u8]) {
    let messages: Vec<(usize, Vec<u8>)> = data
        .split(|b| *b == b'\n')
        .map(|line| match line {
            [b'#', n @ b'0'..=b'9', b' ', rest @ ..] => (usize::from(n - b'0'), rest.to_vec()),
            _ => (0, line.to_vec()),
        })
        .collect();
    for side in [Side::New, Side::Old] {
        let Ok((ours, theirs)) = Channel::pair() else { return };
        let msgs = messages.clone();
        let peer = std::thread::spawn(move || {
            for (n, body) in msgs {
                let files: Vec<File> = (0..n).filter_map(|_| File::open("/dev/null").ok()).collect();
                let fds: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
                // The other side stopped reading (it refused): the conversation is over.
                if theirs.send_raw(&body, &fds).is_err() {
                    return;
                }
            }
            // EOF for the side under test after the last message; this end stays open (so its
            // replies do not fail) until that side is done and closes.
            if theirs.finish().is_ok() {
                while theirs.recv().is_ok() {}
            }
        });
        match side {
            Side::New => {
                let _ = handover::take_over(ours);
            }
            Side::Old => {
                let _ = handover::greet(&ours);
                drop(ours);
            }
        }
        let _ = peer.join();
    }
}

#[derive(Clone, Copy)]
enum Side {
    New,
    Old,
}
