//! The file source: a directory of multi-document YAML files, loaded whole and watched.
//!
//! Every load reads all `*.yaml`/`*.yml` files below the directory in name order, parses and
//! compiles them, and either yields a new snapshot or every diagnostic at once. The watcher reloads
//! on any change (debounced) and keeps the last good snapshot when a change is broken.
//!
//! The walk is bounded ([`Limits`]): each directory is entered once (by device and inode, so a
//! symlink loop is an error, not an exponential walk), at most [`MAX_DEPTH`] levels deep, at most
//! [`MAX_FILES`] files and [`Limits::max_total_bytes`] bytes of YAML in all. Entries whose name
//! starts with a dot are skipped, as kubelet's ConfigMap layout expects: a mount holds
//! `..2026_01_01_00_00_00.1/`, `..data -> ..2026_...` and `file.yaml -> ..data/file.yaml`, so each
//! file is read once, through its top-level link. Loads run on a blocking thread, never on the
//! runtime's workers, so a slow or large directory cannot stall the data path.
//!
//! The watch follows the directory, not one inode: it also watches the parent, so deleting and
//! re-creating the directory, renaming another directory over it or kubelet's `..data` swap are
//! all seen, and it re-checks the directory's identity every [`IDENTITY_POLL`] (a mount placed over
//! the path sends no event).
use std::{
    collections::HashMap,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{EventKind, RecursiveMode};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{
    SnapshotStore,
    diag::{ConfigRejected, Diagnostic, Diagnostics, Severity},
    model::Snapshot,
    yaml,
};

/// Deepest directory level read below the config directory (its own files are level 0).
pub const MAX_DEPTH: usize = 16;

/// Most YAML files read in one load.
pub const MAX_FILES: usize = 10_000;

/// Default of [`Limits::max_total_bytes`] (`--config-max-bytes`): 8 MiB of YAML, about 26,000
/// AuthorizationPolicies of 320 bytes. A load peaks at about 35 times the YAML's size (the parsed
/// documents with their positions, ~9 KB per such policy, plus the snapshot, ~1.4 KB), so 8 MiB
/// stays within the DaemonSet's 512 MiB memory limit; raise both together (docs/config.md).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 8 * 1024 * 1024;

/// Polls after the config directory was replaced during which the watch is placed again and the
/// directory reloaded (see [`watch`]).
const SETTLE_POLLS: u32 = 3;

/// How often the watcher re-checks which directory the config path names.
pub const IDENTITY_POLL: Duration = Duration::from_secs(1);

/// Bounds on one load of the config directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest directory level read ([`MAX_DEPTH`]).
    pub max_depth: usize,
    /// Most YAML files read ([`MAX_FILES`]).
    pub max_files: usize,
    /// Most bytes of YAML in all files together ([`DEFAULT_MAX_TOTAL_BYTES`]).
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: MAX_DEPTH, max_files: MAX_FILES, max_total_bytes: DEFAULT_MAX_TOTAL_BYTES }
    }
}

/// Why the file source could not produce a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("mesh config directory {path}: {source} (pass an existing directory with --config)")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// A reload found no YAML documents at all: the directory was emptied or re-created (a
    /// `rm -rf; mkdir; cp` in progress). Loading it would drop every policy and un-enroll every
    /// pod, so it is rejected like a broken config.
    #[error(
        "mesh config directory {path}: the directory has no YAML documents — it was emptied or \
         re-created; keeping the last good config; put the files back"
    )]
    Empty { path: PathBuf },
    /// The directory changed while a reload read it, every time.
    #[error(
        "mesh config directory {path}: its files changed while being read, {attempts} times in a row; \
         keeping the last good config until they settle (replace the directory atomically, e.g. \
         `ln -s v2 tmp; mv -T tmp mesh`, instead of editing it in place)"
    )]
    Changing { path: PathBuf, attempts: usize },
    #[error(transparent)]
    Rejected(#[from] ConfigRejected),
    /// The blocking load task panicked or was cancelled (a bug).
    #[error("internal error: the mesh config load of {path} did not finish: {detail}")]
    Task { path: PathBuf, detail: String },
}

/// A bound of the directory walk ([`Limits`]) that the config directory exceeds, or a directory
/// below it that cannot be read. Each names the path, the limit and the fix.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(
        "mesh config: cannot read directory {path}: {source} (make it readable by the agent, or remove it)"
    )]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "mesh config: {path} is the directory {first} again (a symlink loop, or two links to one directory); \
         each directory is read once (remove the link `{path}`)"
    )]
    Revisited { path: PathBuf, first: PathBuf },
    #[error(
        "mesh config: {path} is more than {limit} directories below the config directory \
         (flatten the tree, or remove a symlink that points to a deeper directory)"
    )]
    TooDeep { path: PathBuf, limit: usize },
    #[error(
        "mesh config: more than {limit} YAML files below {dir} (reached at {path}); \
         merge objects into fewer files, or point --config at a smaller directory"
    )]
    TooManyFiles { dir: PathBuf, path: PathBuf, limit: usize },
    #[error(
        "mesh config: the YAML files below {dir} total more than {limit} bytes (reached at {path}); \
         remove unused objects, or raise --config-max-bytes"
    )]
    TooLarge { dir: PathBuf, path: PathBuf, limit: u64 },
}

