//! Connecting from inside a pod's netns and copying bytes both ways with half-close propagation.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpStream;

use super::Failure;
use crate::redirect::{Kernel, NetNs, inpod};

/// Connects to `dst` from a marked socket inside `netns`, bounded by `timeout`.
pub async fn connect_from(
    netns: &Arc<NetNs>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, (Failure, String)> {
    let sock = inpod::marked_socket(netns, dst.is_ipv6()).map_err(|e| (Failure::Socket, e.to_string()))?;
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((Failure::ConnectFailed, e.to_string())),
        Err(_) => Err((Failure::ConnectTimeout, format!("no answer within {timeout:?}"))),
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
) -> Result<TcpStream, (Failure, String)> {
    let (sock, from) =
        inpod::transparent_socket(netns, client.ip()).map_err(|e| (Failure::Socket, e.to_string()))?;
    kernel.begin_delivery(from, dst.port()).map_err(|e| (Failure::Socket, e.to_string()))?;
    let r = tokio::time::timeout(timeout, sock.connect(dst)).await;
    if let Err(e) = kernel.end_delivery(from, dst.port()) {
        tracing::warn!(error = %e, "could not clear the delivery record");
    }
    match r {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((Failure::ConnectFailed, e.to_string())),
        Err(_) => Err((Failure::ConnectTimeout, format!("no answer within {timeout:?}"))),
    }
}

/// Copies both directions until both are closed; returns (bytes a->b, bytes b->a).
/// tokio's copy_bidirectional shuts down each write side when its read side reaches EOF, so a
/// half-close travels through.
pub async fn splice(mut a: TcpStream, mut b: TcpStream) -> (u64, u64, Option<std::io::Error>) {
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await {
        Ok((ab, ba)) => (ab, ba, None),
        Err(e) => (0, 0, Some(e)),
    }
}
