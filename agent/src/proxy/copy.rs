//! Connecting from inside a pod's netns and copying bytes both ways with half-close propagation.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::{
    io::AsyncWriteExt as _,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{Failed, pipe::End};
use crate::redirect::{Kernel, NetNs, inpod};
use crate::telemetry::reason::Reason;

/// Connects to `dst` from a marked socket inside `netns`, bounded by `timeout`.
pub async fn connect_from(
    netns: &Arc<NetNs>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, Failed> {
    let sock = inpod::marked_socket(netns, dst.is_ipv6()).map_err(|e| (Reason::Socket, e.to_string()))?;
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((Reason::Connect, e.to_string())),
        Err(_) => Err((Reason::ConnectTimeout, format!("no answer within {timeout:?}"))),
    }
}

/// Connects to the application at `dst` inside `pod`'s netns from a transparent socket bound to the
/// original client's address, so the application sees the real client. The delivery SYN is
/// announced to the kernel for the duration of the connect so sk_lookup lets it through.
pub async fn deliver_transparent(
    kernel: &Kernel,
    netns: &Arc<NetNs>,
    client: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, Failed> {
    let (sock, from) =
        inpod::transparent_socket(netns, client.ip()).map_err(|e| (Reason::Socket, e.to_string()))?;
    kernel.begin_delivery(from, dst.port()).map_err(|e| (Reason::Socket, e.to_string()))?;
    let r = tokio::time::timeout(timeout, sock.connect(dst)).await;
    if let Err(e) = kernel.end_delivery(from, dst.port()) {
        tracing::warn!(error = %e, "could not clear the delivery record");
    }
    match r {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((Reason::Connect, e.to_string())),
        Err(_) => Err((Reason::ConnectTimeout, format!("no answer within {timeout:?}"))),
    }
}

/// Copies both directions until both are closed, carrying each half-close (EOF becomes a write
/// shutdown on the other side). If either direction fails the other is abandoned and both sockets
/// are reset. Counts bytes a->b into `ab` and b->a into `ba` as they move; returns the first error.
/// When `stop` resolves first, both sockets are reset and the error says why.
pub async fn splice(
    a: TcpStream,
    b: TcpStream,
    ab: &AtomicU64,
    ba: &AtomicU64,
    stop: impl std::future::Future<Output = String>,
) -> Option<String> {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let error = {
        let up = std::pin::pin!(one_way(&mut ar, &mut bw, ab));
        let down = std::pin::pin!(one_way(&mut br, &mut aw, ba));
        tokio::select! {
            biased;
            e = crate::tunnel::copy::drive_both(up, down) => e,
            why = stop => Some(why),
        }
    };
    if error.is_some() {
        let _ = aw.as_ref().set_zero_linger();
        let _ = bw.as_ref().set_zero_linger();
        // Dropping a write half shuts it down (a FIN) before the socket closes, and a peer that
        // read the FIN sees a clean end even once the reset arrives: forget them, so the sockets
        // close with the reset alone when the read halves go.
        aw.forget();
        bw.forget();
    }
    error
}

/// One direction: read until EOF (then shut the write side down) or an error, zero-copy with
/// splice(2) where the kernel allows it, else through user space.
async fn one_way(r: &mut OwnedReadHalf, w: &mut OwnedWriteHalf, n: &AtomicU64) -> Option<String> {
    match super::pipe::one_way(r, w, n).await {
        End::Closed => None,
        End::Failed(e) => Some(e),
        End::Unsupported => copy_through_user_space(r, w, n).await,
    }
}

/// [`one_way`] through a user-space buffer. The buffer is held only while data is arriving:
/// allocated when the socket becomes readable, dropped as soon as a read would block, so an idle
/// connection holds none.
async fn copy_through_user_space(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    n: &AtomicU64,
) -> Option<String> {
    loop {
        if let Err(e) = r.readable().await {
            return Some(format!("read: {e}"));
        }
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.clear();
            match r.try_read_buf(&mut buf) {
                Ok(0) => {
                    let _ = w.shutdown().await;
                    return None;
                }
                Ok(k) => {
                    if let Err(e) = w.write_all(&buf).await {
                        return Some(format!("write: {e}"));
                    }
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Some(format!("read: {e}")),
            }
        }
    }
}

/// Read buffer per direction of a plaintext copy.
const CHUNK: usize = 64 * 1024;
#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = tokio::net::TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    /// A close from outside must not look like a complete transfer to either side: both see a
    /// reset, never a clean end of file.
    #[tokio::test]
    async fn a_stop_resets_both_sides() {
        let (mut client, relay_in) = pair().await;
        let (relay_out, mut server) = pair().await;
        let (x, y) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
        let err = super::splice(relay_in, relay_out, &x, &y, async { "closed: test".to_string() }).await;
        assert_eq!(err.as_deref(), Some("closed: test"));
        for (side, s) in [("client", &mut client), ("server", &mut server)] {
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("in time");
            assert_eq!(
                r.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionReset),
                "{side} must see a reset"
            );
        }
    }
}

#[cfg(test)]
mod size_budget {
    /// Every live plaintext connection holds this future: the two directions are pinned in place
    /// (each stored once). 1,104 bytes measured with rustc 1.95; 1,952 when they were moved into
    /// `drive_both` by value.
    #[tokio::test]
    async fn the_splice_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = tokio::net::TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        let (x, y) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
        let f = super::splice(a, b, &x, &y, std::future::pending());
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1400, "the plaintext splice future grew to {size} bytes");
    }
}
