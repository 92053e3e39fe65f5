//! Policy end to end: PeerAuthentication and L4 AuthorizationPolicy enforced by real agents on real
//! connections (plaintext from outside the mesh, HBONE from mesh pods).
use std::net::SocketAddr;

use sluice_e2e::{
    Cluster, Pod,
    cluster::{PodSpec, scaled},
    probe::Probe,
    require_root,
};

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_sl-probe"))
}

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: mesh2, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n";

struct World {
    c: Cluster,
    server: Pod,
    a: Pod,
    b: Pod,
    other_ns: Pod,
    outsider: Pod,
}

fn world() -> World {
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let server = c.add_pod_spec(2, PodSpec::new("mesh", "server").label("app", "server")).expect("server");
    let a = c.add_pod(1, "mesh", "client-a").expect("a");
    let b = c.add_pod(1, "mesh", "client-b").expect("b");
    let other_ns = c.add_pod(2, "mesh2", "client-c").expect("c");
    let outsider = c.add_pod(1, "plain", "outsider").expect("outsider");
    probe().serve(&c, &server, &[8080, 9090]).expect("serve");
    World { c, server, a, b, other_ns, outsider }
}

/// (row name, policy YAML, expected outcome per port)
type PeerAuthnRow = (&'static str, &'static str, [(u16, bool); 2]);
/// (row name, policy YAML, (client, port, allowed) checks)
type AuthzRow<'a> = (String, String, Vec<(&'a Pod, u16, bool)>);

fn connects(w: &World, from: &Pod, port: u16) -> bool {
    let r = probe().client(&w.c, from, SocketAddr::new(w.server.ipv4, port), 2048, 0).expect("client");
    r.ok
}

#[test]
fn peer_authentication_strict_permissive_disable_against_a_client_outside_the_mesh() {
    if !require_root("peer_authentication_strict_permissive_disable_against_a_client_outside_the_mesh") {
        return;
    }
    let w = world();
    let rows: Vec<PeerAuthnRow> = vec![
        ("no policy: PERMISSIVE by default", "", [(8080, true), (9090, true)]),
        (
            "mesh-wide STRICT",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
            [(8080, false), (9090, false)],
        ),
        (
            "namespace PERMISSIVE over mesh STRICT",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: mesh}\nspec: {mtls: {mode: PERMISSIVE}}\n",
            [(8080, true), (9090, true)],
        ),
        (
            "namespace DISABLE",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: mesh}\nspec: {mtls: {mode: DISABLE}}\n",
            [(8080, true), (9090, true)],
        ),
        (
            "workload STRICT with port 9090 PERMISSIVE",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: server, namespace: mesh}\nspec:\n  selector: {matchLabels: {app: server}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {\"9090\": {mode: PERMISSIVE}}\n",
            [(8080, false), (9090, true)],
        ),
    ];
    for (name, yaml, expect) in rows {
        w.c.apply_config(
            "peerauthn.yaml",
            if yaml.is_empty() {
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: placeholder}\n"
            } else {
                yaml
            },
        )
        .expect(name);
        for (port, ok) in expect {
            assert_eq!(connects(&w, &w.outsider, port), ok, "{name}: plaintext to {port}");
            assert!(connects(&w, &w.a, port), "{name}: mesh clients (HBONE) always pass to {port}");
        }
    }
    let refused = w
        .c
        .metric(2, "sluice_proxy_failures_total", &[("direction", "inbound"), ("reason", "mtls_required")])
        .expect("m");
    assert_eq!(refused, 3.0, "every refused plaintext connection is counted");
}

#[test]
fn authorization_policies_at_l4() {
    if !require_root("authorization_policies_at_l4") {
        return;
    }
    let w = world();
    let server_sel = "selector: {matchLabels: {app: server}}";
    let node1_cidr = "10.10.1.0/24";
    let rows: Vec<AuthzRow<'_>> = vec![
        (
            "ALLOW by principal".into(),
            format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: mesh}}\nspec:\n  {server_sel}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/mesh/sa/client-a]}}}}]}}]\n"),
            vec![(&w.a, 8080, true), (&w.b, 8080, false), (&w.outsider, 8080, false)],
        ),
        (
            "DENY by namespace".into(),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: mesh}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [mesh2]}}]}]\n".into(),
            vec![(&w.other_ns, 8080, false), (&w.a, 8080, true), (&w.outsider, 8080, true)],
        ),
        (
            "ALLOW by ipBlocks".into(),
            format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: mesh}}\nspec:\n  rules: [{{from: [{{source: {{ipBlocks: [{node1_cidr}]}}}}]}}]\n"),
            vec![(&w.a, 8080, true), (&w.outsider, 8080, true), (&w.other_ns, 8080, false)],
        ),
        (
            "ALLOW by ports".into(),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: mesh}\nspec:\n  rules: [{to: [{operation: {ports: [\"9090\"]}}]}]\n".into(),
            vec![(&w.a, 9090, true), (&w.a, 8080, false)],
        ),
        (
            "DENY wins over ALLOW".into(),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: mesh}\nspec: {rules: [{}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-b, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [\"*/sa/client-b\"]}}]}]\n".into(),
            vec![(&w.a, 8080, true), (&w.b, 8080, false)],
        ),
        (
            "HTTP-only fields: ALLOW allows nothing".into(),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: mesh}\nspec:\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n".into(),
            vec![(&w.a, 8080, false), (&w.outsider, 8080, false)],
        ),
        (
            "HTTP-only fields: DENY denies what it scopes".into(),
            format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: mesh}}\nspec:\n  {server_sel}\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]\n"),
            vec![(&w.a, 8080, false), (&w.outsider, 9090, false)],
        ),
    ];
    for (name, yaml, expect) in &rows {
        w.c.apply_config("authz.yaml", yaml).expect(name);
        for (from, port, ok) in expect {
            assert_eq!(connects(&w, from, *port), *ok, "{name}: {} -> {port}", from.name);
        }
    }
    assert!(
        w.c.metric(
            2,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), ("response_flags", "DENY")]
        )
        .expect("m")
            >= 9.0
    );
}

