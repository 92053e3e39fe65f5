use std::path::PathBuf;

use super::*;
use crate::config::{Diagnostics, yaml};

/// Compiles `yaml_text` (as `p.yaml`), returning every diagnostic.
fn compile(yaml_text: &str) -> (Snapshot, Diagnostics) {
    let docs: Vec<_> =
        yaml::parse(yaml_text).expect("yaml").into_iter().map(|d| (PathBuf::from("p.yaml"), d)).collect();
    let mut diags = Diagnostics::default();
    let s = Snapshot::compile(&docs, &mut diags);
    (s, diags)
}

fn snapshot(yaml_text: &str) -> Snapshot {
    let (s, diags) = compile(yaml_text);
    assert!(!diags.has_errors(), "{diags}");
    s
}

fn workload(ns: &str, labels: &[(&str, &str)]) -> PodEntry {
    PodEntry {
        namespace: ns.into(),
        name: "w".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        service_account: "w".into(),
        ips: vec![],
        ..Default::default()
    }
}

struct Case {
    name: &'static str,
    policies: &'static str,
    identity: Option<(&'static str, &'static str)>,
    src_ip: &'static str,
    port: u16,
    allowed: bool,
}

fn run(cases: &[Case]) {
    for c in cases {
        let snap = snapshot(c.policies);
        let id = c.identity.map(|(ns, sa)| Identity::new("cluster.local", ns, sa));
        let facts = Facts {
            http: None,
            identity: id.as_ref(),
            src_ip: c.src_ip.parse().expect("ip"),
            dst: SocketAddr::new("10.0.0.9".parse().expect("ip"), c.port),
        };
        let v = authorize(&snap, &workload("shop", &[("app", "web")]), &facts);
        assert_eq!(v.allowed(), c.allowed, "{}: {v:?}", c.name);
    }
}

const ALLOW_FRONTEND: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-fe, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]\n";

