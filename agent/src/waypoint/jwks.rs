//! Remote JWKS for RequestAuthentication's `jwksUri`: fetched over HTTPS by the waypoint, from
//! inside the mesh when the host is a mesh Service (its endpoint reached over HBONE, with TLS to
//! the JWKS server inside the tunnel), else from the network by DNS. The server certificate is
//! verified against the system's roots plus `--jwks-ca`.
//!
//! Documents are cached per URI; one older than the refresh interval is refreshed in the
//! background while the cached one keeps serving. A fetch is bounded by the rule's `timeout`
//! (default 5 s) and the body by 1 MiB; a failed first fetch leaves the URI without keys, so its
//! tokens are refused (fail closed) until a fetch succeeds.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio_rustls::TlsConnector;

use super::upstream::{Io, Upstreams};
use crate::config::Snapshot;

/// Largest JWKS document accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Istio's default fetch timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a cached document is refreshed (Istio's default JWKS refresh interval).
const REFRESH: Duration = Duration::from_secs(20 * 60);

/// Why a JWKS document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("jwksUri `{0}` is not an https:// URL with a host")]
    BadUri(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1} (is its CA in the system roots or --jwks-ca?)")]
    Tls(String, String),
    #[error("HTTP from {0} failed: {1}")]
    Http(String, String),
    #[error("{0} answered {1}")]
    Status(String, http::StatusCode),
    #[error("{0} did not return a JWKS document: {1}")]
    NotJwks(String, String),
    #[error("fetching {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

struct Entry {
    text: Arc<String>,
    fetched: Instant,
    refreshing: bool,
}

/// After a failed first fetch, how long requests are refused without fetching again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Fetched JWKS documents, by URI.
pub struct RemoteJwks {
    entries: Mutex<HashMap<String, Entry>>,
    /// One fetch at a time per URI (async lock held across the fetch).
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When a URI without a document last failed.
    failed: Mutex<HashMap<String, Instant>>,
    /// The TLS configuration, built once it could be (the `--jwks-ca` file may appear later).
    tls: Mutex<Option<Arc<ClientConfig>>>,
    extra_ca: Option<PathBuf>,
}

impl RemoteJwks {
    pub fn new(extra_ca: Option<PathBuf>) -> RemoteJwks {
        RemoteJwks {
            entries: Mutex::default(),
            inflight: Mutex::default(),
            failed: Mutex::default(),
            tls: Mutex::default(),
            extra_ca,
        }
    }

    /// The cached document for `uri`, if any (possibly stale: see [`RemoteJwks::needs_fetch`]).
    pub fn get(&self, uri: &str) -> Option<Arc<String>> {
        self.entries.lock().get(uri).map(|e| e.text.clone())
    }

    /// Whether `uri` must be fetched before use (never fetched) or refreshed in the background
    /// (stale and nobody refreshing it yet; the caller takes the refresh on).
    pub fn needs_fetch(&self, uri: &str) -> Fetch {
        let mut m = self.entries.lock();
        match m.get_mut(uri) {
            // Recently failed: refuse its tokens at once rather than make every request wait.
            None if self.failed.lock().get(uri).is_some_and(|t| t.elapsed() < RETRY_AFTER) => Fetch::No,
            None => Fetch::Now,
            Some(e) if !e.refreshing && e.fetched.elapsed() > REFRESH => {
                e.refreshing = true;
                Fetch::Background
            }
            Some(_) => Fetch::No,
        }
    }

    fn store(&self, uri: &str, text: Arc<String>) {
        self.entries
            .lock()
            .insert(uri.to_string(), Entry { text, fetched: Instant::now(), refreshing: false });
        self.failed.lock().remove(uri);
    }

    fn refresh_failed(&self, uri: &str) {
        match self.entries.lock().get_mut(uri) {
            Some(e) => e.refreshing = false,
            None => {
                let mut f = self.failed.lock();
                if f.len() > 1024 {
                    f.clear();
                }
                f.insert(uri.to_string(), Instant::now());
            }
        }
    }

