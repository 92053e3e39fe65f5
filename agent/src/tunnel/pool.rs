//! The HBONE client: pooled HTTP/2-over-mTLS connections opened from inside the source pod's netns.
//!
//! Connections are pooled per (source pod, destination `ip:15008`, source identity, expected
//! destination identity); each carries up to [`settings::MAX_CONCURRENT_STREAMS`] CONNECT streams
//! (the limit our servers advertise), and a new connection is opened when every pooled one is
//! full, so the number of concurrent streams to one destination is not capped. A stream slot is
//! reserved under the pool lock, so concurrent connects do not overfill a connection; waiting for a
//! slot is bounded by the connect timeout. A broken connection is replaced on next use;
//! connections without streams for longer than the idle timeout are closed by [`Pool::reap_idle`].
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::{RecvStream, SendStream, client::SendRequest};
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use tokio_rustls::TlsConnector;

use super::{TunnelError, settings};
use crate::{
    identity::{
        Identity,
        certs::CertManager,
        tls::{client_config, server_name},
    },
    redirect::{NetNs, inpod},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source pod (its netns cookie): connections leave from inside it.
    pub src_pod: u64,
    pub src: Identity,
    /// `pod-ip:15008`.
    pub dst: SocketAddr,
    pub expected: Identity,
}

struct Conn {
    send: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    last_used: Instant,
}

