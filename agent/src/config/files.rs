//! The file source: a directory of multi-document YAML files, loaded whole and watched.
//!
//! Every load reads all `*.yaml`/`*.yml` files below the directory in name order, parses and
//! compiles them, and either yields a new snapshot or every diagnostic at once. The watcher reloads
//! on any change (debounced) and keeps the last good snapshot when a change is broken.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{
    SnapshotStore,
    diag::{ConfigRejected, Diagnostic, Diagnostics, Severity},
    model::Snapshot,
    yaml,
};

/// Why the file source could not produce a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("mesh config directory {path}: {source} (pass an existing directory with --config)")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Rejected(#[from] ConfigRejected),
}

/// Loads and compiles every YAML file below `dir`. Warnings come back with the snapshot.
pub fn load_dir(dir: &Path) -> Result<(Snapshot, Diagnostics), LoadError> {
    let files = yaml_files(dir).map_err(|source| LoadError::Dir { path: dir.to_path_buf(), source })?;
    let mut diags = Diagnostics::default();
    let docs = read_documents(&files, &mut diags);
    let snap = Snapshot::compile(&docs, &mut diags);
    if diags.has_errors() {
        return Err(ConfigRejected { diagnostics: diags }.into());
    }
    Ok((snap, diags))
}

/// The YAML files named by `paths`: files as given, directories searched recursively.
pub fn yaml_files_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(yaml_files(p).map_err(|source| LoadError::Dir { path: p.clone(), source })?);
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

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue; // editor swap files, ..data symlinks of ConfigMap mounts are followed below
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Watches `dir` and stores every good reload into `store`. Runs until the returned guard drops.
pub fn watch(dir: PathBuf, store: Arc<SnapshotStore>) -> Result<WatchGuard, notify::Error> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reading the files ourselves produces access events; only changes count.
        if let Ok(ev) = res
            && matches!(
                ev.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
            )
        {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: editors write in several steps.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            match load_dir(&dir) {
                Ok((snap, warnings)) => {
                    for w in warnings.warnings() {
                        warn!(target: "sluice::config", "{w}");
                    }
                    info!(target: "sluice::config", dir = %dir.display(), "mesh config reloaded");
                    store.store(snap);
                }
                Err(e) => {
                    error!(target: "sluice::config", "{e}; keeping the last good config");
                    store.reject(e.to_string());
                }
            }
        }
    });
    Ok(WatchGuard { _watcher: watcher, task })
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
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
        let (snap, _) = load_dir(dir.path()).expect("loads");
        assert!(snap.namespaces.contains_key("a"));
        assert_eq!(snap.pods.len(), 1);

        std::fs::write(dir.path().join("c.yaml"), "kind: [\n").expect("write");
        std::fs::write(dir.path().join("d.yaml"), "apiVersion: v1\nkind: Namespace\n").expect("write");
        let Err(LoadError::Rejected(r)) = load_dir(dir.path()) else { panic!("broken config accepted") };
        let text = r.to_string();
        assert!(text.contains("c.yaml:"), "{text}");
        assert!(text.contains("d.yaml:1:1: error: field `metadata.name`: is required"), "{text}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = load_dir(Path::new("/nonexistent/sluice")).expect_err("no dir");
        assert!(e.to_string().contains("--config"), "{e}");
    }

    #[tokio::test]
    async fn watcher_swaps_good_changes_and_keeps_last_good_on_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ns.yaml");
        std::fs::write(&f, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").expect("write");
        let (snap, _) = load_dir(dir.path()).expect("loads");
        let store = SnapshotStore::new(snap);
        let mut rx = store.subscribe();
        let _g = watch(dir.path().to_path_buf(), store.clone()).expect("watch");
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
}
