//! Zero-copy forwarding between two TCP sockets with splice(2) through a pipe: bytes move from one
//! socket's receive queue to the other's send queue as page references and never pass through
//! user space. Used for the plaintext legs (the same-node local path, destinations outside the
//! mesh).
//!
//! A pipe costs two file descriptors and kernel memory, so an idle connection holds none: a pipe
//! is taken from a small bounded pool when data arrives and given back, empty, as soon as the
//! socket has no more. A pipe that may still hold bytes (an error mid-transfer) is closed, never
//! pooled.
#![allow(unsafe_code, reason = "pipe2 and splice have no safe std equivalent")]
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

/// Most bytes moved by one splice call (the default pipe holds 16 pages).
const MAX_SPLICE: usize = 64 * 1024;
/// Empty pipes kept for reuse; more are closed when given back.
const POOL_MAX: usize = 64;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// The two ends of a non-blocking pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pooled empty pipe, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.lock().pop() {
            return Ok(p);
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`, which we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
        Ok(unsafe { Pipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// Returns an empty pipe to the pool.
    fn give_back(self) {
        let mut pool = POOL.lock();
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

/// One non-blocking splice of up to `len` bytes from `from` to `to`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: a plain syscall on descriptors borrowed for its duration; no user memory involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// How one direction ended.
pub enum End {
    /// EOF read and the write side shut down.
    Closed,
    /// Splice cannot be used on these sockets (or no pipe could be made); everything read so far
    /// was written: the caller goes on copying through user space.
    Unsupported,
    Failed(String),
}

/// One direction, `r` to `w`, until EOF (then `w` is shut down) or an error; counts into `n`.
pub async fn one_way(r: &OwnedReadHalf, w: &mut OwnedWriteHalf, n: &AtomicU64) -> End {
    let (rfd, wfd) = (r.as_ref().as_raw_fd(), w.as_ref().as_raw_fd());
    loop {
        if let Err(e) = r.as_ref().readable().await {
            return End::Failed(format!("read: {e}"));
        }
        let pipe = match Pipe::take() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through user space");
                return End::Unsupported;
            }
        };
        let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
        loop {
            // The pipe is empty here, so EAGAIN means the socket has nothing more for now.
            let k = match r.as_ref().try_io(Interest::READABLE, || splice(rfd, pw, MAX_SPLICE)) {
                Ok(0) => {
                    pipe.give_back();
                    let _ = w.shutdown().await;
                    return End::Closed;
                }
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    pipe.give_back();
                    return End::Unsupported;
                }
                // The pipe is still empty: it may be reused.
                Err(e) => {
                    pipe.give_back();
                    return End::Failed(format!("read: {e}"));
                }
            };
            let mut left = k;
            while left > 0 {
                match w.as_ref().async_io(Interest::WRITABLE, || splice(pr, wfd, left)).await {
                    Ok(0) => return End::Failed("write: splice moved nothing".into()),
                    Ok(m) => left -= m,
                    // Bytes may be left in the pipe: it is closed, not pooled.
                    Err(e) => return End::Failed(format!("write: {e}")),
                }
            }
            n.fetch_add(k as u64, Ordering::Relaxed);
        }
        pipe.give_back();
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    #[tokio::test]
    async fn splices_byte_exact_and_carries_the_half_close() {
        let (mut src, relay_in) = pair().await;
        let (relay_out, mut dst) = pair().await;
        let (r, _keep_r) = relay_in.into_split();
        let (_keep_w, mut w) = relay_out.into_split();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: usize| (i * 31 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            src.write_all(&sent).await.expect("write");
            src.shutdown().await.expect("shutdown");
            src
        });
        let n = AtomicU64::new(0);
        let copy = one_way(&r, &mut w, &n);
        let read = async {
            let mut got = Vec::new();
            dst.read_to_end(&mut got).await.expect("read");
            got
        };
        let (end, got) = tokio::join!(copy, read);
        assert!(matches!(end, End::Closed), "splice must be usable between two TCP sockets");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
        assert_eq!(n.load(Ordering::Relaxed), data.len() as u64);
        drop(writer.await.expect("writer"));
        assert!(POOL.lock().len() <= POOL_MAX);
    }

    #[tokio::test]
    async fn a_closed_destination_is_a_failure_not_a_hang() {
        let (mut src, relay_in) = pair().await;
        let (relay_out, dst) = pair().await;
        let (r, _keep_r) = relay_in.into_split();
        let (_keep_w, mut w) = relay_out.into_split();
        // The destination is gone: the first bytes sent to it are answered with a reset, and the
        // writes after that fail.
        drop(dst);
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..64 {
                if src.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            src
        });
        let n = AtomicU64::new(0);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), one_way(&r, &mut w, &n))
            .await
            .expect("one_way must end");
        assert!(
            matches!(end, End::Failed(ref e) if e.starts_with("write")),
            "a reset destination fails the write"
        );
        // Nobody reads the source any more: its writer would wait forever.
        writer.abort();
    }
}
