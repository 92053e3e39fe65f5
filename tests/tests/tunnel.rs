//! Secure L4 end to end: HBONE between real agents, checked on the wire and in the agents' reports.
use std::net::SocketAddr;

use sluice_e2e::{
    Cluster, Pod,
    cluster::{PodSpec, ServiceSpec, scaled},
    probe::Probe,
    require_root,
};

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_sl-probe"))
}

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n";

fn cluster() -> Cluster {
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    c
}

fn metric(c: &Cluster, n: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
    c.metric(n, name, labels).expect("metrics")
}

fn tshark(file: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-d", "tcp.port==15008,tls"])
        .args(args)
        .output()
        .expect("tshark runs");
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cross_node_mesh_traffic_is_tls13_on_the_wire_with_verified_identities() {
    if !require_root("cross_node_mesh_traffic_is_tls13_on_the_wire_with_verified_identities") {
        return;
    }
    let c = cluster();
    let p = probe();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let server = c.add_pod(2, "mesh", "server").expect("server");
    p.serve(&c, &server, &[8080]).expect("serve");

    let marker = "SLUICE-PLAINTEXT-MARKER-";
    let cap = c.capture(&c.router_netns(), &c.router_link(2), "tcp").expect("capture");
    let dst = SocketAddr::new(server.ipv4, 8080);
    let r =
        p.client_pattern_bg(&c, &client, dst, 256 * 1024, 0, marker).expect("client").join().expect("join");
    let r = r.expect("report");
    assert!(r.ok, "{}", r.error);
    let (file, report) = cap.stop().expect("stop capture");

    let raw = std::fs::read(&file).expect("pcap");
    assert!(
        raw.len() > 256 * 1024,
        "the capture must hold the transfer ({} bytes; tcpdump: {report})",
        raw.len()
    );
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the plaintext payload crossed the node link"
    );
    let ports = tshark(&file, &["-T", "fields", "-e", "tcp.dstport"]);
    assert!(ports.lines().any(|l| l == "15008"), "no HBONE traffic on the link");
    assert!(!ports.lines().any(|l| l == "8080"), "plaintext to the app port crossed the link");
    let hello = tshark(
        &file,
        &[
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_alpn_str",
            "-e",
            "tls.handshake.extensions.supported_version",
        ],
    );
    assert!(hello.contains("h2"), "ClientHello without ALPN h2: {hello}");
    let server_hello = tshark(
        &file,
        &[
            "-Y",
            "tls.handshake.type == 2",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions.supported_version",
        ],
    );
    assert!(server_hello.contains("0x0304"), "ServerHello did not select TLS 1.3: {server_hello}");
    // TLS 1.3 hides the inner type: every encrypted record is "application data" on the outside.
    let app_records = tshark(
        &file,
        &[
            "-Y",
            "tls.record.opaque_type == 23 || tls.record.content_type == 23",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
    );
    assert!(app_records.lines().count() > 10, "expected TLS application data records");

    let src = "spiffe://cluster.local/ns/mesh/sa/client";
    let dst_principal = "spiffe://cluster.local/ns/mesh/sa/server";
    let labels = [
        ("reporter", "destination"),
        ("source_principal", src),
        ("destination_principal", dst_principal),
        ("destination_workload", "server"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(metric(&c, 2, "istio_tcp_connections_opened_total", &labels), 1.0);
    assert_eq!(metric(&c, 2, "istio_tcp_connections_closed_total", &labels), 1.0);
    assert_eq!(metric(&c, 2, "istio_tcp_sent_bytes_total", &labels), (256 * 1024) as f64);
    let source_side =
        [("reporter", "source"), ("source_principal", src), ("connection_security_policy", "mutual_tls")];
    assert_eq!(metric(&c, 1, "istio_tcp_connections_opened_total", &source_side), 1.0);
    let log = c.agent_log(2);
    assert!(
        log.lines().any(|l| l.contains("sluice::access") && l.contains(&format!("src_principal={src}"))),
        "the destination agent's access log must name the source identity"
    );
}

#[test]
fn a_service_vip_spreads_connections_over_endpoints_on_both_nodes() {
    if !require_root("a_service_vip_spreads_connections_over_endpoints_on_both_nodes") {
        return;
    }
    let c = cluster();
    let p = probe();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let web: Vec<Pod> = [(1, "web-1"), (2, "web-2")]
        .into_iter()
        .map(|(n, name)| c.add_pod_spec(n, PodSpec::new("mesh", name).label("app", "web")).expect("web pod"))
        .collect();
    for w in &web {
        p.serve(&c, w, &[8080]).expect("serve");
    }
    let svc = |name: &str, vip: &str, app: &str| ServiceSpec {
        namespace: "mesh".into(),
        name: name.into(),
        vips: vec![vip.parse().expect("vip")],
        ports: vec![(80, 8080)],
        port_names: vec![],
        selector: vec![("app".into(), app.into())],
    };
    c.add_service(svc("web", "10.96.0.10", "web")).expect("service");
    c.add_service(svc("empty", "10.96.0.11", "nothing")).expect("service");

    let vip: SocketAddr = "10.96.0.10:80".parse().expect("addr");
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let r = p.client(&c, &client, vip, 4096, 0).expect("client");
        assert!(r.ok, "{}", r.error);
        assert_eq!(r.peer, vip.to_string(), "getpeername shows the VIP");
        *served.entry(r.server_name.clone()).or_insert(0) += 1;
    }
    assert_eq!(served.get("web-1"), Some(&3), "round robin over both nodes: {served:?}");
    assert_eq!(served.get("web-2"), Some(&3), "round robin over both nodes: {served:?}");
    let host = [
        ("reporter", "source"),
        ("destination_service", "web.mesh.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(metric(&c, 1, "istio_tcp_connections_opened_total", &host), 6.0);
    // web-1 is on node 1 too: its three connections took the local path and node 1 also reported
    // them as their destination.
    let local = [("reporter", "destination"), ("destination_service", "web.mesh.svc.cluster.local")];
    assert_eq!(metric(&c, 1, "istio_tcp_connections_opened_total", &local), 3.0);

    let start = std::time::Instant::now();
    let r = p.client(&c, &client, "10.96.0.11:80".parse().expect("addr"), 4096, 0).expect("client");
    assert!(!r.ok, "a Service without endpoints must fail the connection");
    assert!(
        start.elapsed() < scaled(std::time::Duration::from_secs(2)),
        "it must fail at once, took {:?}",
        start.elapsed()
    );
    assert_eq!(
        metric(
            &c,
            1,
            "sluice_proxy_failures_total",
            &[("direction", "outbound"), ("reason", "no_endpoints")]
        ),
        1.0
    );
}

#[test]
fn a_service_entry_address_balances_over_its_static_endpoints_in_and_out_of_the_mesh() {
    if !require_root("a_service_entry_address_balances_over_its_static_endpoints_in_and_out_of_the_mesh") {
        return;
    }
    let c = cluster();
    let p = probe();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let inside = c.add_pod(2, "mesh", "db-mesh").expect("mesh endpoint");
    let outside = c.add_pod(2, "plain", "db-plain").expect("plain endpoint");
    for w in [&inside, &outside] {
        p.serve(&c, w, &[8080]).expect("serve");
    }
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db, namespace: mesh}}\nspec:\n  hosts: [db.internal]\n  addresses: [240.0.0.10]\n  ports: [{{number: 5432, name: tcp, protocol: TCP, targetPort: 8080}}]\n  resolution: STATIC\n  endpoints: [{{address: {}}}, {{address: {}}}]\n",
        inside.ipv4, outside.ipv4
    );
    c.apply_config("entry.yaml", &entry).expect("service entry");
    let addr: SocketAddr = "240.0.0.10:5432".parse().expect("addr");
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let r = p.client(&c, &client, addr, 4096, 0).expect("client");
        assert!(r.ok, "{}", r.error);
        assert_eq!(r.peer, addr.to_string(), "getpeername shows the entry's address");
        *served.entry(r.server_name.clone()).or_insert(0) += 1;
    }
    assert_eq!(served.get("db-mesh"), Some(&2), "round robin: {served:?}");
    assert_eq!(served.get("db-plain"), Some(&2), "round robin: {served:?}");
    let to = |policy: &str| {
        metric(
            &c,
            1,
            "istio_tcp_connections_opened_total",
            &[("destination_service", "db.internal"), ("connection_security_policy", policy)],
        )
    };
    assert_eq!(to("mutual_tls"), 2.0, "the endpoint in the mesh is reached over HBONE");
    assert_eq!(to("unknown"), 2.0, "the endpoint outside the mesh is reached in plaintext");
}