/// Loads and compiles every YAML file below `dir`. Warnings come back with the snapshot. Blocks:
/// from async code call [`load`].
///
/// An empty directory loads as an empty config: at start that is a fresh install with nothing
/// enrolled yet. The watcher's reloads use [`reload_dir`], which rejects it.
pub fn load_dir(dir: &Path, limits: &Limits) -> Result<(Snapshot, Diagnostics), LoadError> {
    load_checked(dir, limits, false)
}

/// [`load_dir`] for a reload of a running agent: a directory without a single YAML document is
/// [`LoadError::Empty`], so an emptied or re-created directory keeps the last good config instead
/// of releasing every pod (fail-closed). To clear the config on purpose, leave one object in it
/// (a Namespace without the mesh label) or restart the agent on the empty directory.
pub fn reload_dir(dir: &Path, limits: &Limits) -> Result<(Snapshot, Diagnostics), LoadError> {
    load_checked(dir, limits, true)
}

fn load_checked(
    dir: &Path,
    limits: &Limits,
    require_documents: bool,
) -> Result<(Snapshot, Diagnostics), LoadError> {
    let (docs, mut diags) =
        if require_documents { read_settled(dir, limits)? } else { read_once(dir, limits)? };
    if require_documents && docs.is_empty() && !diags.has_errors() {
        return Err(LoadError::Empty { path: dir.to_path_buf() });
    }
    let snap = Snapshot::compile(&docs, &mut diags);
    if diags.has_errors() {
        return Err(ConfigRejected { diagnostics: diags }.into());
    }
    Ok((snap, diags))
}

type Read = (Vec<(PathBuf, yaml::Document)>, Diagnostics);

fn read_once(dir: &Path, limits: &Limits) -> Result<Read, LoadError> {
    let files = yaml_files(dir, limits)?;
    let mut diags = Diagnostics::default();
    let docs = read_documents(&files, &mut diags);
    Ok((docs, diags))
}

/// How many times a reload reads the directory while it keeps changing under it.
const SETTLE_ATTEMPTS: usize = 5;
/// The pause between two such reads.
const SETTLE_WAIT: Duration = Duration::from_millis(100);

/// A file's inode, size and modification time (seconds, nanoseconds).
type FileStamp = (u64, u64, i64, i64);

/// What identifies the content of `files` without reading it: each path with its inode, size and
/// modification time (following symlinks; None when it cannot be read).
fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, Option<FileStamp>)> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok().map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
            (f.clone(), m)
        })
        .collect()
}

/// [`read_once`] for a reload: the directory is walked again after reading, and the read is
/// repeated while the files (paths, inodes, sizes, mtimes) changed meanwhile, so a copy or removal
/// under way (`rm -rf`, `cp -r`) is not loaded half done. Still changing after
/// [`SETTLE_ATTEMPTS`] reads: [`LoadError::Changing`] (the last good config stays; the change's
/// own events reload again).
fn read_settled(dir: &Path, limits: &Limits) -> Result<Read, LoadError> {
    let mut files = yaml_files(dir, limits)?;
    for attempt in 1..=SETTLE_ATTEMPTS {
        let before = fingerprint(&files);
        let mut diags = Diagnostics::default();
        let docs = read_documents(&files, &mut diags);
        let again = yaml_files(dir, limits)?;
        if again == files && fingerprint(&again) == before {
            return Ok((docs, diags));
        }
        tracing::debug!(target: "sluice::config", dir = %dir.display(), attempt, "mesh config directory changed while read; reading it again");
        files = again;
        if attempt < SETTLE_ATTEMPTS {
            std::thread::sleep(SETTLE_WAIT);
        }
    }
    Err(LoadError::Changing { path: dir.to_path_buf(), attempts: SETTLE_ATTEMPTS })
}

/// [`load_dir`] on a blocking thread, so the runtime's workers keep serving meanwhile.
pub async fn load(dir: PathBuf, limits: Limits) -> Result<(Snapshot, Diagnostics), LoadError> {
    let path = dir.clone();
    tokio::task::spawn_blocking(move || {
        let loaded = load_dir(&dir, &limits);
        return_free_memory();
        loaded
    })
    .await
    .unwrap_or_else(|e| Err(LoadError::Task { path, detail: e.to_string() }))
}

