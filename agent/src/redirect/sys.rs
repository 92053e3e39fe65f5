//! The agent's only raw syscalls: entering a pod's network namespace to create sockets there, receiving
//! descriptors passed over a Unix socket (the upgrade handover), and the
//! socket options the data path needs (SO_MARK, SO_NETNS_COOKIE), and registering the kernel decision
//! log's ring buffer with the async reactor. Everything unsafe lives here,
//! each call wrapped in a safe function that checks its result.
#![allow(unsafe_code, reason = "setns/setsockopt/getsockopt have no safe std equivalent")]

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens a netns by path (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> io::Result<NetNs> {
        let file = File::open(path)?;
        Ok(NetNs { file, path: path.to_path_buf() })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the namespace file: equal for two handles of the same namespace.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// Runs `f` with the calling thread inside this namespace, then returns the thread to the
    /// agent's home namespace. Sockets created by `f` stay in this namespace for their lifetime.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        let home = home()?;
        setns(self.file.as_fd())?;
        let _back = Restore(home);
        Ok(f())
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The namespace the agent started in (where its own sockets live).
fn home() -> io::Result<&'static NetNs> {
    static HOME: OnceLock<NetNs> = OnceLock::new();
    if let Some(h) = HOME.get() {
        return Ok(h);
    }
    let ns = NetNs::current()?;
    Ok(HOME.get_or_init(|| ns))
}

/// Records the agent's home namespace; call once at start-up, before any `NetNs::run`.
pub fn init_home() -> io::Result<()> {
    home().map(|_| ())
}

struct Restore(&'static NetNs);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.file.as_fd()) {
            // A worker thread stuck in a pod's namespace would open later sockets in the wrong
            // place; there is no safe way to continue.
            eprintln!("sluice: FATAL: cannot return to the agent's network namespace: {e}");
            std::process::abort();
        }
    }
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is a valid open namespace file for the duration of the call.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The network-namespace cookie of the namespace a socket lives in (what eBPF's
/// `bpf_get_netns_cookie` returns for it).
pub fn netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 { Ok(v) } else { Err(io::Error::last_os_error()) }
}

/// Sets SO_MARK (needs CAP_NET_ADMIN).
pub fn set_mark(sock: BorrowedFd<'_>, mark: u32) -> io::Result<()> {
    setsockopt_u32(sock, libc::SOL_SOCKET, libc::SO_MARK, mark)
}

/// Sets IP_TRANSPARENT (or IPV6_TRANSPARENT): the socket may bind a non-local address (needs
/// CAP_NET_ADMIN).
pub fn set_transparent(sock: BorrowedFd<'_>, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_u32(sock, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        setsockopt_u32(sock, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
    }
}

fn setsockopt_u32(sock: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, v: u32) -> io::Result<()> {
    // SAFETY: the value pointer and length describe a valid u32.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&v as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Filesystem magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// True when `path` is on a mounted bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs is a plain C struct; zeroed is a valid initial value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and s is a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s.f_type as i64 == BPF_FS_MAGIC)
}

/// Accepts a connection on a Unix listening socket (close-on-exec), owned.
pub fn accept_unix(listener: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let raw = nix::sys::socket::accept4(listener.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)
        .map_err(io::Error::from)?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}

/// One message received on a Unix seqpacket socket with the descriptors attached to it.
pub struct Received {
    pub len: usize,
    pub fds: Vec<std::os::fd::OwnedFd>,
    /// The message or its descriptors did not fit (the rest is lost).
    pub truncated: bool,
}

/// Most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Receives one message into `buf` and up to `MAX_FDS` descriptors (close-on-exec, owned). A
/// message with more is `truncated`, and every descriptor it carried is closed: the control
/// buffer has room for the most a sender can attach, so none is installed and then lost (a
/// truncated control message would leave the ones that fit open and unowned).
pub fn recv_with_fds<const MAX_FDS: usize>(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd as _;
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; SCM_MAX_FD]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let r = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in r.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this process for this
            // message; nothing else owns them.
            fds.extend(raw.into_iter().map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
        }
    }
    let truncated = r.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS;
    if truncated {
        fds.clear();
    }
    Ok(Received { len: r.bytes, fds, truncated })
}

/// Registers aya-log's reader with the tokio reactor (current runtime) for readability, so the
/// kernel decision log is drained when records arrive. Panics outside a runtime, like tokio.
pub fn async_log_reader<L>(
    logger: aya_log::EbpfLogger<L>,
) -> io::Result<tokio::io::unix::AsyncFd<aya_log::EbpfLogger<L>>> {
    // SAFETY: the logger owns its ring buffer's map fd (`RingBuf<MapData>`) for its whole life and
    // always reports that same fd; the AsyncFd owns the logger, so the fd outlives the registration.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_too_many_descriptors_is_truncated_and_leaks_none() {
        use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
        use std::io::Read as _;
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        // Nine copies of the pipe's write end, one more than the receiver takes.
        let fds = [w.as_raw_fd(); 9];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[io::IoSlice::new(b"x")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .expect("sendmsg");
        drop(w);
        let got = recv_with_fds::<8>(b.as_fd(), &mut [0u8; 16]).expect("recv");
        assert!(got.truncated, "nine descriptors for a receiver of eight");
        assert!(got.fds.is_empty());
        drop(got);
        // Every copy of the write end is closed, so the read end sees EOF (a leaked copy would
        // keep the pipe open: WouldBlock).
        let n = std::fs::File::from(r).read(&mut [0u8; 1]).expect("EOF, not a still-open writer");
        assert_eq!(n, 0);
    }

    #[test]
    fn netns_cookie_of_a_socket_is_stable() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let ca = netns_cookie(a.as_fd()).expect("cookie");
        let cb = netns_cookie(b.as_fd()).expect("cookie");
        assert_eq!(ca, cb, "two sockets in one namespace share its cookie");
        assert_ne!(ca, 0);
    }

    #[test]
    fn run_returns_to_home_namespace() {
        init_home().expect("home");
        let before = NetNs::current().expect("cur").id().expect("id");
        let same = NetNs::current().expect("cur");
        let inside = same.run(|| NetNs::current().and_then(|n| n.id())).expect("run").expect("id");
        assert_eq!(inside, before);
        assert_eq!(NetNs::current().expect("cur").id().expect("id"), before);
    }
}
