//! Leaf certificates for the service accounts of this node's pods: minted on first use, rotated
//! once a configurable share of their lifetime has passed, served per TLS handshake. Rotation never
//! touches live connections (their keys were agreed at handshake); every new handshake gets a
//! certificate that is well inside its validity.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use rustls::{crypto::CryptoProvider, sign::CertifiedKey};
use serde::Serialize;

use super::{
    Identity,
    ca::{CaError, LocalCa},
};

struct Entry {
    key: Arc<CertifiedKey>,
    issued: SystemTime,
    not_after: SystemTime,
}

/// Certificate status for the admin API and metrics.
#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub identity: String,
    pub issued_unix: u64,
    pub expires_unix: u64,
    pub rotations: u64,
}

pub struct CertManager {
    ca: LocalCa,
    pub trust_domain: String,
    lifetime: Duration,
    /// Share of the lifetime after which a certificate is replaced (0 < r < 1).
    rotate_after: f64,
    provider: Arc<CryptoProvider>,
    certs: Mutex<HashMap<Identity, Entry>>,
    rotations: Mutex<HashMap<Identity, u64>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl CertManager {
    pub fn new(ca: LocalCa, trust_domain: &str, lifetime: Duration, rotate_after: f64) -> CertManager {
        CertManager {
            ca,
            trust_domain: trust_domain.to_string(),
            lifetime,
            rotate_after: rotate_after.clamp(0.05, 0.95),
            provider: super::tls::provider(),
            certs: Mutex::new(HashMap::new()),
            rotations: Mutex::new(HashMap::new()),
        }
    }

    /// The trust bundle.
    pub fn roots(&self) -> &[rustls_pki_types::CertificateDer<'static>] {
        &self.ca.roots
    }

    /// The current certificate for `id`, minting or rotating it when due.
    pub fn get(&self, id: &Identity) -> Result<Arc<CertifiedKey>, CaError> {
        let now = SystemTime::now();
        // One lock across check and mint: concurrent handshakes at a rotation point mint once.
        let mut certs = self.certs.lock();
        if let Some(e) = certs.get(id) {
            let rotate_at = e.issued + self.lifetime.mul_f64(self.rotate_after);
            if now < rotate_at && now < e.not_after {
                return Ok(e.key.clone());
            }
        }
        let leaf = self.ca.mint(id, self.lifetime)?;
        let signer = self
            .provider
            .key_provider
            .load_private_key(leaf.key)
            .map_err(|e| CaError::Mint { identity: id.to_string(), detail: e.to_string() })?;
        let key = Arc::new(CertifiedKey::new(leaf.chain, signer));
        if certs
            .insert(id.clone(), Entry { key: key.clone(), issued: now, not_after: leaf.not_after })
            .is_some()
        {
            *self.rotations.lock().entry(id.clone()).or_default() += 1;
            tracing::info!(identity = %id, "certificate rotated");
        } else {
            tracing::info!(identity = %id, "certificate issued");
        }
        Ok(key)
    }

    pub fn status(&self) -> Vec<CertStatus> {
        // Lock order: certs, then rotations (as in `get`).
        let certs = self.certs.lock();
        let rotations = self.rotations.lock();
        let mut out: Vec<CertStatus> = certs
            .iter()
            .map(|(id, e)| CertStatus {
                identity: id.to_string(),
                issued_unix: unix(e.issued),
                expires_unix: unix(e.not_after),
                rotations: rotations.get(id).copied().unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_then_rotates_after_the_configured_share_of_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        LocalCa::init(dir.path(), "cluster.local", Duration::from_secs(3600)).expect("init");
        let m = CertManager::new(
            LocalCa::load(dir.path()).expect("load"),
            "cluster.local",
            Duration::from_millis(400),
            0.5,
        );
        let id = Identity::new("cluster.local", "ns", "sa");
        let a = m.get(&id).expect("mint");
        let b = m.get(&id).expect("cached");
        assert!(Arc::ptr_eq(&a, &b), "a fresh certificate must be reused");
        std::thread::sleep(Duration::from_millis(250));
        let c = m.get(&id).expect("rotated");
        assert!(!Arc::ptr_eq(&a, &c), "past half its lifetime the certificate must be replaced");
        assert_eq!(m.status()[0].rotations, 1);
    }
}
