//! Bytes between a TCP socket and an HTTP/2 CONNECT stream.
use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Read buffer per direction.
const CHUNK: usize = 64 * 1024;

/// Copies until both directions are done: TCP -> stream (FIN becomes END_STREAM) and
/// stream -> TCP (END_STREAM becomes FIN). Returns (bytes TCP->stream, bytes stream->TCP, error).
pub async fn splice(
    tcp: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
) -> (u64, u64, Option<String>) {
    let (mut r, mut w) = tcp.into_split();
    let up = async {
        let mut n_total = 0u64;
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match r.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = send.send_data(Bytes::new(), true);
                    return (n_total, None);
                }
                Ok(n) => {
                    n_total += n as u64;
                    if let Err(e) = send_all(&mut send, buf.freeze()).await {
                        return (n_total, Some(format!("sending to the tunnel: {e}")));
                    }
                }
                Err(e) => {
                    // A reset or broken client ends the stream; the peer sees a cancel.
                    send.send_reset(h2::Reason::CANCEL);
                    return (n_total, Some(format!("reading the TCP side: {e}")));
                }
            }
        }
    };
    let down = async {
        let mut n_total = 0u64;
        loop {
            match recv.data().await {
                Some(Ok(chunk)) => {
                    let len = chunk.len();
                    n_total += len as u64;
                    if let Err(e) = w.write_all(&chunk).await {
                        return (n_total, Some(format!("writing the TCP side: {e}")));
                    }
                    let _ = recv.flow_control().release_capacity(len);
                }
                Some(Err(e))
                    if e.reason() == Some(h2::Reason::NO_ERROR) || e.reason() == Some(h2::Reason::CANCEL) =>
                {
                    let _ = w.shutdown().await;
                    return (n_total, None);
                }
                Some(Err(e)) => return (n_total, Some(format!("receiving from the tunnel: {e}"))),
                None => {
                    let _ = w.shutdown().await;
                    return (n_total, None);
                }
            }
        }
    };
    let ((up_n, up_err), (down_n, down_err)) = tokio::join!(up, down);
    (up_n, down_n, up_err.or(down_err))
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
