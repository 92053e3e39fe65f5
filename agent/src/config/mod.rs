//! Mesh config: the kinds, the model, the sources and the immutable snapshot every consumer reads.
//!
//! Data flows one way: [`files`] (or [`kubernetes`]) reads YAML documents (with their positions,
//! [`yaml`]) -> [`model::Snapshot::compile`] validates and compiles them, each kind's `spec` by its
//! file under [`kinds`] (whose [`kinds::KINDS`] table lists every kind read) -> the agent swaps the
//! new snapshot in atomically ([`SnapshotStore`]) -> enrollment and proxies read the current one. A
//! broken change is rejected with file:line diagnostics ([`diag`]) and the last good snapshot stays
//! in force. Nothing here touches the kernel or sockets.
pub mod diag;
pub mod duration;
pub mod files;
pub mod kinds;
pub mod kubernetes;
pub mod model;
pub mod references;
pub mod select;
pub mod source;
pub mod waypoints;
pub mod yaml;

use std::sync::Arc;

use arc_swap::ArcSwap;
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use model::{EnrollDecision, Service, Snapshot};
use tokio::sync::watch;

/// The current snapshot plus a change notification (a generation counter).
///
/// Readers never block and never pay for freeing a replaced snapshot: the store keeps every
/// replaced snapshot in `retired` and frees it on the writer's side once no reader holds it, so a
/// connection that happened to hold the last reference does not drop a 10,000-pod snapshot on the
/// data path.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    retired: parking_lot::Mutex<Vec<Arc<Snapshot>>>,
    tx: watch::Sender<u64>,
    rejected: parking_lot::Mutex<Rejections>,
}

/// Changes the source could not compile (the last good snapshot stayed in force).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rejections {
    /// Rejected changes since start.
    pub total: u64,
    /// The diagnostics of the latest change, when it was rejected; None once a good one loads.
    pub current: Option<String>,
}

impl SnapshotStore {
    pub fn new(initial: Snapshot) -> Arc<Self> {
        let (tx, _rx) = watch::channel(0);
        Arc::new(Self {
            current: ArcSwap::from_pointee(initial),
            retired: Default::default(),
            tx,
            rejected: Default::default(),
        })
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot and wakes subscribers.
    pub fn store(&self, next: Snapshot) {
        let old = self.current.swap(Arc::new(next));
        self.tx.send_modify(|g| *g += 1);
        self.rejected.lock().current = None;
        let mut retired = self.retired.lock();
        retired.push(old);
        // Free (here, on the writer's thread) what no reader holds any more.
        retired.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Records a change the source rejected; the current snapshot stays.
    pub fn reject(&self, diagnostics: String) {
        let mut r = self.rejected.lock();
        r.total += 1;
        r.current = Some(diagnostics);
    }

    /// Rejected changes so far, and whether the latest change is in error.
    pub fn rejections(&self) -> Rejections {
        self.rejected.lock().clone()
    }

    /// Replaced snapshots still held by some reader.
    pub fn retired(&self) -> usize {
        self.retired.lock().len()
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

/// Compiles YAML text (as `t.yaml`) into a snapshot for unit tests; panics on any error.
#[cfg(test)]
pub(crate) fn compile_for_test(text: &str) -> Snapshot {
    let docs: Vec<_> = yaml::parse(text)
        .expect("yaml")
        .into_iter()
        .map(|d| (std::path::PathBuf::from("t.yaml"), d))
        .collect();
    let mut d = Diagnostics::default();
    let s = Snapshot::compile(&docs, &mut d);
    assert!(!d.has_errors(), "{d}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_snapshots_are_freed_by_the_writer_not_by_readers() {
        let store = SnapshotStore::new(Snapshot::default());
        let held = store.load();
        store.store(Snapshot::default());
        assert_eq!(store.retired(), 1, "a reader still holds the first snapshot");
        drop(held); // a reader letting go must not be the one that frees it
        assert_eq!(store.retired(), 1);
        store.store(Snapshot::default());
        assert_eq!(store.retired(), 0, "the writer freed both replaced snapshots");
        assert_eq!(store.generation(), 2);
        store.reject("bad.yaml:1:1: error".into());
        assert_eq!(store.rejections().total, 1);
        assert!(store.rejections().current.is_some());
        assert_eq!(store.generation(), 2, "a rejection does not change the snapshot");
        store.store(Snapshot::default());
        assert!(store.rejections().current.is_none(), "a good change clears the error");
        assert_eq!(store.rejections().total, 1);
    }
}
