//! `sl-hbone`: an independent HBONE client for tests — it is not sluice's client, so it can present
//! any certificate (or none) and show what the server does with it.
//!
//! `sl-hbone [--cert C --key K] SERVER TARGET` opens TLS 1.3 with ALPN h2 to SERVER (pod-ip:15008),
//! sends `CONNECT TARGET`, writes "ping", expects it echoed, and prints one JSON line:
//! `{"ok":bool,"stage":"tcp|tls|h2|status|data|done","status":N,"error":"..."}`.
//! It does not check the server's certificate: these tests are about what the server accepts.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _};

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 not used".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn report(ok: bool, stage: &str, status: u16, error: &str) {
    println!("{}", serde_json::json!({"ok": ok, "stage": stage, "status": status, "error": error}));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cert, key, rest) = match args.as_slice() {
        [c, cert, k, key, rest @ ..] if c == "--cert" && k == "--key" => {
            (Some(cert.clone()), Some(key.clone()), rest)
        }
        rest => (None, None, rest),
    };
    let [server, target] = rest else {
        eprintln!("usage: sl-hbone [--cert C --key K] SERVER TARGET");
        std::process::exit(2);
    };
    let (Ok(server), Ok(target)) = (server.parse::<SocketAddr>(), target.parse::<SocketAddr>()) else {
        eprintln!("SERVER and TARGET must be ip:port");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let ok = rt.block_on(run(cert, key, server, target));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(cert: Option<String>, key: Option<String>, server: SocketAddr, target: SocketAddr) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut cfg = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&c).expect("cert file").map(|c| c.expect("cert")).collect();
            let key = PrivateKeyDer::from_pem_file(&k).expect("key file");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let timeout = Duration::from_secs(5);
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(server)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return {
                report(false, "tcp", 0, &e.to_string());
                false
            };
        }
        Err(_) => {
            return {
                report(false, "tcp", 0, "timeout");
                false
            };
        }
    };
    let name = ServerName::IpAddress(server.ip().into());
    let tls = match tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => {
            return {
                report(false, "tls", 0, &e.to_string());
                false
            };
        }
    };
    // With TLS 1.3 a rejected client certificate surfaces on the first read: the h2 handshake.
    let (send, conn) = match tokio::time::timeout(timeout, h2::client::handshake(tls)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return {
                report(false, "h2", 0, &e.to_string());
                false
            };
        }
        Err(_) => {
            return {
                report(false, "h2", 0, "timeout");
                false
            };
        }
    };
    tokio::spawn(conn);
    let mut send = match send.ready().await {
        Ok(s) => s,
        Err(e) => {
            return {
                report(false, "h2", 0, &e.to_string());
                false
            };
        }
    };
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .expect("request");
    let (resp, mut body_tx) = match send.send_request(req, false) {
        Ok(x) => x,
        Err(e) => {
            return {
                report(false, "h2", 0, &e.to_string());
                false
            };
        }
    };
    let resp = match tokio::time::timeout(timeout, resp).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return {
                report(false, "h2", 0, &e.to_string());
                false
            };
        }
        Err(_) => {
            return {
                report(false, "status", 0, "timeout");
                false
            };
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        report(false, "status", status, "");
        return false;
    }
    let mut body = resp.into_body();
    if let Err(e) = body_tx.send_data(Bytes::from_static(b"ping"), true) {
        report(false, "data", status, &e.to_string());
        return false;
    }
    let mut got = Vec::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(timeout, body.data()).await {
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    // The echo server greets with a PEER line before echoing.
    let ok = got.ends_with(b"ping");
    report(ok, "done", status, if ok { "" } else { "echo mismatch" });
    ok
}
