//! The admission gate's table: one row per rule and path, each named after what it shows. The rows
//! cover every admission case the end-to-end suite exercises (tests/tests/{policy,tunnel,
//! waypoint}.rs), without root.
use super::*;
use crate::config::compile_for_test;

/// A namespace `shop` in the mesh with a Service `web` (10.96.0.1:80 -> 8080) over pod `web-1`
/// (10.0.1.1), a Service `db` (10.96.0.2, port named `tcp-db`) over pod `db-1` (10.0.1.2), a client
/// pod `client` (10.0.2.1), and waypoint `wp` (pod 10.0.9.9) that Service `web` and pod `db-1` use.
const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: wp-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}
spec: {serviceAccountName: wp}
status: {podIP: 10.0.9.9}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{name: tcp-db, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: other}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db, istio.io/use-waypoint: wp}}
spec: {serviceAccountName: db}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client}
status: {podIP: 10.0.2.1}
---
";

const STRICT_WEB: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
---
";

const DENY_CLIENT_TO_WEB: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]
---
";

const DENY_PLAIN_SOURCE: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-ip, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: [192.168.7.0/24]}}]}]
---
";

const ALLOW_ONLY_FRONTEND: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-fe, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
---
";

const WAYPOINT_DENY_CLIENT_TCP: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wp-deny, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: db}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]
---
";

const GATEWAY_ALLOW_FRONTEND_TCP: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wp-allow, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
---
";

#[derive(Clone, Copy)]
enum P {
    Outbound,
    Plain(&'static str),
    Hbone(&'static str, &'static str),
    SameNode(&'static str, &'static str),
    Waypoint(&'static str),
}

struct Row {
    name: &'static str,
    config: &'static [&'static str],
    path: P,
    src: &'static str,
    dst: &'static str,
    /// None: admitted; Some(reason): refused for it.
    want: Option<Reason>,
}

fn pod<'s>(snap: &'s Snapshot, name: &str) -> &'s PodEntry {
    snap.pods.get(&("shop".to_string(), name.to_string())).unwrap_or_else(|| panic!("pod {name}"))
}

fn run(rows: &[Row]) {
    run_prefixed("", rows)
}

/// Runs `rows`, naming each failure `prefix` + the row's name.
fn run_prefixed(prefix: &str, rows: &[Row]) {
    for r in rows {
        let name = format!("{prefix}{}", r.name);
        let text: String = std::iter::once(MESH).chain(r.config.iter().copied()).collect();
        let snap = compile_for_test(&text);
        let wp = WaypointRef { namespace: "shop".into(), name: "wp".into() };
        let id = |sa: &str| Identity::new("cluster.local", "shop", sa);
        let peer;
        let path = match r.path {
            P::Outbound => Path::Outbound,
            P::Plain(w) => Path::InboundPlain { workload: pod(&snap, w) },
            P::Hbone(w, sa) => {
                peer = id(sa);
                Path::Hbone { workload: pod(&snap, w), peer: &peer }
            }
            P::SameNode(w, sa) => {
                peer = id(sa);
                Path::SameNode { workload: pod(&snap, w), peer: &peer }
            }
            P::Waypoint(sa) => {
                peer = id(sa);
                Path::Waypoint { waypoint: &wp, peer: &peer }
            }
        };
        let facts = ConnFacts {
            path,
            src: r.src.parse().expect("src"),
            dst: r.dst.parse().expect("dst"),
            trust_domain: "cluster.local",
        };
        let got = admit(&snap, &facts);
        match (r.want, &got) {
            (None, Decision::Admit { .. }) => {}
            (Some(want), Decision::Refuse { reason, detail, .. }) => {
                assert_eq!(*reason, want, "{name}: {detail}");
                assert!(!detail.is_empty(), "{name}: a refusal names what decided it");
            }
            _ => panic!("{name}: want {:?}, got {got:?}", r.want),
        }
    }
}