/// Returns the heap memory a load left free to the kernel (see [`crate::limits::return_free_memory`]):
/// parsing holds several times the YAML's size at once, and a replaced snapshot is freed whole.
pub fn return_free_memory() {
    let released = crate::limits::return_free_memory();
    tracing::debug!(target: "sluice::config", released, "returned free heap memory after a config load");
}

/// The YAML files named by `paths`: files as given, directories searched recursively (within the
/// default [`Limits`]).
pub fn yaml_files_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(yaml_files(p, &Limits::default())?);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory");
            return Err(LoadError::Dir { path: p.clone(), source });
        }
    }
    Ok(out)
}

/// Parses every document of `files`, recording read, size, encoding and syntax errors in `diags`.
pub fn read_documents(files: &[PathBuf], diags: &mut Diagnostics) -> Vec<(PathBuf, yaml::Document)> {
    let mut docs = Vec::new();
    for file in files {
        let error = |line, column, message: String, hint: &str| Diagnostic {
            severity: Severity::Error,
            file: file.clone(),
            line,
            column,
            object: None,
            field: None,
            message,
            hint: Some(hint.into()),
        };
        let text = match read_text(file) {
            Ok(t) => t,
            Err(ReadError::Io(e)) => {
                diags.push(error(
                    1,
                    1,
                    format!("cannot read file: {e}"),
                    "check that the file exists and is readable",
                ));
                continue;
            }
            Err(ReadError::Syntax(e)) | Err(ReadError::Encoding(e)) => {
                diags.push(error(e.pos.line, e.pos.column, e.message, &e.hint));
                continue;
            }
        };
        match yaml::parse(&text) {
            Ok(ds) => docs.extend(ds.into_iter().map(|d| (file.clone(), d))),
            Err(e) => diags.push(error(e.pos.line, e.pos.column, e.message, &e.hint)),
        }
    }
    docs
}

enum ReadError {
    Io(std::io::Error),
    /// Over [`yaml::MAX_FILE_BYTES`].
    Syntax(yaml::SyntaxError),
    /// Not UTF-8.
    Encoding(yaml::SyntaxError),
}

/// Reads `file` as UTF-8 without ever holding more than [`yaml::MAX_FILE_BYTES`] + 1 bytes of it:
/// the size is checked before reading and the read itself is capped (the file may grow meanwhile,
/// or be a device that reports no size).
fn read_text(file: &Path) -> Result<String, ReadError> {
    let meta = std::fs::metadata(file).map_err(ReadError::Io)?;
    if !meta.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(ReadError::Io(e));
    }
    let too_large =
        |size: u64| ReadError::Syntax(yaml::too_large(usize::try_from(size).unwrap_or(usize::MAX)));
    if meta.len() > yaml::MAX_FILE_BYTES as u64 {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(file)
        .and_then(|f| f.take(yaml::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(ReadError::Io)?;
    if bytes.len() > yaml::MAX_FILE_BYTES {
        let size = std::fs::metadata(file).map_or(bytes.len() as u64, |m| m.len().max(bytes.len() as u64));
        return Err(too_large(size));
    }
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let valid = e.utf8_error().valid_up_to();
        // Everything before `valid` is UTF-8; count lines and characters there.
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let line = 1 + prefix.matches('\n').count();
        let column = 1 + prefix.rsplit('\n').next().map_or(0, |l| l.chars().count());
        let byte = bytes.get(valid).copied().unwrap_or_default();
        ReadError::Encoding(yaml::SyntaxError {
            pos: yaml::Pos { line, column },
            message: format!("file is not valid UTF-8 (byte 0x{byte:02X})"),
            hint: "mesh config is UTF-8 text; re-save the file as UTF-8".into(),
        })
    })
}