#[test]
fn authorization_semantics() {
    run(&[
        Case {
            name: "no policy allows",
            policies: "",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
        Case {
            name: "ALLOW by principal: match",
            policies: ALLOW_FRONTEND,
            identity: Some(("shop", "frontend")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
        Case {
            name: "ALLOW by principal: other",
            policies: ALLOW_FRONTEND,
            identity: Some(("shop", "other")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "ALLOW by principal: plaintext",
            policies: ALLOW_FRONTEND,
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "ALLOW selecting another workload does not apply",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {selector: {matchLabels: {app: db}}, rules: [{}]}\n",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
        Case {
            name: "empty spec allows nothing",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {}\n",
            identity: Some(("shop", "frontend")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "empty rule allows everything",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: all, namespace: shop}\nspec: {rules: [{}]}\n",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
        Case {
            name: "DENY by namespace wins over ALLOW",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [legacy]}}]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: all, namespace: shop}\nspec: {rules: [{}]}\n",
            identity: Some(("legacy", "x")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "DENY by namespace leaves others",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [legacy]}}]}]\n",
            identity: Some(("shop", "x")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
        Case {
            name: "ipBlocks",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ip, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}]}\n",
            identity: None,
            src_ip: "10.1.2.3",
            port: 80,
            allowed: true,
        },
        Case {
            name: "notIpBlocks",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ip, namespace: shop}\nspec: {rules: [{from: [{source: {notIpBlocks: [10.1.0.0/16]}}]}]}\n",
            identity: None,
            src_ip: "10.1.2.3",
            port: 80,
            allowed: false,
        },
        Case {
            name: "ports",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}\n",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "HTTP-only ALLOW allows nothing",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: h, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n",
            identity: Some(("shop", "frontend")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "HTTP-only DENY denies what it scopes",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: h, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n",
            identity: Some(("shop", "frontend")),
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "when destination.port",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: w, namespace: shop}\nspec: {rules: [{when: [{key: destination.port, values: [\"80\"]}]}]}\n",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
        Case {
            name: "unparseable ipBlock fails closed for ALLOW",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]}\n",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: false,
        },
        Case {
            name: "AUDIT never decides",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {action: AUDIT, rules: [{}]}\n",
            identity: None,
            src_ip: "10.1.0.1",
            port: 80,
            allowed: true,
        },
    ]);
}

#[test]
fn peer_authentication_precedence() {
    let snap = snapshot(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: legacy}\nspec: {mtls: {mode: PERMISSIVE}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  mtls: {mode: UNSET}\n  portLevelMtls: {\"9090\": {mode: DISABLE}}\n",
    );
    let web = workload("shop", &[("app", "web")]);
    assert_eq!(mtls_mode(&snap, &web, 8080), MtlsMode::Strict, "UNSET inherits the mesh-wide mode");
    assert_eq!(mtls_mode(&snap, &web, 9090), MtlsMode::Disable, "port level wins");
    assert_eq!(
        mtls_mode(&snap, &workload("legacy", &[]), 8080),
        MtlsMode::Permissive,
        "namespace beats mesh"
    );
    assert_eq!(mtls_mode(&Snapshot::default(), &web, 8080), MtlsMode::Permissive, "default");
}

#[test]
fn custom_action_is_rejected_with_a_clear_error() {
    let (_, diags) = compile(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: shop}\nspec: {action: CUSTOM}\n",
    );
    let e: Vec<String> = diags.errors().map(ToString::to_string).collect();
    assert!(e.len() == 1 && e[0].contains("CUSTOM") && e[0].contains("spec.action"), "{e:?}");
}

#[test]
fn unknown_fields_are_errors_not_silently_ignored() {
    let (snap, diags) = compile(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: shop}\nspec:\n  rules:\n  - from: [{source: {notNamespace: [legacy]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: attach, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: web}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: both, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  targetRefs: [{kind: Service, name: web}]\n",
    );
    let e: Vec<String> = diags.errors().map(ToString::to_string).collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("unknown field `notNamespace`") && e[0].contains("notNamespaces"), "{}", e[0]);
    assert!(e[0].starts_with("p.yaml:6:36: error: AuthorizationPolicy/shop/typo: field `spec.rules[0].from[0].source.notNamespace`"), "{}", e[0]);
    assert!(
        e[1].contains("AuthorizationPolicy/shop/both") && e[1].contains("mutually exclusive"),
        "{}",
        e[1]
    );
    // A policy attached with targetRefs is the waypoint's to enforce, never the node proxy's.
    let targeted: Vec<&str> = snap.waypoint_policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(targeted, ["attach"]);
    assert!(snap.authorization_policies.is_empty(), "rejected policies must not be half-applied");
}

#[test]
fn http_only_fields_are_named_in_warnings_with_their_l4_effect() {
    let (snap, diags) = compile(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: get-only, namespace: shop}\nspec:\n  rules:\n  - to: [{operation: {methods: [GET], ports: [\"80\"]}}]\n    when: [{key: \"request.headers[x-user]\", values: [a]}, {key: source.ip, values: [10.0.0.0/8]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-jwt, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]\n",
    );
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(snap.authorization_policies.len(), 2, "the policies are still applied (fail closed)");
    let w: Vec<String> = diags.warnings().map(ToString::to_string).collect();
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[0].contains("get-only: field `spec.rules[0].to[0].operation.methods`: HTTP-only")
            && w[0].contains("never matches"),
        "{}",
        w[0]
    );
    assert!(w[1].contains("field `spec.rules[0].when[0].key`"), "{}", w[1]);
    assert!(
        w[2].contains("no-jwt: field `spec.rules[0].from[0].source.notRequestPrincipals`")
            && w[2].contains("DENY rule matches every connection"),
        "{}",
        w[2]
    );
}

/// L7 rules as a waypoint evaluates them: (name, rule YAML under `rules:`, method, path, host,
/// header, allowed by an ALLOW policy with that rule).
type L7Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    bool,
);

#[test]
fn l7_rules_match_methods_paths_hosts_headers_and_principals() {
    let rows: &[L7Row] = &[
        ("method", "[{to: [{operation: {methods: [GET]}}]}]", "GET", "/a", "web", None, true),
        ("other method", "[{to: [{operation: {methods: [GET]}}]}]", "POST", "/a", "web", None, false),
        ("notMethods", "[{to: [{operation: {notMethods: [DELETE]}}]}]", "GET", "/a", "web", None, true),
        ("exact path", "[{to: [{operation: {paths: [/a]}}]}]", "GET", "/a/b", "web", None, false),
        ("prefix path", "[{to: [{operation: {paths: [/a/*]}}]}]", "GET", "/a/b", "web", None, true),
        ("suffix path", "[{to: [{operation: {paths: ['*.css']}}]}]", "GET", "/x/site.css", "web", None, true),
        (
            "{*} one segment",
            "[{to: [{operation: {paths: ['/u/{*}/info']}}]}]",
            "GET",
            "/u/ann/info",
            "web",
            None,
            true,
        ),
        (
            "{*} not two",
            "[{to: [{operation: {paths: ['/u/{*}/info']}}]}]",
            "GET",
            "/u/a/b/info",
            "web",
            None,
            false,
        ),
        (
            "{**} the rest",
            "[{to: [{operation: {paths: ['/api/{**}']}}]}]",
            "GET",
            "/api/v1/x/y",
            "web",
            None,
            true,
        ),
        ("notPaths", "[{to: [{operation: {notPaths: [/admin*]}}]}]", "GET", "/admin/x", "web", None, false),
        (
            "host with port",
            "[{to: [{operation: {hosts: [web.shop]}}]}]",
            "GET",
            "/",
            "WEB.shop:8080",
            None,
            true,
        ),
        ("other host", "[{to: [{operation: {hosts: [web.shop]}}]}]", "GET", "/", "api.shop", None, false),
        (
            "header condition",
            "[{when: [{key: 'request.headers[x-team]', values: [blue]}]}]",
            "GET",
            "/",
            "web",
            Some(("x-team", "blue")),
            true,
        ),
        (
            "header absent",
            "[{when: [{key: 'request.headers[x-team]', values: [blue]}]}]",
            "GET",
            "/",
            "web",
            None,
            false,
        ),
        (
            "no token, no request principal",
            "[{from: [{source: {requestPrincipals: ['*']}}]}]",
            "GET",
            "/",
            "web",
            None,
            false,
        ),
        (
            "L4 field still checked",
            "[{from: [{source: {namespaces: [other]}}], to: [{operation: {methods: [GET]}}]}]",
            "GET",
            "/",
            "web",
            None,
            false,
        ),
    ];
    for (name, rules, method, path, host, header, allowed) in rows {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  targetRefs: [{{kind: Gateway, name: wp}}]\n  action: ALLOW\n  rules: {rules}\n"
        );
        let snap = snapshot(&yaml);
        let mut headers = http::HeaderMap::new();
        if let Some((k, v)) = header {
            headers.insert(*k, v.parse().expect("header value"));
        }
        let h = HttpFacts { method, path, host, headers: &headers, request_principal: None, claims: None };
        let id = Identity::new("cluster.local", "shop", "client");
        let f = Facts {
            identity: Some(&id),
            src_ip: "10.0.0.1".parse().expect("ip"),
            dst: "10.0.0.9:80".parse().expect("addr"),
            http: Some(&h),
        };
        let policies: Vec<&AuthorizationPolicy> = snap.waypoint_policies.iter().collect();
        assert_eq!(policies.len(), 1, "{name}");
        assert_eq!(decide(&policies, &f).allowed(), *allowed, "{name}");
        // The same rule as a DENY denies exactly what the ALLOW allowed.
        let deny: AuthorizationPolicy = {
            let mut p = policies[0].clone();
            p.spec.action = Action::Deny;
            p
        };
        assert_eq!(decide(&[&deny], &f).allowed(), !*allowed, "{name} as DENY");
    }
}

#[test]
fn l7_rules_read_validated_jwt_claims() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  targetRefs: [{kind: Gateway, name: wp}]\n  action: ALLOW\n  rules:\n  - from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]\n    when:\n    - {key: 'request.auth.claims[groups]', values: [ops]}\n    - {key: 'request.auth.claims[org][team]', values: [blue]}\n    - {key: request.auth.audiences, values: [shop]}\n";
    let snap = snapshot(yaml);
    let policies: Vec<&AuthorizationPolicy> = snap.waypoint_policies.iter().collect();
    let headers = http::HeaderMap::new();
    let id = Identity::new("cluster.local", "shop", "client");
    let rows = [
        (
            "every claim matches",
            serde_json::json!({"groups": ["dev", "ops"], "org": {"team": "blue"}, "aud": "shop"}),
            true,
        ),
        (
            "missing group",
            serde_json::json!({"groups": ["dev"], "org": {"team": "blue"}, "aud": "shop"}),
            false,
        ),
        (
            "nested claim differs",
            serde_json::json!({"groups": ["ops"], "org": {"team": "red"}, "aud": "shop"}),
            false,
        ),
        (
            "audience list",
            serde_json::json!({"groups": "ops", "org": {"team": "blue"}, "aud": ["bank", "shop"]}),
            true,
        ),
    ];
    for (name, claims, allowed) in rows {
        let h = HttpFacts {
            method: "GET",
            path: "/",
            host: "web",
            headers: &headers,
            request_principal: Some("https://issuer.example/ann"),
            claims: Some(&claims),
        };
        let f = Facts {
            identity: Some(&id),
            src_ip: "10.0.0.1".parse().expect("ip"),
            dst: "10.0.0.9:80".parse().expect("addr"),
            http: Some(&h),
        };
        assert_eq!(decide(&policies, &f).allowed(), allowed, "{name}");
    }
}