    fn tls(&self) -> Result<Arc<ClientConfig>, String> {
        if let Some(c) = self.tls.lock().as_ref() {
            return Ok(c.clone());
        }
        let c = self.build_tls()?;
        *self.tls.lock() = Some(c.clone());
        Ok(c)
    }

    fn build_tls(&self) -> Result<Arc<ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(path) = &self.extra_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--jwks-ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--jwks-ca {}: {e}", path.display()))?;
            for c in certs {
                roots.add(c).map_err(|e| format!("--jwks-ca {}: {e}", path.display()))?;
            }
        }
        let mut c = ClientConfig::builder_with_provider(crate::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// Fetches `uri` now (bounded by `timeout`) and caches it.
    pub async fn fetch(
        &self,
        snap: &Snapshot,
        upstreams: &Upstreams,
        uri: &str,
        timeout: Duration,
    ) -> Result<Arc<String>, JwksError> {
        let gate = self.inflight.lock().entry(uri.to_string()).or_default().clone();
        let _turn = gate.lock().await;
        // Whoever held the gate before may have fetched it meanwhile.
        if let Some(e) = self.entries.lock().get(uri).filter(|e| e.fetched.elapsed() < RETRY_AFTER) {
            return Ok(e.text.clone());
        }
        let r = tokio::time::timeout(timeout, self.fetch_inner(snap, upstreams, uri)).await;
        match r {
            Ok(Ok(text)) => {
                self.store(uri, text.clone());
                Ok(text)
            }
            Ok(Err(e)) => {
                self.refresh_failed(uri);
                Err(e)
            }
            Err(_) => {
                self.refresh_failed(uri);
                Err(JwksError::Timeout(uri.to_string(), timeout))
            }
        }
    }

    async fn fetch_inner(
        &self,
        snap: &Snapshot,
        upstreams: &Upstreams,
        uri: &str,
    ) -> Result<Arc<String>, JwksError> {
        let bad = || JwksError::BadUri(uri.to_string());
        let parsed: Uri = uri.parse().map_err(|_| bad())?;
        if parsed.scheme_str() != Some("https") {
            return Err(bad());
        }
        let host = parsed.host().ok_or_else(bad)?.to_string();
        let port = parsed.port_u16().unwrap_or(443);
        let io = connect(snap, upstreams, &host, port).await?;
        let tls = self.tls().map_err(|e| JwksError::Tls(host.clone(), e))?;
        let name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let stream = TlsConnector::from(tls)
            .connect(name, io)
            .await
            .map_err(|e| JwksError::Tls(host.clone(), e.to_string()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| JwksError::Http(host.clone(), e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let req = Request::get(path)
            .header(header::HOST, &host)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| JwksError::Http(host.clone(), e.to_string()))?;
        let resp = send.send_request(req).await.map_err(|e| JwksError::Http(host.clone(), e.to_string()))?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(uri.to_string(), resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| JwksError::Http(host.clone(), e.to_string()))?
            .to_bytes();
        let text = String::from_utf8(body.to_vec())
            .map_err(|e| JwksError::NotJwks(uri.to_string(), e.to_string()))?;
        serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text)
            .map_err(|e| JwksError::NotJwks(uri.to_string(), e.to_string()))?;
        Ok(Arc::new(text))
    }
}

/// What [`RemoteJwks::needs_fetch`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    Now,
    Background,
    No,
}

