//! TLS for HBONE: TLS 1.3 only, ALPN `h2`, mutual authentication with SPIFFE identities.
//!
//! - Server (the in-pod 15008 listener): presents the pod's identity; requires a client certificate
//!   chaining to the trust bundle; after the handshake [`peer_identity`] extracts the client's SPIFFE
//!   ID, which must be in our trust domain.
//! - Client: presents the source pod's identity; accepts the server only if its chain verifies
//!   against the trust bundle and one of its URI SANs is an expected identity (the destination
//!   workload's), as Istio's ztunnel does. No DNS names are involved.
use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::{Identity, certs::CertManager};

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider (ring), shared by every config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn anchors(roots: &[CertificateDer<'static>]) -> Vec<TrustAnchor<'static>> {
    roots.iter().filter_map(|r| webpki::anchor_from_trusted_cert(r).ok().map(|a| a.to_owned())).collect()
}

/// URI SANs of a certificate.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Why a peer was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate has no SPIFFE URI SAN of the form spiffe://<td>/ns/<ns>/sa/<sa>")]
    NoSpiffeId,
    #[error("peer identity {0} is outside trust domain {1}")]
    ForeignTrustDomain(String, String),
}

/// The verified client identity of an accepted connection (first URI SAN, must be ours).
pub fn peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<Identity, PeerError> {
    let leaf = certs.and_then(|c| c.first()).ok_or(PeerError::NoCertificate)?;
    let id = uri_sans(leaf).first().and_then(|u| Identity::parse(u)).ok_or(PeerError::NoSpiffeId)?;
    if id.trust_domain != trust_domain {
        return Err(PeerError::ForeignTrustDomain(id.to_string(), trust_domain.to_string()));
    }
    Ok(id)
}

#[derive(Debug)]
struct ServerResolver {
    certs: Arc<CertManager>,
    id: Identity,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.certs.get(&self.id) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(identity = %self.id, error = %e, "no certificate to present; refusing the handshake");
                None
            }
        }
    }
}

#[derive(Debug)]
struct ClientResolver {
    certs: Arc<CertManager>,
    id: Identity,
}

impl ResolvesClientCert for ClientResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.certs.get(&self.id).ok()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Server config for a pod whose identity is `id`.
pub fn server_config(certs: &Arc<CertManager>, id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let mut roots = rustls::RootCertStore::empty();
    for r in certs.roots() {
        roots.add(r.clone())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p.clone())
        .build()
        .map_err(|e| TlsError::General(e.to_string()))?;
    let mut c = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ServerResolver { certs: certs.clone(), id: id.clone() }));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// Client config presenting `id` and accepting only servers holding one of `expected`.
pub fn client_config(
    certs: &Arc<CertManager>,
    id: &Identity,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let verifier = SpiffeServerVerifier {
        anchors: anchors(certs.roots()),
        expected: expected.iter().map(ToString::to_string).collect(),
        algs: p.signature_verification_algorithms,
    };
    let mut c = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientResolver { certs: certs.clone(), id: id.clone() }));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// The server name passed to rustls; ignored by [`SpiffeServerVerifier`] (identity is the SAN URI).
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(rustls_pki_types::IpAddr::V4(rustls_pki_types::Ipv4Addr::from([0, 0, 0, 0])))
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    expected: Vec<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let cert =
            webpki::EndEntityCert::try_from(end_entity).map_err(|e| TlsError::General(e.to_string()))?;
        cert.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            TlsError::General(format!("server certificate does not verify against the trust bundle: {e}"))
        })?;
        let sans = uri_sans(end_entity);
        if sans.iter().any(|s| self.expected.contains(s)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "server identity {sans:?} is not the expected {:?}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::General("TLS 1.2 is not allowed for HBONE".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::identity::ca::LocalCa;

    fn manager(td: &str) -> (tempfile::TempDir, Arc<CertManager>) {
        let dir = tempfile::tempdir().expect("tempdir");
        LocalCa::init(dir.path(), td, Duration::from_secs(3600)).expect("init");
        let ca = LocalCa::load(dir.path()).expect("load");
        (dir, Arc::new(CertManager::new(ca, td, Duration::from_secs(600), 0.5)))
    }

    /// Runs one handshake; Ok(server-side peer identity) or Err(description of which side failed).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        td: &str,
    ) -> Result<Identity, String> {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let td = td.to_string();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let tls = TlsAcceptor::from(server).accept(s).await.map_err(|e| format!("server: {e}"))?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
            assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
            peer_identity(conn.peer_certificates(), &td).map_err(|e| format!("server: {e}"))
        });
        let s = TcpStream::connect(addr).await.expect("connect");
        let cli =
            TlsConnector::from(client).connect(server_name(), s).await.map_err(|e| format!("client: {e}"));
        let srv = srv.await.expect("join");
        cli?;
        srv
    }

    #[tokio::test]
    async fn mutual_spiffe_authentication() {
        let (_d, m) = manager("cluster.local");
        let server_id = Identity::new("cluster.local", "shop", "backend");
        let client_id = Identity::new("cluster.local", "shop", "frontend");
        let sc = server_config(&m, &server_id).expect("server config");

        let ok = client_config(&m, &client_id, vec![server_id.clone()]).expect("client config");
        assert_eq!(handshake(sc.clone(), ok, "cluster.local").await, Ok(client_id.clone()));

        let wrong_expectation =
            client_config(&m, &client_id, vec![Identity::new("cluster.local", "shop", "other")])
                .expect("cfg");
        let e = handshake(sc.clone(), wrong_expectation, "cluster.local")
            .await
            .expect_err("wrong server identity");
        assert!(e.starts_with("client:") && e.contains("not the expected"), "{e}");

        let (_d2, other_ca) = manager("cluster.local");
        let stranger = client_config(&other_ca, &client_id, vec![server_id.clone()]).expect("cfg");
        let e = handshake(sc.clone(), stranger, "cluster.local").await.expect_err("foreign CA");
        assert!(e.contains("trust bundle") || e.contains("UnknownIssuer") || e.contains("server:"), "{e}");

        let (_d3, foreign_td) = manager("evil.example");
        let fsc = server_config(&foreign_td, &Identity::new("evil.example", "shop", "backend")).expect("cfg");
        let fcc = client_config(
            &foreign_td,
            &Identity::new("evil.example", "shop", "frontend"),
            vec![Identity::new("evil.example", "shop", "backend")],
        )
        .expect("cfg");
        let e = handshake(fsc, fcc, "cluster.local").await.expect_err("foreign trust domain");
        assert!(e.contains("outside trust domain cluster.local"), "{e}");
    }
}
