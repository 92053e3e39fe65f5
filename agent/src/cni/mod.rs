//! The CNI plugin (`sluice cni`, or the binary installed as `sluice-cni`), the small protocol it
//! speaks with the local agent over a Unix socket, and its installation on the node ([`install`]).
//!
//! The plugin runs chained after the cluster's own CNI: it passes the previous result through
//! unchanged and tells the agent the pod's network namespace and identity. The agent decides
//! whether the pod is enrolled; if the agent cannot be reached, ADD fails so the pod never starts
//! unprotected.
pub mod install;
pub mod plugin;
pub mod protocol;

/// The plugin's file name in the CNI bin directory (and its `type` in a conflist).
pub const PLUGIN_NAME: &str = "sluice-cni";

/// True when the binary was executed under the plugin name by a container runtime.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::PathBuf::from(a).file_name().map(|f| f == PLUGIN_NAME))
        .unwrap_or(false)
}