#[test]
fn same_node_mesh_traffic_takes_the_local_path_with_identity_and_policy() {
    if !require_root("same_node_mesh_traffic_takes_the_local_path_with_identity_and_policy") {
        return;
    }
    let c = cluster();
    let p = probe();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let other = c.add_pod(1, "mesh", "other").expect("other");
    let server = c.add_pod_spec(1, PodSpec::new("mesh", "server").label("app", "server")).expect("server");
    p.serve(&c, &server, &[8080]).expect("serve");
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-other, namespace: mesh}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/other]}}]}]\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: mesh}\nspec: {mtls: {mode: STRICT}}\n";
    c.apply_config("policy.yaml", deny).expect("policy");
    let dst = SocketAddr::new(server.ipv4, 8080);
    let r = p.client(&c, &client, dst, 256 * 1024, 0).expect("client");
    assert!(r.ok, "{}", r.error);
    assert_eq!(r.bytes, 256 * 1024);
    assert_eq!(ip_of(&r.server_saw), client.ipv4, "the app sees the client pod's address");
    let dest = [
        ("reporter", "destination"),
        ("source_principal", "spiffe://cluster.local/ns/mesh/sa/client"),
        ("connection_security_policy", "mutual_tls"),
        ("destination_workload", "server"),
    ];
    assert_eq!(metric(&c, 1, "istio_tcp_connections_opened_total", &dest), 1.0, "STRICT is satisfied");
    assert_eq!(
        metric(&c, 1, "istio_tcp_received_bytes_total", &dest),
        256.0 * 1024.0,
        "the destination reporter counts the bytes it received"
    );
    let r = p.client(&c, &other, dst, 4096, 0).expect("client");
    assert!(!r.ok, "the DENY policy must refuse the other pod's identity on the local path too");
    assert_eq!(
        metric(&c, 1, "sluice_proxy_failures_total", &[("direction", "inbound"), ("reason", "DENY")]),
        1.0
    );
    let log = c.agent_log(1);
    assert!(log.contains("same_node"), "the refusal names the local path:\n{log}");
}

