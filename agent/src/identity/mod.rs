//! Workload identity: SPIFFE IDs, the local CA, leaf certificates with rotation, and the TLS
//! configurations that present and verify them.
//!
//! Identity on the wire always comes from a verified certificate, never from an IP address.
pub mod ca;
pub mod certs;
pub mod tls;

use std::fmt;

use serde::Serialize;

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Identity {
        Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses a SPIFFE URI of the Istio form; None for anything else.
    pub fn parse(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !td.is_empty() && !ns.is_empty() && !sa.is_empty() =>
            {
                Some(Identity::new(td, ns, sa))
            }
            _ => None,
        }
    }
}

/// The certificate manager the identity flags describe: the local CA in `--ca-dir`, minting for
/// `--trust-domain` with the configured lifetime and rotation point (agent and waypoint alike).
pub fn cert_manager(s: &CertSettings<'_>) -> Result<std::sync::Arc<certs::CertManager>, ca::CaError> {
    let ca = ca::LocalCa::load(s.ca_dir)?;
    Ok(std::sync::Arc::new(certs::CertManager::new(ca, s.trust_domain, s.lifetime, s.rotate_after)))
}

/// Where certificates come from and how long they live (the agent's and waypoint's identity flags).
#[derive(Clone, Copy, Debug)]
pub struct CertSettings<'a> {
    /// The local CA's directory.
    pub ca_dir: &'a std::path::Path,
    pub trust_domain: &'a str,
    /// Lifetime of minted certificates.
    pub lifetime: std::time::Duration,
    /// Share of the lifetime after which a certificate is replaced.
    pub rotate_after: f64,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::Identity;

    #[test]
    fn spiffe_round_trip_and_rejects() {
        let id = Identity::new("cluster.local", "shop", "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(Identity::parse(&id.to_string()), Some(id));
        for bad in [
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "https://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns//sa/b",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }
}