#[test]
fn outbound() {
    run(&[
        Row {
            name: "outbound to a pod is admitted (routing decides the rest)",
            config: &[],
            path: P::Outbound,
            src: "10.0.2.1",
            dst: "10.0.1.1:8080",
            want: None,
        },
        Row {
            name: "outbound to the agent's own loopback port is a loop",
            config: &[],
            path: P::Outbound,
            src: "10.0.2.1",
            dst: "127.0.0.1:15001",
            want: Some(Reason::Loop),
        },
        Row {
            name: "outbound to another pod's HBONE port is no loop (its agent decides)",
            config: &[],
            path: P::Outbound,
            src: "10.0.2.1",
            dst: "10.0.1.1:15008",
            want: None,
        },
    ]);
}

#[test]
fn inbound_plaintext() {
    run(&[
        Row {
            name: "plaintext without policy is admitted (PERMISSIVE by default)",
            config: &[],
            path: P::Plain("web-1"),
            src: "192.168.7.1",
            dst: "10.0.1.1:8080",
            want: None,
        },
        Row {
            name: "plaintext to a STRICT workload is refused",
            config: &[STRICT_WEB],
            path: P::Plain("web-1"),
            src: "192.168.7.1",
            dst: "10.0.1.1:8080",
            want: Some(Reason::MtlsRequired),
        },
        Row {
            name: "plaintext to a PERMISSIVE port of a STRICT workload is admitted",
            config: &[STRICT_WEB],
            path: P::Plain("web-1"),
            src: "192.168.7.1",
            dst: "10.0.1.1:9090",
            want: None,
        },
        Row {
            name: "plaintext from a denied address block is refused",
            config: &[DENY_PLAIN_SOURCE],
            path: P::Plain("web-1"),
            src: "192.168.7.1",
            dst: "10.0.1.1:8080",
            want: Some(Reason::Deny),
        },
        Row {
            name: "plaintext under an ALLOW by principal is refused (no identity)",
            config: &[ALLOW_ONLY_FRONTEND],
            path: P::Plain("web-1"),
            src: "10.0.2.1",
            dst: "10.0.1.1:8080",
            want: Some(Reason::Deny),
        },
        Row {
            name: "plaintext to an agent port is a loop",
            config: &[],
            path: P::Plain("web-1"),
            src: "10.0.2.1",
            dst: "10.0.1.1:15006",
            want: Some(Reason::Loop),
        },
    ]);
}

#[test]
fn hbone_and_same_node_decide_alike() {
    for (label, mk) in [
        ("hbone", (|w, sa| P::Hbone(w, sa)) as fn(&'static str, &'static str) -> P),
        ("same node", |w, sa| P::SameNode(w, sa)),
    ] {
        let rows = [
            Row {
                name: "mTLS to a STRICT workload is admitted",
                config: &[STRICT_WEB],
                path: mk("web-1", "client"),
                src: "10.0.2.1",
                dst: "10.0.1.1:8080",
                want: None,
            },
            Row {
                name: "a DENY naming the peer's principal refuses it",
                config: &[DENY_CLIENT_TO_WEB],
                path: mk("web-1", "client"),
                src: "10.0.2.1",
                dst: "10.0.1.1:8080",
                want: Some(Reason::Deny),
            },
            Row {
                name: "the same DENY admits another principal",
                config: &[DENY_CLIENT_TO_WEB],
                path: mk("web-1", "frontend"),
                src: "10.0.2.1",
                dst: "10.0.1.1:8080",
                want: None,
            },
            Row {
                name: "an ALLOW naming the peer admits it",
                config: &[ALLOW_ONLY_FRONTEND],
                path: mk("web-1", "frontend"),
                src: "10.0.2.1",
                dst: "10.0.1.1:8080",
                want: None,
            },
            Row {
                name: "an ALLOW naming someone else refuses the peer",
                config: &[ALLOW_ONLY_FRONTEND],
                path: mk("web-1", "client"),
                src: "10.0.2.1",
                dst: "10.0.1.1:8080",
                want: Some(Reason::Deny),
            },
            Row {
                name: "a workload bound to a waypoint refuses a direct peer",
                config: &[],
                path: mk("db-1", "client"),
                src: "10.0.2.1",
                dst: "10.0.1.2:5432",
                want: Some(Reason::Deny),
            },
            Row {
                name: "a workload bound to a waypoint admits the waypoint",
                config: &[],
                path: mk("db-1", "wp"),
                src: "10.0.9.9",
                dst: "10.0.1.2:5432",
                want: None,
            },
            Row {
                name: "a tunnel to an agent port is a loop",
                config: &[],
                path: mk("web-1", "client"),
                src: "10.0.2.1",
                dst: "10.0.1.1:15008",
                want: Some(Reason::Loop),
            },
        ];
        run_prefixed(&format!("{label}: "), &rows);
    }
}