fn ip_of(addr: &str) -> std::net::IpAddr {
    addr.parse::<SocketAddr>().map(|a| a.ip()).unwrap_or_else(|e| panic!("{addr:?}: {e}"))
}

#[test]
fn hbone_refuses_peers_without_a_valid_identity_from_the_mesh_ca() {
    if !require_root("hbone_refuses_peers_without_a_valid_identity_from_the_mesh_ca") {
        return;
    }
    let c = cluster();
    let p = probe();
    let server = c.add_pod(2, "mesh", "server").expect("server");
    p.serve(&c, &server, &[8080]).expect("serve");
    let scratch = c.scratch();
    let ca = c.ca_dir();
    let other_ca = scratch.join("other-ca");
    c.sluice(&["ca", "init", "--dir", other_ca.to_str().expect("utf8")]).expect("other CA");
    let issue = |ca: &std::path::Path, uri: &str, out: &str| -> Vec<String> {
        c.issue_cert(ca, uri, out).expect("issue")
    };
    let rows: Vec<(&str, Vec<String>, Option<&str>)> = vec![
        (
            "a mesh identity from the mesh CA is served",
            issue(&ca, "spiffe://cluster.local/ns/plain/sa/tester", "good"),
            None,
        ),
        ("no client certificate", vec![], Some("TLS_FAILURE")),
        (
            "a certificate from another CA",
            issue(&other_ca, "spiffe://cluster.local/ns/mesh/sa/client", "foreign"),
            Some("TLS_FAILURE"),
        ),
        (
            "an identity from another trust domain",
            issue(&ca, "spiffe://evil.example/ns/mesh/sa/client", "evil"),
            Some("IDENTITY_ERROR"),
        ),
        (
            "a certificate without a SPIFFE ID",
            issue(&ca, "https://example.com/not-spiffe", "plain"),
            Some("IDENTITY_ERROR"),
        ),
    ];
    let hbone = SocketAddr::new(server.ipv4, 15008).to_string();
    let target = SocketAddr::new(server.ipv4, 8080).to_string();
    for (name, cert_args, refused_as) in rows {
        let failures = |reason: &str| {
            metric(&c, 2, "sluice_proxy_failures_total", &[("direction", "inbound"), ("reason", reason)])
        };
        let before = refused_as.map(failures);
        let mut args: Vec<&str> = cert_args.iter().map(String::as_str).collect();
        args.extend([hbone.as_str(), target.as_str()]);
        let out = c.run_in_netns(&c.router_netns(), env!("CARGO_BIN_EXE_sl-hbone"), &args).expect("sl-hbone");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {out:?}"));
        match refused_as {
            None => assert_eq!(report["ok"], true, "{name}: {report}"),
            Some(reason) => {
                assert_eq!(report["ok"], false, "{name}: the server accepted it: {report}");
                assert_ne!(report["stage"], "done", "{name}: {report}");
                // The agent counts the refusal by reason once the connection has been torn down.
                let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(3));
                while failures(reason) < before.unwrap_or(0.0) + 1.0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                assert_eq!(
                    failures(reason),
                    before.unwrap_or(0.0) + 1.0,
                    "{name}: refusal not counted as {reason}"
                );
            }
        }
    }
}