#[test]
fn a_live_policy_change_applies_within_one_second_and_a_broken_one_is_rejected() {
    let name = "a_live_policy_change_applies_within_one_second_and_a_broken_one_is_rejected";
    if !require_root(name) {
        return;
    }
    let w = world();
    let allow = |sa: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: mesh}}\nspec:\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/mesh/sa/{sa}]}}}}]}}]\n"
        )
    };
    w.c.apply_config("authz.yaml", &allow("client-a")).expect("policy a");
    assert!(connects(&w, &w.a, 8080));
    assert!(!connects(&w, &w.b, 8080));
    // An established connection allowed under the old policy keeps running.
    let by_a = [("reporter", "source"), ("source_workload", "client-a")];
    let opened = w.c.metric(1, "istio_tcp_connections_opened_total", &by_a).expect("metric");
    let long =
        probe().client_bg(&w.c, &w.a, SocketAddr::new(w.server.ipv4, 8080), 64 * 1024, 3000).expect("long");
    // Established (the agent counted it) before the policy changes.
    w.c.wait_metric_above(1, "istio_tcp_connections_opened_total", &by_a, opened).expect("long connection");
    let start = std::time::Instant::now();
    w.c.write_config("authz.yaml", &allow("client-b")).expect("policy b");
    let mut switched = None;
    while start.elapsed() < scaled(std::time::Duration::from_secs(5)) {
        if connects(&w, &w.b, 8080) && !connects(&w, &w.a, 8080) {
            switched = Some(start.elapsed());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let t = switched.expect("the new policy never applied");
    // One second on real hardware; the same budget stretched under emulation (SLUICE_TIME_SCALE).
    assert!(t <= scaled(std::time::Duration::from_secs(1)), "took {t:?}");
    let r = long.join().expect("join").expect("report");
    assert!(r.ok, "a connection established before the change was broken: {}", r.error);

    // A broken change (a misspelt field in the policy) is rejected on both agents: the last good
    // snapshot keeps serving and the rejection is visible in config_dump and the metrics.
    let dump = |n: usize| -> serde_json::Value {
        serde_json::from_str(&w.c.agent_get(n, "/debug/config_dump").expect("dump")).expect("json")
    };
    let generation = [dump(1)["generation"].as_u64(), dump(2)["generation"].as_u64()];
    w.c.write_config("authz.yaml", &allow("client-a").replace("principals", "principal")).expect("write");
    for n in [1, 2] {
        let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(3));
        while dump(n)["rejections"]["current"].is_null() {
            assert!(std::time::Instant::now() < deadline, "node{n} never rejected the broken change");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let d = dump(n);
        let text = d["rejections"]["current"].as_str().unwrap_or_default();
        assert!(
            text.contains("authz.yaml:")
                && text.contains("AuthorizationPolicy/mesh/p")
                && text.contains("principal"),
            "{text}"
        );
        assert_eq!(d["generation"].as_u64(), generation[n - 1], "node{n} swapped in a broken snapshot");
        assert_eq!(w.c.metric(n, "sluice_config_in_error", &[]).expect("metric"), 1.0);
    }
    assert!(connects(&w, &w.b, 8080), "the last good policy (allow client-b) must keep serving");
    assert!(!connects(&w, &w.a, 8080), "the broken change must not have opened anything");
    w.c.apply_config("authz.yaml", &allow("client-a")).expect("fixed");
    assert!(connects(&w, &w.a, 8080));
    assert_eq!(w.c.metric(1, "sluice_config_in_error", &[]).expect("metric"), 0.0);
}

#[test]
fn a_misspelt_kind_keeps_a_live_deny_and_a_recreated_config_directory_reloads() {
    let name = "a_misspelt_kind_keeps_a_live_deny_and_a_recreated_config_directory_reloads";
    if !require_root(name) {
        return;
    }
    let w = world();
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-b, namespace: mesh}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client-b]}}]}]\n";
    w.c.apply_config("authz.yaml", deny).expect("deny");
    assert!(!connects(&w, &w.b, 8080) && connects(&w, &w.a, 8080), "the DENY applies");
    let dump = |n: usize| -> serde_json::Value {
        serde_json::from_str(&w.c.agent_get(n, "/debug/config_dump").expect("dump")).expect("json")
    };
    let rejected_with = |what: &str| {
        for n in [1, 2] {
            let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(5));
            loop {
                let text = dump(n)["rejections"]["current"].as_str().unwrap_or_default().to_string();
                if text.contains(what) {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "node{n} never rejected with {what:?}: {text}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    };
    // Item 5: the kind renamed is rejected on both agents, and the DENY keeps denying.
    w.c.write_config("authz.yaml", &deny.replace("AuthorizationPolicy", "AuthorisationPolicy"))
        .expect("write");
    rejected_with("did you mean `AuthorizationPolicy`?");
    assert!(!connects(&w, &w.b, 8080), "a misspelt kind must not drop the DENY");
    // Item 6: the directory deleted (the DENY stays) and re-created without the DENY (it goes).
    // Everything else the harness wrote (namespaces, the pods) comes back with the directory.
    let keep: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&w.c.mesh_dir)
        .expect("ls mesh")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "authz.yaml"))
        .map(|p| (p.file_name().unwrap_or_default().to_owned(), std::fs::read(&p).expect("read")))
        .collect();
    std::fs::remove_dir_all(&w.c.mesh_dir).expect("rm -r mesh");
    rejected_with("mesh config directory");
    assert!(!connects(&w, &w.b, 8080), "the last good config stays while the directory is missing");
    let next = w.c.mesh_dir.with_extension("next");
    std::fs::create_dir(&next).expect("mkdir");
    for (name, bytes) in &keep {
        std::fs::write(next.join(name), bytes).expect("write");
    }
    let generation = [dump(1)["generation"].as_u64(), dump(2)["generation"].as_u64()];
    std::fs::rename(&next, &w.c.mesh_dir).expect("re-create");
    for n in [1, 2] {
        let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(5));
        while dump(n)["generation"].as_u64() == generation[n - 1] {
            assert!(std::time::Instant::now() < deadline, "node{n} never loaded the re-created directory");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert!(connects(&w, &w.b, 8080), "the DENY removed with the re-created directory no longer applies");
    // Later edits still apply (the watch moved to the new directory).
    w.c.apply_config("authz.yaml", deny).expect("deny again");
    assert!(!connects(&w, &w.b, 8080), "an edit after the re-creation applies");
}

