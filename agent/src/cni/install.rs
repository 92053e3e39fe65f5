//! Installing the CNI plugin on the node, as chained CNI plugins are installed: the agent copies
//! its own binary into the host's CNI bin directory as `sluice-cni` and appends a `sluice-cni`
//! entry as the last plugin of the node's primary conflist (the file the container runtime reads:
//! the first `*.conf`, `*.conflist` or `*.json` by name). It re-checks whenever the directory
//! changes (the primary CNI rewrites its file on its own restarts) and removes exactly what it
//! added on uninstall, so the file is byte-identical to what the primary CNI wrote.
//!
//! The entry is spliced into the text rather than re-serialized, so nothing else in the file
//! changes. A file that is not valid JSON, or has no `plugins` list, is an error naming the file,
//! and nothing is written.
use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::Value;
use tracing::{info, warn};

use super::PLUGIN_NAME;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "CNI config directory {dir} has no network config (*.conflist, *.conf, *.json): the primary CNI has not written one yet; sluice adds itself once it has"
    )]
    NoConfig { dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the network configs in {dir} kept changing while sluice added itself; it tries again on the next change"
    )]
    Busy { dir: PathBuf },
    #[error("{path} is not valid JSON: {detail}; left unchanged (fix or let the primary CNI rewrite it)")]
    Malformed { path: PathBuf, detail: String },
    #[error(
        "{path} is a single-plugin network config (no `plugins` list), which cannot be chained; configure the primary CNI to write a .conflist"
    )]
    NotAList { path: PathBuf },
}

/// What the installer was asked to manage.
#[derive(Clone, Debug)]
pub struct Installer {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The agent's CNI socket as the plugin (run by the runtime on the host) sees it.
    pub agent_socket: PathBuf,
}

/// The outcome of one [`Installer::ensure`].
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    /// `sluice-cni` was appended to this file now.
    Inserted(PathBuf),
    /// It was there already.
    Present(PathBuf),
}

impl Installer {
    /// The exact text spliced into a conflist (and removed on uninstall).
    fn entry(&self) -> String {
        let sock = Value::String(self.agent_socket.display().to_string());
        format!(r#"{{"type": "{PLUGIN_NAME}", "agentSocket": {sock}}}"#)
    }

    /// Copies `binary` to `<bin-dir>/sluice-cni` unless an identical copy is there (written to a
    /// temporary name and renamed, so a runtime never runs a half-written plugin).
    pub fn install_binary(&self, binary: &Path) -> Result<bool, InstallError> {
        let dst = self.bin_dir.join(PLUGIN_NAME);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| InstallError::Io { path, source }
        };
        let new = std::fs::read(binary).map_err(io(binary))?;
        if std::fs::read(&dst).is_ok_and(|old| old == new) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.bin_dir).map_err(io(&self.bin_dir))?;
        let tmp = self.bin_dir.join(format!(".{PLUGIN_NAME}.tmp"));
        std::fs::write(&tmp, &new).map_err(io(&tmp))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        info!(path = %dst.display(), "installed the CNI plugin binary");
        Ok(true)
    }

    /// Makes sure the primary conflist ends with `sluice-cni`; idempotent.
    pub fn ensure(&self) -> Result<Ensured, InstallError> {
        // A primary CNI writing its file while we do wins: we read again and append to its version.
        for _ in 0..3 {
            let path = primary(&self.conf_dir)?
                .ok_or_else(|| InstallError::NoConfig { dir: self.conf_dir.clone() })?;
            let text = std::fs::read_to_string(&path)
                .map_err(|source| InstallError::Io { path: path.clone(), source })?;
            match splice_in(&text, &self.entry()).map_err(|e| e.at(&path))? {
                None => return Ok(Ensured::Present(path)),
                Some(new) => {
                    if write_atomically(&path, &text, &new)? {
                        info!(conflist = %path.display(), "appended sluice-cni to the primary CNI config");
                        return Ok(Ensured::Inserted(path));
                    }
                }
            }
        }
        Err(InstallError::Busy { dir: self.conf_dir.clone() })
    }

    /// Removes `sluice-cni` from every network config in the directory (the text it added, or the
    /// entry wherever a primary CNI re-wrote it) and the plugin binary. Returns the files changed.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut changed = Vec::new();
        for path in configs(&self.conf_dir)? {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            match splice_out(&text, &self.entry()) {
                Ok(Some(new)) => {
                    if !write_atomically(&path, &text, &new)? {
                        warn!(conflist = %path.display(), "the CNI config changed while sluice removed itself; check it");
                        continue;
                    }
                    info!(conflist = %path.display(), "removed sluice-cni from the CNI config");
                    changed.push(path);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e.at(&path), "left a CNI config alone on uninstall"),
            }
        }
        let bin = self.bin_dir.join(PLUGIN_NAME);
        match std::fs::remove_file(&bin) {
            Ok(()) => info!(path = %bin.display(), "removed the CNI plugin binary"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(InstallError::Io { path: bin, source }),
        }
        Ok(changed)
    }
}

