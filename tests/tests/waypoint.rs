//! The waypoint end to end: a real `sluice waypoint` process in its own pod, real agents sending
//! Service traffic to it over HBONE (the namespace carries `istio.io/use-waypoint`), real HTTP
//! servers behind it, and curl as the client. Each row checks what the HTTP client sees and what
//! the servers received.
use std::{
    collections::HashMap,
    net::IpAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use sluice_e2e::{
    Cluster, Pod,
    cluster::{PodSpec, ServiceSpec, scaled, sluice_bin, sum_metric},
    require_root,
};

const VIP: &str = "10.96.7.7";

/// A small HTTP server: answers `<name> <method> <path> host=<Host>`; `/flaky` fails every other
/// request with 503; `/slow` answers after two seconds; `/stats` returns the per-path counts.
const SERVER: &str = r#"
import sys, threading, json
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
name = sys.argv[1]
counts = {}
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do(self):
        path = self.path.split("?")[0]
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        with lock:
            counts[path] = counts.get(path, 0) + 1
            c = counts[path]
        if path == "/stats":
            body, code = json.dumps(counts), 200
        elif path.startswith("/flaky") and c % 2 == 1:
            body, code = "flaky\n", 503
        else:
            if path == "/slow":
                import time; time.sleep(2)
            body = "%s %s %s host=%s\n" % (name, self.command, self.path, self.headers.get("host"))
            code = 200
        b = body.encode()
        self.send_response(code)
        self.send_header("content-length", str(len(b)))
        self.send_header("x-served-by", name)
        self.end_headers()
        self.wfile.write(b)
    do_GET = do
    do_POST = do
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: mesh}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: mesh}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n";

const ROUTES: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: mesh}\nspec:\n  hosts: [reviews]\n  http:\n  - name: jason\n    match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: abort\n    match: [{uri: {prefix: /abort}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 25}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: delay\n    match: [{uri: {exact: /delay}}]\n    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: flaky-retried\n    match: [{uri: {exact: /flaky}}]\n    retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: flaky-bare\n    match: [{uri: {exact: /flaky-bare}}]\n    retries: {attempts: 0}\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: slow\n    match: [{uri: {exact: /slow}}]\n    timeout: 300ms\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: rewrite\n    match: [{uri: {prefix: /old/}}]\n    rewrite: {uri: /new/}\n    headers: {response: {set: {x-route: rewrite}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: mirror\n    match: [{uri: {exact: /mirror}}]\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 100}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: split\n    route: [{destination: {host: reviews, subset: v1}, weight: 80}, {destination: {host: reviews, subset: v2}, weight: 20}]\n";

const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: mesh}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin*], methods: [GET, POST]}}]}]\n";

struct World {
    c: Cluster,
    client: Pod,
    waypoint: Pod,
    v1: Pod,
    v2: Pod,
}

fn start_http(c: &Cluster, pod: &Pod, name: &str) {
    let script = c.scratch().join("server.py");
    std::fs::write(&script, SERVER).expect("script");
    let mut cmd = c.pod_command(pod, "python3").expect("cmd");
    cmd.arg(&script).arg(name).stdout(Stdio::null()).stderr(Stdio::null());
    c.spawn_in_pod(pod, cmd).expect("spawn");
    wait_local(c, pod, "http://127.0.0.1:8080/stats");
}

