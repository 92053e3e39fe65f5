//! The pods this node knows (from the CNI plugin, persisted) and which of them are enrolled.
//!
//! Enrollment is a reconciliation: the config snapshot says which known pods belong in the mesh;
//! enrolling opens the pod's capture listeners in its netns, adds it to the kernel maps and attaches
//! its inbound steering; releasing undoes all three. Established connections are never touched:
//! they run in their own tasks and sockets.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Arc,
};

use serde::Serialize;
use tokio::{sync::Mutex, task::JoinHandle};
use tracing::{info, warn};

use super::{
    claims::{self, ClaimError, Facts, Other},
    handover::{self, Channel, HandoverError, InheritedPod, Msg},
    registry::{Registry, RegistryError},
};
use crate::{
    cni::protocol::PodRef,
    config::{EnrollDecision, Snapshot, SnapshotStore, model::PodEntry},
    proxy::{PodCtx, Proxy},
    redirect::{
        KernelError, NetNs,
        inpod::{self, InPodError, Role},
        routing,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod}: network namespace {netns}: {source}")]
    Netns { pod: String, netns: String, source: std::io::Error },
    #[error("pod {pod}: {source}")]
    InPod { pod: String, source: InPodError },
    #[error("pod {pod}: {source}")]
    Kernel { pod: String, source: KernelError },
    #[error(
        "pod {pod} is in an ambient namespace but not in the mesh config yet (its identity and labels are \
         unknown); the runtime retries"
    )]
    NotInConfig { pod: String },
    #[error("pod {pod}: TLS configuration: {detail}")]
    Tls { pod: String, detail: String },
    /// A CNI ADD whose claim conflicts with the Pod object or with another pod of this node.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("this agent handed its pods to a newer agent on the node; the runtime retries and reaches it")]
    HandedOver,
}

struct Enrolled {
    netns_cookie: u64,
    service_account: String,
    ips: Vec<IpAddr>,
    accept_loops: Vec<JoinHandle<()>>,
    /// Duplicates of the pod's listening sockets, to hand to the next agent on an upgrade.
    sockets: Vec<(Role, OwnedFd)>,
    /// The pod's `fwmark_reflect` sysctls before enrollment set them, restored at release.
    reflect: Option<(Arc<NetNs>, routing::SavedSysctls)>,
}

impl State {
    /// Whether a pod of this name is registered (by a CNI call, a handover or discovery).
    fn knows(&self, namespace: &str, name: &str) -> bool {
        self.known.values().any(|k| k.namespace == namespace && k.name == name)
    }
}

#[derive(Default)]
struct State {
    known: BTreeMap<String, PodRef>,
    enrolled: HashMap<String, Enrolled>,
    /// Set once a newer agent took the pods over, or on uninstall: this agent no longer changes
    /// any kernel state or registration.
    retired: bool,
}

/// One pod's status for the admin API.
#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    pub ips: Vec<IpAddr>,
    pub enrolled: bool,
    pub reason: String,
    pub netns_cookie: Option<u64>,
}

pub struct Pods {
    proxy: Arc<Proxy>,
    store: Arc<SnapshotStore>,
    registry: Registry,
    trust_domain: String,
    /// This agent's node (`--node-name`): a Pod object of another node is never enrolled here.
    node: String,
    state: Mutex<State>,
    /// When discovery last scanned the host, for which pods, and when it may scan for the same
    /// pods again (from [`RESCAN`], doubling up to [`RESCAN_MAX`] while they stay missing).
    last_scan: parking_lot::Mutex<Option<(std::time::Instant, Vec<String>, std::time::Duration)>>,
}

/// How often discovery looks again for the same missing pods.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest wait between scans for pods that are never found (a runtime whose sandboxes have
/// no network namespace on the host).
const RESCAN_MAX: std::time::Duration = std::time::Duration::from_secs(600);

fn pod_name(p: &PodRef) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// Whether a registered pod's network namespace is still there (for one found through a process,
/// whether it still holds the pod's addresses).
fn netns_live(p: &PodRef) -> bool {
    if super::discover::is_process_path(&p.netns) {
        super::discover::holds(&p.netns, &p.ips)
    } else {
        p.netns.exists()
    }
}

/// What a CNI DEL may do to the registration under its key.
#[derive(Debug, PartialEq, Eq)]
enum DelVerdict {
    /// Release and forget it (also when nothing is registered: nothing to do).
    Applies,
    /// The registration is of a newer sandbox of the same pod.
    OlderSandbox,
    /// The registration under that key is another pod's (`namespace/name`).
    OtherPod(String),
}