/// Keeps the plugin installed: re-checks whenever the config directory changes (a primary CNI
/// rewriting its file) and every `every` regardless. Errors are logged when they change, not on
/// every pass. Dropping the returned guard stops it.
pub fn keep_installed(inst: Installer, every: std::time::Duration) -> Result<Keeper, notify::Error> {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })?;
    std::fs::create_dir_all(&inst.conf_dir).map_err(notify::Error::io)?;
    watcher.watch(&inst.conf_dir, notify::RecursiveMode::NonRecursive)?;
    let active = Arc::new(parking_lot::Mutex::new(true));
    let gate = active.clone();
    let task = tokio::spawn(async move {
        let mut last_error = String::new();
        loop {
            let i = inst.clone();
            let gate = gate.clone();
            // Under the gate: once the keeper is stopped no pass is running or starts, so an
            // uninstall that follows is never undone.
            let pass = move || {
                let on = gate.lock();
                if *on { i.ensure().map(Some) } else { Ok(None) }
            };
            match tokio::task::spawn_blocking(pass).await {
                Ok(Ok(_)) => last_error.clear(),
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if text != last_error {
                        warn!(error = %text, "cannot install the CNI plugin; retrying when the directory changes");
                        last_error = text;
                    }
                }
                Err(e) => warn!(error = %e, "CNI installer task failed"),
            }
            tokio::select! {
                _ = rx.recv() => {
                    // A rewrite is often several events: let it settle.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    while rx.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(every) => {}
            }
        }
    });
    Ok(Keeper { _watcher: watcher, task, active })
}

/// The running [`keep_installed`] loop; dropping it stops it, waiting for a pass in progress.
pub struct Keeper {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    active: Arc<parking_lot::Mutex<bool>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        *self.active.lock() = false;
        self.task.abort();
    }
}

