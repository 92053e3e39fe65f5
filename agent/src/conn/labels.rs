//! Per-workload Istio labels, built once per workload and snapshot and shared (`Arc`) by every
//! connection of that workload, so a connection record holds pointers rather than 14 strings.
//!
//! The cache follows the snapshot in force: the first lookup against a new snapshot starts a new
//! map (the old labels live on in the connections that hold them). It holds a `Weak` to the
//! snapshot it was built for, so the address it compares with cannot be reused while cached.
use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use parking_lot::Mutex;

use crate::{
    config::{Service, Snapshot, model::PodEntry},
    identity::Identity,
    telemetry::metrics::{ServiceLabels, WorkloadLabels},
};

/// A workload's labels and its SPIFFE principal, as metrics report them.
#[derive(Clone, Debug)]
pub struct Peer {
    pub labels: Arc<WorkloadLabels>,
    pub principal: Arc<str>,
}

/// Labels shared per workload; see the module doc.
pub struct LabelCache {
    trust_domain: String,
    inner: Mutex<Inner>,
}

struct Inner {
    snap: Weak<Snapshot>,
    /// namespace -> name -> labels (nested, so lookups borrow `&str` and never allocate).
    by_workload: HashMap<String, HashMap<String, Peer>>,
    /// namespace -> Service name -> its labels.
    by_service: HashMap<String, HashMap<String, ServiceLabels>>,
}

impl Inner {
    /// Starts over when `snap` is not the snapshot the cache was built for.
    fn follow(&mut self, snap: &Arc<Snapshot>) {
        if !std::ptr::eq(self.snap.as_ptr(), Arc::as_ptr(snap)) {
            self.snap = Arc::downgrade(snap);
            self.by_workload.clear();
            self.by_service.clear();
        }
    }
}

impl LabelCache {
    pub fn new(trust_domain: &str) -> LabelCache {
        LabelCache {
            trust_domain: trust_domain.to_string(),
            inner: Mutex::new(Inner {
                snap: Weak::new(),
                by_workload: HashMap::new(),
                by_service: HashMap::new(),
            }),
        }
    }

    /// The shared labels of `w` (a workload of `snap`, or one the snapshot does not list yet).
    pub fn peer(&self, snap: &Arc<Snapshot>, w: &PodEntry) -> Peer {
        let mut inner = self.inner.lock();
        inner.follow(snap);
        if let Some(p) = inner.by_workload.get(&w.namespace).and_then(|m| m.get(&w.name)) {
            return p.clone();
        }
        let p = Peer {
            labels: Arc::new(WorkloadLabels::of(w)),
            principal: Identity::new(&self.trust_domain, &w.namespace, &w.service_account).to_string().into(),
        };
        inner.by_workload.entry(w.namespace.clone()).or_default().insert(w.name.clone(), p.clone());
        p
    }

    /// The shared labels of Service `svc` of `snap`.
    pub fn service(&self, snap: &Arc<Snapshot>, svc: &Service) -> ServiceLabels {
        let mut inner = self.inner.lock();
        inner.follow(snap);
        if let Some(s) = inner.by_service.get(&svc.namespace).and_then(|m| m.get(&svc.name)) {
            return s.clone();
        }
        let s = ServiceLabels::of(svc);
        inner.by_service.entry(svc.namespace.clone()).or_default().insert(svc.name.clone(), s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_for_test;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web, version: v2}}\nspec: {serviceAccountName: web}\nstatus: {podIP: 10.0.1.1}\n";

    #[test]
    fn labels_are_shared_within_a_snapshot_and_rebuilt_for_the_next() {
        let cache = LabelCache::new("cluster.local");
        let one = Arc::new(compile_for_test(POD));
        let w = one.workload_by_ip("10.0.1.1".parse().expect("ip")).expect("pod").clone();
        let a = cache.peer(&one, &w);
        let b = cache.peer(&one, &w);
        assert!(Arc::ptr_eq(&a.labels, &b.labels), "one allocation per workload, not per connection");
        assert_eq!(a.labels.app, "web");
        assert_eq!(a.labels.version, "v2");
        assert_eq!(&*a.principal, "spiffe://cluster.local/ns/shop/sa/web");

        let two = Arc::new(compile_for_test(&POD.replace("v2", "v3")));
        let w2 = two.workload_by_ip("10.0.1.1".parse().expect("ip")).expect("pod").clone();
        let c = cache.peer(&two, &w2);
        assert_eq!(c.labels.version, "v3", "a new snapshot's labels are used");
        assert_eq!(a.labels.version, "v2", "connections keep the labels they were opened with");
    }
}