/// Waits until `url` answers inside `pod` (over the pod's loopback, never captured).
fn wait_local(c: &Cluster, pod: &Pod, url: &str) {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    loop {
        let out = c.run_in_netns(&pod.netns_path(), "curl", &["-sf", "-m", "1", url]).expect("curl");
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{url} in {} never answered", pod.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn world() -> World {
    let c = Cluster::new(2).expect("cluster");
    c.write_config("base.yaml", BASE).expect("config");
    c.write_config("routes.yaml", ROUTES).expect("config");
    c.write_config("authz.yaml", DENY_ADMIN).expect("config");
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let waypoint = c
        .add_pod_spec(
            1,
            PodSpec::new("mesh", "wp-0")
                .label("gateway.networking.k8s.io/gateway-name", "wp")
                .label("istio.io/dataplane-mode", "none"),
        )
        .expect("waypoint pod");
    let v1 = c
        .add_pod_spec(2, PodSpec::new("mesh", "reviews-v1").label("app", "reviews").label("version", "v1"))
        .expect("v1");
    let v2 = c
        .add_pod_spec(2, PodSpec::new("mesh", "reviews-v2").label("app", "reviews").label("version", "v2"))
        .expect("v2");
    let client = c.add_pod(1, "mesh", "client").expect("client");
    c.add_service(ServiceSpec {
        namespace: "mesh".into(),
        name: "reviews".into(),
        vips: vec![VIP.parse().expect("vip")],
        ports: vec![(80, 8080)],
        selector: vec![("app".into(), "reviews".into())],
    })
    .expect("service");
    start_http(&c, &v1, "v1");
    start_http(&c, &v2, "v2");

    let log = std::fs::File::create(c.scratch().join("waypoint.log")).expect("log");
    let mut cmd = c.pod_command(&waypoint, sluice_bin()).expect("cmd");
    cmd.args(["waypoint", "--log-level", "info,sluice=debug", "--name", "wp", "--namespace", "mesh"])
        .args(["--service-account", &waypoint.service_account, "--config"])
        .arg(&c.mesh_dir)
        .arg("--ca-dir")
        .arg(c.ca_dir())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    c.spawn_in_pod(&waypoint, cmd).expect("waypoint");
    wait_local(&c, &waypoint, "http://127.0.0.1:15020/healthz/ready");
    World { c, client, waypoint, v1, v2 }
}

impl World {
    fn waypoint_log(&self) -> String {
        std::fs::read_to_string(self.c.scratch().join("waypoint.log")).unwrap_or_default()
    }

    /// The waypoint's and the client node agent's logs, for failure messages.
    fn logs(&self) -> String {
        format!("--- waypoint ---\n{}\n--- agent node1 ---\n{}", self.waypoint_log(), self.c.agent_log(1))
    }

    /// Runs curl in the client pod: `-w` appends `~~<code>` and a newline per response.
    fn curl(&self, args: &[&str]) -> String {
        let mut a = vec!["-s", "-m", "10", "-w", "~~%{http_code}\n"];
        a.extend_from_slice(args);
        // In the pod's netns and cgroup, so the agent captures the connection.
        let mut cmd = self.c.pod_command(&self.client, "curl").expect("cmd");
        let out = cmd.args(&a).stdin(Stdio::null()).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `n` GETs of `path` on one keep-alive connection; (body first word, status) per response.
    fn many(&self, path: &str, n: usize, headers: &[&str]) -> Vec<(String, u16)> {
        let url = format!("http://{VIP}{path}");
        let mut args: Vec<&str> = Vec::new();
        for h in headers {
            args.extend(["-H", h]);
        }
        let urls = vec![url.as_str(); n];
        args.extend(urls);
        let out = self.curl(&args);
        let rows = parse(&out);
        assert_eq!(
            rows.len(),
            n,
            "curl gave {} answers:\n{out}\nwaypoint log:\n{}",
            rows.len(),
            self.waypoint_log()
        );
        rows
    }

    fn stats(&self, pod: &Pod) -> HashMap<String, u64> {
        let out = self
            .c
            .run_in_netns(&pod.netns_path(), "curl", &["-s", "http://127.0.0.1:8080/stats"])
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("stats json")
    }

    fn waypoint_metric(&self, labels: &[(&str, &str)]) -> f64 {
        let out = self
            .c
            .run_in_netns(
                &self.waypoint.netns_path(),
                "curl",
                &["-s", "http://127.0.0.1:15020/stats/prometheus"],
            )
            .expect("curl");
        sum_metric(&String::from_utf8_lossy(&out.stdout), "istio_requests_total", labels)
    }
}

/// Splits curl's output (`body~~code\n` per response) into (first word of the body, status).
fn parse(out: &str) -> Vec<(String, u16)> {
    let mut rows = Vec::new();
    let mut chunks = out.split("~~");
    let mut body = chunks.next().unwrap_or("").to_string();
    for chunk in chunks {
        let (code, rest) = chunk.split_once('\n').unwrap_or((chunk, ""));
        rows.push((
            body.split_whitespace().next().unwrap_or("").to_string(),
            code.trim().parse().unwrap_or(0),
        ));
        body = rest.to_string();
    }
    rows
}

fn count(rows: &[(String, u16)], body: &str, code: u16) -> usize {
    rows.iter().filter(|(b, c)| b == body && *c == code).count()
}

/// A binomial 99.9% interval around n*p (normal approximation, z = 3.29).
fn within(observed: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - mean).abs() <= 3.29 * sd + 1.0
}

#[test]
fn waypoint_routes_splits_faults_retries_times_out_mirrors_and_denies() {
    if !require_root("waypoint_routes_splits_faults_retries_times_out_mirrors_and_denies") {
        return;
    }
    let w = world();
    let _ = &w.v2;

    // Header routing: every request of jason's goes to v2.
    let rows = w.many("/", 40, &["end-user: jason"]);
    assert_eq!(count(&rows, "v2", 200), 40, "{rows:?}\n{}", w.logs());

    // The 80/20 split over 1,000 requests lands within a binomial 99.9% interval.
    let n = 1000;
    let rows = w.many("/split", n, &[]);
    let v1 = count(&rows, "v1", 200);
    assert_eq!(v1 + count(&rows, "v2", 200), n, "every request answered 200: {rows:?}");
    assert!(within(v1, n, 0.8), "v1 got {v1} of {n}; expected 80%");

    // Fault abort at 25%: the configured code at the configured rate; the rest reach v1.
    let n = 400;
    let rows = w.many("/abort", n, &[]);
    let aborted = rows.iter().filter(|(_, c)| *c == 418).count();
    assert_eq!(aborted + count(&rows, "v1", 200), n, "{rows:?}");
    assert!(within(aborted, n, 0.25), "{aborted} of {n} aborted; expected 25%");
    assert!(w.waypoint_metric(&[("response_code", "418"), ("response_flags", "FI")]) >= aborted as f64);

    // A fixed delay is observed.
    let t = Instant::now();
    let rows = w.many("/delay", 2, &[]);
    assert_eq!(count(&rows, "v1", 200), 2);
    assert!(t.elapsed() >= Duration::from_millis(800), "two delayed requests took {:?}", t.elapsed());

    // Retries recover from an endpoint that fails every other request; without them half fail.
    let rows = w.many("/flaky", 20, &[]);
    assert_eq!(count(&rows, "v1", 200), 20, "retried: {rows:?}");
    let rows = w.many("/flaky-bare", 20, &[]);
    assert_eq!(rows.iter().filter(|(_, c)| *c == 503).count(), 10, "not retried: {rows:?}");

    // The route's timeout cuts a slow endpoint: 504 well before the endpoint's two seconds.
    let t = Instant::now();
    let rows = w.many("/slow", 1, &[]);
    assert_eq!(rows[0].1, 504, "{rows:?}");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    assert!(w.waypoint_metric(&[("response_code", "504"), ("response_flags", "UT")]) >= 1.0);

    // Rewrite and response headers.
    let out = w.curl(&["-i", &format!("http://{VIP}/old/thing?q=1")]);
    assert!(out.contains("v1 GET /new/thing?q=1"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-route: rewrite"), "{out}");

    // Mirror: v1 answers, v2 receives a copy (with the -shadow host) whose answer is ignored.
    let before = w.stats(&w.v2).get("/mirror").copied().unwrap_or(0);
    let rows = w.many("/mirror", 10, &[]);
    assert_eq!(count(&rows, "v1", 200), 10);
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while w.stats(&w.v2).get("/mirror").copied().unwrap_or(0) < before + 10 {
        assert!(Instant::now() < deadline, "v2 saw {:?} mirrored requests", w.stats(&w.v2).get("/mirror"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(w.stats(&w.v1).get("/mirror").copied(), Some(10));

    // L7 AuthorizationPolicy attached to the waypoint: 403 with Istio's body for /admin*.
    let out = w.curl(&[&format!("http://{VIP}/admin/users")]);
    assert_eq!(out.trim_end(), "RBAC: access denied~~403", "{out}");
    assert!(w.waypoint_metric(&[("response_code", "403"), ("reporter", "waypoint")]) >= 1.0);
    assert_eq!(w.stats(&w.v1).get("/admin/users"), None, "a denied request never reaches the app");
    assert_eq!(w.stats(&w.v2).get("/admin/users"), None);

    // The waypoint reports Istio's metrics for what it routed, with the client as the source.
    let ok = w.waypoint_metric(&[
        ("reporter", "waypoint"),
        ("response_code", "200"),
        ("source_workload", "client"),
        ("destination_service", "reviews.mesh.svc.cluster.local"),
        ("destination_workload", "reviews-v1"),
    ]);
    assert!(ok >= 800.0, "waypoint counted {ok} requests to reviews-v1");
    let _: IpAddr = w.waypoint.ipv4;
}

#[test]
fn waypoint_holds_routes_across_config_reloads_under_load() {
    if !require_root("waypoint_holds_routes_across_config_reloads_under_load") {
        return;
    }
    let w = world();
    // Load in the background while the routes are rewritten (the split changes, the rest stays).
    let mut c = w.c.pod_command(&w.client, "curl").expect("cmd");
    let load = std::thread::spawn(move || {
        let url = format!("http://{VIP}/");
        let mut args =
            vec!["-s".to_string(), "-m".into(), "30".into(), "-w".into(), "~~%{http_code}\n".into()];
        args.extend(std::iter::repeat_n(url, 600));
        c.args(&args).stdin(Stdio::null()).output().expect("curl")
    });
    for i in 0..6 {
        let weight = if i % 2 == 0 { (50, 50) } else { (80, 20) };
        let routes = ROUTES
            .replace("weight: 80}", &format!("weight: {}}}", weight.0))
            .replace("weight: 20}", &format!("weight: {}}}", weight.1));
        w.c.write_config("routes.yaml", &routes).expect("config");
        std::thread::sleep(Duration::from_millis(150));
    }
    let out = load.join().expect("load thread");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = parse(&text);
    assert_eq!(rows.len(), 600, "{text}");
    let failed: Vec<_> = rows.iter().filter(|(_, c)| *c != 200).collect();
    assert!(failed.is_empty(), "failed requests during reloads: {failed:?}\n{}", w.logs());
    assert_eq!(rows.iter().filter(|(b, _)| b == "v1" || b == "v2").count(), 600, "{rows:?}");
}