/// Network config files in `dir` in the order the runtime considers them (by name).
fn configs(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(InstallError::Io { path: dir.to_path_buf(), source }),
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The primary network config: the first by name, as libcni-based runtimes choose it.
pub fn primary(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(configs(dir)?.into_iter().next())
}

/// Replaces `path` with `text` through a temporary file and a rename, unless the file no longer
/// holds `was` (someone wrote it meanwhile): then nothing is written and the answer is false.
fn write_atomically(path: &Path, was: &str, text: &str) -> Result<bool, InstallError> {
    let io = |source| InstallError::Io { path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A dot name with a foreign extension: no runtime ever loads the half-written file.
    let tmp = path.with_file_name(format!(".{name}.sluice-tmp"));
    let mode = std::fs::metadata(path).map(|m| m.permissions()).map_err(io)?;
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::set_permissions(&tmp, mode).map_err(io)?;
    if std::fs::read_to_string(path).map_err(io)? != was {
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(true)
}

/// A problem with a config's text, before the file is known.
#[derive(Debug)]
enum TextError {
    Malformed(String),
    NotAList,
}

impl TextError {
    fn at(self, path: &Path) -> InstallError {
        match self {
            TextError::Malformed(detail) => InstallError::Malformed { path: path.to_path_buf(), detail },
            TextError::NotAList => InstallError::NotAList { path: path.to_path_buf() },
        }
    }
}

fn parse(text: &str) -> Result<Vec<Value>, TextError> {
    let v: Value = serde_json::from_str(text).map_err(|e| TextError::Malformed(e.to_string()))?;
    match v.get("plugins") {
        Some(Value::Array(list)) => Ok(list.clone()),
        Some(_) => Err(TextError::Malformed("`plugins` is not a list".into())),
        None => Err(TextError::NotAList),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME)
}

/// `text` with `entry` appended to its `plugins` list, or `None` when a `sluice-cni` plugin is
/// there already.
fn splice_in(text: &str, entry: &str) -> Result<Option<String>, TextError> {
    let plugins = parse(text)?;
    if plugins.iter().any(is_ours) {
        return Ok(None);
    }
    let (open, close) =
        plugins_span(text).ok_or_else(|| TextError::Malformed("cannot find the `plugins` list".into()))?;
    let body_end = open + 1 + text[open + 1..close].trim_end().len();
    let insert = if plugins.is_empty() { entry.to_string() } else { format!(",\n    {entry}") };
    Ok(Some(format!("{}{insert}{}", &text[..body_end], &text[body_end..])))
}

/// `text` without `sluice-cni`: the exact text [`splice_in`] added when it is there (so the file is
/// byte-identical to before), else the entry removed from the parsed list. `None`: not present.
fn splice_out(text: &str, entry: &str) -> Result<Option<String>, TextError> {
    let plugins = parse(text)?;
    if !plugins.iter().any(is_ours) {
        return Ok(None);
    }
    for added in [format!(",\n    {entry}"), entry.to_string()] {
        if let Some(i) = text.find(&added) {
            let out = format!("{}{}", &text[..i], &text[i + added.len()..]);
            if parse(&out).is_ok_and(|p| !p.iter().any(is_ours)) {
                return Ok(Some(out));
            }
        }
    }
    // A primary CNI re-serialized the file with our entry in it: remove it structurally.
    let mut v: Value = serde_json::from_str(text).map_err(|e| TextError::Malformed(e.to_string()))?;
    if let Some(Value::Array(list)) = v.get_mut("plugins") {
        list.retain(|p| !is_ours(p));
    }
    let out = serde_json::to_string_pretty(&v).map_err(|e| TextError::Malformed(e.to_string()))?;
    Ok(Some(out + "\n"))
}

/// Byte offsets of the `[` and `]` of the top-level `"plugins"` array.
fn plugins_span(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let mut last_string: Option<(usize, usize)> = None;
    let mut want_array = false;
    let mut open = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                last_string = Some((start, i.min(b.len())));
            }
            b':' if depth == 1 => {
                want_array = last_string.is_some_and(|(s, e)| &text[s..e] == "plugins");
            }
            b'{' | b'[' => {
                if want_array && depth == 1 && b[i] == b'[' {
                    open = Some(i);
                }
                want_array = false;
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 1
                    && b[i] == b']'
                    && let Some(o) = open
                {
                    return Some((o, i));
                }
            }
            b',' => want_array = false,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &[&str] =
        &["05-cilium.conflist", "10-calico.conflist", "10-flannel.conflist", "10-kindnet.conflist"];

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cni").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn installer(dir: &Path) -> Installer {
        Installer {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            agent_socket: PathBuf::from("/var/run/sluice/cni.sock"),
        }
    }

    fn setup(name: &str) -> (tempfile::TempDir, Installer, PathBuf, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let inst = installer(dir.path());
        std::fs::create_dir_all(&inst.conf_dir).expect("mkdir");
        let path = inst.conf_dir.join(name);
        let original = fixture(name);
        std::fs::write(&path, &original).expect("write");
        (dir, inst, path, original)
    }

    fn plugin_types(path: &Path) -> Vec<String> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        v["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn common_cnis_get_sluice_last_once_and_lose_it_byte_exact() {
        for name in FIXTURES {
            let (_d, inst, path, original) = setup(name);
            let before = plugin_types(&path);
            assert_eq!(inst.ensure().expect("insert"), Ensured::Inserted(path.clone()), "{name}");
            let types = plugin_types(&path);
            assert_eq!(types.last().map(String::as_str), Some(PLUGIN_NAME), "{name}: {types:?}");
            assert_eq!(&types[..types.len() - 1], &before[..], "{name}: the other plugins are untouched");
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let ours = v["plugins"].as_array().and_then(|p| p.last()).expect("last");
            assert_eq!(ours["agentSocket"], "/var/run/sluice/cni.sock", "{name}");
            // Idempotent: a second pass changes nothing.
            let once = std::fs::read_to_string(&path).expect("read");
            assert_eq!(inst.ensure().expect("again"), Ensured::Present(path.clone()), "{name}");
            assert_eq!(std::fs::read_to_string(&path).expect("read"), once, "{name}");
            // Uninstall restores the primary's bytes exactly.
            assert_eq!(inst.uninstall().expect("uninstall"), vec![path.clone()], "{name}");
            assert_eq!(std::fs::read_to_string(&path).expect("read"), original, "{name}");
        }
    }

    #[test]
    fn a_primary_rewrite_is_caught_again() {
        let (_d, inst, path, original) = setup("10-flannel.conflist");
        inst.ensure().expect("insert");
        // The primary CNI restarts and writes its own file again, without us.
        std::fs::write(&path, &original).expect("rewrite");
        assert_eq!(inst.ensure().expect("again"), Ensured::Inserted(path.clone()));
        assert_eq!(plugin_types(&path).last().map(String::as_str), Some(PLUGIN_NAME));
        // A primary that re-serializes the file with our entry inside (other formatting): the
        // entry is still found and removed on uninstall.
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        std::fs::write(&path, serde_json::to_string(&v).expect("json")).expect("reformat");
        assert_eq!(inst.ensure().expect("present"), Ensured::Present(path.clone()));
        inst.uninstall().expect("uninstall");
        assert!(!plugin_types(&path).iter().any(|t| t == PLUGIN_NAME));
    }

    #[test]
    fn the_primary_is_the_first_config_by_name() {
        let (_d, inst, cilium, _) = setup("05-cilium.conflist");
        std::fs::write(inst.conf_dir.join("10-flannel.conflist"), fixture("10-flannel.conflist"))
            .expect("write");
        std::fs::write(inst.conf_dir.join(".hidden.conflist"), "{").expect("write");
        std::fs::write(inst.conf_dir.join("README"), "not a config").expect("write");
        assert_eq!(inst.ensure().expect("insert"), Ensured::Inserted(cilium.clone()));
        assert!(!plugin_types(&inst.conf_dir.join("10-flannel.conflist")).iter().any(|t| t == PLUGIN_NAME));
    }

    #[test]
    fn bad_configs_are_named_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inst = installer(dir.path());
        assert!(matches!(inst.ensure(), Err(InstallError::NoConfig { .. })), "missing directory");
        std::fs::create_dir_all(&inst.conf_dir).expect("mkdir");
        let e = inst.ensure().expect_err("empty directory").to_string();
        assert!(e.contains("has no network config"), "{e}");

        let path = inst.conf_dir.join("10-broken.conflist");
        let broken = "{\"cniVersion\": \"1.0.0\", \"name\": \"k8s\", \"plugins\": [{\"type\": \"ptp\",}";
        std::fs::write(&path, broken).expect("write");
        let e = inst.ensure().expect_err("malformed").to_string();
        assert!(e.contains("10-broken.conflist is not valid JSON") && e.contains("left unchanged"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), broken, "nothing overwritten");

        let single = "{\"cniVersion\": \"0.3.1\", \"name\": \"k8s\", \"type\": \"bridge\"}\n";
        std::fs::write(&path, single).expect("write");
        let e = inst.ensure().expect_err("single plugin").to_string();
        assert!(e.contains("single-plugin network config") && e.contains(".conflist"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), single);

        // Unreadable (whoever runs the test, root included): a directory where the first config is.
        let unreadable = inst.conf_dir.join("00-unreadable.conflist");
        std::fs::create_dir(&unreadable).expect("mkdir");
        let e = inst.ensure().expect_err("unreadable").to_string();
        assert!(e.contains("00-unreadable.conflist"), "{e}");
    }

    #[test]
    fn the_binary_is_copied_once_and_removed_on_uninstall() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inst = installer(dir.path());
        let src = dir.path().join("sluice");
        std::fs::write(&src, b"\x7fELF binary").expect("write");
        assert!(inst.install_binary(&src).expect("copy"));
        assert!(!inst.install_binary(&src).expect("again"), "identical copy is left alone");
        let dst = inst.bin_dir.join(PLUGIN_NAME);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&dst).expect("stat").permissions().mode() & 0o777, 0o755);
        std::fs::create_dir_all(&inst.conf_dir).expect("mkdir");
        inst.uninstall().expect("uninstall");
        assert!(!dst.exists());
    }

    #[test]
    fn a_file_changed_meanwhile_is_not_overwritten() {
        let (_d, _inst, path, original) = setup("10-flannel.conflist");
        let stale = original.replace("cbr0", "old-name");
        assert!(!write_atomically(&path, &stale, "{}").expect("write"), "wrote over a newer file");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), original);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sluice-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary file left behind");
        assert!(write_atomically(&path, &original, "{\"plugins\": []}").expect("write"));
    }

    #[test]
    fn the_plugins_span_skips_strings_and_nesting() {
        let t = r#"{"name": "x]\"plugins", "nested": {"plugins": [1]}, "plugins": [ {"a": [1, 2]} ] }"#;
        let (o, c) = plugins_span(t).expect("span");
        assert_eq!(&t[o..=c], r#"[ {"a": [1, 2]} ]"#);
    }
}