#[test]
fn waypoint_l4() {
    run(&[
        Row {
            name: "a Service bound to this waypoint is served (HTTP: authorized per request)",
            config: &[],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "10.96.0.1:80",
            want: None,
        },
        Row {
            name: "a workload bound to this waypoint is served",
            config: &[],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "10.0.1.2:5432",
            want: None,
        },
        Row {
            name: "a Service not bound to this waypoint is refused (no open relay)",
            config: &[],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "10.96.0.3:80",
            want: Some(Reason::Deny),
        },
        Row {
            name: "an address outside the mesh is refused (no open relay)",
            config: &[],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "203.0.113.5:443",
            want: Some(Reason::Deny),
        },
        Row {
            name: "opaque TCP denied by a policy attached to the Service is refused",
            config: &[WAYPOINT_DENY_CLIENT_TCP],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "10.96.0.2:5432",
            want: Some(Reason::Deny),
        },
        Row {
            name: "opaque TCP under an ALLOW attached to the waypoint's Gateway: another principal is refused",
            config: &[GATEWAY_ALLOW_FRONTEND_TCP],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "10.96.0.2:5432",
            want: Some(Reason::Deny),
        },
        Row {
            name: "opaque TCP under an ALLOW attached to the waypoint's Gateway: the named principal passes",
            config: &[GATEWAY_ALLOW_FRONTEND_TCP],
            path: P::Waypoint("frontend"),
            src: "10.0.2.1",
            dst: "10.96.0.2:5432",
            want: None,
        },
        Row {
            name: "HTTP under the same Gateway policy is admitted at L4 (authorized per request)",
            config: &[GATEWAY_ALLOW_FRONTEND_TCP],
            path: P::Waypoint("client"),
            src: "10.0.2.1",
            dst: "10.96.0.1:80",
            want: None,
        },
        Row {
            name: "the same policy admits another principal's opaque TCP",
            config: &[WAYPOINT_DENY_CLIENT_TCP],
            path: P::Waypoint("frontend"),
            src: "10.0.2.1",
            dst: "10.96.0.2:5432",
            want: None,
        },
    ]);
}

#[test]
fn decisions_name_the_deciding_policy() {
    let text = format!("{MESH}{ALLOW_ONLY_FRONTEND}");
    let snap = compile_for_test(&text);
    let peer = Identity::new("cluster.local", "shop", "frontend");
    let f = ConnFacts {
        path: Path::Hbone { workload: pod(&snap, "web-1"), peer: &peer },
        src: "10.0.2.1".parse().expect("ip"),
        dst: "10.0.1.1:8080".parse().expect("addr"),
        trust_domain: "cluster.local",
    };
    let d = admit(&snap, &f);
    assert_eq!(d.policy(), "shop/allow-fe");
    assert_eq!(f.path.label(), "hbone");

    let text = format!("{MESH}{DENY_CLIENT_TO_WEB}");
    let snap = compile_for_test(&text);
    let peer = Identity::new("cluster.local", "shop", "client");
    let f = ConnFacts { path: Path::Hbone { workload: pod(&snap, "web-1"), peer: &peer }, ..f };
    let d = admit(&snap, &f);
    assert!(!d.admitted());
    assert_eq!(d.policy(), "shop/deny-client", "a refusal names the policy that denied it: {d:?}");
    assert_eq!(d.policy_label(), "shop/deny-client");
}
