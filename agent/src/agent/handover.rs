//! Zero-downtime upgrade: the running agent hands its pods, with their in-pod listening sockets,
//! to the next agent on the node.
//!
//! The channel is a Unix seqpacket socket at `<state-dir>/handover.sock` (one message per packet,
//! descriptors passed with SCM_RIGHTS). The new agent connects at start-up:
//!
//! 1. new -> old `Hello` (its version and protocol); old -> new `Welcome` or `Refused`.
//! 2. old -> new one `Pod` per pod it knows, with the listening sockets of the enrolled ones, then
//!    `Done`. From `Hello` on, the old agent holds its pod table: CNI calls wait.
//! 3. The new agent enrolls those pods with the very sockets it received (the kernel maps already
//!    point at them, so no connection attempt meets a closed port), takes over the CNI socket and
//!    sends `Taken`.
//! 4. The old agent stops accepting, answers CNI calls with "retry", releases its program links and
//!    admin ports, sends GOAWAY on its HBONE connections and drains the connections it carries
//!    until it is terminated (then up to `--drain-timeout`).
//!
//! If either side dies before `Taken`, the old agent keeps serving (the new one died) or the new
//! one re-adopts the remaining pods from the registry (the old one died); in between, enrolled
//! pods stay captured and fail closed. Nothing in the messages depends on the eBPF map layout: a
//! new agent with a different layout re-enrolls the pods into its own maps.
use std::{
    io,
    io::IoSlice,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, setsockopt, sockopt,
};
use serde::{Deserialize, Serialize};

use tracing::warn;

use super::pods::Pods;
use crate::{
    cni::protocol::PodRef,
    redirect::{inpod::Role, sys},
};

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "handover.sock";
/// Bumped on any incompatible change to [`Msg`].
pub const PROTOCOL: u32 = 1;
/// Largest message (one pod's record is well under 1 KiB).
const MAX_MSG: usize = 64 * 1024;
/// Most descriptors in one message (a pod has at most five listeners).
const MAX_FDS: usize = 8;
/// How long either side waits for the other's next message.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One handover message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Msg {
    Hello {
        version: String,
        protocol: u32,
    },
    Welcome {
        version: String,
        protocol: u32,
    },
    Refused {
        version: String,
        reason: String,
    },
    /// A pod the old agent knows; `roles` name the descriptors attached, in order (empty when the
    /// pod is not enrolled).
    Pod {
        pod: PodRef,
        roles: Vec<Role>,
    },
    Done {
        pods: usize,
    },
    Taken,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("handover: {0}")]
    Protocol(String),
    #[error("the running agent (sluice {version}) refused the handover: {reason}")]
    Refused { version: String, reason: String },
}

/// One end of a handover connection.
pub struct Channel {
    fd: OwnedFd,
    path: PathBuf,
}

impl Channel {
    fn io(&self) -> impl FnOnce(io::Error) -> HandoverError + '_ {
        |source| HandoverError::Io { path: self.path.clone(), source }
    }

    fn with_timeouts(fd: OwnedFd, path: &Path) -> io::Result<Channel> {
        let tv = nix::sys::time::TimeVal::new(IO_TIMEOUT.as_secs() as _, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)?;
        setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(io::Error::from)?;
        Ok(Channel { fd, path: path.to_path_buf() })
    }

    /// Sends `msg` with `fds` attached.
    pub fn send(&self, msg: &Msg, fds: &[RawFd]) -> Result<(), HandoverError> {
        let body = serde_json::to_vec(msg).map_err(|e| HandoverError::Protocol(e.to_string()))?;
        self.send_raw(&body, fds)
    }

    /// Receives one message and the descriptors attached to it (owned: closed when dropped).
    pub fn recv(&self) -> Result<(Msg, Vec<OwnedFd>), HandoverError> {
        let mut buf = vec![0u8; MAX_MSG];
        let r = sys::recv_with_fds::<MAX_FDS>(self.fd.as_fd(), &mut buf).map_err(self.io())?;
        if r.truncated {
            return Err(HandoverError::Protocol(format!(
                "message over {MAX_MSG} bytes or {MAX_FDS} descriptors"
            )));
        }
        if r.len == 0 {
            return Err((self.io())(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the handover",
            )));
        }
        let msg = serde_json::from_slice(&buf[..r.len])
            .map_err(|e| HandoverError::Protocol(format!("malformed message: {e}")))?;
        Ok((msg, r.fds))
    }
}

