//! CNI claims are checked, not trusted: a CNI ADD that claims another pod's addresses or network
//! namespace is refused with a named CNI error and changes nothing, a DEL never removes what
//! another pod owns, and a refused ADD leaves no registration behind (not even across a restart).
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use sluice_e2e::{
    Cluster, Pod,
    cluster::{PodSpec, scaled},
    probe::Probe,
    require_root, wait_until,
};

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_sl-probe"))
}

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n";

/// The sluice-cni network config for node 1, with a primary CNI result listing `ips`.
fn sluice_conf(c: &Cluster) -> Value {
    json!({"type": "sluice-cni", "agentSocket": c.agent_socket(1)})
}

fn prev_result(ips: &[IpAddr]) -> Value {
    let ips: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"address": format!("{ip}/{}", if ip.is_ipv4() { 24 } else { 64 }), "interface": 0}))
        .collect();
    json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": ips})
}

fn ips(p: &Pod) -> Vec<IpAddr> {
    std::iter::once(p.ipv4).chain(p.ipv6).collect()
}

/// The CNI error JSON sluice-cni printed (the first `{...}` line of its output).
fn cni_error(out: &str) -> Value {
    let line = out.find('{').map_or("", |i| out[i..].lines().next().unwrap_or(""));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("no CNI error JSON in {out:?}: {e}"))
}

/// `/debug/pods` as JSON: the entry of pod `name`, if registered.
fn status_of(c: &Cluster, name: &str) -> Option<Value> {
    let st: Value = serde_json::from_str(&c.agent_get(1, "/debug/pods").expect("status")).expect("json");
    st.as_array().expect("array").iter().find(|p| p["name"] == name).cloned()
}

fn refusals(c: &Cluster, reason: &str) -> f64 {
    c.metric(1, "sluice_cni_refusals_total", &[("reason", reason)]).expect("metrics")
}

#[test]
fn an_add_claiming_an_enrolled_pods_address_is_refused_and_its_del_leaves_that_pod_alone() {
    if !require_root("an_add_claiming_an_enrolled_pods_address_is_refused_and_its_del_leaves_that_pod_alone")
    {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent");
    let victim = c.add_pod_spec(1, PodSpec::new("mesh", "victim").label("app", "victim")).expect("victim");
    let evil = c.add_pod(1, "mesh", "evil").expect("evil");
    let outsider = c.add_pod(1, "plain", "outsider").expect("outsider");
    let p = probe();
    p.serve(&c, &victim, &[8080]).expect("serve");
    c.apply_config(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-victim, namespace: mesh}\nspec:\n  selector: {matchLabels: {app: victim}}\n  action: DENY\n  rules: [{}]\n",
    )
    .expect("DENY");
    let to_victim = SocketAddr::new(victim.ipv4, 8080);
    let plain = |what: &str| p.client(&c, &outsider, to_victim, 2048, 0).expect(what);
    let r = plain("before");
    assert!(!r.ok, "the DENY must hold before the attack: {r:?}");

    // evil's runtime claims the victim's addresses.
    let before = refusals(&c, "ips");
    let claimed = prev_result(&ips(&victim));
    let err = c
        .cni(1, &evil, "ADD", sluice_conf(&c), Some(claimed.clone()))
        .expect_err("the claim must be refused");
    let e = cni_error(&err);
    assert_eq!(e["code"], 100, "{err}");
    let text = format!("{} {}", e["msg"], e["details"]);
    for want in ["mesh/evil", "mesh/victim", &victim.ipv4.to_string(), "ips"] {
        assert!(text.contains(want), "the error must name {want}: {text}");
    }
    assert_eq!(refusals(&c, "ips"), before + 1.0, "refusal not counted");

    // Nor may it take over the victim's registration by sending the victim's UID (the key a
    // re-ADD replaces) with its own name and addresses.
    let mut with_victims_uid = evil.clone();
    with_victims_uid.uid = victim.uid.clone();
    let err = c
        .cni(1, &with_victims_uid, "ADD", sluice_conf(&c), Some(prev_result(&ips(&evil))))
        .expect_err("the victim's UID must be refused");
    assert!(err.contains("\"code\":100") && err.contains("mesh/victim"), "{err}");
    assert_eq!(status_of(&c, "victim").expect("victim registered")["enrolled"], true);
    // A DEL with the victim's UID but evil's name does not release the victim either.
    c.cni(1, &with_victims_uid, "DEL", sluice_conf(&c), Some(prev_result(&ips(&victim)))).expect("DEL");
    assert_eq!(status_of(&c, "victim").expect("victim registered")["enrolled"], true);
    assert!(c.agent_log(1).contains("DEL names a registration of another pod"), "{}", c.agent_log(1));

    // Its DEL (same addresses) removes nothing of the victim's.
    c.cni(1, &evil, "DEL", sluice_conf(&c), Some(claimed)).expect("DEL succeeds");
    let r = plain("after the DEL");
    assert!(!r.ok, "plaintext from outside reached the victim despite the DENY: {r:?}");
    let st = status_of(&c, "victim").expect("victim registered");
    assert_eq!(st["enrolled"], true, "{st}");
    // Still steered: the DENY is the agent's answer, counted as a refusal at the victim.
    let denied = c
        .metric(1, "sluice_proxy_failures_total", &[("direction", "inbound"), ("reason", "DENY")])
        .expect("metrics");
    let r = plain("once more");
    assert!(!r.ok);
    assert!(
        wait_until(scaled(std::time::Duration::from_secs(5)), || {
            c.metric(1, "sluice_proxy_failures_total", &[("direction", "inbound"), ("reason", "DENY")])
                .is_ok_and(|v| v > denied)
        }),
        "the victim's inbound is no longer steered to the agent"
    );
}

