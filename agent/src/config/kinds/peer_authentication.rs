//! Istio's PeerAuthentication (security.istio.io v1/v1beta1): the mTLS mode a namespace or workload
//! accepts, per port if need be, parsed from its `spec` exactly as Istio spells the fields.
//!
//! Every struct rejects unknown fields. This module owns the wire shape; deciding a connection's
//! mode belongs to `policy`, precedence across scopes to `Snapshot::compile`. It imports only
//! [`super::common`], never another kind nor the compiler.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::WorkloadSelector;

/// PeerAuthentication mTLS modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<Mtls>,
    /// Port -> mode; Istio only honours it together with a selector.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, Mtls>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerAuthentication {
    pub namespace: String,
    pub name: String,
    pub spec: PeerAuthenticationSpec,
}