fn del_applies(registered: Option<&PodRef>, del: &PodRef) -> DelVerdict {
    let Some(r) = registered else { return DelVerdict::Applies };
    if r.namespace != del.namespace || r.name != del.name {
        return DelVerdict::OtherPod(pod_name(r));
    }
    // A pod found by discovery has no container ID: any DEL for it is the current one.
    if !r.container_id.is_empty() && r.container_id != del.container_id {
        return DelVerdict::OlderSandbox;
    }
    DelVerdict::Applies
}

impl crate::admin::Inventory for Pods {
    fn pods_json(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>> {
        Box::pin(async move { serde_json::to_value(self.status().await).unwrap_or_default() })
    }
}

impl Pods {
    pub fn new(
        proxy: Arc<Proxy>,
        store: Arc<SnapshotStore>,
        registry: Registry,
        trust_domain: String,
        node: String,
    ) -> Pods {
        Pods {
            proxy,
            store,
            registry,
            trust_domain,
            node,
            state: Mutex::new(State::default()),
            last_scan: Default::default(),
        }
    }

    /// Re-adopts the pods persisted by a previous agent: drops those whose netns is gone, enrolls
    /// the rest as the config says.
    pub async fn readopt(&self) -> Result<(), PodError> {
        let persisted = self.registry.load()?;
        let mut st = self.state.lock().await;
        for (key, info) in persisted {
            if st.known.contains_key(&key) {
                // Received in a handover already.
                continue;
            }
            if super::discover::is_process_path(&info.netns) {
                // Found through a process that may be gone (its pid reused): discovery finds the
                // pod again by its addresses.
                info!(pod = %pod_name(&info), "forgetting a pod found through /proc; it is looked for again");
                continue;
            }
            if info.netns.exists() {
                st.known.insert(key, info);
            } else {
                info!(pod = %pod_name(&info), netns = %info.netns.display(), "forgetting pod whose netns is gone");
            }
        }
        self.registry.save(&st.known)?;
        info!(pods = st.known.len(), "re-adopted pods from the registry");
        drop(st);
        self.reconcile().await;
        // Kernel state of pods that are gone (or were never re-enrolled and are unknown) goes too.
        let st = self.state.lock().await;
        let cookies = st.enrolled.values().map(|e| e.netns_cookie).collect();
        let ips = st.known.values().flat_map(|p| p.ips.iter().copied()).collect();
        let keys = st.known.keys().cloned().collect();
        let removed = self.proxy.kernel.gc(&cookies, &ips, &keys);
        if removed > 0 {
            info!(removed, "removed kernel state of pods that are gone");
        }
        Ok(())
    }

    /// CNI ADD: checks the claim ([`claims`]), registers the pod and, if the config says so,
    /// enrolls it before returning. A refused ADD (a conflicting claim, a pod the config does not
    /// list yet, an enrollment that failed) leaves no registration behind, in memory or on disk.
    pub async fn add(&self, pod: PodRef) -> Result<bool, PodError> {
        let info = pod;
        let key = info.key();
        let mut st = self.state.lock().await;
        if st.retired {
            return Err(PodError::HandedOver);
        }
        let snap = self.store.load();
        let decision = snap.enrollment(&info.namespace, &info.name);
        let object = snap.pods.get(&(info.namespace.clone(), info.name.clone()));
        if decision == EnrollDecision::Enrolled && object.is_none() {
            // Without the Pod object its identity and labels (policy selectors) are unknown:
            // refuse, so the runtime retries once the config has it (fail closed).
            return Err(self.refuse(&info, "not_in_config", PodError::NotInConfig { pod: pod_name(&info) }));
        }
        if let Err(e) = claims::check(&info, &self.claim_facts(&st, &snap, &info, object)) {
            let field = e.field();
            return Err(self.refuse(&info, field, PodError::Claim(e)));
        }
        // A re-ADD replaces the old registration; in the same network namespace (an ADD retried,
        // or a pod discovery found first) the pod keeps its listening sockets.
        let mut reuse = None;
        if let Some(old) = st.enrolled.remove(&key) {
            let same_netns =
                st.known.get(&key).is_some_and(|k| super::discover::same_netns(&k.netns, &info.netns));
            let sockets = self.release(&key, old);
            reuse = same_netns.then_some(sockets);
        }
        st.known.insert(key.clone(), info.clone());
        self.registry.save(&st.known)?;
        match decision {
            EnrollDecision::Enrolled => {
                let sa = snap.service_account(&info.namespace, &info.name);
                match self.enroll(&info, &sa, reuse).await {
                    Ok(e) => {
                        st.enrolled.insert(key, e);
                        self.proxy.recorder.metrics().enrolled_pods.set(st.enrolled.len() as i64);
                        Ok(true)
                    }
                    Err(e) => {
                        st.known.remove(&key);
                        self.proxy.recorder.metrics().enrolled_pods.set(st.enrolled.len() as i64);
                        self.registry.save(&st.known)?;
                        Err(self.refuse(&info, "enrollment_failed", e))
                    }
                }
            }
            EnrollDecision::NotEnrolled(why) => {
                info!(pod = %pod_name(&info), reason = why, "pod registered, not enrolled");
                Ok(false)
            }
        }
    }