#[test]
fn an_add_naming_a_mesh_pod_with_another_pods_netns_is_refused_and_leaves_nothing() {
    if !require_root("an_add_naming_a_mesh_pod_with_another_pods_netns_is_refused_and_leaves_nothing") {
        return;
    }
    let c = Cluster::new(1).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent");
    let a = c.add_pod(1, "mesh", "a").expect("mesh pod a");
    let b = c.add_pod(1, "plain", "b").expect("plain pod b");
    assert_eq!(status_of(&c, "b").expect("b registered")["enrolled"], false);

    // An ADD with a's name and UID, but b's network namespace and addresses.
    let mut forged = a.clone();
    forged.netns = b.netns.clone();
    let err = c
        .cni(1, &forged, "ADD", sluice_conf(&c), Some(prev_result(&ips(&b))))
        .expect_err("the claim must be refused");
    let e = cni_error(&err);
    assert_eq!(e["code"], 100, "{err}");
    let text = format!("{} {}", e["msg"], e["details"]);
    for want in ["mesh/a", "plain/b"] {
        assert!(text.contains(want), "the error must name {want}: {text}");
    }
    // Nothing changed: a is enrolled in its own namespace, b's is not enrolled under any name.
    let st_a = status_of(&c, "a").expect("a registered");
    assert_eq!(st_a["enrolled"], true, "{st_a}");
    assert!(st_a["netns"].as_str().is_some_and(|n| n.ends_with(&a.netns)), "{st_a}");
    assert_eq!(status_of(&c, "b").expect("b registered")["enrolled"], false);
    let redirected = |c: &Cluster| {
        c.metric(1, "sluice_redirect_decisions_total", &[("decision", "outbound_redirected")])
            .expect("metrics")
    };
    let p = probe();
    p.serve(&c, &a, &[8080]).expect("serve");
    let before = redirected(&c);
    let _ = p.client(&c, &b, SocketAddr::new(a.ipv4, 8080), 2048, 0).expect("client");
    assert_eq!(redirected(&c), before, "b's outbound traffic is captured: its netns was enrolled");

    // Each half of the claim alone is refused too: b's namespace with a's own addresses, and b's
    // addresses in a's own namespace.
    let err = c
        .cni(1, &forged, "ADD", sluice_conf(&c), Some(prev_result(&ips(&a))))
        .expect_err("another pod's namespace");
    let e = cni_error(&err);
    assert_eq!(e["code"], 100, "{err}");
    assert!(e["msg"].as_str().is_some_and(|m| m.contains("netns")), "{err}");
    assert!(
        e["details"].as_str().is_some_and(|d| d.contains("network namespace") && d.contains("plain/b")),
        "{err}"
    );
    let err = c
        .cni(1, &a, "ADD", sluice_conf(&c), Some(prev_result(&ips(&b))))
        .expect_err("addresses of another pod");
    assert!(err.contains("plain/b"), "{err}");
    assert_eq!(status_of(&c, "a").expect("a registered")["enrolled"], true);

    // A refused ADD of a pod not registered before leaves no registration, also on disk: a pod the
    // config does not list yet, and a published one whose claim conflicts.
    let (_, res) =
        c.try_add_pod_spec(1, PodSpec { unpublished: true, ..PodSpec::new("mesh", "ghost") }).expect("pod");
    assert!(res.expect_err("unknown to the config").contains("not in the mesh config"));
    let mut thief = b.clone();
    (thief.name, thief.uid) = ("thief".into(), format!("{}-thief", b.uid));
    let err = c.cni(1, &thief, "ADD", sluice_conf(&c), Some(prev_result(&ips(&b)))).expect_err("thief");
    assert!(err.contains("plain/b"), "{err}");
    let registry = c.agent_socket(1).with_file_name("pods.json");
    let persisted = std::fs::read_to_string(&registry).expect("registry");
    for name in ["ghost", "thief"] {
        assert!(status_of(&c, name).is_none(), "{name} is registered after a refused ADD");
        assert!(!persisted.contains(&format!("\"{name}\"")), "{name} persisted: {persisted}");
    }
    c.kill_agent(1).expect("kill");
    c.start_agent(1).expect("restart");
    for name in ["ghost", "thief"] {
        assert!(status_of(&c, name).is_none(), "{name} is registered after a restart");
    }
    assert_eq!(status_of(&c, "a").expect("a")["enrolled"], true);
}
