//! Plugin <-> agent messages: one JSON object per line each way, bounded in size.
use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A pod as the runtime describes it to the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

impl PodRef {
    /// Stable registry key: the UID, or the container ID when the runtime gave none.
    pub fn key(&self) -> String {
        if self.uid.is_empty() { self.container_id.clone() } else { self.uid.clone() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// A pod's sandbox network is up: register it (and enroll it if the config says so) before replying.
    Add { pod: PodRef },
    /// A pod's sandbox is going away.
    Del { pod: PodRef },
    /// Is the pod in the state the config asks for?
    Check { pod: PodRef },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// Whether the pod is enrolled in the mesh after this request.
    #[serde(default)]
    pub enrolled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when an ADD was refused because its claim conflicts (with the Pod object or another
    /// pod of the node): the claimed field in conflict (`uid`, `node`, `ips`, `ips_taken`, `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

impl Reply {
    pub fn ok(enrolled: bool) -> Reply {
        Reply { ok: true, enrolled, error: None, conflict: None }
    }
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply { ok: false, enrolled: false, error: Some(msg.into()), conflict: None }
    }
    /// A refused claim: `field` is the claimed field in conflict.
    pub fn conflict(field: &str, msg: impl Into<String>) -> Reply {
        Reply { conflict: Some(field.to_string()), ..Reply::err(msg) }
    }
}
