//! Bytes between a TCP socket and an HTTP/2 CONNECT stream.
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

/// Read buffer per direction. It is held only while data is arriving: allocated when the socket
/// becomes readable and dropped as soon as a read would block, so an idle connection holds none
/// (10,000 idle connections must not each pin a touched 64 KiB block).
const CHUNK: usize = 64 * 1024;

/// Copies until both directions are done: TCP -> stream (FIN becomes END_STREAM) and
/// stream -> TCP (END_STREAM becomes FIN). If either direction fails, the other is abandoned: the
/// stream is reset and the TCP side gets a reset too, so neither peer hangs waiting. Counts bytes
/// TCP->stream into `up_n` and stream->TCP into `down_n` as they move (the caller's connection
/// record reads them); returns the first error. When `stop` resolves first, both sides are reset
/// (TCP RST; RST_STREAM CONNECT_ERROR, which the peer turns into a TCP reset) and the error says so.
pub async fn splice(
    tcp: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    up_n: &AtomicU64,
    down_n: &AtomicU64,
    stop: impl std::future::Future<Output = String>,
) -> Option<String> {
    let (r, mut w) = tcp.into_split();
    let mut stopped = false;
    let error = {
        let up = std::pin::pin!(async {
            loop {
                // Wait for data holding no buffer, then read while the socket has some.
                if let Err(e) = r.readable().await {
                    send.send_reset(h2::Reason::CANCEL);
                    return Some(format!("reading the TCP side: {e}"));
                }
                let mut buf = BytesMut::with_capacity(CHUNK);
                loop {
                    match r.try_read_buf(&mut buf) {
                        Ok(0) => {
                            let _ = send.send_data(Bytes::new(), true);
                            return None;
                        }
                        Ok(n) => {
                            up_n.fetch_add(n as u64, Ordering::Relaxed);
                            // The frozen part shares the allocation until the tunnel wrote it.
                            if let Err(e) = send_all(&mut send, buf.split().freeze()).await {
                                return Some(format!("sending to the tunnel: {e}"));
                            }
                            if buf.capacity() < CHUNK / 4 {
                                buf.reserve(CHUNK);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            send.send_reset(h2::Reason::CANCEL);
                            return Some(format!("reading the TCP side: {e}"));
                        }
                    }
                }
            }
        });
        let down = std::pin::pin!(async {
            loop {
                match recv.data().await {
                    Some(Ok(chunk)) => {
                        let len = chunk.len();
                        down_n.fetch_add(len as u64, Ordering::Relaxed);
                        if let Err(e) = w.write_all(&chunk).await {
                            return Some(format!("writing the TCP side: {e}"));
                        }
                        let _ = recv.flow_control().release_capacity(len);
                    }
                    // The peer closing its side, with or without a cancel, is an end of stream.
                    Some(Err(e))
                        if e.reason() == Some(h2::Reason::NO_ERROR)
                            || e.reason() == Some(h2::Reason::CANCEL) =>
                    {
                        let _ = w.shutdown().await;
                        return None;
                    }
                    Some(Err(e)) => return Some(format!("receiving from the tunnel: {e}")),
                    None => {
                        let _ = w.shutdown().await;
                        return None;
                    }
                }
            }
        });
        tokio::select! {
            biased;
            e = drive_both(up, down) => e,
            why = stop => {
                stopped = true;
                Some(why)
            }
        }
    };
    if error.is_some() {
        // Abandon the other direction loudly: the client sees a reset, the stream a cancel (a
        // close from outside: CONNECT_ERROR, so the peer resets its client too).
        let _ = w.as_ref().set_zero_linger();
        // Not a FIN first (dropping a write half shuts it down): the reset alone, when `r` goes.
        w.forget();
        send.send_reset(if stopped { h2::Reason::CONNECT_ERROR } else { h2::Reason::CANCEL });
    }
    error
}

/// Drives the two directions of one connection until both finished cleanly or one failed; then
/// the other is abandoned (the caller resets both sides). Returns the first error. The directions
/// are pinned by the caller, in place: taking them by value would store each twice in every
/// connection's future (rust-lang/rust#62958).
pub async fn drive_both<U, D>(
    mut up: std::pin::Pin<&mut U>,
    mut down: std::pin::Pin<&mut D>,
) -> Option<String>
where
    U: std::future::Future<Output = Option<String>>,
    D: std::future::Future<Output = Option<String>>,
{
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let failed = tokio::select! {
            e = up.as_mut(), if !up_done => { up_done = true; e }
            e = down.as_mut(), if !down_done => { down_done = true; e }
        };
        if failed.is_some() || (up_done && down_done) {
            return failed;
        }
    }
}

/// Sends `data` respecting the stream's flow-control window.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(c) => c?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}