#[test]
fn certificates_rotate_during_a_long_transfer_and_new_connections_succeed_after_expiry() {
    if !require_root("certificates_rotate_during_a_long_transfer_and_new_connections_succeed_after_expiry") {
        return;
    }
    let c = Cluster::new(2).expect("cluster");
    c.write_config("namespaces.yaml", NAMESPACES).expect("config");
    // 4 s certificates replaced after 2 s; idle pooled connections closed after 1 s.
    *c.agent_args.lock().expect("lock") =
        ["--cert-lifetime", "4s", "--cert-rotate-after", "0.5", "--pool-idle-timeout", "1s"]
            .map(String::from)
            .to_vec();
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let p = probe();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let server = c.add_pod(2, "mesh", "server").expect("server");
    p.serve(&c, &server, &[8080]).expect("serve");
    let dst = SocketAddr::new(server.ipv4, 8080);

    // 7 s of trickled bytes: the certificates on both sides expire while it runs.
    let long = p.client_bg(&c, &client, dst, 512 * 1024, 7000).expect("long transfer");
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Meanwhile new connections need new handshakes with fresh certificates.
    let other = c.add_pod(1, "mesh", "other").expect("other client");
    let r = p.client(&c, &other, dst, 4096, 0).expect("client");
    assert!(r.ok, "a new connection after the first certificates expired failed: {}", r.error);
    let r = long.join().expect("join").expect("report");
    assert!(r.ok, "the long transfer broke across rotation: {}", r.error);
    assert_eq!(r.bytes, 512 * 1024);

    // Once the pooled connection is idle and closed, the same client handshakes again.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = p.client(&c, &client, dst, 4096, 0).expect("client");
    assert!(r.ok, "reconnect with a rotated certificate failed: {}", r.error);

    let certs: serde_json::Value =
        serde_json::from_str(&c.agent_get(2, "/debug/certs").expect("certs")).expect("json");
    let server_cert = certs
        .as_array()
        .and_then(|a| a.iter().find(|e| e["identity"] == "spiffe://cluster.local/ns/mesh/sa/server"))
        .expect("server certificate listed")
        .clone();
    assert!(server_cert["rotations"].as_u64().unwrap_or(0) >= 1, "{server_cert}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!(
        server_cert["expires_unix"].as_u64().unwrap_or(0) >= now,
        "the served certificate is expired: {server_cert}"
    );
}

