//! A byte stream that counts what passes through it into a live connection's counters: bytes read
//! from it are what the client sent, bytes written to it what the client received. For copies
//! that are not the agent's own loops (the waypoint's opaque TCP and HTTP streams), so their
//! records report real, live byte counts too.
use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::registry::Live;

/// The client's side of a connection, counted into `live`.
pub struct Counted<T> {
    inner: T,
    live: Arc<Live>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, live: Arc<Live>) -> Counted<T> {
        Counted { inner, live }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.live.sent.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.live.received.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::conn::{Registry, registry::test_info};

    #[tokio::test]
    async fn reads_count_as_sent_and_writes_as_received() {
        let r = Registry::new();
        let reg = r.register(test_info("10.0.0.2:2".parse().expect("addr")));
        let (client, server) = tokio::io::duplex(64);
        let mut counted = Counted::new(server, reg.live().clone());
        let mut client = client;
        client.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        counted.read_exact(&mut buf).await.expect("read");
        counted.write_all(b"abc").await.expect("write");
        assert_eq!(reg.live().sent.load(Ordering::Relaxed), 5);
        assert_eq!(reg.live().received.load(Ordering::Relaxed), 3);
    }
}