/// A byte stream to `host:port`: a mesh Service's endpoint (over HBONE when it is in the mesh),
/// an IP literal, or a DNS name.
async fn connect(snap: &Snapshot, upstreams: &Upstreams, host: &str, port: u16) -> Result<Io, JwksError> {
    let in_mesh = snap.services_by_host.get(host).and_then(|k| snap.services.get(k));
    if let Some(svc) = in_mesh {
        let target_port = svc.ports.iter().find(|p| p.port == port).map_or(port, |p| p.target_port);
        let v4: Vec<IpAddr> = svc.endpoints.iter().copied().filter(IpAddr::is_ipv4).collect();
        let eps = if v4.is_empty() { svc.endpoints.clone() } else { v4 };
        let ip = upstreams
            .choose(&format!("jwks/{host}"), &eps, target_port, None, None)
            .ok_or_else(|| JwksError::Resolve(host.to_string(), "the Service has no endpoints".into()))?;
        let ep = upstreams.endpoint(snap, ip, target_port);
        return upstreams.open(&ep).await.map_err(|e| JwksError::Connect(host.to_string(), e.to_string()));
    }
    let addr: SocketAddr = match host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| JwksError::Resolve(host.to_string(), e.to_string()))?
            .next()
            .ok_or_else(|| JwksError::Resolve(host.to_string(), "no address".into()))?,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| JwksError::Connect(host.to_string(), e.to_string()))?;
    Ok(Io::Tcp(tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_documents_are_refreshed_once_in_the_background() {
        let r = RemoteJwks::new(None);
        assert_eq!(r.needs_fetch("https://idp/jwks"), Fetch::Now);
        r.store("https://idp/jwks", Arc::new("{\"keys\": []}".into()));
        assert_eq!(r.needs_fetch("https://idp/jwks"), Fetch::No, "fresh");
        r.entries.lock().get_mut("https://idp/jwks").expect("entry").fetched = Instant::now() - REFRESH * 2;
        assert_eq!(r.needs_fetch("https://idp/jwks"), Fetch::Background);
        assert_eq!(r.needs_fetch("https://idp/jwks"), Fetch::No, "one refresh at a time");
        r.refresh_failed("https://idp/jwks");
        assert_eq!(r.needs_fetch("https://idp/jwks"), Fetch::Background, "a failed refresh is retried");
        assert!(r.get("https://idp/jwks").is_some(), "the stale document keeps serving");
        // A URI whose first fetch failed is not fetched again by every request.
        r.refresh_failed("https://down/jwks");
        assert_eq!(r.needs_fetch("https://down/jwks"), Fetch::No);
        r.failed.lock().insert("https://down/jwks".into(), Instant::now() - RETRY_AFTER * 2);
        assert_eq!(r.needs_fetch("https://down/jwks"), Fetch::Now, "retried after a pause");
    }

    #[tokio::test]
    async fn bad_uris_and_unreachable_hosts_are_named() {
        let r = RemoteJwks::new(None);
        let snap = Snapshot::default();
        let dir = tempfile::tempdir().expect("tmp");
        crate::identity::ca::LocalCa::init(dir.path(), "cluster.local", Duration::from_secs(3600))
            .expect("ca");
        let ca = crate::identity::ca::LocalCa::load(dir.path()).expect("ca");
        let certs = Arc::new(crate::identity::certs::CertManager::new(
            ca,
            "cluster.local",
            Duration::from_secs(3600),
            0.5,
        ));
        let up = Upstreams::new(
            crate::tunnel::pool::Pool::new(certs, Duration::from_secs(1), Duration::from_secs(60)),
            crate::identity::Identity::new("cluster.local", "ns", "wp"),
            Duration::from_secs(1),
        );
        let e = r.fetch(&snap, &up, "http://idp/jwks", DEFAULT_TIMEOUT).await.expect_err("plain http");
        assert!(matches!(e, JwksError::BadUri(_)), "{e}");
        let e =
            r.fetch(&snap, &up, "https://127.0.0.1:1/jwks", DEFAULT_TIMEOUT).await.expect_err("closed port");
        assert!(matches!(e, JwksError::Connect(..)), "{e}");
        assert!(r.get("https://127.0.0.1:1/jwks").is_none(), "nothing cached after a failure");
    }
}
