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
    cni::{
        plugin::{self, Invocation},
        protocol::{Reply, Request},
    },
    config::{Diagnostics, Snapshot, yaml},
};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary in `agent/fuzz/Cargo.toml`.
pub const TARGETS: &[(&str, Target)] = &[("cni", cni), ("config_yaml", config_yaml), ("handover", handover)];

/// The CNI plugin as the container runtime runs it: the first five lines of `data` are
/// `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_ARGS`, the rest is the
/// network config on stdin. The agent answers every call with the reply the sum of the bytes picks
/// (enrolled, refused, a claim conflict, unreachable). A result printed for the runtime must be
/// JSON; whatever the plugin sends the agent must read back as the same request (the agent's
/// decoder is fed the plugin's bytes, and the raw stdin too).
pub fn cni(data: &[u8]) {
    let mut parts = data.splitn(6, |b| *b == b'\n');
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let inv = Invocation {
        command: field(),
        container_id: field(),
        netns: field(),
        ifname: field(),
        args: field(),
    };
    let stdin = parts.next().unwrap_or_default();
    let agent = FuzzAgent { pick: data.iter().fold(0u8, |a, b| a.wrapping_add(*b)) };
    if let Ok(Some(out)) = plugin::run(&inv, stdin, &agent)
        && let Err(e) = serde_json::from_str::<serde_json::Value>(&out)
    {
        panic!("the plugin printed a result that is not JSON ({e}): {out}");
    }
    let _ = serde_json::from_slice::<Request>(stdin);
}

/// The agent's side of the CNI socket, answering without one.
struct FuzzAgent {
    pick: u8,
}

impl plugin::Agent for FuzzAgent {
    fn call(&self, _socket: &std::path::Path, req: &Request) -> std::io::Result<Reply> {
        let line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        let back: Request = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("the agent cannot read the plugin's request ({e}): {req:?}"));
        assert_eq!(&back, req, "the request changed on the wire");
        match self.pick % 4 {
            0 => Ok(Reply::ok(true)),
            1 => Ok(Reply::err("refused")),
            2 => Ok(Reply::conflict("ips", "address taken")),
            _ => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }
}

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
