//! The fuzz targets' bodies: one entry point per input an outsider or a bad day can hand the
//! agent, each taking arbitrary bytes. They must return without panicking, hanging or growing
//! without bound; a property an entry checks beyond that panics with what broke.
//!
//! `agent/fuzz` (cargo-fuzz, nightly) runs each under libFuzzer; `agent/tests/fuzz_corpus.rs`
//! replays the committed corpus (`agent/fuzz/corpus-min/<target>/`) through the same functions
//! on stable in every test run, so a fixed crash stays fixed without a nightly toolchain.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::Duration,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    admin::{self, Endpoint, Surface},
    agent::handover::{self, Channel},
    cni::{
        plugin::{self, Invocation},
        protocol::{Reply, Request},
    },
    config::{Diagnostics, Snapshot, yaml},
    identity::Identity,
    tunnel::{
        server::{Targets, serve_streams},
        settings,
    },
};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary in `agent/fuzz/Cargo.toml`.
pub const TARGETS: &[(&str, Target)] =
    &[("admin", admin), ("cni", cni), ("config_yaml", config_yaml), ("handover", handover), ("hbone", hbone)];

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

/// The HBONE server after TLS, as a pod's 15008 runs it: `data` is what the peer sends after the
/// HTTP/2 preface (frames: SETTINGS, HEADERS with any method and `:authority`, DATA, resets,
/// floods...), with the agent's HTTP/2 settings. Every stream handed on must be a CONNECT to this
/// pod's own address; the server must end once the peer has sent everything and closed.
pub fn hbone(data: &[u8]) {
    hbone_streams(data);
}

/// [`hbone`], returning how many streams were handed on.
pub fn hbone_streams(data: &[u8]) -> usize {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let local_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let peer = Identity::new("cluster.local", "ns", "sa");
    let peer_addr = SocketAddr::from(([10, 0, 0, 2], 40000));
    let input = [PREFACE, data].concat();
    let ping = [&[0, 0, 8, 6, 0, 0, 0, 0, 0][..], PING].concat();
    let handed_on = std::cell::Cell::new(0);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (from_server, mut to_server) = tokio::io::split(client);
            // The peer sends the input and a PING, and closes once the server has answered the PING
            // (so every frame before it has been handled: on a connection that ends at once h2
            // drops requests it has read but not yet handed out), at once when the input ends
            // inside a frame (which swallows the PING), or after 1 s. It reads and drops everything
            // else the server sends, so the server never blocks on a full pipe.
            let peer_side = tokio::spawn(async move {
                let mut from_server = from_server;
                if to_server.write_all(&input).await.is_ok()
                    && to_server.write_all(&ping).await.is_ok()
                    && whole_frames(&input[PREFACE.len()..])
                {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), ping_answered(&mut from_server)).await;
                }
                let _ = to_server.shutdown().await;
                let mut sink = vec![0u8; 16 * 1024];
                while matches!(from_server.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            let serve = async {
                let Ok(mut conn) = settings::server().handshake::<_, bytes::Bytes>(server).await else {
                    return;
                };
                let on_stream = |stream: crate::tunnel::server::Stream| {
                    assert_eq!(stream.target.ip(), local_ip, "a stream to another address was handed on");
                    handed_on.set(handed_on.get() + 1);
                    stream.refuse(http::StatusCode::UNAUTHORIZED);
                };
                let _ = serve_streams(
                    &mut conn,
                    &peer,
                    peer_addr,
                    local_ip,
                    Targets::OwnAddress,
                    std::future::pending(),
                    on_stream,
                )
                .await;
            };
            if tokio::time::timeout(Duration::from_secs(5), serve).await.is_err() {
                panic!("the HBONE server did not end 5 s after its peer closed");
            }
            let _ = peer_side.await;
        });
    });
    handed_on.get()
}

/// The admin, metrics and readiness HTTP servers: `data` is what a client sends (HTTP/1, any
/// number of pipelined requests), parsed by hyper and routed as each listener routes. The
/// readiness listener serves only readiness, the metrics listener no debug endpoint, and a
/// connection is closed only by a POST from a local tool.
pub fn admin(data: &[u8]) {
    admin_requests(data);
}

