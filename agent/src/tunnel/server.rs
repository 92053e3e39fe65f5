//! The HBONE server side: accepts mTLS on a pod's 15008 listener, verifies the peer's SPIFFE
//! identity, and hands every valid CONNECT stream to the caller. Malformed requests are answered
//! here (400); the caller answers the rest (200 after connecting upstream, 401 on policy deny,
//! 503 when the destination cannot be reached), always ending the stream on refusal.
use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, SendStream, server::SendResponse};
use http::{Method, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::settings;

/// Longest a peer may take to complete the TLS and HTTP/2 handshakes.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::identity::{Identity, tls::peer_identity};

/// A CONNECT stream from a verified peer.
pub struct Stream {
    /// The peer's verified identity.
    pub peer: Identity,
    /// The TCP peer (the source pod's address).
    pub peer_addr: SocketAddr,
    /// Where the peer asked to go (`:authority`), an address of this pod.
    pub target: SocketAddr,
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl Stream {
    /// Answers 200 and returns the stream halves to copy with.
    pub fn accept(mut self) -> Result<(SendStream<Bytes>, RecvStream), h2::Error> {
        let send = self.respond.send_response(ok_response(StatusCode::OK), false)?;
        Ok((send, self.body))
    }

    /// Answers `status` and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let _ = self.respond.send_response(ok_response(status), true);
    }
}

fn ok_response(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS handshake from {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("peer {0} refused: {1}")]
    Identity(SocketAddr, crate::identity::tls::PeerError),
    #[error("HTTP/2 with {0} failed: {1}")]
    H2(SocketAddr, h2::Error),
}

impl ServerError {
    /// The reason this refusal is counted and logged with.
    pub fn reason(&self) -> crate::telemetry::reason::Reason {
        use crate::telemetry::reason::Reason;
        match self {
            ServerError::Tls(..) => Reason::TlsFailure,
            ServerError::Identity(..) => Reason::IdentityError,
            ServerError::H2(..) => Reason::H2Failure,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        match self {
            ServerError::Tls(a, _) | ServerError::Identity(a, _) | ServerError::H2(a, _) => *a,
        }
    }
}

/// Which `:authority` targets a server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Only the listening address's own IP (an in-pod 15008: a pod's HBONE port reaches that pod).
    OwnAddress,
    /// Any address (a waypoint: the target is the Service or workload it routes for).
    Any,
}

/// Serves one accepted TCP connection until the peer closes it; `on_stream` is called (and must
/// not block) for each valid CONNECT stream. Once `drain` resolves the peer gets a GOAWAY: streams
/// already open go on, new ones go to a new connection. `on_verified` is called once, as soon as
/// the TLS handshake verified the peer's identity (the connection's caps move it to the mesh).
pub async fn serve_connection(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    trust_domain: &str,
    targets: Targets,
    drain: impl std::future::Future<Output = ()>,
    on_verified: impl FnOnce(&Identity),
    on_stream: impl Fn(Stream),
) -> Result<(), ServerError> {
    let peer_addr = tcp.peer_addr().map_err(|e| ServerError::Tls(unspecified(), e))?;
    let local = tcp.local_addr().map_err(|e| ServerError::Tls(peer_addr, e))?;
    let peer_addr = canonical(peer_addr);
    let local_ip = canonical(local).ip();
    // A peer that never completes the handshakes must not hold a task and a socket forever.
    let handshakes = async {
        let tls = TlsAcceptor::from(tls).accept(tcp).await.map_err(|e| ServerError::Tls(peer_addr, e))?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates(), trust_domain)
            .map_err(|e| ServerError::Identity(peer_addr, e))?;
        on_verified(&peer);
        let conn =
            settings::server().handshake::<_, Bytes>(tls).await.map_err(|e| ServerError::H2(peer_addr, e))?;
        Ok::<_, ServerError>((peer, conn))
    };
    let (peer, mut conn) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshakes).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ServerError::Tls(
                peer_addr,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
            ));
        }
    };
    serve_streams(&mut conn, &peer, peer_addr, local_ip, targets, drain, on_stream)
        .await
        .map_err(|e| ServerError::H2(peer_addr, e))
}

/// The CONNECT streams of an established HTTP/2 connection from `peer`: each request is checked
/// ([`check_request`]) and answered 400 here, or handed to `on_stream`, until the peer closes or,
/// after `drain`, the last stream ends.
pub async fn serve_streams<IO>(
    conn: &mut h2::server::Connection<IO, Bytes>,
    peer: &Identity,
    peer_addr: SocketAddr,
    local_ip: std::net::IpAddr,
    targets: Targets,
    drain: impl std::future::Future<Output = ()>,
    on_stream: impl Fn(Stream),
) -> Result<(), h2::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut drain = std::pin::pin!(drain);
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            () = &mut drain, if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(next) = next else { break };
        let (req, mut respond) = match next {
            Ok(x) => x,
            Err(e) if e.is_go_away() || e.reason() == Some(h2::Reason::NO_ERROR) => break,
            Err(e) => return Err(e),
        };
        match check_request(req.method(), req.uri(), targets, local_ip) {
            Ok(target) => {
                on_stream(Stream { peer: peer.clone(), peer_addr, target, respond, body: req.into_body() })
            }
            Err(status) => {
                let _ = respond.send_response(ok_response(status), true);
            }
        }
    }
    Ok(())
}

/// An HBONE request head: a CONNECT whose `:authority` is an `ip:port` this server serves (with
/// [`Targets::OwnAddress`], an address of `local_ip`'s). The target, or the status to answer.
pub fn check_request(
    method: &Method,
    uri: &http::Uri,
    targets: Targets,
    local_ip: std::net::IpAddr,
) -> Result<SocketAddr, StatusCode> {
    // ztunnel answers 400 to anything but CONNECT too.
    if method != Method::CONNECT {
        return Err(StatusCode::BAD_REQUEST);
    }
    let target = uri
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .map(canonical)
        .ok_or(StatusCode::BAD_REQUEST)?;
    // Only this pod's own addresses may be reached through its HBONE port.
    if targets == Targets::OwnAddress && target.ip() != local_ip {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(target)
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
