//! One kube-runtime watcher + reflector per watched kind, and the state they share with the
//! snapshot builder: each kind's object cache, whether its initial list completed (or its API is
//! absent), and a change counter that wakes the builder.
//!
//! Every watcher runs with bookmarks and kube's default backoff. kube's watcher relists by itself
//! when the API server answers a watch with 410 Gone ("too old resource version"); the reflector
//! swaps the relisted objects in only once the list completed. A kind whose API is not served
//! (404: CRD not installed) is logged once, counts as synced and empty, and keeps being retried
//! with backoff, so installing the CRD later makes its objects appear.
use std::{pin::pin, sync::Arc};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    core::DynamicObject,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, store::Writer},
        watcher,
    },
};
use parking_lot::Mutex;
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, error, info, warn};

use super::kinds::{WATCHED, WatchedKind};

/// Where a kind's initial list stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// The initial list has not completed yet.
    Pending,
    /// The cache holds a complete list (kept up to date by the watch).
    Listed,
    /// The API server does not serve this kind (404); treated as empty.
    Absent,
}

/// One kind's cache and state.
pub struct KindCache {
    pub kind: &'static WatchedKind,
    pub store: reflector::Store<DynamicObject>,
    pub state: Mutex<SyncState>,
}

/// What the watchers share with the snapshot builder.
pub struct Shared {
    pub kinds: Vec<KindCache>,
    /// Bumped on every change of any cache or sync state.
    pub changes: watch::Sender<u64>,
}

impl Shared {
    /// Whether every kind has been listed or found absent.
    pub fn all_synced(&self) -> bool {
        self.kinds.iter().all(|k| *k.state.lock() != SyncState::Pending)
    }

    /// The kinds whose initial list has not completed.
    pub fn pending(&self) -> Vec<String> {
        self.kinds.iter().filter(|k| *k.state.lock() == SyncState::Pending).map(|k| k.kind.label()).collect()
    }

    fn bump(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// Starts one watcher task per kind of [`WATCHED`] on `tasks`.
pub fn spawn(client: &Client, tasks: &mut JoinSet<()>) -> Arc<Shared> {
    let mut writers = Vec::new();
    let mut kinds = Vec::new();
    for kind in WATCHED {
        let writer = Writer::<DynamicObject>::new(kind.api_resource());
        kinds.push(KindCache { kind, store: writer.as_reader(), state: Mutex::new(SyncState::Pending) });
        writers.push(writer);
    }
    let (changes, _) = watch::channel(0);
    let shared = Arc::new(Shared { kinds, changes });
    for (i, writer) in writers.into_iter().enumerate() {
        tasks.spawn(run_kind(client.clone(), shared.clone(), i, writer));
    }
    shared
}

/// Whether a watcher error is an RBAC refusal.
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

/// Whether a watcher error means the API server does not serve the kind at all.
fn is_absent(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

async fn run_kind(client: Client, shared: Arc<Shared>, index: usize, writer: Writer<DynamicObject>) {
    let cache = &shared.kinds[index];
    let kind = cache.kind;
    let api = Api::<DynamicObject>::all_with(client, &kind.api_resource());
    // Bookmarks are kube's default; stated here because relisting less depends on them.
    let config = watcher::Config { bookmarks: true, ..watcher::Config::default() };
    let mut events = pin!(watcher(api, config).default_backoff().reflect(writer));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                let was = std::mem::replace(&mut *cache.state.lock(), SyncState::Listed);
                if was == SyncState::Absent {
                    info!(target: "sluice::config", kind = %kind.label(),
                          "API is served now; its objects are part of the mesh config");
                }
                debug!(target: "sluice::config", kind = %kind.label(), objects = cache.store.state().len(), "listed");
                shared.bump();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                // A kind whose watch (not list) failed with 404 after its CRD was deleted comes
                // back through the resumed watch: its events make it count again. (Deleting a CRD
                // deletes its objects first, so the cache saw their DELETED events.)
                let mut state = cache.state.lock();
                if *state == SyncState::Absent {
                    *state = SyncState::Listed;
                    info!(target: "sluice::config", kind = %kind.label(),
                          "API is served again; its objects are part of the mesh config");
                }
                drop(state);
                shared.bump();
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) if is_absent(&e) => {
                let was = std::mem::replace(&mut *cache.state.lock(), SyncState::Absent);
                if was != SyncState::Absent {
                    warn!(target: "sluice::config", kind = %kind.label(),
                          crd = %kind.crd().unwrap_or_default(),
                          "API not served (404): CRD not installed? Treated as empty: {}; retrying with backoff, \
                           installing the CRD later is picked up", kind.absent_means);
                    shared.bump();
                }
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                info!(target: "sluice::config", kind = %kind.label(), reason = %status.reason,
                      "watch expired (410 Gone); relisting");
            }
            Err(e) if is_forbidden(&e) => {
                error!(target: "sluice::config", kind = %kind.label(), error = %e,
                       "forbidden: the agent's service account needs get/list/watch on {} (see deploy/rbac.yaml)",
                       kind.plural);
            }
            Err(e) => {
                warn!(target: "sluice::config", kind = %kind.label(), error = %e, "watch error; retrying with backoff");
            }
        }
    }
    // The backoff stream retries every error, so it never ends while the task runs.
    error!(target: "sluice::config", kind = %kind.label(), "watcher ended; this kind is no longer followed");
}