/// [`admin`], returning the endpoints the requests reached, per surface.
pub fn admin_requests(data: &[u8]) -> Vec<(Surface, Endpoint)> {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    for surface in [Surface::Ready, Surface::Metrics, Surface::Admin] {
        let input = data.to_vec();
        let seen = seen.clone();
        RUNTIME.with(|rt| {
            rt.block_on(async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                let (mut from_server, mut to_server) = tokio::io::split(client);
                let peer_side = tokio::spawn(async move {
                    let _ = to_server.write_all(&input).await;
                    let _ = to_server.shutdown().await;
                    let mut sink = vec![0u8; 16 * 1024];
                    while matches!(from_server.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let e = admin::endpoint(req.method(), req.uri(), req.headers(), surface);
                    match (&e, surface) {
                        (Endpoint::Ready | Endpoint::Refused(..), Surface::Ready) => {}
                        (_, Surface::Ready) => panic!("the readiness listener served {e:?}"),
                        (Endpoint::Pods | Endpoint::Connections | Endpoint::Close(_), Surface::Metrics)
                        | (Endpoint::ConfigDump | Endpoint::Certs | Endpoint::Agent, Surface::Metrics) => {
                            panic!("the metrics listener served {e:?}")
                        }
                        _ => {}
                    }
                    if matches!(e, Endpoint::Close(_))
                        && (req.method() != hyper::Method::POST || !admin::from_a_local_tool(req.headers()))
                    {
                        panic!("{} {} closes a connection", req.method(), req.uri());
                    }
                    seen.lock().push((surface, e));
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok\n"),
                        )))
                    }
                });
                // As the listeners serve (admin::serve_http), but the client's EOF does not cut the
                // answers to requests it has sent.
                let served = hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
                if tokio::time::timeout(Duration::from_secs(5), served).await.is_err() {
                    panic!("the HTTP server did not end 5 s after its client closed");
                }
                let _ = peer_side.await;
            });
        });
    }
    seen.lock().clone()
}

/// The payload of the fuzz peer's closing PING.
const PING: &[u8; 8] = b"sluicefz";

/// Whether `frames` is a whole number of HTTP/2 frames (9-byte header, then the length it says).
fn whole_frames(frames: &[u8]) -> bool {
    let mut rest = frames;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        match rest.get(9 + len..) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Reads HTTP/2 frames from the server until the ACK of [`PING`] (true) or the end (false).
async fn ping_answered(from_server: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut head = [0u8; 9];
    loop {
        if from_server.read_exact(&mut head).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if from_server.read_exact(&mut payload).await.is_err() {
            return false;
        }
        // PING (type 6) with ACK (flag 1).
        if head[3] == 6 && head[4] & 1 == 1 && payload == PING {
            return true;
        }
    }
}

thread_local! {
    /// One runtime per fuzzing thread (building one per input would dominate the run).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a tokio runtime for the fuzz target: {e}"));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed HBONE seeds reach what their names say: the stream checks, not only the
    /// HTTP/2 handshake.
    /// The committed admin seeds reach the endpoints their names say.
    #[test]
    fn the_admin_seeds_reach_the_endpoints() {
        use super::{Endpoint, Surface};
        let seed = |name: &str| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-min/admin");
            super::admin_requests(&std::fs::read(dir.join(name)).expect("seed"))
        };
        let on = |seen: &[(Surface, Endpoint)], s: Surface| -> Vec<Endpoint> {
            seen.iter().filter(|(x, _)| *x == s).map(|(_, e)| e.clone()).collect()
        };
        let close = seed("seed-close-local");
        assert_eq!(on(&close, Surface::Admin), [Endpoint::Close(7)]);
        assert!(matches!(on(&close, Surface::Metrics)[..], [Endpoint::Refused(..)]));
        let origin = seed("seed-close-with-origin");
        assert!(matches!(on(&origin, Surface::Admin)[..], [Endpoint::Refused(..)]));
        let pipelined = seed("seed-pipelined");
        assert_eq!(on(&pipelined, Surface::Admin), [Endpoint::Ready, Endpoint::Metrics, Endpoint::Pods]);
        assert_eq!(on(&pipelined, Surface::Ready).len(), 3);
    }

    #[test]
    fn the_hbone_seeds_reach_the_request_check() {
        let seed = |name: &str| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-min/hbone");
            super::hbone_streams(&std::fs::read(dir.join(name)).expect("seed"))
        };
        assert_eq!(seed("seed-connect-own"), 1);
        assert_eq!(seed("seed-connect-own-v6-mapped"), 1);
        assert_eq!(seed("seed-connect-other"), 0);
        assert_eq!(seed("seed-connect-bad-authority"), 0);
        assert_eq!(seed("seed-get"), 0);
        assert_eq!(seed("seed-streams-and-resets"), 20);
    }
}
