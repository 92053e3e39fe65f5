//! An HBONE CONNECT stream as a byte stream (`AsyncRead + AsyncWrite`), so an HTTP engine can run on
//! the bytes a tunnel carries (the waypoint's server side) or send them into one (its client side).
//!
//! Reads hand out the received DATA frames and release their flow-control capacity once copied out;
//! writes wait for send capacity and never queue more than the peer's window; shutdown is
//! END_STREAM. Memory per stream is bounded by one received frame plus h2's send buffer. Dropping
//! a stream that was not ended lets h2 cancel it (RST_STREAM after anything already queued).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest write handed to h2 at once (one frame's worth of our max frame size).
const MAX_WRITE: usize = 256 * 1024;

/// Both halves of one CONNECT stream, plus what keeps it counted (a pool slot guard).
pub struct StreamIo<G = ()> {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    read_done: bool,
    _guard: G,
}

impl<G: Unpin> StreamIo<G> {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, guard: G) -> StreamIo<G> {
        StreamIo { send, recv, pending: Bytes::new(), read_done: false, _guard: guard }
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.reason() == Some(h2::Reason::NO_ERROR) || e.reason() == Some(h2::Reason::CANCEL) {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl<G: Unpin> AsyncRead for StreamIo<G> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    this.pending = chunk;
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => this.read_done = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => this.read_done = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<G: Unpin> AsyncWrite for StreamIo<G> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = data.len().min(MAX_WRITE);
        this.send.reserve_capacity(want);
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(cap)) => {
                    let n = cap.min(want);
                    this.send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 sends what it was given as soon as the connection task runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            // Already ended or reset: nothing more to close.
            Err(_) => Poll::Ready(Ok(())),
        }
    }
}
