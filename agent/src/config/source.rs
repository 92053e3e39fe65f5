//! The config source named on a command line (`--config DIR` or `--config kubernetes`), for every
//! process that reads the mesh config (the agent and the waypoint): the first snapshot, then
//! following changes into a [`SnapshotStore`].
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Snapshot, SnapshotStore, files, kubernetes};

/// Why the config source could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory's first load failed (its diagnostics are in the message).
    #[error(transparent)]
    Files(#[from] files::LoadError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::SyncError),
    #[error("cannot watch {0}: {1}")]
    Watch(PathBuf, notify::Error),
}

/// A source whose first snapshot is loaded, ready to be followed.
pub enum Source {
    Files(PathBuf, files::Limits),
    Kubernetes(kubernetes::Follower),
}

/// Keeps a followed source running; dropping it stops following.
pub enum SourceGuard {
    Files(files::WatchGuard),
    Kubernetes(kubernetes::WatchGuard),
}

/// Loads the first snapshot from `config`; warnings are logged (`sluice::config`). `limits` bound
/// a directory's walk and size (the Kubernetes source is bounded by the API server's object limits).
pub async fn load(config: &Path, limits: files::Limits) -> Result<(Snapshot, Source), SourceError> {
    if kubernetes::selected_by(config) {
        // Warnings of the first snapshot are logged by the source.
        let client = kubernetes::client_from_env().await?;
        let synced = kubernetes::sync(client, kubernetes::Options::default()).await?;
        return Ok((synced.snapshot, Source::Kubernetes(synced.follower)));
    }
    let (snap, warnings) = files::load(config.to_path_buf(), limits).await?;
    for w in warnings.warnings() {
        tracing::warn!(target: "sluice::config", "{w}");
    }
    Ok((snap, Source::Files(config.to_path_buf(), limits)))
}

impl Source {
    /// Follows changes: each good one is swapped into `store`, a broken one rejected.
    pub fn follow(self, store: Arc<SnapshotStore>) -> Result<SourceGuard, SourceError> {
        match self {
            Source::Files(dir, limits) => files::watch(dir.clone(), limits, store)
                .map(SourceGuard::Files)
                .map_err(|e| SourceError::Watch(dir, e)),
            Source::Kubernetes(follower) => Ok(SourceGuard::Kubernetes(follower.follow(store))),
        }
    }
}
