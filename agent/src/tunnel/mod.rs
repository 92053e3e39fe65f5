//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mutual TLS 1.3 on port 15008,
//! wire-compatible with Istio's ztunnel (ALPN `h2`, SPIFFE URI SANs, plain CONNECT with
//! `:authority` = the original destination `ip:port`, 200 on success, 400/401/503 on failure).
//!
//! - [`server`]: the in-pod 15008 side: TLS accept, peer identity, CONNECT streams handed to a handler.
//! - [`pool`]: the client side: one pooled HTTP/2 connection per (source pod, destination, expected
//!   identity), many streams each, idle connections closed after a timeout.
//! - [`copy`]: bytes between a TCP socket and a CONNECT stream, honouring HTTP/2 flow control and
//!   carrying half-close (FIN <-> END_STREAM) both ways.
//! - [`io`]: a CONNECT stream as `AsyncRead + AsyncWrite`, for the waypoint's HTTP engine.

use crate::telemetry::reason::Reason;
pub mod copy;
pub mod io;
pub mod pool;
pub mod server;

/// HTTP/2 settings: ztunnel's frames, smaller windows and send buffer (bounded memory per connection).
///
/// What one connection can make the agent hold (docs/security.md, "Limits"): received data not
/// yet written to the application is bounded by the windows this side advertises
/// (`CONNECTION_WINDOW` per connection, `STREAM_WINDOW` per stream); data to send that the peer
/// does not read is bounded per stream by `MAX_SEND_BUFFER` (plus one read chunk of the copy),
/// whatever window the peer advertises. A peer that advertises a huge window and never reads
/// holds at most `MAX_CONCURRENT_STREAMS x MAX_SEND_BUFFER` per connection.
pub mod settings {
    /// What a peer may send on one stream before the application took it. Was 4 MiB (ztunnel's).
    pub const STREAM_WINDOW: u32 = 1024 * 1024;
    /// What a peer may send on one connection before the applications took it: the memory one
    /// HBONE connection can make the agent hold on the receive side. It was 16 MiB (ztunnel's): 20
    /// connections whose streams reached applications that did not read (their replies stuck
    /// behind a receive window of 0) held 16 MiB each, RSS 49 -> 402 MB (issue 17). 4 MiB still
    /// covers 4 GB/s per connection at 1 ms round trip.
    pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
    pub const MAX_FRAME: u32 = 1024 * 1024;
    /// Streams the server allows per connection.
    pub const MAX_CONCURRENT_STREAMS: u32 = 100;
    pub const MAX_HEADER_LIST: u32 = 64 * 1024;
    /// Bytes h2 may hold per stream that the peer has not taken yet. It was 4 MiB: a peer that
    /// advertised a large window and never read made the agent hold 4 MiB per stream (20 such
    /// connections took RSS from 49 to 402 MB). The kernel's socket buffer is the real pipe; this
    /// only needs to keep it full (256 KiB does, at the copy's 64 KiB read chunk).
    pub const MAX_SEND_BUFFER: usize = 256 * 1024;

    /// The HBONE server's HTTP/2 settings.
    pub fn server() -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER);
        b
    }
}

/// Why a tunnel could not be used; each maps to one [`Reason`] (the `response_flags` label).
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("TCP connect to {0} failed: {1}")]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("TCP connect to {0} timed out — is a NetworkPolicy blocking the HBONE port 15008?")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(std::net::SocketAddr, std::io::Error),
    #[error("HTTP/2 with {0} failed: {1}")]
    H2(std::net::SocketAddr, h2::Error),
    #[error("the peer refused CONNECT {0} with status {1}")]
    Refused(std::net::SocketAddr, http::StatusCode),
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TunnelError {
    /// The reason this failure is counted and logged with.
    pub fn reason(&self) -> Reason {
        match self {
            TunnelError::Connect(..) | TunnelError::ConnectTimeout(_) => Reason::Connect,
            TunnelError::Tls(..) | TunnelError::Config(_) => Reason::TlsFailure,
            TunnelError::H2(..) => Reason::H2Failure,
            TunnelError::Refused(_, s) if *s == http::StatusCode::UNAUTHORIZED => Reason::Deny,
            TunnelError::Refused(..) => Reason::Connect,
        }
    }
}
