//! The Kubernetes source (`sluice agent --config kubernetes`): the mesh config kinds watched through
//! the API server, compiled by the same [`Snapshot::compile`] as the file source, so nothing
//! downstream knows which source a snapshot came from.
//!
//! Flow: [`sync`] starts one watcher per kind ([`watch`], kinds in [`kinds`]), waits (bounded by
//! [`Options::sync_timeout`]) until every kind's initial list completed or its API was found
//! absent, and compiles the first snapshot, so the agent never enrolls pods from a half-synced
//! view. [`Follower::follow`] then recompiles after every change (debounced, on the blocking pool,
//! [`snapshot`]) and stores each accepted snapshot. A compile with errors keeps the last good
//! snapshot in force (never fail open: a broken DENY policy must not be dropped) and is retried on
//! the next change. Objects become documents in [`object`].
pub mod kinds;
pub mod object;
pub mod snapshot;
pub mod watch;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use std::{path::Path, sync::Arc, time::Duration};

use kube::Client;
use tokio::{sync::watch as tokio_watch, task::JoinSet};
use tracing::info;

use super::{
    SnapshotStore,
    diag::{ConfigRejected, Diagnostics},
    model::Snapshot,
};

/// The `--config` value that selects this source.
pub const CONFIG_VALUE: &str = "kubernetes";

/// Whether a `--config` value selects the Kubernetes source rather than a YAML directory.
pub fn selected_by(config: &Path) -> bool {
    config == Path::new(CONFIG_VALUE)
}

/// Tuning of the source.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait after a change before recompiling (changes in that window are batched).
    pub debounce: Duration,
    /// How long the initial list of every kind may take.
    pub sync_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { debounce: Duration::from_millis(100), sync_timeout: Duration::from_secs(60) }
    }
}

/// Why the Kubernetes source could not produce its first snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "Kubernetes API: the initial list did not complete within {after:?} for: {}; check the API \
         server's reachability and the agent's RBAC (deploy/rbac.yaml)",
        kinds.join(", ")
    )]
    Timeout { after: Duration, kinds: Vec<String> },
    #[error(transparent)]
    Rejected(#[from] ConfigRejected),
    #[error("mesh config compile task failed: {0}")]
    Compile(String),
}

/// A client from kube's standard inference: KUBECONFIG / ~/.kube/config, else the in-cluster
/// service account.
pub async fn client_from_env() -> Result<Client, SyncError> {
    let config = kube::Config::infer().await?;
    Client::try_from(config).map_err(SyncError::Client)
}

/// The first snapshot of a synced source, and what keeps following the API server.
pub struct Synced {
    pub snapshot: Snapshot,
    /// Warnings of the first compile (already logged).
    pub warnings: Diagnostics,
    pub follower: Follower,
}

/// Lists every watched kind, waits for the initial sync and compiles the first snapshot.
/// Errors in that first compile reject it whole (there is no last good snapshot to keep).
pub async fn sync(client: Client, options: Options) -> Result<Synced, SyncError> {
    let mut tasks = JoinSet::new();
    let shared = watch::spawn(&client, &mut tasks);
    let mut changes = shared.changes.subscribe();
    let synced = tokio::time::timeout(options.sync_timeout, async {
        loop {
            changes.borrow_and_update();
            if shared.all_synced() {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if synced.is_err() || !shared.all_synced() {
        return Err(SyncError::Timeout { after: options.sync_timeout, kinds: shared.pending() });
    }
    changes.borrow_and_update();
    let (snapshot, diags) = snapshot::compile(shared.clone()).await?;
    let mut log = snapshot::DiagLog::default();
    if diags.has_errors() {
        return Err(ConfigRejected { diagnostics: diags }.into());
    }
    log.warnings(&diags);
    info!(target: "sluice::config", namespaces = snapshot.namespaces.len(), pods = snapshot.pods.len(),
          services = snapshot.services.len(), "mesh config synced from Kubernetes");
    Ok(Synced { snapshot, warnings: diags, follower: Follower { tasks, shared, changes, log, options } })
}

/// The running watchers after the initial sync; [`Follower::follow`] starts storing snapshots.
pub struct Follower {
    tasks: JoinSet<()>,
    shared: Arc<watch::Shared>,
    changes: tokio_watch::Receiver<u64>,
    log: snapshot::DiagLog,
    options: Options,
}

impl Follower {
    /// Recompiles after every change (debounced) and stores accepted snapshots into `store`.
    /// Changes since the first snapshot are not lost. Runs until the guard drops.
    pub fn follow(self, store: Arc<SnapshotStore>) -> WatchGuard {
        let Follower { mut tasks, shared, mut changes, mut log, options } = self;
        tasks.spawn(async move {
            while changes.changed().await.is_ok() {
                // Bounded debounce: one fixed wait after the first change, whatever follows.
                tokio::time::sleep(options.debounce).await;
                changes.borrow_and_update();
                let (snap, diags) = match snapshot::compile(shared.clone()).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(target: "sluice::config", error = %e, "keeping the last good config");
                        continue;
                    }
                };
                if diags.has_errors() {
                    log.rejected(&diags);
                    store.reject(ConfigRejected { diagnostics: diags }.to_string());
                    continue;
                }
                log.accepted();
                log.warnings(&diags);
                store.store(snap);
                info!(target: "sluice::config", generation = store.generation(), "mesh config updated from Kubernetes");
            }
        });
        WatchGuard { _tasks: tasks }
    }
}

/// Keeps the watchers and the snapshot builder running; dropping it stops them.
pub struct WatchGuard {
    _tasks: JoinSet<()>,
}
