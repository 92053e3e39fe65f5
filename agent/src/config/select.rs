//! Label-selector evaluation over the workloads of one compile: an inverted index from
//! (namespace, label, value) to workloads, so resolving a selector costs the size of its smallest
//! matching posting list instead of a scan of every pod in the namespace.
use std::collections::HashMap;

use super::model::{Labels, PodEntry};

/// Workload keys are `(namespace, name)`, as in [`super::Snapshot::pods`].
pub type PodKey = (String, String);

/// An index of the workloads of one snapshot; positions are indices into `keys`.
pub struct PodIndex<'a> {
    pub keys: Vec<&'a PodKey>,
    pods: Vec<&'a PodEntry>,
    by_ns: HashMap<&'a str, Vec<u32>>,
    /// namespace -> "label\0value" -> workloads.
    by_label: HashMap<&'a str, HashMap<String, Vec<u32>>>,
    /// "label\0value" -> workloads of every namespace.
    by_label_any_ns: HashMap<String, Vec<u32>>,
}

impl<'a> PodIndex<'a> {
    pub fn new(pods: &'a HashMap<PodKey, PodEntry>) -> Self {
        let mut ix = PodIndex {
            keys: Vec::with_capacity(pods.len()),
            pods: Vec::with_capacity(pods.len()),
            by_ns: HashMap::new(),
            by_label: HashMap::new(),
            by_label_any_ns: HashMap::new(),
        };
        for (i, (key, pod)) in pods.iter().enumerate() {
            let i = i as u32;
            ix.keys.push(key);
            ix.pods.push(pod);
            ix.by_ns.entry(pod.namespace.as_str()).or_default().push(i);
            for (k, v) in &pod.labels {
                let kv = format!("{k}\0{v}");
                ix.by_label.entry(pod.namespace.as_str()).or_default().entry(kv.clone()).or_default().push(i);
                ix.by_label_any_ns.entry(kv).or_default().push(i);
            }
        }
        ix
    }

    pub fn pod(&self, i: u32) -> &'a PodEntry {
        self.pods[i as usize]
    }

    fn posting(&self, namespace: Option<&str>, k: &str, v: &str) -> &[u32] {
        let kv = format!("{k}\0{v}");
        let found = match namespace {
            Some(ns) => self.by_label.get(ns).and_then(|m| m.get(&kv)),
            None => self.by_label_any_ns.get(&kv),
        };
        found.map_or(&[], Vec::as_slice)
    }

    /// The workloads in `namespace` (every namespace when None) whose labels include all of
    /// `selector` (an empty selector selects every workload in scope), in index order.
    pub fn select(&self, namespace: Option<&str>, selector: &Labels) -> Vec<u32> {
        let list = |k: &str, v: &str| self.posting(namespace, k, v);
        let Some(smallest) = selector.iter().map(|(k, v)| list(k, v)).min_by_key(|l| l.len()) else {
            return match namespace {
                Some(ns) => self.by_ns.get(ns).cloned().unwrap_or_default(),
                None => (0..self.keys.len() as u32).collect(),
            };
        };
        smallest
            .iter()
            .copied()
            .filter(|i| {
                let labels = &self.pods[*i as usize].labels;
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> (PodKey, PodEntry) {
        let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let entry = PodEntry { namespace: ns.into(), name: name.into(), labels, ..Default::default() };
        ((ns.into(), name.into()), entry)
    }

    #[test]
    fn selects_like_a_full_scan() {
        let pods: HashMap<PodKey, PodEntry> = [
            pod("a", "web1", &[("app", "web"), ("v", "1")]),
            pod("a", "web2", &[("app", "web"), ("v", "2")]),
            pod("a", "db", &[("app", "db")]),
            pod("b", "web", &[("app", "web"), ("v", "1")]),
        ]
        .into_iter()
        .collect();
        let ix = PodIndex::new(&pods);
        let names = |ns: Option<&str>, sel: &[(&str, &str)]| -> Vec<String> {
            let sel: Labels = sel.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let mut v: Vec<String> = ix
                .select(ns, &sel)
                .into_iter()
                .map(|i| format!("{}/{}", ix.pod(i).namespace, ix.pod(i).name))
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(Some("a"), &[("app", "web")]), ["a/web1", "a/web2"]);
        assert_eq!(names(Some("a"), &[("app", "web"), ("v", "1")]), ["a/web1"]);
        assert_eq!(names(None, &[("v", "1")]), ["a/web1", "b/web"]);
        assert_eq!(names(Some("b"), &[]), ["b/web"]);
        assert_eq!(names(None, &[]).len(), 4);
        assert!(names(Some("a"), &[("app", "nope")]).is_empty());
        assert!(names(Some("c"), &[]).is_empty());
    }
}