    /// Counts and logs a refused CNI ADD; returns the error for the reply.
    fn refuse(&self, pod: &PodRef, reason: &'static str, e: PodError) -> PodError {
        self.proxy.recorder.metrics().cni_refusals.with_label_values(&[reason]).inc();
        warn!(pod = %pod_name(pod), uid = %pod.uid, netns = %pod.netns.display(), ips = ?pod.ips, reason,
              error = %e, "CNI ADD refused");
        e
    }

    /// What [`claims::check`] decides a claim on: the Pod object, the config's owners of the
    /// claimed addresses, the other pods registered here (their netns compared by inode, their
    /// liveness), and the owners of the kernel's inbound entries for the claimed addresses.
    fn claim_facts<'a>(
        &'a self,
        st: &State,
        snap: &Snapshot,
        claim: &PodRef,
        object: Option<&'a PodEntry>,
    ) -> Facts<'a> {
        let key = claim.key();
        let same_pod = |p: &PodRef| p.namespace == claim.namespace && p.name == claim.name;
        let config_owners = claim
            .ips
            .iter()
            .filter_map(|ip| snap.pods_by_ip.get(ip).map(|(ns, name)| (*ip, format!("{ns}/{name}"))))
            .collect();
        let others = st
            .known
            .iter()
            .filter_map(|(k, p)| {
                let same_netns = super::discover::same_netns(&p.netns, &claim.netns);
                // Liveness (which may enter the namespace) only matters for a possible conflict.
                let overlaps = same_netns || p.ips.iter().any(|ip| claim.ips.contains(ip));
                let live = overlaps && netns_live(p);
                // The pod's own registration (under another pod's name it is `key_owner`'s
                // conflict) is replaced when it is this sandbox's (same netns) or its sandbox is
                // gone (a re-created sandbox). A live sandbox of the same pod in another netns is
                // a conflict: a forged ADD must not take its addresses.
                let own = *k == key || same_pod(p);
                if own && (same_netns || !live) {
                    return None;
                }
                Some(Other { name: pod_name(p), ips: p.ips.clone(), live, same_netns })
            })
            .collect();
        let kernel_owners = claim
            .ips
            .iter()
            .filter_map(|ip| {
                let cookie = self.proxy.kernel.inbound_owner(*ip)?;
                let owner = st
                    .enrolled
                    .iter()
                    .find(|(_, e)| e.netns_cookie == cookie)
                    .and_then(|(k, _)| st.known.get(k))
                    .map(pod_name);
                Some((*ip, owner))
            })
            .collect();
        let object_ips_held = object.is_some_and(|o| {
            st.known.values().any(|p| p.ips.iter().any(|ip| o.ips.contains(ip)) && netns_live(p))
        });
        let key_owner = st.known.get(&key).map(pod_name);
        Facts { node: &self.node, object, config_owners, others, key_owner, kernel_owners, object_ips_held }
    }

    /// CNI DEL: releases and forgets the pod. Unknown pods are fine; a DEL for an older sandbox of
    /// the same pod (another container ID) leaves the current one alone.
    pub async fn del(&self, pod: &PodRef) -> Result<(), PodError> {
        let key = &pod.key();
        let mut st = self.state.lock().await;
        if st.retired {
            return Err(PodError::HandedOver);
        }
        match del_applies(st.known.get(key), pod) {
            DelVerdict::Applies => {}
            DelVerdict::OlderSandbox => {
                info!(pod = %pod_name(pod), container = %pod.container_id, "DEL for an older sandbox ignored");
                return Ok(());
            }
            DelVerdict::OtherPod(owner) => {
                // The registration (and its kernel entries) belongs to another pod: a DEL only
                // ever removes what the pod it names owns.
                warn!(pod = %pod_name(pod), key = %key, owner = %owner,
                      "DEL names a registration of another pod; ignored");
                return Ok(());
            }
        }
        if let Some(e) = st.enrolled.remove(key) {
            self.release(key, e);
        }
        if let Some(info) = st.known.remove(key) {
            info!(pod = %pod_name(&info), "pod removed");
        }
        self.proxy.recorder.metrics().enrolled_pods.set(st.enrolled.len() as i64);
        self.registry.save(&st.known)?;
        Ok(())
    }

    /// CNI CHECK: true when the pod's enrollment matches the config.
    pub async fn check(&self, key: &str) -> Result<bool, String> {
        let st = self.state.lock().await;
        let Some(info) = st.known.get(key) else {
            return Err(format!("pod {key} is not known to this agent"));
        };
        let want = self.store.load().enrollment(&info.namespace, &info.name) == EnrollDecision::Enrolled;
        let have = st.enrolled.contains_key(key);
        if want == have { Ok(have) } else { Err(format!("enrolled={have}, config wants enrolled={want}")) }
    }

    /// Brings every known pod to the state the current snapshot asks for.
    pub async fn reconcile(&self) {
        let snap = self.store.load();
        let mut st = self.state.lock().await;
        if st.retired {
            return;
        }
        let known: Vec<PodRef> = st.known.values().cloned().collect();
        for info in known {
            let decision = snap.enrollment(&info.namespace, &info.name);
            let listed = snap.pods.contains_key(&(info.namespace.clone(), info.name.clone()));
            if decision == EnrollDecision::Enrolled && !listed {
                // Identity and labels unknown: keep whatever state the pod has until the config lists it.
                continue;
            }
            let want = decision == EnrollDecision::Enrolled;
            let sa = snap.service_account(&info.namespace, &info.name);
            // A new service account means a new identity: enroll again (same sockets).
            let mut reuse = None;
            if want
                && st.enrolled.get(&info.key()).is_some_and(|e| e.service_account != sa)
                && let Some(e) = st.enrolled.remove(&info.key())
            {
                reuse = Some(self.release(&info.key(), e));
            }
            let have = st.enrolled.contains_key(&info.key());
            if want && !have {
                // A registration is enrolled only while its claim still holds (the Pod object may
                // have changed, or a registry written by an older agent holds an unchecked one).
                let object = snap.pods.get(&(info.namespace.clone(), info.name.clone()));
                if let Err(e) = claims::check(&info, &self.claim_facts(&st, &snap, &info, object)) {
                    warn!(pod = %pod_name(&info), reason = e.field(), error = %e, "not enrolling a registered pod");
                    continue;
                }
                match self.enroll(&info, &snap.service_account(&info.namespace, &info.name), reuse).await {
                    Ok(e) => {
                        st.enrolled.insert(info.key(), e);
                    }
                    Err(e) => warn!(error = %e, "enrollment failed; will retry on the next change"),
                }
            } else if !want
                && have
                && let Some(e) = st.enrolled.remove(&info.key())
            {
                self.release(&info.key(), e);
            }
        }
        self.proxy.recorder.metrics().enrolled_pods.set(st.enrolled.len() as i64);
    }

    /// Enrolls one pod: with fresh listeners, or with `inherited` ones a previous agent opened.
    async fn enroll(
        &self,
        info: &PodRef,
        service_account: &str,
        inherited: Option<Vec<(Role, OwnedFd)>>,
    ) -> Result<Enrolled, PodError> {
        let pod = pod_name(info);
        if super::discover::is_process_path(&info.netns) && !super::discover::holds(&info.netns, &info.ips) {
            return Err(PodError::Netns {
                pod: pod.clone(),
                netns: info.netns.display().to_string(),
                source: std::io::Error::other(
                    "the process is gone: this namespace no longer holds the pod's addresses",
                ),
            });
        }
        let netns = Arc::new(NetNs::open(&info.netns).map_err(|source| PodError::Netns {
            pod: pod.clone(),
            netns: info.netns.display().to_string(),
            source,
        })?);
        let handed = inherited.is_some();
        let pl = match inherited {
            Some(fds) => inpod::adopt_listeners(&netns, fds),
            None => inpod::open_listeners(&netns),
        }
        .map_err(|source| PodError::InPod { pod: pod.clone(), source })?;
        let sockets = pl
            .listeners
            .iter()
            .map(|(r, l)| l.as_fd().try_clone_to_owned().map(|fd| (*r, fd)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PodError::Netns {
                pod: pod.clone(),
                netns: info.netns.display().to_string(),
                source,
            })?;
        let has_v6 = info.ips.iter().any(IpAddr::is_ipv6);
        let transparent = match routing::ensure_delivery_routing(&netns, has_v6).await {
            Ok(()) => true,
            Err(e) => {
                warn!(pod = %pod, error = %e, "no delivery route: the app will see the pod's own address as source");
                false
            }
        };
        // Everything that can fail without touching the kernel comes first: no rollback needed.
        let identity = crate::identity::Identity::new(&self.trust_domain, &info.namespace, service_account);
        let tls = crate::identity::tls::server_config(&self.proxy.certs, &identity)
            .map_err(|e| PodError::Tls { pod: pod.clone(), detail: e.to_string() })?;
        // The pod's RST to a transparent delivery SYN (nothing listens on the port) must come back
        // to the agent's socket, not leave the pod towards the client's address: the connect then
        // fails at once instead of after the connect timeout.
        let reflect = if transparent {
            match routing::enable_fwmark_reflect(&netns) {
                Ok(saved) => Some((netns.clone(), saved)),
                Err(e) => {
                    warn!(pod = %pod, error = %e,
                          "connections to closed ports of this pod fail only after the connect timeout");
                    None
                }
            }
        } else {
            None
        };
        let k = &self.proxy.kernel;
        let kerr = |source| PodError::Kernel { pod: pod.clone(), source };
        let result = (|| {
            for ip in &info.ips {
                let want_v6 = ip.is_ipv6();
                let listener = pl.listeners.iter().find(|(r, l)| {
                    *r == Role::Inbound && l.local_addr().map(|a| a.is_ipv6() == want_v6).unwrap_or(false)
                });
                if listener.is_none() {
                    warn!(pod = %pod, %ip, "no inbound listener for this address family; its inbound TCP is refused");
                }
                let fd = listener.map(|(_, l)| l.as_raw_fd());
                k.add_inbound(*ip, fd, pl.netns_cookie).map_err(kerr)?;
            }
            k.attach_sk_lookup(&info.key(), &netns).map_err(kerr)?;
            k.enroll_outbound(pl.netns_cookie).map_err(kerr)
        })();
        let enrolled = |accept_loops, sockets| Enrolled {
            netns_cookie: pl.netns_cookie,
            service_account: service_account.to_string(),
            ips: info.ips.clone(),
            accept_loops,
            sockets,
            reflect: reflect.clone(),
        };
        if let Err(e) = result {
            // Sockets handed over by a running agent: the kernel entries are still its (shared
            // maps); leave them, its sockets keep the pod captured until the reconciler retries.
            if !handed {
                drop(self.release(&info.key(), enrolled(vec![], vec![])));
            }
            return Err(e);
        }
        let ctx = Arc::new(PodCtx {
            tls,
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            service_account: service_account.to_string(),
            trust_domain: self.trust_domain.clone(),
            netns,
            netns_cookie: pl.netns_cookie,
            transparent,
            ips: info.ips.clone(),
            pod_name: info.name.as_str().into(),
            pod_namespace: info.namespace.as_str().into(),
            principal: crate::identity::Identity::new(&self.trust_domain, &info.namespace, service_account)
                .to_string()
                .into(),
        });
        self.proxy.register_local(&ctx);
        let accept_loops = self.proxy.spawn(ctx, pl.listeners);
        info!(pod = %pod, netns_cookie = pl.netns_cookie, ips = ?info.ips, transparent, "pod enrolled");
        Ok(enrolled(accept_loops, sockets))
    }

    /// Registers the pods of `node` that the config lists as enrolled but no CNI call reported
    /// (they ran before sluice was installed): their network namespaces are found on the host by
    /// their addresses ([`super::discover`]). The next [`Pods::reconcile`] enrolls them. Returns
    /// how many were found.
    pub async fn discover(&self, node: &str, places: &super::discover::Where) -> Result<usize, PodError> {
        let snap = self.store.load();
        let wanted: Vec<_> = {
            let st = self.state.lock().await;
            if st.retired {
                return Ok(0);
            }
            snap.pods
                .values()
                .filter(|p| p.node.as_deref() == Some(node) && !p.ips.is_empty())
                .filter(|p| snap.enrollment(&p.namespace, &p.name) == EnrollDecision::Enrolled)
                .filter(|p| !st.knows(&p.namespace, &p.name))
                .cloned()
                .collect()
        };
        if wanted.is_empty() {
            return Ok(0);
        }
        let names: Vec<String> = wanted.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
        {
            let mut last = self.last_scan.lock();
            let wait = match last.as_ref() {
                Some((at, n, wait)) if *n == names => {
                    if at.elapsed() < *wait {
                        return Ok(0);
                    }
                    (*wait * 2).min(RESCAN_MAX)
                }
                _ => RESCAN,
            };
            *last = Some((std::time::Instant::now(), names, wait));
        }
        let places = places.clone();
        let found =
            tokio::task::spawn_blocking(move || super::discover::scan(&places)).await.unwrap_or_default();
        let mut st = self.state.lock().await;
        let mut n = 0;
        for p in wanted {
            // A CNI ADD may have registered it during the scan: that one is authoritative.
            if st.retired || st.knows(&p.namespace, &p.name) {
                continue;
            }
            let Some(f) = super::discover::find(&found, &p.ips) else {
                info!(pod = %format!("{}/{}", p.namespace, p.name), ips = ?p.ips,
                      "pod of this node not found in any network namespace yet");
                continue;
            };
            let pod = PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone().unwrap_or_else(|| format!("{}/{}", p.namespace, p.name)),
                container_id: String::new(),
                netns: f.path.clone(),
                ips: p.ips.clone(),
            };
            info!(pod = %pod_name(&pod), netns = %f.path.display(), "found a pod that ran before sluice; enrolling it");
            st.known.insert(pod.key(), pod);
            n += 1;
        }
        if n > 0 {
            self.registry.save(&st.known)?;
        }
        Ok(n)
    }

    /// The new agent's side of a handover: registers every pod the old agent knew and enrolls the
    /// enrolled ones with the sockets received (then [`Pods::readopt`] brings everything to what
    /// the config says and re-adopts what the handover did not carry).
    pub async fn adopt(&self, inherited: Vec<InheritedPod>) -> Result<usize, PodError> {
        let snap = self.store.load();
        let mut st = self.state.lock().await;
        let mut adopted = 0;
        for InheritedPod { pod, listeners } in inherited {
            let key = pod.key();
            if !listeners.is_empty() {
                let sa = snap.service_account(&pod.namespace, &pod.name);
                match self.enroll(&pod, &sa, Some(listeners)).await {
                    Ok(e) => {
                        st.enrolled.insert(key.clone(), e);
                        adopted += 1;
                    }
                    // Its sockets close with the old agent; the pod fails closed until the
                    // reconciler opens new ones.
                    Err(e) => warn!(error = %e, "cannot adopt a handed-over pod; it is enrolled afresh"),
                }
            }
            st.known.insert(key, pod);
        }
        self.registry.save(&st.known)?;
        self.proxy.recorder.metrics().enrolled_pods.set(st.enrolled.len() as i64);
        Ok(adopted)
    }

    /// Uninstall: releases every enrolled pod (its traffic is plain again), forgets them all and
    /// stops acting on anything. Returns how many were released.
    pub async fn release_all(&self) -> usize {
        let mut st = self.state.lock().await;
        st.retired = true;
        let enrolled: Vec<(String, Enrolled)> = st.enrolled.drain().collect();
        let n = enrolled.len();
        for (key, e) in enrolled {
            drop(self.release(&key, e));
        }
        st.known.clear();
        if let Err(e) = self.registry.save(&st.known) {
            warn!(error = %e, "cannot clear the pod registry");
        }
        self.proxy.recorder.metrics().enrolled_pods.set(0);
        n
    }

    /// The old agent's side of a handover, on an accepted channel: sends every pod with its
    /// sockets and, once the new agent has taken them, stops acting on them (no kernel state is
    /// released: it is the new agent's now). CNI calls wait meanwhile. Returns the pod count.
    pub async fn hand_over(&self, ch: &Channel) -> Result<usize, HandoverError> {
        let theirs = handover::greet(ch)?;
        let mut st = self.state.lock().await;
        if st.retired {
            return Err(HandoverError::Protocol("this agent has handed over already".into()));
        }
        info!(to = %theirs, pods = st.known.len(), "handing pods over to a new agent");
        for (key, pod) in &st.known {
            let (roles, fds): (Vec<Role>, Vec<_>) = st
                .enrolled
                .get(key)
                .map(|e| e.sockets.iter().map(|(r, fd)| (*r, fd.as_raw_fd())).unzip())
                .unwrap_or_default();
            ch.send(&Msg::Pod { pod: pod.clone(), roles }, &fds)?;
        }
        ch.send(&Msg::Done { pods: st.known.len() }, &[])?;
        match ch.recv()? {
            (Msg::Taken, _) => {}
            (other, _) => return Err(HandoverError::Protocol(format!("expected taken, got {other:?}"))),
        }
        st.retired = true;
        for (_, e) in st.enrolled.drain() {
            for t in e.accept_loops {
                t.abort();
            }
        }
        info!(pods = st.known.len(), "pods handed over; no longer accepting");
        Ok(st.known.len())
    }

    /// Undoes an enrollment; returns the pod's listening sockets (closed when dropped) for a
    /// re-enrollment in the same namespace.
    fn release(&self, key: &str, e: Enrolled) -> Vec<(Role, OwnedFd)> {
        let k = &self.proxy.kernel;
        if let Err(err) = k.release_outbound(e.netns_cookie) {
            warn!(error = %err, "release: outbound");
        }
        for ip in &e.ips {
            if let Err(err) = k.remove_inbound(*ip, e.netns_cookie) {
                warn!(error = %err, "release: inbound");
            }
        }
        if let Err(err) = k.detach_sk_lookup(key) {
            warn!(error = %err, "release: sk_lookup");
        }
        if let Some((netns, saved)) = &e.reflect
            && let Err(err) = routing::restore_sysctls(netns, saved)
        {
            warn!(pod = key, error = %err, "release: fwmark_reflect");
        }
        for t in e.accept_loops {
            t.abort();
        }
        self.proxy.pool.forget_pod(e.netns_cookie);
        self.proxy.forget_local(&e.ips, e.netns_cookie);
        info!(pod = key, "pod released");
        e.sockets
    }

    pub async fn status(&self) -> Vec<PodStatus> {
        let snap = self.store.load();
        let st = self.state.lock().await;
        st.known
            .values()
            .map(|p| {
                let e = st.enrolled.get(&p.key());
                PodStatus {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    netns: p.netns.display().to_string(),
                    ips: p.ips.clone(),
                    enrolled: e.is_some(),
                    reason: match snap.enrollment(&p.namespace, &p.name) {
                        EnrollDecision::Enrolled => "enrolled".into(),
                        EnrollDecision::NotEnrolled(r) => r.into(),
                    },
                    netns_cookie: e.map(|e| e.netns_cookie),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, container: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: "uid-1".into(),
            container_id: container.into(),
            netns: "/var/run/netns/x".into(),
            ips: vec![],
        }
    }

    #[test]
    fn a_del_removes_only_the_registration_of_the_pod_it_names() {
        let victim = pod("mesh", "victim", "c1");
        let discovered = pod("mesh", "victim", "");
        let rows: Vec<(&str, Option<&PodRef>, PodRef, DelVerdict)> = vec![
            ("nothing registered", None, pod("mesh", "victim", "c1"), DelVerdict::Applies),
            ("its own sandbox", Some(&victim), pod("mesh", "victim", "c1"), DelVerdict::Applies),
            ("an older sandbox", Some(&victim), pod("mesh", "victim", "c0"), DelVerdict::OlderSandbox),
            (
                "another pod naming the victim's uid",
                Some(&victim),
                pod("mesh", "evil", "c1"),
                DelVerdict::OtherPod("mesh/victim".into()),
            ),
            (
                "same name in another namespace",
                Some(&victim),
                pod("plain", "victim", "c1"),
                DelVerdict::OtherPod("mesh/victim".into()),
            ),
            (
                "a discovered pod (no container id)",
                Some(&discovered),
                pod("mesh", "victim", "c9"),
                DelVerdict::Applies,
            ),
        ];
        for (row, registered, del, want) in rows {
            assert_eq!(del_applies(registered, &del), want, "{row}");
        }
    }
}
