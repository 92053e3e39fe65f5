//! Mesh config: the model, the file source and the immutable snapshot every consumer reads.
//!
//! Data flows one way: [`files`] reads YAML documents (with their positions, [`yaml`]) ->
//! [`model::Snapshot::compile`] validates and compiles them -> the agent swaps the new snapshot in
//! atomically ([`SnapshotStore`]) -> enrollment and proxies read the current one. A broken change
//! is rejected with file:line diagnostics ([`diag`]) and the last good snapshot stays in force.
pub mod diag;
pub mod files;
pub mod model;
pub mod security;
pub mod yaml;

use std::sync::Arc;

use arc_swap::ArcSwap;
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use model::{EnrollDecision, Service, Snapshot};
use tokio::sync::watch;

/// The current snapshot plus a change notification (a generation counter).
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    tx: watch::Sender<u64>,
}

impl SnapshotStore {
    pub fn new(initial: Snapshot) -> Arc<Self> {
        let (tx, _rx) = watch::channel(0);
        Arc::new(Self { current: ArcSwap::from_pointee(initial), tx })
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot and wakes subscribers.
    pub fn store(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.tx.send_modify(|g| *g += 1);
    }

    /// How many snapshots have been stored since start (0 = the initial one).
    pub fn generation(&self) -> u64 {
        *self.tx.borrow()
    }

    /// A receiver that changes whenever a new snapshot is stored.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
