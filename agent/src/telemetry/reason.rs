//! The one vocabulary of why a connection was refused or failed.
//!
//! Each [`Reason`] has one name, used unchanged as the `response_flags` label of Istio's metrics,
//! the `reason` label of `sluice_proxy_failures_total`, the `reason` field of the access log and in
//! `/debug/connections`. Where Istio (ztunnel) has a name for the case it is Istio's, in capitals
//! (`DENY`, `CONNECT`); sluice's own cases are lower-case. The admission gate
//! ([`crate::policy::admission`]), the tunnel's errors and the proxies all report in these terms.
//!
//! This module owns the names only; it imports nothing from the crate.
/// Why a connection was refused before it was carried, or why carrying it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No original destination was recorded for a captured outbound connection.
    NoOriginalDst,
    /// The destination is one of the agent's own ports (a loop).
    Loop,
    /// No socket could be created in the pod's network namespace.
    Socket,
    /// Connecting to the destination (or the HBONE peer) failed or was refused.
    Connect,
    /// Connecting to the destination timed out.
    ConnectTimeout,
    /// A Service (or waypoint) with no endpoint to send to.
    NoEndpoints,
    /// Plaintext to a port whose PeerAuthentication mode is STRICT.
    MtlsRequired,
    /// An AuthorizationPolicy (or the waypoint binding) denied the connection.
    Deny,
    /// The TLS handshake of an HBONE connection failed (no or an untrusted certificate, ...).
    TlsFailure,
    /// The peer's certificate carries no SPIFFE identity of this trust domain.
    IdentityError,
    /// The HTTP/2 handshake of an HBONE connection failed.
    H2Failure,
    /// Closed from outside while it was carried (`/debug/connections/close`).
    AdminClosed,
    /// The node's connection budget (a share of the open-file limit) is used up.
    OverloadBudget,
    /// The pod (the destination, or the source of a captured outbound connection) has as many
    /// connections to and from it as `--max-conns-per-pod` allows.
    OverloadPod,
    /// The client address has as many connections as `--max-conns-per-source` allows.
    OverloadSource,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::NoOriginalDst,
        Reason::Loop,
        Reason::Socket,
        Reason::Connect,
        Reason::ConnectTimeout,
        Reason::NoEndpoints,
        Reason::MtlsRequired,
        Reason::Deny,
        Reason::TlsFailure,
        Reason::IdentityError,
        Reason::H2Failure,
        Reason::AdminClosed,
        Reason::OverloadBudget,
        Reason::OverloadPod,
        Reason::OverloadSource,
    ];

    /// The reason's one name (metric label, access-log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoOriginalDst => "no_original_dst",
            Reason::Loop => "loop",
            Reason::Socket => "socket",
            Reason::Connect => "CONNECT",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::NoEndpoints => "no_endpoints",
            Reason::MtlsRequired => "mtls_required",
            Reason::Deny => "DENY",
            Reason::TlsFailure => "TLS_FAILURE",
            Reason::IdentityError => "IDENTITY_ERROR",
            Reason::H2Failure => "H2_HANDSHAKE_FAILURE",
            Reason::AdminClosed => "admin_closed",
            Reason::OverloadBudget => "overload_budget",
            Reason::OverloadPod => "overload_pod",
            Reason::OverloadSource => "overload_source",
        }
    }

    /// The HTTP status an HBONE CONNECT stream is refused with for this reason.
    pub fn connect_status(self) -> http::StatusCode {
        match self {
            Reason::Deny | Reason::MtlsRequired => http::StatusCode::UNAUTHORIZED,
            Reason::Loop => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stable() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        // Names dashboards and the e2e suite key on.
        assert_eq!(Reason::Deny.as_str(), "DENY");
        assert_eq!(Reason::Connect.as_str(), "CONNECT");
        assert_eq!(Reason::MtlsRequired.as_str(), "mtls_required");
        assert_eq!(Reason::NoEndpoints.as_str(), "no_endpoints");
        assert_eq!(Reason::TlsFailure.as_str(), "TLS_FAILURE");
        assert_eq!(Reason::IdentityError.as_str(), "IDENTITY_ERROR");
    }

    #[test]
    fn all_lists_every_variant_and_serializes_by_name() {
        // Exhaustive: a new variant fails to compile here until it is placed in ALL.
        let index = |r: Reason| match r {
            Reason::NoOriginalDst => 0,
            Reason::Loop => 1,
            Reason::Socket => 2,
            Reason::Connect => 3,
            Reason::ConnectTimeout => 4,
            Reason::NoEndpoints => 5,
            Reason::MtlsRequired => 6,
            Reason::Deny => 7,
            Reason::TlsFailure => 8,
            Reason::IdentityError => 9,
            Reason::H2Failure => 10,
            Reason::AdminClosed => 11,
            Reason::OverloadBudget => 12,
            Reason::OverloadPod => 13,
            Reason::OverloadSource => 14,
        };
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(index(*r), i, "{r:?} out of place in ALL");
        }
        assert_eq!(serde_json::to_string(&Reason::AdminClosed).expect("json"), "\"admin_closed\"");
    }

    #[test]
    fn refusals_map_to_connect_statuses() {
        assert_eq!(Reason::Deny.connect_status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(Reason::Loop.connect_status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(Reason::Connect.connect_status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Reason::OverloadSource.connect_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