#[test]
fn sluice_config_and_status_show_the_live_state() {
    if !require_root("sluice_config_and_status_show_the_live_state") {
        return;
    }
    let c = cluster();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let _outsider = c.add_pod(1, "plain", "outsider").expect("outsider");
    c.apply_config(
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: mesh}\nspec: {rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}]}]}\n",
    )
    .expect("policy");
    // A connection makes the agent mint the client's certificate.
    let server = c.add_pod(2, "mesh", "server").expect("server");
    probe().serve(&c, &server, &[8080]).expect("serve");
    assert!(probe().client(&c, &client, SocketAddr::new(server.ipv4, 8080), 1024, 0).expect("client").ok);

    let sluice = sluice_e2e::cluster::sluice_bin();
    let run = |args: &[&str]| {
        let out = c.run_in_netns(&c.node_netns(1), sluice.to_str().expect("utf8"), args).expect("run");
        assert!(out.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config = run(&["config"]);
    for want in [
        "mesh/client",
        "mesh/server",
        "mesh/allow-client",
        "AuthorizationPolicy  ALLOW (1 rules)",
        "spiffe://cluster.local/ns/mesh/sa/client",
    ] {
        assert!(config.contains(want), "`sluice config` lacks {want:?}:\n{config}");
    }
    let status = run(&["status"]);
    assert!(status.lines().any(|l| l.starts_with("mesh/client") && l.contains("true")), "{status}");
    assert!(
        status.lines().any(|l| l.starts_with("plain/outsider")
            && l.contains("false")
            && l.contains("namespace not labelled")),
        "{status}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["status", "--output", "json"])).expect("json");
    assert_eq!(json["pods"].as_array().map(Vec::len), Some(2), "{json}");
    let ready = c
        .run_in_netns(&c.node_netns(1), "curl", &["-sf", "http://127.0.0.1:15021/healthz/ready"])
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
}

#[test]
fn metrics_and_access_logs_match_the_connections_and_bytes_exactly() {
    if !require_root("metrics_and_access_logs_match_the_connections_and_bytes_exactly") {
        return;
    }
    let c = cluster();
    let p = probe();
    let client = c
        .add_pod_spec(1, PodSpec::new("mesh", "client").label("app", "shop-ui").label("version", "v7"))
        .expect("client");
    let server = c.add_pod_spec(2, PodSpec::new("mesh", "server").label("app", "catalog")).expect("server");
    p.serve(&c, &server, &[8080]).expect("serve");
    let dst = SocketAddr::new(server.ipv4, 8080);
    let sizes = [1_000usize, 20_000, 300_000];
    let (mut sent, mut received) = (0u64, 0u64);
    for n in sizes {
        let r = p.client(&c, &client, dst, n, 0).expect("client");
        assert!(r.ok, "{}", r.error);
        sent += n as u64;
        // The server greets before echoing: that line is part of what the client receives.
        received += (n + format!("PEER {} NAME {}\n", r.server_saw, r.server_name).len()) as u64;
    }
    let labels = |reporter: &'static str| {
        [
            ("reporter", reporter),
            ("source_workload", "client"),
            ("source_app", "shop-ui"),
            ("source_version", "v7"),
            ("destination_workload", "server"),
            ("destination_app", "catalog"),
            ("connection_security_policy", "mutual_tls"),
            ("response_flags", "-"),
        ]
    };
    // Connections close asynchronously on the agents; wait for the last one to be counted.
    for (node, reporter) in [(1, "source"), (2, "destination")] {
        let l = labels(reporter);
        let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(5));
        while metric(&c, node, "istio_tcp_connections_closed_total", &l) < 3.0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(metric(&c, node, "istio_tcp_connections_opened_total", &l), 3.0, "{reporter}");
        assert_eq!(metric(&c, node, "istio_tcp_connections_closed_total", &l), 3.0, "{reporter}");
        assert_eq!(metric(&c, node, "istio_tcp_sent_bytes_total", &l), sent as f64, "{reporter}: sent");
        assert_eq!(
            metric(&c, node, "istio_tcp_received_bytes_total", &l),
            received as f64,
            "{reporter}: received"
        );
    }
    let log = c.agent_log(2);
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("sluice::access") && l.contains("connection closed") && l.contains("pod=server")
        })
        .collect();
    assert_eq!(closed.len(), 3, "one access-log line per connection:\n{}", closed.join("\n"));
    for n in sizes {
        assert!(
            closed.iter().any(|l| l.contains(&format!(" sent={n} "))
                && l.contains("src_principal=spiffe://cluster.local/ns/mesh/sa/client")),
            "no access-log line with sent={n}:\n{}",
            closed.join("\n")
        );
    }
}