/// The YAML files below `dir`, sorted, within `limits` (see the module docs).
fn yaml_files(dir: &Path, limits: &Limits) -> Result<Vec<PathBuf>, LoadError> {
    let dir_error = |source| LoadError::Dir { path: dir.to_path_buf(), source };
    let root = std::fs::metadata(dir).map_err(dir_error)?;
    if !root.is_dir() {
        return Err(dir_error(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
    }
    // Every directory entered, by (device, inode), with the path it was first reached by.
    let mut visited: HashMap<(u64, u64), PathBuf> = HashMap::new();
    visited.insert((root.dev(), root.ino()), dir.to_path_buf());
    let (mut out, mut total) = (Vec::new(), 0u64);
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let io = |source| WalkError::Io { path: d.clone(), source };
        let entries =
            std::fs::read_dir(&d).map_err(|e| if depth == 0 { dir_error(e) } else { io(e).into() })?;
        for entry in entries {
            let path = entry.map_err(io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue; // editor swap files; a ConfigMap mount's ..data and its timestamped dirs
            }
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            // Follows symlinks; a dangling link to a YAML file is counted and read (and reported) below.
            let meta = std::fs::metadata(&path).ok();
            if let Some(meta) = meta.as_ref().filter(|m| m.is_dir()) {
                if depth + 1 > limits.max_depth {
                    return Err(WalkError::TooDeep { path, limit: limits.max_depth }.into());
                }
                match visited.entry((meta.dev(), meta.ino())) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        return Err(WalkError::Revisited { path, first: first.get().clone() }.into());
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(path.clone());
                    }
                }
                stack.push((path, depth + 1));
            } else if is_yaml {
                total = total.saturating_add(meta.map_or(0, |m| m.len()));
                if out.len() >= limits.max_files {
                    let dir = dir.to_path_buf();
                    return Err(WalkError::TooManyFiles { dir, path, limit: limits.max_files }.into());
                }
                if total > limits.max_total_bytes {
                    let dir = dir.to_path_buf();
                    return Err(WalkError::TooLarge { dir, path, limit: limits.max_total_bytes }.into());
                }
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Watches `dir` (see the module docs) and stores every good reload into `store`. Runs until the
/// returned guard drops. Must be called within a tokio runtime.
pub fn watch(dir: PathBuf, limits: Limits, store: Arc<SnapshotStore>) -> Result<WatchGuard, notify::Error> {
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let under = dir.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            // Reading the files ourselves produces access events; only changes count, and of the
            // parent's entries only the config directory's own.
            Ok(ev) => {
                ev.need_rescan()
                    || (matches!(
                        ev.kind,
                        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
                    ) && ev.paths.iter().any(|p| p.starts_with(&under)))
            }
            // A lost or overflowed watch: reload to be sure.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.try_send(());
        }
    })?;
    let mut watch =
        DirWatch { watcher, parent: dir.parent().map(Path::to_path_buf), dir, at: None, parent_at: None };
    watch.refresh()?;
    let task = tokio::spawn(async move {
        let mut poll = tokio::time::interval(IDENTITY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last reload found the directory without YAML documents.
        let mut empty = false;
        // Polls left that place the watch again after the directory was replaced: right after a
        // re-creation notify may still drop the new watch while it handles the old directory's
        // removal (it keys its watches by path), and then no later edit would be seen.
        let mut settle = 0u32;
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    if ev.is_none() {
                        break;
                    }
                    // Debounce: editors write in several steps.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while rx.try_recv().is_ok() {}
                    match watch.refresh() {
                        Ok(true) => settle = SETTLE_POLLS,
                        Ok(false) => {}
                        Err(e) => {
                            warn!(target: "sluice::config", dir = %watch.dir.display(), error = %e, "cannot watch the mesh config directory; changes are seen within {IDENTITY_POLL:?}");
                        }
                    }
                }
                _ = poll.tick() => match watch.refresh() {
                    // The path names another directory (a mount over it, a change no event told).
                    Ok(true) => settle = SETTLE_POLLS,
                    // Waiting for the files of an emptied or re-created directory, or just after the
                    // directory was replaced: place the watch again and look, so changes are seen
                    // within a poll even if the new watch was dropped.
                    Ok(false) if empty || settle > 0 => {
                        settle = settle.saturating_sub(1);
                        if let Err(e) = watch.replace() {
                            warn!(target: "sluice::config", dir = %watch.dir.display(), error = %e, "cannot watch the mesh config directory; changes are seen within {IDENTITY_POLL:?}");
                        }
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        warn!(target: "sluice::config", dir = %watch.dir.display(), error = %e, "cannot watch the mesh config directory; changes are seen within {IDENTITY_POLL:?}");
                    }
                },
            }
            empty = reload(&watch.dir, limits, &store, empty).await;
        }
    });
    Ok(WatchGuard { task })
}

/// Loads `dir` on a blocking thread and stores the result (or the rejection) there too, so that
/// freeing the replaced snapshot does not happen on a runtime worker either. Returns whether the
/// directory had no YAML documents ([`LoadError::Empty`]); when it still has none (`was_empty`) that
/// is not logged or counted again.
async fn reload(dir: &Path, limits: Limits, store: &Arc<SnapshotStore>, was_empty: bool) -> bool {
    let (dir, store) = (dir.to_path_buf(), store.clone());
    let done = tokio::task::spawn_blocking(move || {
        let loaded = reload_dir(&dir, &limits);
        let empty = matches!(loaded, Err(LoadError::Empty { .. }));
        match loaded {
            Err(LoadError::Empty { .. }) if was_empty => {}
            Ok((snap, warnings)) => {
                for w in warnings.warnings() {
                    warn!(target: "sluice::config", "{w}");
                }
                info!(target: "sluice::config", dir = %dir.display(), "mesh config reloaded");
                store.store(snap);
            }
            Err(e) => {
                error!(target: "sluice::config", dir = %dir.display(), "{e}; keeping the last good config");
                store.reject(e.to_string());
            }
        }
        // The parse's (and a replaced snapshot's) memory is free now: give it back.
        return_free_memory();
        empty
    })
    .await;
    done.unwrap_or_else(|e| {
        error!(target: "sluice::config", error = %e, "the mesh config reload did not finish; keeping the last good config");
        was_empty
    })
}

