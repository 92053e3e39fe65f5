//! The persisted registry of pods the CNI plugin reported, so a restarted agent re-adopts them
//! (`<state-dir>/pods.json`, written atomically on every change).
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use crate::cni::protocol::PodRef;

/// On-disk registry.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("pod registry {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pod registry {path} is corrupt: {source} (delete it; pods re-register on their next CNI call)")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

impl Registry {
    pub fn new(state_dir: &Path) -> Registry {
        Registry { path: state_dir.join("pods.json") }
    }

    /// The persisted pods by [`PodRef::key`].
    pub fn load(&self) -> Result<BTreeMap<String, PodRef>, RegistryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(RegistryError::Io { path: self.path.clone(), source });
            }
        };
        let pods: Vec<PodRef> = serde_json::from_str(&text)
            .map_err(|source| RegistryError::Corrupt { path: self.path.clone(), source })?;
        Ok(pods.into_iter().map(|p| (p.key(), p)).collect())
    }

    pub fn save(&self, pods: &BTreeMap<String, PodRef>) -> Result<(), RegistryError> {
        let list: Vec<&PodRef> = pods.values().collect();
        let text = serde_json::to_vec_pretty(&list).unwrap_or_default();
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| RegistryError::Io { path: self.path.clone(), source };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Registry::new(dir.path());
        assert!(r.load().expect("empty").is_empty());
        let p = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "uid-1".into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ips: vec!["10.0.0.2".parse().expect("ip")],
        };
        let mut m = BTreeMap::new();
        m.insert(p.key(), p.clone());
        r.save(&m).expect("save");
        assert_eq!(r.load().expect("load").get("uid-1"), Some(&p));
        std::fs::write(dir.path().join("pods.json"), "{").expect("write");
        assert!(r.load().expect_err("corrupt").to_string().contains("delete it"));
    }
}