#[test]
fn live_connections_are_listed_with_their_admission_and_can_be_closed_from_the_admin_port() {
    let name = "live_connections_are_listed_with_their_admission_and_can_be_closed_from_the_admin_port";
    if !require_root(name) {
        return;
    }
    let c = cluster();
    let p = probe();
    let client = c.add_pod(1, "mesh", "client").expect("client");
    let server = c.add_pod_spec(2, PodSpec::new("mesh", "server").label("app", "server")).expect("server");
    p.serve(&c, &server, &[8080]).expect("serve");
    let allow = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: mesh}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}]}]\n";
    c.apply_config("allow.yaml", allow).expect("policy");
    let dst = SocketAddr::new(server.ipv4, 8080);
    // A connection that would run for 30 s: it ends only because it is closed from outside.
    let hold = scaled(std::time::Duration::from_secs(30));
    let long = p.client_bg(&c, &client, dst, 64 * 1024, hold.as_millis() as u64).expect("long");
    let listed = |n: usize| -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&c.agent_get(n, "/debug/connections").expect("connections")).expect("json");
        assert_eq!(v["count"].as_u64().map(|x| x as usize), v["connections"].as_array().map(Vec::len), "{v}");
        v["connections"].as_array().cloned().unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(10));
    let inbound = loop {
        let found = listed(2).into_iter().find(|x| x["dst"] == dst.to_string());
        if let Some(x) = found {
            break x;
        }
        assert!(std::time::Instant::now() < deadline, "the destination agent never listed the connection");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(inbound["path"], "hbone", "{inbound}");
    assert_eq!(inbound["direction"], "inbound", "{inbound}");
    assert_eq!(inbound["pod"], "server", "{inbound}");
    assert_eq!(inbound["src_principal"], "spiffe://cluster.local/ns/mesh/sa/client", "{inbound}");
    assert_eq!(
        inbound["policy"], "mesh/allow-client",
        "the record names the policy that admitted it: {inbound}"
    );
    let outbound =
        listed(1).into_iter().find(|x| x["dst"] == dst.to_string()).expect("the source agent lists it");
    assert_eq!(outbound["path"], "outbound", "{outbound}");
    assert_eq!(outbound["dst_principal"], "spiffe://cluster.local/ns/mesh/sa/server", "{outbound}");

    // Closing is POST only, names unknown ids, and ends exactly the chosen connection.
    let id = inbound["id"].as_u64().expect("id");
    let (status, _) = c.agent_request(2, "GET", &format!("/debug/connections/close?id={id}")).expect("get");
    assert_eq!(status, 405, "a GET never closes anything");
    let (status, body) = c.agent_request(2, "POST", "/debug/connections/close?id=999999").expect("post");
    assert_eq!(status, 404, "{body}");
    // A POST carrying a foreign header, as a web page (or DNS rebinding) would send it: its status.
    let close_with = |header: &str| -> String {
        let url = format!("http://127.0.0.1:15000/debug/connections/close?id={id}");
        let args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", header, &url];
        let out = c.run_in_netns(&c.node_netns(2), "curl", &args).expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(close_with("Host: evil.example"), "403", "a foreign Host header may not close");
    assert_eq!(close_with("Origin: http://evil.example"), "403", "a browser page may not close");
    let flags = [("reporter", "destination"), ("response_flags", "admin_closed")];
    assert_eq!(metric(&c, 2, "istio_tcp_connections_closed_total", &flags), 0.0);
    let start = std::time::Instant::now();
    let (status, body) =
        c.agent_request(2, "POST", &format!("/debug/connections/close?id={id}")).expect("post");
    assert_eq!(status, 200, "{body}");
    let r = long.join().expect("join").expect("report");
    assert!(!r.ok, "the closed connection must end for the client too");
    assert!(r.error.contains("reset"), "the client sees a reset, never a clean end: {}", r.error);
    assert!(start.elapsed() < hold / 2, "the close took {:?}", start.elapsed());
    c.wait_metric_above(2, "istio_tcp_connections_closed_total", &flags, 0.0)
        .expect("counted as admin_closed");
    assert!(
        listed(2).iter().all(|x| x["id"].as_u64() != Some(id)),
        "a closed connection leaves the registry"
    );
    assert!(
        c.agent_log(2).lines().any(|l| l.contains("connection closed") && l.contains("admin_closed")),
        "the access log says why it closed"
    );
    // Other connections are untouched: a new one still works.
    let r = p.client(&c, &client, dst, 4096, 0).expect("client");
    assert!(r.ok, "{}", r.error);
}