/// The device and inode a path names now (following symlinks), or None when it does not exist.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// The inotify watches on the config directory (recursive) and its parent (its entries only), and
/// which directories they were placed on.
struct DirWatch {
    watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    parent: Option<PathBuf>,
    at: Option<(u64, u64)>,
    parent_at: Option<(u64, u64)>,
}

impl DirWatch {
    /// Moves each watch to the directory its path names now; true when the config directory's
    /// changed (appeared, disappeared or was replaced), which calls for a reload.
    fn refresh(&mut self) -> Result<bool, notify::Error> {
        if let Some(parent) = &self.parent {
            rewatch(&mut self.watcher, parent, RecursiveMode::NonRecursive, &mut self.parent_at)?;
        }
        rewatch(&mut self.watcher, &self.dir, RecursiveMode::Recursive, &mut self.at)
    }

    /// Places the config directory's watch again, whatever it was placed on.
    fn replace(&mut self) -> Result<bool, notify::Error> {
        if self.at.is_some() {
            let _ = self.watcher.unwatch(&self.dir);
            self.at = None;
        }
        rewatch(&mut self.watcher, &self.dir, RecursiveMode::Recursive, &mut self.at)
    }
}

/// The two calls [`rewatch`] makes on a watcher (a seam, so a test can make placing a watch fail).
trait PathWatch {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> Result<(), notify::Error>;
    fn unwatch(&mut self, path: &Path) -> Result<(), notify::Error>;
}

impl PathWatch for notify::RecommendedWatcher {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> Result<(), notify::Error> {
        notify::Watcher::watch(self, path, mode)
    }
    fn unwatch(&mut self, path: &Path) -> Result<(), notify::Error> {
        notify::Watcher::unwatch(self, path)
    }
}