#[test]
fn an_empty_recreated_config_directory_keeps_strict_and_deny() {
    let name = "an_empty_recreated_config_directory_keeps_strict_and_deny";
    if !require_root(name) {
        return;
    }
    let w = world();
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: mesh}\nspec: {mtls: {mode: STRICT}}\n";
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-b, namespace: mesh}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client-b]}}]}]\n";
    w.c.apply_config("strict.yaml", strict).expect("strict");
    w.c.apply_config("authz.yaml", deny).expect("deny");
    let applied = || !connects(&w, &w.outsider, 8080) && !connects(&w, &w.b, 8080);
    assert!(applied() && connects(&w, &w.a, 8080), "STRICT and DENY apply");
    let files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&w.c.mesh_dir)
        .expect("ls mesh")
        .map(|e| e.expect("entry").path())
        .map(|p| (p.file_name().unwrap_or_default().to_owned(), std::fs::read(&p).expect("read")))
        .collect();
    let rejection = |n: usize| -> String {
        let dump: serde_json::Value =
            serde_json::from_str(&w.c.agent_get(n, "/debug/config_dump").expect("dump")).expect("json");
        dump["rejections"]["current"].as_str().unwrap_or_default().to_string()
    };
    std::fs::remove_dir_all(&w.c.mesh_dir).expect("rm -r mesh");
    // `mkdir` now, the files come a little later (two commands, or a slow copy).
    std::fs::create_dir(&w.c.mesh_dir).expect("mkdir");
    for n in [1, 2] {
        let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(5));
        while !rejection(n).contains("has no YAML documents") {
            assert!(std::time::Instant::now() < deadline, "node{n} never rejected the empty directory");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(w.c.metric(n, "sluice_config_in_error", &[]).expect("metric"), 1.0);
    }
    assert!(applied(), "an empty re-created config directory must not let plaintext or the denied client in");
    for (file, bytes) in &files {
        std::fs::write(w.c.mesh_dir.join(file), bytes).expect("put the files back");
    }
    for n in [1, 2] {
        let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(5));
        while !rejection(n).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "node{n} never loaded the restored files: {}",
                rejection(n)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert!(applied() && connects(&w, &w.a, 8080), "the restored files apply");
}