/// Decrements the connection's active-stream count when the stream ends.
pub struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Pool {
    certs: Arc<CertManager>,
    conns: Mutex<HashMap<PoolKey, Vec<Conn>>>,
    /// One dial at a time per key (async, held across the dial).
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(certs: Arc<CertManager>, connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            certs,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::default(),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Opens a CONNECT stream to `target` through the pooled connection for `key`, dialling it
    /// from inside `netns` (marked, so the kernel programs leave it alone) when needed, or from the
    /// process's own namespace with `None` (the waypoint, which no agent captures). Succeeds only
    /// once the peer answered 200.
    pub async fn connect(
        &self,
        key: &PoolKey,
        netns: Option<&Arc<NetNs>>,
        target: SocketAddr,
    ) -> Result<(SendStream<Bytes>, RecvStream, StreamGuard), TunnelError> {
        // A slot on a pooled connection; else dial, one dial per key at a time, so a burst of
        // first connections shares one new connection instead of each opening its own.
        let (mut send, guard) = match self.pooled(key).await? {
            Some(x) => x,
            None => {
                let gate = self.dialing.lock().entry(key.clone()).or_default().clone();
                let _turn = tokio::time::timeout(self.connect_timeout, gate.lock())
                    .await
                    .map_err(|_| TunnelError::ConnectTimeout(key.dst))?;
                match self.pooled(key).await? {
                    Some(x) => x, // dialled by whoever held the gate before us
                    None => self.dial_new(key, netns).await?,
                }
            }
        };
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(())
            .map_err(|e| TunnelError::Config(e.to_string()))?;
        let (resp, send_stream) = send.send_request(req, false).map_err(|e| TunnelError::H2(key.dst, e))?;
        let resp = match tokio::time::timeout(self.connect_timeout, resp).await {
            Ok(r) => r.map_err(|e| TunnelError::H2(key.dst, e))?,
            Err(_) => return Err(TunnelError::ConnectTimeout(key.dst)),
        };
        if resp.status() != StatusCode::OK {
            return Err(TunnelError::Refused(key.dst, resp.status()));
        }
        Ok((send_stream, resp.into_body(), guard))
    }

    /// Reserves a stream slot on the least-loaded pooled connection with room (under the lock)
    /// and waits until it can send; None when there is none (or it turned out broken).
    async fn pooled(&self, key: &PoolKey) -> Result<Option<(SendRequest<Bytes>, StreamGuard)>, TunnelError> {
        let pooled = {
            let mut conns = self.conns.lock();
            conns.get_mut(key).and_then(|list| {
                let c = list
                    .iter_mut()
                    .filter(|c| c.active.load(Ordering::SeqCst) < settings::MAX_CONCURRENT_STREAMS as usize)
                    .min_by_key(|c| c.active.load(Ordering::SeqCst))?;
                c.last_used = Instant::now();
                c.active.fetch_add(1, Ordering::SeqCst);
                Some((c.send.clone(), c.active.clone()))
            })
        };
        let Some((send, active)) = pooled else {
            return Ok(None);
        };
        let guard = StreamGuard(active.clone());
        match tokio::time::timeout(self.connect_timeout, send.ready()).await {
            Ok(Ok(s)) => Ok(Some((s, guard))),
            Ok(Err(_)) => {
                // Broken: forget it (its guard releases nothing anyone counts any more).
                if let Some(list) = self.conns.lock().get_mut(key) {
                    list.retain(|c| !Arc::ptr_eq(&c.active, &active));
                }
                Ok(None)
            }
            Err(_) => Err(TunnelError::ConnectTimeout(key.dst)),
        }
    }

    /// Dials a new connection for `key`, pools it with this stream's slot taken, and waits until it
    /// can send.
    async fn dial_new(
        &self,
        key: &PoolKey,
        netns: Option<&Arc<NetNs>>,
    ) -> Result<(SendRequest<Bytes>, StreamGuard), TunnelError> {
        let send = self.dial(key, netns).await?;
        let active = Arc::new(AtomicUsize::new(1)); // this stream's slot
        let guard = StreamGuard(active.clone());
        self.conns.lock().entry(key.clone()).or_default().push(Conn {
            send: send.clone(),
            active,
            last_used: Instant::now(),
        });
        let send = match tokio::time::timeout(self.connect_timeout, send.ready()).await {
            Ok(r) => r.map_err(|e| TunnelError::H2(key.dst, e))?,
            Err(_) => return Err(TunnelError::ConnectTimeout(key.dst)),
        };
        Ok((send, guard))
    }

    async fn dial(
        &self,
        key: &PoolKey,
        netns: Option<&Arc<NetNs>>,
    ) -> Result<SendRequest<Bytes>, TunnelError> {
        let v6 = key.dst.is_ipv6();
        let sock = match netns {
            Some(ns) => inpod::marked_socket(ns, v6),
            None => plain_socket(v6),
        }
        .map_err(|e| TunnelError::Connect(key.dst, e))?;
        let tcp = match tokio::time::timeout(self.connect_timeout, sock.connect(key.dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(TunnelError::Connect(key.dst, e)),
            Err(_) => return Err(TunnelError::ConnectTimeout(key.dst)),
        };
        let cfg = client_config(&self.certs, &key.src, vec![key.expected.clone()])
            .map_err(|e| TunnelError::Config(e.to_string()))?;
        let handshakes = async {
            let tls = TlsConnector::from(cfg)
                .connect(server_name(), tcp)
                .await
                .map_err(|e| TunnelError::Tls(key.dst, e))?;
            h2::client::Builder::new()
                .initial_window_size(settings::STREAM_WINDOW)
                .initial_connection_window_size(settings::CONNECTION_WINDOW)
                .max_frame_size(settings::MAX_FRAME)
                .max_header_list_size(settings::MAX_HEADER_LIST)
                .max_send_buffer_size(settings::MAX_SEND_BUFFER)
                .enable_push(false)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|e| TunnelError::H2(key.dst, e))
        };
        let (send, conn) = match tokio::time::timeout(self.connect_timeout, handshakes).await {
            Ok(r) => r?,
            Err(_) => return Err(TunnelError::ConnectTimeout(key.dst)),
        };
        let dst = key.dst;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%dst, error = %e, "HBONE connection ended");
            }
        });
        tracing::debug!(%dst, src = %key.src, expected = %key.expected, "HBONE connection opened");
        Ok(send)
    }

    /// Closes pooled connections without streams that were not used for the idle timeout.
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let mut conns = self.conns.lock();
        let mut closed = 0;
        for list in conns.values_mut() {
            let before = list.len();
            list.retain(|c| {
                c.active.load(Ordering::SeqCst) > 0 || now.duration_since(c.last_used) < self.idle_timeout
            });
            closed += before - list.len();
        }
        conns.retain(|_, list| !list.is_empty());
        // Dial gates of keys with no connection left and no dial in progress.
        self.dialing.lock().retain(|k, gate| conns.contains_key(k) || Arc::strong_count(gate) > 1);
        closed
    }

    /// Drops the pooled connections opened from a released pod (streams in flight finish; the
    /// connection closes with its last stream), so nothing keeps the pod's netns alive.
    pub fn forget_pod(&self, src_pod: u64) -> usize {
        let mut conns = self.conns.lock();
        let mut dropped = 0;
        conns.retain(|k, list| {
            let keep = k.src_pod != src_pod;
            if !keep {
                dropped += list.len();
            }
            keep
        });
        self.dialing.lock().retain(|k, _| k.src_pod != src_pod);
        dropped
    }

    /// Pooled connections now.
    pub fn len(&self) -> usize {
        self.conns.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn plain_socket(v6: bool) -> std::io::Result<tokio::net::TcpSocket> {
    let s = if v6 { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    s.set_nodelay(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    use super::*;
    use crate::{
        identity::{ca::LocalCa, tls::server_config},
        tunnel::{copy, server},
    };

    fn root_or_skip() -> bool {
        // Pooled sockets carry SO_MARK, which needs CAP_NET_ADMIN.
        let root = nix::unistd::geteuid().is_root();
        if !root && std::env::var("SLUICE_E2E_ALLOW_SKIP").as_deref() != Ok("1") {
            panic!("this test needs root (SO_MARK); run as root or set SLUICE_E2E_ALLOW_SKIP=1");
        }
        root
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        a
    }

    /// An HBONE server on 127.0.0.1 that forwards streams to their target, or refuses port 1.
    async fn hbone_server(certs: Arc<CertManager>, id: Identity) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        let cfg = server_config(&certs, &id).expect("cfg");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let _ = server::serve_connection(
                        tcp,
                        cfg,
                        "cluster.local",
                        server::Targets::OwnAddress,
                        std::future::pending(),
                        |_| {},
                        |stream| {
                            tokio::spawn(async move {
                                if stream.target.port() == 1 {
                                    return stream.refuse(http::StatusCode::UNAUTHORIZED);
                                }
                                let Ok(app) = tokio::net::TcpStream::connect(stream.target).await else {
                                    return stream.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                                };
                                if let Ok((send, recv)) = stream.accept() {
                                    let n = (Default::default(), Default::default());
                                    copy::splice(app, send, recv, &n.0, &n.1, std::future::pending()).await;
                                }
                            });
                        },
                    )
                    .await;
                });
            }
        });
        a
    }

    async fn roundtrip(send: &mut SendStream<Bytes>, recv: &mut RecvStream, data: &[u8]) -> Vec<u8> {
        send.reserve_capacity(data.len());
        let mut rest = Bytes::copy_from_slice(data);
        while !rest.is_empty() {
            let cap = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.expect("open").expect("cap");
            let chunk = rest.split_to(cap.min(rest.len()));
            send.send_data(chunk, rest.is_empty()).expect("send");
        }
        let mut out = Vec::new();
        while let Some(c) = recv.data().await {
            let c = c.expect("data");
            let _ = recv.flow_control().release_capacity(c.len());
            out.extend_from_slice(&c);
        }
        out
    }

    /// The agent's home netns and a fresh CA with a certificate manager (the directory lives as long
    /// as the returned guard).
    fn setup() -> (tempfile::TempDir, Arc<CertManager>) {
        crate::redirect::sys::init_home().expect("home");
        let dir = tempfile::tempdir().expect("tempdir");
        LocalCa::init(dir.path(), "cluster.local", Duration::from_secs(3600)).expect("init");
        let ca = LocalCa::load(dir.path()).expect("load");
        (dir, Arc::new(CertManager::new(ca, "cluster.local", Duration::from_secs(600), 0.5)))
    }

    /// A pool (2 s connect timeout, 200 ms idle timeout) from shop/frontend to an HBONE server
    /// presenting shop/backend, and an echo server to open streams to.
    async fn frontend_to_backend() -> (tempfile::TempDir, Pool, PoolKey, Arc<NetNs>, SocketAddr) {
        let (ca, certs) = setup();
        let backend = Identity::new("cluster.local", "shop", "backend");
        let frontend = Identity::new("cluster.local", "shop", "frontend");
        let hbone = hbone_server(certs.clone(), backend.clone()).await;
        let echo = echo_server().await;
        let netns = Arc::new(NetNs::current().expect("netns"));
        let pool = Pool::new(certs, Duration::from_secs(2), Duration::from_millis(200));
        let key = PoolKey { src_pod: 1, src: frontend, dst: hbone, expected: backend };
        (ca, pool, key, netns, echo)
    }

    #[tokio::test]
    async fn pooled_streams_carry_bytes_and_failures_are_typed() {
        if !root_or_skip() {
            return;
        }
        let (_ca, pool, key, netns, echo) = frontend_to_backend().await;

        let data: Vec<u8> = (0..(2 * 1024 * 1024)).map(|i| (i * 7 % 251) as u8).collect();
        let (mut s1, mut r1, g1) = pool.connect(&key, Some(&netns), echo).await.expect("stream 1");
        let (mut s2, mut r2, g2) = pool.connect(&key, Some(&netns), echo).await.expect("stream 2");
        assert_eq!(pool.len(), 1, "both streams share one pooled connection");
        let (a, b) = tokio::join!(roundtrip(&mut s1, &mut r1, &data), roundtrip(&mut s2, &mut r2, b"hello"));
        assert!(a == data, "2 MiB echoed byte-exact through the tunnel");
        assert_eq!(b, b"hello");
        drop((g1, g2));

        let e = pool
            .connect(&key, Some(&netns), SocketAddr::from(([127, 0, 0, 1], 1)))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.reason(), crate::telemetry::reason::Reason::Deny, "{e}");
        let e = pool
            .connect(&key, Some(&netns), SocketAddr::from(([127, 0, 0, 2], 80)))
            .await
            .err()
            .expect("bad target");
        assert!(matches!(e, TunnelError::Refused(_, s) if s == StatusCode::BAD_REQUEST), "{e}");

        let wrong = PoolKey { expected: Identity::new("cluster.local", "shop", "other"), ..key.clone() };
        let e = pool.connect(&wrong, Some(&netns), echo).await.err().expect("wrong identity");
        assert_eq!(e.reason(), crate::telemetry::reason::Reason::TlsFailure, "{e}");

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pool.reap_idle() >= 1);
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn unreachable_destination_is_a_connect_failure() {
        if !root_or_skip() {
            return;
        }
        let (_ca, certs) = setup();
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        let pool = Pool::new(certs, Duration::from_secs(2), Duration::from_secs(60));
        let id = Identity::new("cluster.local", "a", "b");
        let key = PoolKey { src_pod: 1, src: id.clone(), dst: closed, expected: id };
        let netns = Arc::new(NetNs::current().expect("netns"));
        let e = pool.connect(&key, Some(&netns), closed).await.err().expect("closed port");
        assert_eq!(e.reason(), crate::telemetry::reason::Reason::Connect, "{e}");
    }

    #[tokio::test]
    async fn more_concurrent_streams_than_one_connection_carries_open_another_connection() {
        if !root_or_skip() {
            return;
        }
        let (_ca, pool, key, netns, echo) = frontend_to_backend().await;
        let per_conn = settings::MAX_CONCURRENT_STREAMS as usize;
        // Hold 2.5 connections' worth of idle streams open at once: none may wait for another.
        let mut held = Vec::new();
        for i in 0..(per_conn * 5 / 2) {
            let s = tokio::time::timeout(Duration::from_secs(3), pool.connect(&key, Some(&netns), echo))
                .await
                .unwrap_or_else(|_| panic!("stream {i} waited for a free slot"))
                .expect("stream");
            held.push(s);
        }
        assert_eq!(pool.len(), 3, "ceil(250 / {per_conn}) connections");
        let (send, recv, _) = held.last_mut().expect("held");
        assert_eq!(roundtrip(send, recv, b"last").await, b"last", "the newest stream carries bytes");
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pool.reap_idle(), 3, "all three close once idle");
    }

    #[tokio::test]
    async fn a_burst_of_first_streams_shares_one_dial() {
        if !root_or_skip() {
            return;
        }
        let (_ca, pool, key, netns, echo) = frontend_to_backend().await;
        let pool = Arc::new(pool);
        // 40 streams asked for at once on an empty pool: one connection is dialled and shared.
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (pool, key, netns) = (pool.clone(), key.clone(), netns.clone());
                tokio::spawn(async move { pool.connect(&key, Some(&netns), echo).await.map(|_| ()) })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("stream");
        }
        assert_eq!(pool.len(), 1, "concurrent first connects share one dial");
    }
}
