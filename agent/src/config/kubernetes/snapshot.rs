//! Snapshot building: the watchers' caches -> documents -> [`Snapshot::compile`], off the async
//! runtime, and the logging of the resulting diagnostics.
//!
//! Documents are handed over in a fixed order (the [`WATCHED`](super::kinds::WATCHED) order, then
//! namespace and name), so the same cluster state always compiles to the same snapshot. Kinds whose
//! API is absent contribute nothing.
use std::{collections::HashSet, path::PathBuf, sync::Arc};

use tracing::{error, warn};

use super::{
    SyncError,
    watch::{Shared, SyncState},
};
use crate::config::{
    diag::{Diagnostic, Diagnostics, Severity},
    model::Snapshot,
    yaml,
};

/// The documents of every listed kind, in a stable order. An object that cannot be turned into
/// a document is an error diagnostic (it is never silently skipped).
pub fn documents(shared: &Shared, diags: &mut Diagnostics) -> Vec<(PathBuf, yaml::Document)> {
    let mut docs = Vec::new();
    for cache in &shared.kinds {
        if *cache.state.lock() != SyncState::Listed {
            continue;
        }
        let mut objects = cache.store.state();
        objects.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for obj in objects {
            match super::object::to_document(cache.kind, &obj) {
                Ok(d) => docs.push(d),
                Err(e) => {
                    let ns = obj.metadata.namespace.as_deref();
                    let name = obj.metadata.name.as_deref().unwrap_or("");
                    diags.push(Diagnostic {
                        severity: Severity::Error,
                        file: super::object::origin(cache.kind.kind, ns, name),
                        line: 1,
                        column: 1,
                        object: None,
                        field: None,
                        message: format!("cannot convert the API object: {e}"),
                        hint: None,
                    });
                }
            }
        }
    }
    docs
}

/// Compiles the current caches on the blocking pool.
pub async fn compile(shared: Arc<Shared>) -> Result<(Snapshot, Diagnostics), SyncError> {
    tokio::task::spawn_blocking(move || {
        let mut diags = Diagnostics::default();
        let docs = documents(&shared, &mut diags);
        let snap = Snapshot::compile(&docs, &mut diags);
        (snap, diags)
    })
    .await
    .map_err(|e| SyncError::Compile(e.to_string()))
}

/// Logs diagnostics without flooding: a warning once per distinct text (while it persists), the
/// errors of a rejected compile whenever they differ from the previous rejection's.
#[derive(Default)]
pub struct DiagLog {
    warned: HashSet<String>,
    last_errors: Vec<String>,
}

impl DiagLog {
    /// Logs the new warnings of `diags`; forgets warnings that went away (they log again if they
    /// come back).
    pub fn warnings(&mut self, diags: &Diagnostics) {
        let mut now = HashSet::new();
        for w in diags.warnings() {
            let text = w.to_string();
            if !self.warned.contains(&text) {
                warn!(target: "sluice::config", object = %w.file.display(), field = w.field.as_deref().unwrap_or(""), hint = w.hint.as_deref().unwrap_or(""), "{text}");
            }
            now.insert(text);
        }
        self.warned = now;
    }

    /// Logs a rejected compile: every error (when the set changed), then one summary line.
    pub fn rejected(&mut self, diags: &Diagnostics) {
        let errors: Vec<String> = diags.errors().map(ToString::to_string).collect();
        let changed = errors != self.last_errors;
        if changed {
            for e in diags.errors() {
                error!(target: "sluice::config", object = %e.file.display(), field = e.field.as_deref().unwrap_or(""), hint = e.hint.as_deref().unwrap_or(""), "{e}");
            }
        }
        error!(target: "sluice::config", errors = errors.len(), unchanged = !changed,
               "mesh config from Kubernetes rejected; keeping the last good config until the objects are fixed");
        self.last_errors = errors;
    }

    /// A compile was accepted: the next rejection logs its errors again.
    pub fn accepted(&mut self) {
        self.last_errors.clear();
    }
}