/// Re-places the watch on `path` if the directory there is not the one `at` records. `at` is
/// updated only once the watch is placed: after a failure (ENOSPC when `max_user_watches` is used
/// up) the next call tries again, and the caller reloads on every poll meanwhile.
fn rewatch(
    watcher: &mut impl PathWatch,
    path: &Path,
    mode: RecursiveMode,
    at: &mut Option<(u64, u64)>,
) -> Result<bool, notify::Error> {
    let now = identity(path);
    if now == *at {
        return Ok(false);
    }
    if at.is_some() {
        // The old directory may be gone with its watch already (or the last attempt failed);
        // nothing to undo then.
        let _ = watcher.unwatch(path);
    }
    if now.is_some() {
        watcher.watch(path, mode)?;
    }
    *at = now;
    Ok(true)
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_directory_and_reports_every_error_with_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
            .expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(
            dir.path().join("sub/b.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n",
        )
        .expect("write");
        let (snap, _) = load_dir(dir.path(), &Limits::default()).expect("loads");
        assert!(snap.namespaces.contains_key("a"));
        assert_eq!(snap.pods.len(), 1);

        std::fs::write(dir.path().join("c.yaml"), "kind: [\n").expect("write");
        std::fs::write(dir.path().join("d.yaml"), "apiVersion: v1\nkind: Namespace\n").expect("write");
        let Err(LoadError::Rejected(r)) = load_dir(dir.path(), &Limits::default()) else {
            panic!("broken config accepted")
        };
        let text = r.to_string();
        assert!(text.contains("c.yaml:"), "{text}");
        assert!(text.contains("d.yaml:1:1: error: field `metadata.name`: is required"), "{text}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = load_dir(Path::new("/nonexistent/sluice"), &Limits::default()).expect_err("no dir");
        assert!(e.to_string().contains("--config"), "{e}");
    }

    #[tokio::test]
    async fn watcher_swaps_good_changes_and_keeps_last_good_on_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ns.yaml");
        std::fs::write(&f, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").expect("write");
        let (snap, _) = load_dir(dir.path(), &Limits::default()).expect("loads");
        let store = SnapshotStore::new(snap);
        let mut rx = store.subscribe();
        let _g = watch(dir.path().to_path_buf(), Limits::default(), store.clone()).expect("watch");
        std::fs::write(&f, "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n").expect("write");
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("reload in time")
            .expect("open");
        assert!(store.load().namespaces.contains_key("b"));
        std::fs::write(&f, "apiVersion: v1\nkind: Namespace\nmetadata: {name: [}\n").expect("write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(store.load().namespaces.contains_key("b"), "bad change must keep the last good snapshot");
    }

    const NS_A: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    const NS_B: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";

    fn write(path: &Path, text: &str) {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    /// Runs `load_dir` on its own thread and gives up after 20 s (the unbounded walk this guards
    /// against never ends; the thread is left to the process's exit then).
    fn load_in_time(dir: &Path, limits: Limits) -> Result<(Snapshot, Diagnostics), LoadError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(load_dir(&dir, &limits));
        });
        rx.recv_timeout(Duration::from_secs(20)).expect("the walk never ended")
    }

    #[test]
    fn symlink_loops_are_an_error_naming_the_link_not_an_endless_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("ns.yaml"), NS_A);
        std::os::unix::fs::symlink(".", dir.path().join("a")).expect("link a");
        std::os::unix::fs::symlink(".", dir.path().join("b")).expect("link b");
        let e = load_in_time(dir.path(), Limits::default()).expect_err("a loop is not a config");
        let Some(WalkError::Revisited { path, first }) = (match &e {
            LoadError::Walk(w) => Some(w),
            _ => None,
        }) else {
            panic!("{e}")
        };
        assert_eq!(first, dir.path());
        assert!(path.ends_with("a") || path.ends_with("b"), "{}", path.display());
        let text = e.to_string();
        assert!(text.contains("symlink loop") && text.contains("remove the link"), "{text}");
    }

    #[test]
    fn depth_file_count_and_total_size_are_bounded_with_errors_that_name_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep: PathBuf = (0..=MAX_DEPTH).fold(dir.path().to_path_buf(), |p, i| p.join(format!("d{i}")));
        write(&deep.join("ns.yaml"), NS_A);
        let e = load_in_time(dir.path(), Limits::default()).expect_err("too deep");
        assert!(matches!(e, LoadError::Walk(WalkError::TooDeep { limit: MAX_DEPTH, .. })), "{e}");
        assert!(e.to_string().contains(&format!("more than {MAX_DEPTH} directories")), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..4 {
            write(&dir.path().join(format!("f{i}.yaml")), &NS_A.replace("name: a", &format!("name: n{i}")));
        }
        assert!(load_in_time(dir.path(), Limits { max_files: 4, ..Limits::default() }).is_ok());
        let e = load_in_time(dir.path(), Limits { max_files: 3, ..Limits::default() }).expect_err("files");
        assert!(e.to_string().contains("more than 3 YAML files"), "{e}");
        // Dangling links to YAML files count too (each would become a diagnostic).
        let links = tempfile::tempdir().expect("tempdir");
        for i in 0..4 {
            std::os::unix::fs::symlink("/nonexistent", links.path().join(format!("l{i}.yaml")))
                .expect("link");
        }
        let e = load_in_time(links.path(), Limits { max_files: 3, ..Limits::default() }).expect_err("links");
        assert!(e.to_string().contains("more than 3 YAML files"), "{e}");
        let total = 4 * NS_A.len() as u64 + 4;
        assert!(load_in_time(dir.path(), Limits { max_total_bytes: total, ..Limits::default() }).is_ok());
        let e = load_in_time(dir.path(), Limits { max_total_bytes: total - 1, ..Limits::default() })
            .expect_err("bytes");
        let text = e.to_string();
        assert!(
            text.contains(&format!("more than {} bytes", total - 1)) && text.contains("--config-max-bytes"),
            "{text}"
        );
    }

    #[test]
    fn a_configmap_mount_is_read_once_through_its_top_level_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(&d.join("..2026_01_01_00_00_00.1/ns.yaml"), NS_A);
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", d.join("..data")).expect("..data");
        std::os::unix::fs::symlink("..data/ns.yaml", d.join("ns.yaml")).expect("ns.yaml");
        let (snap, diags) = load_in_time(d, Limits::default()).expect("a ConfigMap mount loads");
        assert!(snap.namespaces.contains_key("a"));
        assert_eq!(diags.0.len(), 0, "{diags}");
    }

    /// Polls `store` until `done` holds, for up to 10 s.
    async fn until(store: &SnapshotStore, what: &str, done: impl Fn(&SnapshotStore) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(store) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn has_ns(name: &'static str) -> impl Fn(&SnapshotStore) -> bool {
        move |s| s.load().namespaces.contains_key(name)
    }

    fn started(dir: &Path) -> Arc<SnapshotStore> {
        let (snap, _) = load_dir(dir, &Limits::default()).expect("loads");
        SnapshotStore::new(snap)
    }

    #[tokio::test]
    async fn a_deleted_and_recreated_directory_keeps_the_last_good_config_then_reloads() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("mesh");
        write(&dir.join("ns.yaml"), NS_A);
        let store = started(&dir);
        let _g = watch(dir.clone(), Limits::default(), store.clone()).expect("watch");
        std::fs::remove_dir_all(&dir).expect("rm -r");
        until(&store, "the removal is rejected", |s| {
            s.rejections().current.is_some_and(|c| c.contains("mesh config directory"))
        })
        .await;
        assert!(store.load().namespaces.contains_key("a"), "the last good config stays");
        write(&dir.join("ns.yaml"), NS_B);
        until(&store, "the re-created directory is loaded", has_ns("b")).await;
        // And edits after the re-creation still apply (the watch moved to the new directory).
        write(&dir.join("ns.yaml"), NS_A);
        until(&store, "a later edit is loaded", has_ns("a")).await;
    }

    #[tokio::test]
    async fn an_empty_recreated_directory_keeps_the_last_good_config() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("mesh");
        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: a}\nspec: {action: DENY, rules: [{}]}\n";
        write(&dir.join("deny.yaml"), deny);
        let store = started(&dir);
        assert_eq!(store.load().authorization_policies.len(), 1);
        let _g = watch(dir.clone(), Limits::default(), store.clone()).expect("watch");
        std::fs::remove_dir_all(&dir).expect("rm -r");
        until(&store, "the removal is rejected", |s| s.rejections().current.is_some()).await;
        assert_eq!(store.load().authorization_policies.len(), 1, "kept while missing");
        // `mkdir`, then the operator copies the files a moment later (two commands).
        std::fs::create_dir(&dir).expect("mkdir");
        until(&store, "the empty directory is rejected", |s| {
            s.rejections().current.as_deref().is_some_and(|r| r.contains("has no YAML documents"))
        })
        .await;
        assert_eq!(store.load().authorization_policies.len(), 1, "the DENY is kept");
        let why = store.rejections().current.unwrap_or_default();
        assert!(why.contains(&dir.display().to_string()) && why.contains("put the files back"), "{why}");
        write(&dir.join("deny.yaml"), deny);
        until(&store, "the restored files are loaded", |s| s.rejections().current.is_none()).await;
        assert_eq!(store.load().authorization_policies.len(), 1);
    }

    #[test]
    fn an_empty_directory_loads_at_start_but_not_on_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("notes.yaml"), "# nothing yet\n").expect("write");
        let (snap, _) = load_dir(dir.path(), &Limits::default()).expect("a fresh install starts empty");
        assert!(snap.authorization_policies.is_empty());
        let e = reload_dir(dir.path(), &Limits::default()).expect_err("an emptied directory is rejected");
        assert!(matches!(e, LoadError::Empty { .. }), "{e}");
    }

    /// Fails every `watch` while `fail` is set.
    struct FlakyWatch {
        fail: bool,
        placed: Vec<PathBuf>,
    }

    impl PathWatch for FlakyWatch {
        fn watch(&mut self, path: &Path, _: RecursiveMode) -> Result<(), notify::Error> {
            if self.fail {
                return Err(notify::Error::generic("inotify watch limit reached"));
            }
            self.placed.push(path.to_path_buf());
            Ok(())
        }
        fn unwatch(&mut self, _: &Path) -> Result<(), notify::Error> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_watch_is_retried_on_the_next_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = FlakyWatch { fail: true, placed: Vec::new() };
        let mut at = None;
        rewatch(&mut w, dir.path(), RecursiveMode::Recursive, &mut at).expect_err("the watch fails");
        assert_eq!(at, None, "a failed watch records no identity");
        rewatch(&mut w, dir.path(), RecursiveMode::Recursive, &mut at).expect_err("and is tried again");
        w.fail = false;
        assert!(rewatch(&mut w, dir.path(), RecursiveMode::Recursive, &mut at).expect("placed"));
        assert_eq!(w.placed, vec![dir.path().to_path_buf()]);
        assert_eq!(at, identity(dir.path()));
        assert!(!rewatch(&mut w, dir.path(), RecursiveMode::Recursive, &mut at).expect("unchanged"));
    }

    #[tokio::test]
    async fn a_directory_renamed_over_the_config_path_is_loaded() {
        // `--config /x/current` with `current -> v1`, swapped atomically to `v2` (ln -s; mv -T).
        let root = tempfile::tempdir().expect("tempdir");
        write(&root.path().join("v1/ns.yaml"), NS_A);
        write(&root.path().join("v2/ns.yaml"), NS_B);
        let current = root.path().join("current");
        std::os::unix::fs::symlink("v1", &current).expect("link");
        let store = started(&current);
        let _g = watch(current.clone(), Limits::default(), store.clone()).expect("watch");
        std::os::unix::fs::symlink("v2", root.path().join("next")).expect("link");
        std::fs::rename(root.path().join("next"), &current).expect("rename over");
        until(&store, "the renamed-over directory is loaded", has_ns("b")).await;
        write(&root.path().join("v2/ns.yaml"), NS_A);
        until(&store, "an edit in the new directory is loaded", has_ns("a")).await;
    }

    #[tokio::test]
    async fn a_configmap_data_swap_is_loaded() {
        // kubelet's update: a new timestamped dir, `..data_tmp -> it`, renamed over `..data`.
        let root = tempfile::tempdir().expect("tempdir");
        let d = root.path();
        write(&d.join("..2026_01_01_00_00_00.1/ns.yaml"), NS_A);
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", d.join("..data")).expect("..data");
        std::os::unix::fs::symlink("..data/ns.yaml", d.join("ns.yaml")).expect("ns.yaml");
        let store = started(d);
        let _g = watch(d.to_path_buf(), Limits::default(), store.clone()).expect("watch");
        write(&d.join("..2026_01_01_00_01_00.2/ns.yaml"), NS_B);
        std::os::unix::fs::symlink("..2026_01_01_00_01_00.2", d.join("..data_tmp")).expect("tmp");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
        std::fs::remove_dir_all(d.join("..2026_01_01_00_00_00.1")).expect("old");
        until(&store, "the swapped ConfigMap is loaded", has_ns("b")).await;
        assert!(!store.load().namespaces.contains_key("a"));
    }

    #[tokio::test]
    async fn a_directory_that_appears_later_is_loaded() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("late/mesh");
        let store = SnapshotStore::new(Snapshot::default());
        let _g = watch(dir.clone(), Limits::default(), store.clone()).expect("watch a missing directory");
        write(&dir.join("ns.yaml"), NS_A);
        until(&store, "the late directory is loaded", has_ns("a")).await;
    }

    /// Unmounts on drop, so a failing test leaves no mount behind.
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[tokio::test]
    async fn a_mount_over_the_directory_is_loaded() {
        // A mount sends no inotify event: the watcher sees it by re-checking the directory.
        if !nix::unistd::geteuid().is_root() {
            assert_eq!(
                std::env::var("SLUICE_E2E_ALLOW_SKIP").as_deref(),
                Ok("1"),
                "this test needs root (mount); run as root or set SLUICE_E2E_ALLOW_SKIP=1"
            );
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let (dir, other) = (root.path().join("mesh"), root.path().join("volume"));
        write(&dir.join("ns.yaml"), NS_A);
        write(&other.join("ns.yaml"), NS_B);
        let store = started(&dir);
        let _g = watch(dir.clone(), Limits::default(), store.clone()).expect("watch");
        let ok = std::process::Command::new("mount").arg("--bind").arg(&other).arg(&dir).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount --bind failed");
        let _m = Mounted(dir.clone());
        until(&store, "the mounted directory is loaded", has_ns("b")).await;
        write(&other.join("ns.yaml"), NS_A);
        until(&store, "an edit in the mounted directory is loaded", has_ns("a")).await;
    }

    #[tokio::test]
    async fn a_misspelt_kind_of_a_live_deny_is_rejected_and_the_deny_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("deny.yaml");
        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: a}\nspec: {action: DENY, rules: [{}]}\n";
        write(&f, deny);
        let store = started(dir.path());
        let _g = watch(dir.path().to_path_buf(), Limits::default(), store.clone()).expect("watch");
        write(&f, &deny.replace("AuthorizationPolicy", "AuthorisationPolicy"));
        until(&store, "the misspelt kind is rejected", |s| s.rejections().current.is_some()).await;
        let why = store.rejections().current.unwrap_or_default();
        assert!(why.contains("deny.yaml:2:") && why.contains("did you mean `AuthorizationPolicy`?"), "{why}");
        assert_eq!(store.generation(), 0, "nothing was swapped in");
        let snap = store.load();
        assert_eq!(snap.authorization_policies.len(), 1, "the DENY keeps denying");
        assert_eq!(snap.authorization_policies[0].name, "deny-all");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_does_not_stall_the_runtime() {
        // One runtime thread: a reload run on it would stop every other task for its duration.
        let dir = tempfile::tempdir().expect("tempdir");
        let policies: String = (0..3000)
            .map(|i| format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: a}}\nspec: {{action: DENY, rules: [{{from: [{{source: {{principals: [x{i}]}}}}]}}]}}\n---\n"))
            .collect();
        write(&dir.path().join("p.yaml"), &policies);
        let t0 = std::time::Instant::now();
        let store = started(dir.path());
        let load_time = t0.elapsed();
        let _g = watch(dir.path().to_path_buf(), Limits::default(), store.clone()).expect("watch");
        let ticker = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut last = std::time::Instant::now();
            for _ in 0..(load_time.as_millis() as u64 / 5 + 200) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                worst = worst.max(last.elapsed());
                last = std::time::Instant::now();
            }
            worst
        });
        write(&dir.path().join("ns.yaml"), NS_A);
        until(&store, "the reload is done", has_ns("a")).await;
        let worst = ticker.await.expect("ticker");
        assert!(worst < load_time / 2, "a task waited {worst:?} while a {load_time:?} load ran");
    }
}