impl Channel {
    /// A connected pair of channels (both ends in this process), as the fuzz target and tests use.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let path = Path::new("<socketpair>");
        Ok((Channel::with_timeouts(a, path)?, Channel::with_timeouts(b, path)?))
    }

    /// Ends this side's sending: the other side reads EOF after the messages already sent, and
    /// can still send to this side.
    pub fn finish(&self) -> Result<(), HandoverError> {
        nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(|e| (self.io())(io::Error::from(e)))
    }

    /// Sends raw bytes as one message with `fds` attached (for the fuzz target: a peer that
    /// speaks anything).
    pub fn send_raw(&self, body: &[u8], fds: &[RawFd]) -> Result<(), HandoverError> {
        let iov = [IoSlice::new(body)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        nix::sys::socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(|e| (self.io())(io::Error::from(e)))?;
        Ok(())
    }
}

/// Where the serving side of a handover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No newer agent has asked, or its attempt failed: this agent serves its pods.
    Serving,
    /// A newer agent is taking the pods (CNI calls wait).
    Busy,
    /// A newer agent has the pods: this one only drains.
    Taken,
}

/// The listening end, held by a serving agent.
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Listens at `path`, replacing a stale socket file.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let fd = seqpacket()?;
        let tmp = path.with_extension("sock.new");
        let _ = std::fs::remove_file(&tmp);
        nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(&tmp).map_err(io::Error::from)?)
            .map_err(io::Error::from)?;
        // Only this agent's user (root) may connect: a peer receives every pod's sockets.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        nix::sys::socket::listen(&fd, Backlog::new(4).map_err(io::Error::from)?).map_err(io::Error::from)?;
        // Appears under its name only once it accepts: a connecting agent never meets a half-made one.
        std::fs::rename(&tmp, path)?;
        Ok(Listener { fd, path: path.to_path_buf() })
    }

    /// Serves handover requests on a thread of its own (the exchange is blocking socket I/O) until
    /// a newer agent has taken `pods`; the returned receiver follows the [`Phase`].
    pub fn serve(self, pods: Arc<Pods>) -> io::Result<tokio::sync::watch::Receiver<Phase>> {
        let (tx, rx) = tokio::sync::watch::channel(Phase::Serving);
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new().name("sluice-handover".into()).spawn(move || {
            loop {
                let ch = match self.accept() {
                    Ok(ch) => ch,
                    Err(e) => {
                        warn!(error = %e, "handover socket: accept failed");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                };
                tx.send_replace(Phase::Busy);
                match rt.block_on(pods.hand_over(&ch)) {
                    Ok(_) => {
                        tx.send_replace(Phase::Taken);
                        return;
                    }
                    Err(e) => {
                        tx.send_replace(Phase::Serving);
                        warn!(error = %e, "handover aborted; this agent keeps serving its pods");
                    }
                }
            }
        })?;
        Ok(rx)
    }

    /// Waits for the next agent (blocking). A socket file left by an agent that exited is found
    /// stale by the next one's [`connect`] and removed.
    pub fn accept(&self) -> io::Result<Channel> {
        let fd = sys::accept_unix(self.fd.as_fd())?;
        // Belt and braces beside the file mode: the peer must run as this agent's user.
        let cred = nix::sys::socket::getsockopt(&fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("handover refused to pid {} running as uid {} (not {me})", cred.pid(), cred.uid()),
            ));
        }
        Channel::with_timeouts(fd, &self.path)
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    nix::sys::socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)
}

