//! Tests of the Kubernetes source against the fake API server ([`super::fake_api`]) replaying
//! recorded API objects, and of `deploy/rbac.yaml` against the watched kinds.
use std::{
    collections::BTreeSet,
    io::Write,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

use super::{
    Options, SyncError, Synced,
    fake_api::{FakeApi, resource_name},
    kinds::WATCHED,
    sync,
};
use crate::config::{
    EnrollDecision, Snapshot, SnapshotStore,
    kinds::{authorization_policy::Action, peer_authentication::MtlsMode},
    yaml,
};

const PODS: &str = "pods";
const AUTHZ: &str = "authorizationpolicies.security.istio.io";
const WEB1: &str = "web-7d9f8b6c5d-abcde";
const WEB2: &str = "web-7d9f8b6c5d-fghij";
const WEB3: &str = "web-7d9f8b6c5d-klmno";
const WEB4: &str = "web-7d9f8b6c5d-pqrst";

fn options() -> Options {
    Options { debounce: Duration::from_millis(20), sync_timeout: Duration::from_secs(10) }
}

async fn synced(api: &FakeApi) -> Synced {
    match sync(api.client(), options()).await {
        Ok(s) => s,
        Err(e) => panic!("sync failed: {e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn pod_names(s: &Snapshot, ns: &str) -> BTreeSet<String> {
    s.pods.keys().filter(|(n, _)| n == ns).map(|(_, p)| p.clone()).collect()
}

/// Waits until the stored snapshot satisfies `pred` (at most 10 s).
async fn wait_for(store: &SnapshotStore, what: &str, pred: impl Fn(&Snapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred(&store.load()) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the store recorded `n` rejected changes (at most 10 s).
async fn wait_rejections(store: &SnapshotStore, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.rejections().total < n {
        assert!(Instant::now() < deadline, "timed out waiting for {n} rejection(s)");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `resource`'s queued events were streamed, then long enough for a recompile.
async fn settle(api: &FakeApi, resource: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api.drained(resource) {
        assert!(Instant::now() < deadline, "events of {resource} never streamed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// Captures formatted log lines of the current thread (tokio tests run on one thread).
#[derive(Clone, Default)]
struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sub = tracing_subscriber::fmt().with_writer(self.clone()).with_ansi(false).finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn initial_sync_compiles_the_recorded_cluster() {
    let api = FakeApi::start().await;
    let Synced { snapshot: s, warnings, .. } = synced(&api).await;

    let ns: BTreeSet<&str> = s.namespaces.keys().map(String::as_str).collect();
    assert_eq!(ns, BTreeSet::from(["istio-system", "kube-system", "legacy", "shop"]));
    assert_eq!(
        s.namespaces["shop"].labels.get("istio.io/dataplane-mode").map(String::as_str),
        Some("ambient")
    );
    assert_eq!(s.pods.len(), 6);
    assert_eq!(s.enrollment("shop", WEB1), EnrollDecision::Enrolled);
    assert!(matches!(s.enrollment("legacy", "x"), EnrollDecision::NotEnrolled(_)));
    assert_eq!(s.service_account("shop", WEB1), "web");
    // hostNetwork pods (same node address) and finished pods claim no address.
    assert_eq!(s.workload_by_ip(ip("10.244.2.5")).map(|p| p.name.as_str()), Some("db-0"));
    assert!(s.workload_by_ip(ip("172.18.0.2")).is_none());
    assert!(s.workload_by_ip(ip("10.244.1.12")).is_none());

    assert_eq!(s.services.len(), 3);
    let (web, port) = s.service_by_vip("10.96.10.10:80".parse().expect("addr")).expect("web vip");
    assert_eq!((web.name.as_str(), port.target_port), ("web", 8080));
    assert_eq!(web.endpoints, vec![ip("10.244.1.10"), ip("10.244.1.11")]);

    assert_eq!(s.peer_authentications.len(), 1);
    let pa = &s.peer_authentications[0];
    assert_eq!((pa.namespace.as_str(), pa.name.as_str()), ("istio-system", "default"));
    assert_eq!(pa.spec.mtls.as_ref().map(|m| m.mode), Some(MtlsMode::Strict));
    let mut authz: Vec<(&str, Action)> =
        s.authorization_policies.iter().map(|p| (p.name.as_str(), p.spec.action)).collect();
    authz.sort_by_key(|a| a.0);
    assert_eq!(authz, [("allow-web", Action::Allow), ("deny-legacy", Action::Deny)]);

    // L7 kinds arrive for the waypoint: routing config and the waypoint Gateway itself.
    assert!(
        s.destination_rules.iter().any(|d| d.namespace == "shop" && d.name == "web"),
        "{:?}",
        s.destination_rules
    );
    assert!(
        s.waypoint_for.contains_key(&("shop".to_string(), "waypoint".to_string())),
        "{:?}",
        s.waypoint_for
    );
    let _ = warnings;
    for k in WATCHED {
        assert_eq!(api.lists(&resource_name(k)), 1, "{}", k.label());
    }
}

#[tokio::test]
async fn added_modified_deleted_events_change_the_snapshot() {
    let api = FakeApi::start().await;
    let synced = synced(&api).await;
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    api.push(PODS, "watch/pods-changes.jsonl");
    api.push("services", "watch/services-changes.jsonl");
    wait_for(&store, "web-3 added, web-1 relabelled, db-0 deleted, web ports changed", |s| {
        s.pods.contains_key(&("shop".into(), WEB3.into()))
            && !s.pods.contains_key(&("shop".into(), "db-0".into()))
            && s.pods
                .get(&("shop".into(), WEB1.into()))
                .and_then(|p| p.labels.get("version"))
                .map(String::as_str)
                == Some("v2")
            && s.service_by_vip("10.96.10.10:9090".parse().expect("addr")).is_some()
    })
    .await;
    let s = store.load();
    assert_eq!(
        pod_names(&s, "shop"),
        BTreeSet::from([WEB1.into(), WEB2.into(), WEB3.into(), "report-29123400-xk2lp".into()])
    );
    let web = &s.services[&("shop".to_string(), "web".to_string())];
    assert_eq!(web.endpoints, vec![ip("10.244.1.10"), ip("10.244.1.11"), ip("10.244.1.13")]);
    assert!(s.services[&("shop".to_string(), "db".to_string())].endpoints.is_empty());
    assert_eq!(api.lists(PODS), 1, "plain events must not cause a relist");
}

#[tokio::test]
async fn bookmarks_are_tolerated() {
    let api = FakeApi::start().await;
    let logs = Logs::default();
    let _log = logs.install();
    let synced = synced(&api).await;
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    api.push(PODS, "watch/pods-bookmarks.jsonl");
    settle(&api, PODS).await;
    assert_eq!(store.generation(), 0, "bookmarks change nothing");
    api.push(PODS, "watch/pods-changes.jsonl"); // carries bookmarks between the changes too
    wait_for(&store, "web-3 added", |s| s.pods.contains_key(&("shop".into(), WEB3.into()))).await;
    assert_eq!((api.lists(PODS), api.watches(PODS)), (1, 1), "no relist, no reconnect");
    assert!(!logs.text().contains("watch error"), "{}", logs.text());

    // A bookmark without apiVersion/kind (only metadata.resourceVersion) may not decode in kube:
    // at most one warning (whether kube reports it depends on how the lines arrive in chunks), then
    // the same stream goes on (no relist, no reconnect, nothing lost).
    api.push(PODS, "watch/pods-bookmark-bare.jsonl");
    api.push(PODS, "watch/pods-fixed.jsonl");
    wait_for(&store, "web-2 readdressed", |s| {
        s.workload_by_ip(ip("10.244.1.21")).map(|p| p.name.as_str()) == Some(WEB2)
    })
    .await;
    assert_eq!((api.lists(PODS), api.watches(PODS)), (1, 1), "no relist, no reconnect");
    assert!(logs.text().matches("watch error").count() <= 1, "{}", logs.text());
}

#[tokio::test]
async fn expired_watch_relists_and_the_final_state_is_right() {
    let api = FakeApi::start().await;
    let logs = Logs::default();
    let _log = logs.install();
    let synced = synced(&api).await;
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    // While the watch was gone: web-2 and db-0 went away, web-4 appeared. Only a relist shows it.
    api.set_list(PODS, "relist/pods.json");
    api.push(PODS, "watch/expired.jsonl");
    let want = BTreeSet::from([WEB1.to_string(), WEB4.to_string()]);
    wait_for(&store, "the relisted pods", |s| pod_names(s, "shop") == want).await;
    assert_eq!(api.lists(PODS), 2, "410 Gone must relist");
    let s = store.load();
    assert_eq!(pod_names(&s, "kube-system"), BTreeSet::from(["kube-proxy-8x7kd".to_string()]));
    let web = &s.services[&("shop".to_string(), "web".to_string())];
    assert_eq!(web.endpoints, vec![ip("10.244.1.10"), ip("10.244.1.14")]);
    assert_eq!(s.authorization_policies.len(), 2, "other kinds are untouched");
    assert!(logs.text().contains("relisting"), "{}", logs.text());
}

#[tokio::test]
async fn absent_istio_crds_warn_once_and_installing_them_later_works() {
    let api = FakeApi::start().await;
    let istio: Vec<String> =
        WATCHED.iter().filter(|k| k.group.ends_with("istio.io")).map(resource_name).collect();
    assert_eq!(istio.len(), 8);
    for r in &istio {
        api.absent(r);
    }
    let logs = Logs::default();
    let _log = logs.install();
    let synced = synced(&api).await;
    let s = &synced.snapshot;
    assert!(s.peer_authentications.is_empty() && s.authorization_policies.is_empty());
    assert_eq!(s.pods.len(), 6);
    assert_eq!(s.services.len(), 3);
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    // Still retried with backoff; only a change of state is logged.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(api.lists(AUTHZ) >= 2, "absent APIs are retried");
    let text = logs.text();
    for r in &istio {
        let n = text
            .lines()
            .filter(|l| {
                l.split_whitespace().any(|w| w == format!("crd={r}")) && l.contains("CRD not installed")
            })
            .count();
        assert_eq!(n, 1, "{r} warned once:\n{text}");
    }
    assert!(text.contains("no AuthorizationPolicy applies"), "{text}");

    // Installing the CRDs later: the objects appear.
    api.set_list(AUTHZ, &format!("lists/{AUTHZ}.json"));
    wait_for(&store, "authorization policies", |s| s.authorization_policies.len() == 2).await;
}

#[tokio::test]
async fn a_crd_removed_while_running_empties_its_kind_until_reinstalled() {
    let api = FakeApi::start().await;
    let synced = synced(&api).await;
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    // The CRD goes away (Kubernetes deletes its objects with it): the watch expires, the relist
    // answers 404, and the kind counts as empty.
    api.absent(AUTHZ);
    api.push(AUTHZ, "watch/expired.jsonl");
    wait_for(&store, "no authorization policies", |s| s.authorization_policies.is_empty()).await;
    assert_eq!(store.load().pods.len(), 6, "other kinds are untouched");
    api.set_list(AUTHZ, &format!("lists/{AUTHZ}.json"));
    wait_for(&store, "policies back", |s| s.authorization_policies.len() == 2).await;
}

#[tokio::test]
async fn invalid_object_keeps_the_last_good_snapshot_until_fixed() {
    let api = FakeApi::start().await;
    let logs = Logs::default();
    let _log = logs.install();
    let synced = synced(&api).await;
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    api.push(PODS, "watch/pods-invalid.jsonl");
    wait_rejections(&store, 1).await;
    assert_eq!(store.generation(), 0, "a broken change must not be stored");
    assert_eq!(store.load().workload_by_ip(ip("10.244.1.11")).map(|p| p.name.as_str()), Some(WEB2));
    let text = logs.text();
    assert!(text.contains("kubernetes:Pod/shop/web-7d9f8b6c5d-fghij"), "{text}");
    assert!(text.contains("is not an IP address"), "{text}");
    assert!(text.contains("keeping the last good config"), "{text}");
    let rejected = store.rejections();
    assert!(rejected.total >= 1, "the rejection is recorded on the store");
    assert!(
        rejected.current.as_deref().is_some_and(|c| c.contains("kubernetes:Pod/shop/web-7d9f8b6c5d-fghij"))
    );

    api.push(PODS, "watch/pods-fixed.jsonl");
    wait_for(&store, "the fixed pod", |s| {
        s.workload_by_ip(ip("10.244.1.21")).map(|p| p.name.as_str()) == Some(WEB2)
    })
    .await;
    assert!(store.load().workload_by_ip(ip("10.244.1.11")).is_none());
    assert!(store.rejections().current.is_none(), "the fix clears the error");
}

#[tokio::test]
async fn a_broken_deny_policy_is_never_dropped() {
    let api = FakeApi::start().await;
    let synced = synced(&api).await;
    let store = SnapshotStore::new(synced.snapshot);
    let _guard = synced.follower.follow(store.clone());

    // DENY -> CUSTOM (not supported): the compile is rejected, the DENY stays in force.
    api.push(AUTHZ, "watch/authorizationpolicies-custom.jsonl");
    wait_rejections(&store, 1).await;
    // Another, valid change still compiles with the broken policy in the view: still rejected.
    api.push(PODS, "watch/pods-changes.jsonl");
    settle(&api, PODS).await;
    wait_rejections(&store, 2).await;
    let s = store.load();
    assert_eq!(store.generation(), 0);
    assert!(
        s.authorization_policies.iter().any(|p| p.name == "deny-legacy" && p.spec.action == Action::Deny)
    );
}

#[tokio::test]
async fn an_api_that_never_lists_is_a_clear_sync_timeout() {
    let api = FakeApi::start().await;
    api.failing("services");
    let opts = Options { sync_timeout: Duration::from_millis(1500), ..options() };
    let Err(e) = sync(api.client(), opts).await else { panic!("synced without services") };
    assert!(matches!(&e, SyncError::Timeout { kinds, .. } if kinds == &["v1 Service"]), "{e}");
    let text = e.to_string();
    assert!(text.contains("v1 Service") && text.contains("deploy/rbac.yaml"), "{text}");
}

#[tokio::test]
async fn a_broken_first_view_is_rejected_with_every_error() {
    let api = FakeApi::start().await;
    api.set_list(AUTHZ, &format!("broken/{AUTHZ}.json"));
    let Err(e) = sync(api.client(), options()).await else { panic!("broken first view accepted") };
    let SyncError::Rejected(r) = e else { panic!("not a rejection: {e}") };
    let errors: Vec<String> = r.diagnostics.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("kubernetes:AuthorizationPolicy/shop/deny-legacy:"), "{}", errors[0]);
    assert!(errors[0].contains("field `spec.action`: CUSTOM"), "{}", errors[0]);
}

/// `deploy/rbac.yaml` grants get/list/watch on every watched resource and nothing else.
#[test]
fn rbac_covers_every_watched_resource_read_only() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/rbac.yaml");
    let docs = yaml::parse(&text).expect("valid YAML");
    let by_kind =
        |k: &str| docs.iter().filter(|d| d.value["kind"] == k).map(|d| &d.value).collect::<Vec<_>>();

    let sa = by_kind("ServiceAccount");
    assert_eq!(sa.len(), 1);
    assert_eq!(
        (sa[0]["metadata"]["name"].as_str(), sa[0]["metadata"]["namespace"].as_str()),
        (Some("sluice"), Some("sluice-system"))
    );
    let roles = by_kind("ClusterRole");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["metadata"]["name"], "sluice-agent");
    let binding = by_kind("ClusterRoleBinding");
    assert_eq!(binding.len(), 1);
    assert_eq!(binding[0]["roleRef"]["name"], "sluice-agent");
    assert_eq!(binding[0]["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding[0]["subjects"][0]["name"], "sluice");
    assert_eq!(binding[0]["subjects"][0]["namespace"], "sluice-system");

    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().expect("list").iter().map(|s| s.as_str().expect("string").to_string()).collect()
    };
    // (group, resource) -> verbs granted.
    let mut granted: std::collections::BTreeMap<(String, String), BTreeSet<String>> = Default::default();
    for rule in roles[0]["rules"].as_array().expect("rules") {
        let verbs = strings(&rule["verbs"]);
        for v in &verbs {
            assert!(["get", "list", "watch"].contains(&v.as_str()), "verb {v} is not read-only");
        }
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                assert!(g != "*" && r != "*", "no wildcards");
                granted.entry((g.clone(), r)).or_default().extend(verbs.iter().cloned());
            }
        }
    }
    let mut want: BTreeSet<(String, String)> =
        WATCHED.iter().map(|k| (k.group.to_string(), k.plural.to_string())).collect();
    for k in WATCHED {
        let verbs = granted.get(&(k.group.to_string(), k.plural.to_string()));
        let all = ["get", "list", "watch"].iter().all(|v| verbs.is_some_and(|s| s.contains(*v)));
        assert!(all, "{} needs get/list/watch", k.label());
    }
    want.insert((String::new(), "nodes".into()));
    want.insert(("discovery.k8s.io".into(), "endpointslices".into()));
    assert_eq!(granted.keys().cloned().collect::<BTreeSet<_>>(), want, "exactly the watched resources");
}