/// Connects to a running agent's handover socket: `None` when there is none (no file, or a stale
/// file no one listens on, which is removed).
pub fn connect(path: &Path) -> io::Result<Option<Channel>> {
    if !path.exists() {
        return Ok(None);
    }
    let fd = seqpacket()?;
    match nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path).map_err(io::Error::from)?) {
        Ok(()) => Ok(Some(Channel::with_timeouts(fd, path)?)),
        Err(nix::Error::ECONNREFUSED | nix::Error::ENOENT) => {
            let _ = std::fs::remove_file(path);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A pod received from the old agent.
pub struct InheritedPod {
    pub pod: PodRef,
    /// Empty when the old agent had not enrolled it.
    pub listeners: Vec<(Role, OwnedFd)>,
}

/// The new agent's side, until it sends `Taken`.
pub struct Takeover {
    pub channel: Channel,
    pub peer_version: String,
    pub pods: Vec<InheritedPod>,
}

/// Asks the running agent at `path` for its pods. `Ok(None)`: no agent is running there.
pub fn take(path: &Path) -> Result<Option<Takeover>, HandoverError> {
    let io = |source| HandoverError::Io { path: path.to_path_buf(), source };
    let Some(channel) = connect(path).map_err(io)? else {
        return Ok(None);
    };
    take_over(channel).map(Some)
}

/// The new agent's side of the protocol on a connected `channel`: hello, then the old agent's pods
/// until `Done`. Anything out of order, or a pod whose roles do not match its descriptors, is a
/// protocol error.
pub fn take_over(channel: Channel) -> Result<Takeover, HandoverError> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    channel.send(&Msg::Hello { version: version.clone(), protocol: PROTOCOL }, &[])?;
    let peer_version = match channel.recv()? {
        (Msg::Welcome { version, .. }, _) => version,
        (Msg::Refused { version, reason }, _) => return Err(HandoverError::Refused { version, reason }),
        (other, _) => return Err(HandoverError::Protocol(format!("expected welcome, got {other:?}"))),
    };
    let mut pods = Vec::new();
    loop {
        match channel.recv()? {
            (Msg::Pod { pod, roles }, fds) => {
                if roles.len() != fds.len() {
                    return Err(HandoverError::Protocol(format!(
                        "pod {}/{}: {} roles for {} sockets",
                        pod.namespace,
                        pod.name,
                        roles.len(),
                        fds.len()
                    )));
                }
                pods.push(InheritedPod { pod, listeners: roles.into_iter().zip(fds).collect() });
            }
            (Msg::Done { pods: n }, _) if n == pods.len() => break,
            (other, _) => {
                return Err(HandoverError::Protocol(format!("expected a pod or done, got {other:?}")));
            }
        }
    }
    Ok(Takeover { channel, peer_version, pods })
}

/// The old agent's answer to `Hello`: welcome a peer of the same protocol, refuse another.
pub fn greet(channel: &Channel) -> Result<String, HandoverError> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    match channel.recv()? {
        (Msg::Hello { version: theirs, protocol }, _) if protocol == PROTOCOL => {
            channel.send(&Msg::Welcome { version, protocol: PROTOCOL }, &[])?;
            Ok(theirs)
        }
        (Msg::Hello { version: theirs, protocol }, _) => {
            let reason = format!(
                "sluice {theirs} speaks handover protocol {protocol}, this agent {PROTOCOL}: terminate this agent \
                 first (its pods stay captured, fail closed, until the new agent re-adopts them)"
            );
            channel.send(&Msg::Refused { version, reason: reason.clone() }, &[])?;
            Err(HandoverError::Protocol(reason))
        }
        (other, _) => Err(HandoverError::Protocol(format!("expected hello, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_sockets_cross_the_channel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SOCKET_NAME);
        assert!(take(&path).expect("no agent").is_none(), "no socket file: no predecessor");
        let listener = Listener::bind(&path).expect("bind");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let addr = tcp.local_addr().expect("addr");
        let old = std::thread::spawn(move || {
            let ch = listener.accept().expect("accept");
            greet(&ch).expect("greet");
            let pod = PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u1".into(),
                container_id: "c".into(),
                netns: "/var/run/netns/x".into(),
                ips: vec!["10.0.0.2".parse().expect("ip")],
            };
            ch.send(&Msg::Pod { pod, roles: vec![Role::Inbound] }, &[tcp.as_raw_fd()]).expect("send");
            ch.send(&Msg::Done { pods: 1 }, &[]).expect("done");
            assert!(matches!(ch.recv().expect("taken").0, Msg::Taken));
        });
        let t = take(&path).expect("take").expect("an agent runs");
        assert_eq!(t.peer_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(t.pods.len(), 1);
        let (role, fd) = t.pods.into_iter().next().expect("pod").listeners.into_iter().next().expect("fd");
        assert_eq!(role, Role::Inbound);
        // The received descriptor is the same listening socket: a client connecting to it is
        // accepted through the new descriptor.
        let received = std::net::TcpListener::from(fd);
        assert_eq!(received.local_addr().expect("addr"), addr);
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        received.accept().expect("accepted on the handed-over socket");
        t.channel.send(&Msg::Taken, &[]).expect("taken");
        old.join().expect("old side");
    }

    /// The committed fuzz seeds of a whole takeover and of a bad one mean what their names say
    /// (so the stable replay exercises the success path and the checks, not only parse errors).
    #[test]
    fn the_handover_fuzz_seeds_reach_success_and_each_check() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-min/handover");
        let run = |seed: &str| {
            let data = std::fs::read(seeds.join(seed)).expect("seed");
            let (ours, theirs) = Channel::pair().expect("pair");
            for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let (fds, body) = match line {
                    [b'#', n, b' ', rest @ ..] => (usize::from(n - b'0'), rest),
                    _ => (0, line),
                };
                let files: Vec<std::fs::File> =
                    (0..fds).map(|_| std::fs::File::open("/dev/null").expect("null")).collect();
                let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
                theirs.send_raw(body, &raw).expect("send");
            }
            theirs.finish().expect("finish");
            let r = take_over(ours);
            drop(theirs);
            r
        };
        let t = run("seed-full-takeover").expect("a whole takeover");
        assert_eq!(t.pods.len(), 2);
        assert_eq!(t.pods[0].listeners.len(), 2);
        let e = run("seed-roles-mismatch").err().expect("roles do not match the sockets");
        assert!(e.to_string().contains("0 roles for 1 sockets"), "{e}");
        let e = run("seed-done-miscount").err().expect("done counts pods that never came");
        assert!(e.to_string().contains("expected a pod or done"), "{e}");
        let e = run("seed-too-many-fds").err().expect("more descriptors than a message may carry");
        assert!(e.to_string().contains("8 descriptors"), "{e}");
        assert!(matches!(run("seed-refused"), Err(HandoverError::Refused { .. })));
    }

    #[test]
    fn another_protocol_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SOCKET_NAME);
        let listener = Listener::bind(&path).expect("bind");
        let old = std::thread::spawn(move || {
            let ch = listener.accept().expect("accept");
            greet(&ch).expect_err("refused")
        });
        let ch = connect(&path).expect("connect").expect("listening");
        ch.send(&Msg::Hello { version: "9.9.9".into(), protocol: PROTOCOL + 1 }, &[]).expect("hello");
        let (reply, _) = ch.recv().expect("reply");
        let Msg::Refused { reason, .. } = reply else { panic!("not refused: {reply:?}") };
        assert!(reason.contains("terminate this agent first"), "{reason}");
        old.join().expect("old side");
    }

    #[test]
    fn a_stale_socket_file_means_no_predecessor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SOCKET_NAME);
        drop(Listener::bind(&path).expect("bind"));
        assert!(path.exists());
        assert!(take(&path).expect("stale").is_none());
        assert!(!path.exists(), "the stale file is removed");
    }
}
