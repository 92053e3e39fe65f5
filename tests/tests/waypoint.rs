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
    cluster::{PodSpec, ServiceSpec, scaled, sum_metric},
    probe::Probe,
    require_root,
};

const VIP: &str = "10.96.7.7";

/// A small HTTP server: answers `<name> <method> <path> host=<Host> auth=<Authorization>`; `/flaky`
/// fails every other request with 503; `/slow` answers after two seconds; `/stats` returns the
/// per-path counts; a request with `Upgrade` is answered 101 and then echoes bytes upper-cased.
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
        if self.headers.get("upgrade"):
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            self.wfile.flush()
            while True:
                data = self.connection.recv(4096)
                if not data:
                    break
                self.connection.sendall(data.upper())
            self.close_connection = True
            return
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
        elif path == "/broken" and name == "v1":
            body, code = "v1 broken\n", 500
        else:
            if path == "/slow":
                import time; time.sleep(2)
            if path == "/sleep":
                import time; time.sleep(0.5)
            body = "%s %s %s host=%s auth=%s tp=%s\n" % (name, self.command, self.path, self.headers.get("host"), self.headers.get("authorization"), self.headers.get("traceparent"))
            code = 200
        b = body.encode()
        self.send_response(code)
        self.send_header("content-length", str(len(b)))
        self.send_header("x-served-by", name)
        self.end_headers()
        self.wfile.write(b)
    do_GET = do
    do_POST = do
    do_OPTIONS = do
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// A gRPC server (generic handlers, raw bytes): `Unary` echoes with the server's name, `Count`
/// streams N messages, `Fail` aborts with PERMISSION_DENIED (the status travels in trailers).
const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures
name = sys.argv[1].encode()
def unary(req, ctx):
    return name + b":" + req
def count(req, ctx):
    for i in range(int(req)):
        yield name + b":" + str(i).encode()
def fail(req, ctx):
    ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
class H(grpc.GenericRpcHandler):
    def service(self, d):
        return {"/test.Echo/Unary": grpc.unary_unary_rpc_method_handler(unary),
                "/test.Echo/Count": grpc.unary_stream_rpc_method_handler(count),
                "/test.Echo/Fail": grpc.unary_unary_rpc_method_handler(fail)}.get(d.method)
s = grpc.server(futures.ThreadPoolExecutor(8))
s.add_generic_rpc_handlers((H(),))
s.add_insecure_port("0.0.0.0:9090")
s.start()
s.wait_for_termination()
"#;

/// The gRPC client: one unary call, one server stream of 5, one failing call; prints JSON.
const GRPC_CLIENT: &str = r#"
import sys, json, grpc
ch = grpc.insecure_channel(sys.argv[1])
out = {"unary": ch.unary_unary("/test.Echo/Unary")(b"hi", timeout=10).decode()}
out["stream"] = [m.decode() for m in ch.unary_stream("/test.Echo/Count")(b"5", timeout=10)]
try:
    ch.unary_unary("/test.Echo/Fail")(b"", timeout=10)
    out["fail"] = "OK"
except grpc.RpcError as e:
    out["fail"] = e.code().name
try:
    ch.unary_unary("/test.Echo/Aborted")(b"", timeout=10)
    out["aborted"] = "OK"
except grpc.RpcError as e:
    out["aborted"] = e.code().name
print(json.dumps(out))
"#;

/// A raw HTTP/1.1 Upgrade client: handshake, then bytes both ways on the upgraded connection.
const UPGRADE_CLIENT: &str = r#"
import sys, socket
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(b"GET /ws HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
s.sendall(b"hello through the waypoint")
got = b""
while len(got) < 26:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print(head.split(b"\r\n")[0].decode() + "|" + got.decode())
"#;

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: mesh}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: mesh}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - name: all\n    labels: {app: reviews}\n    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}}\n  - name: v1-limited\n    labels: {version: v1}\n    trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}\n";

const ROUTES: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: mesh}\nspec:\n  hosts: [reviews]\n  http:\n  - name: jason\n    match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: abort\n    match: [{uri: {prefix: /abort}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 25}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: delay\n    match: [{uri: {exact: /delay}}]\n    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: flaky-retried\n    match: [{uri: {exact: /flaky}}]\n    retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: flaky-bare\n    match: [{uri: {exact: /flaky-bare}}]\n    retries: {attempts: 0}\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: slow\n    match: [{uri: {exact: /slow}}]\n    timeout: 300ms\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: rewrite\n    match: [{uri: {prefix: /old/}}]\n    rewrite: {uri: /new/}\n    headers: {response: {set: {x-route: rewrite}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: mirror\n    match: [{uri: {exact: /mirror}}]\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 100}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: grpc-abort\n    match: [{uri: {exact: /test.Echo/Aborted}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n    route: [{destination: {host: reviews}}]\n  - name: cors\n    match: [{uri: {prefix: /cors}}]\n    corsPolicy: {allowOrigins: [{exact: 'https://shop.example'}], allowMethods: [GET, POST], maxAge: 1h}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - name: broken\n    match: [{uri: {exact: /broken}}]\n    retries: {attempts: 0}\n    route: [{destination: {host: reviews, subset: all}}]\n  - name: sleep\n    match: [{uri: {exact: /sleep}}]\n    route: [{destination: {host: reviews, subset: v1-limited}}]\n  - name: split\n    route: [{destination: {host: reviews, subset: v1}, weight: 80}, {destination: {host: reviews, subset: v2}, weight: 20}]\n  tcp:\n  - match: [{port: 7000}]\n    route: [{destination: {host: reviews, subset: v2}}]\n";

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

fn world(extra: &[(&str, &str)]) -> World {
    world_with(extra, |_| Vec::new())
}

/// [`world`] with extra `sluice waypoint` arguments, made from the cluster (for paths in it).
fn world_with(extra: &[(&str, &str)], waypoint_args: impl FnOnce(&Cluster) -> Vec<String>) -> World {
    let c = Cluster::new(2).expect("cluster");
    c.write_config("base.yaml", BASE).expect("config");
    c.write_config("routes.yaml", ROUTES).expect("config");
    c.write_config("authz.yaml", DENY_ADMIN).expect("config");
    for (file, yaml) in extra {
        c.write_config(file, yaml).expect("config");
    }
    c.start_agent(1).expect("agent 1");
    c.start_agent(2).expect("agent 2");
    let waypoint = c
        .add_pod_spec(
            1,
            PodSpec::new("mesh", "wp-0")
                .label("gateway.networking.k8s.io/gateway-name", "wp")
                .label("istio.io/dataplane-mode", "none")
                .service_account("wp"),
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
        ports: vec![(80, 8080), (9090, 9090), (7000, 7000)],
        port_names: vec![(7000, "tcp-echo".into())],
        selector: vec![("app".into(), "reviews".into())],
    })
    .expect("service");
    start_http(&c, &v1, "v1");
    start_http(&c, &v2, "v2");
    let grpc = c.scratch().join("grpc_server.py");
    std::fs::write(&grpc, GRPC_SERVER).expect("script");
    for pod in [&v1, &v2] {
        Probe::new(env!("CARGO_BIN_EXE_sl-probe")).serve(&c, pod, &[7000]).expect("echo server");
    }
    for (pod, name) in [(&v1, "v1"), (&v2, "v2")] {
        let mut cmd = c.pod_command(pod, "/usr/bin/python3").expect("cmd");
        cmd.arg(&grpc).arg(name).stdout(Stdio::null()).stderr(Stdio::null());
        c.spawn_in_pod(pod, cmd).expect("grpc server");
    }

    let args = waypoint_args(&c);
    c.start_waypoint_with(&waypoint, "wp", &args).expect("waypoint");
    World { c, client, waypoint, v1, v2 }
}

impl World {
    fn waypoint_log(&self) -> String {
        self.c.waypoint_log(&self.waypoint)
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

    /// An independent HBONE client (sl-hbone, from the router) with `cert`: CONNECT `target` through
    /// `server`; its JSON report.
    fn hbone(&self, cert: &[String], server: &str, target: &str) -> serde_json::Value {
        let mut args: Vec<&str> = cert.iter().map(String::as_str).collect();
        args.extend([server, target]);
        let out = self
            .c
            .run_in_netns(&self.c.router_netns(), env!("CARGO_BIN_EXE_sl-hbone"), &args)
            .expect("sl-hbone");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sl-hbone {args:?}: {e}: {out:?}"))
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
    let w = world(&[]);
    let _ = &w.v2;

    // Header routing: every request of jason's goes to v2.
    let rows = w.many("/", 40, &["end-user: jason"]);
    assert_eq!(count(&rows, "v2", 200), 40, "{rows:?}\n{}", w.logs());

    // The 80/20 split over 2,000 requests lands within a binomial 99.9% interval.
    let n = 2000;
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

    // W3C trace context: the app sees the caller's trace with the waypoint's span as parent.
    let out = w.curl(&[
        "-H",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        &format!("http://{VIP}/traced"),
    ]);
    let tp = out.split("tp=").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
        "{out}"
    );

    // Rewrite and response headers.
    let out = w.curl(&["-i", &format!("http://{VIP}/old/thing?q=1")]);
    assert!(out.contains("v1 GET /new/thing?q=1"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-route: rewrite"), "{out}");

    // CORS: a preflight from an allowed origin is answered by the waypoint; the actual request
    // gets Access-Control-Allow-Origin; another origin's preflight goes to the app untouched.
    let cors = |origin: &str, preflight: bool| {
        let mut a = vec!["-i".to_string(), "-H".into(), format!("origin: {origin}")];
        if preflight {
            a.extend([
                "-X".into(),
                "OPTIONS".into(),
                "-H".into(),
                "access-control-request-method: POST".into(),
            ]);
        }
        a.push(format!("http://{VIP}/cors"));
        w.curl(&a.iter().map(String::as_str).collect::<Vec<_>>()).to_ascii_lowercase()
    };
    let pre = cors("https://shop.example", true);
    assert!(
        pre.starts_with("http/1.1 200") && pre.contains("access-control-allow-origin: https://shop.example"),
        "{pre}"
    );
    assert!(
        pre.contains("access-control-allow-methods: get,post")
            && pre.contains("access-control-max-age: 3600"),
        "{pre}"
    );
    let actual = cors("https://shop.example", false);
    assert!(
        actual.contains("access-control-allow-origin: https://shop.example")
            && actual.contains("v1 get /cors"),
        "{actual}"
    );
    let other = cors("https://evil.example", true);
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    assert_eq!(w.stats(&w.v1).get("/cors"), Some(&2), "the allowed preflight never reached the app");

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
    assert!(ok >= 1500.0, "waypoint counted {ok} requests to reviews-v1");
    let _: IpAddr = w.waypoint.ipv4;
}

#[test]
fn waypoint_holds_routes_across_config_reloads_under_load() {
    if !require_root("waypoint_holds_routes_across_config_reloads_under_load") {
        return;
    }
    let w = world(&[]);
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

/// An ES256 key made for this test run and the tokens it signs.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl Issuer {
    fn new() -> Issuer {
        use base64::Engine as _;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = kp.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]})
        .to_string();
        Issuer { key: jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()), jwks }
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &self.key).expect("sign")
    }
}

#[test]
fn waypoint_validates_jwts_and_authorizes_by_claim() {
    if !require_root("waypoint_validates_jwts_and_authorizes_by_claim") {
        return;
    }
    let issuer = Issuer::new();
    let other = Issuer::new();
    let ra = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: mesh}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: wp}}]\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [shop]\n    jwks: '{}'\n",
        issuer.jwks
    );
    // /ops needs a principal of the issuer whose groups claim holds ops; everything else is open.
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ops, namespace: mesh}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  action: ALLOW\n  rules:\n  - to: [{operation: {notPaths: [/ops*]}}]\n  - from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]\n    to: [{operation: {paths: [/ops*]}}]\n    when: [{key: 'request.auth.claims[groups]', values: [ops]}]\n";
    let w = world(&[("jwt.yaml", &ra), ("ops.yaml", policy)]);
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let claims = |iss: &str, aud: &str, groups: &[&str], exp: u64| serde_json::json!({"iss": iss, "sub": "ann", "aud": aud, "groups": groups, "exp": exp});
    let good = issuer.sign(claims("https://issuer.example", "shop", &["dev", "ops"], exp));
    let rows: Vec<(&str, &str, Option<String>, u16)> = vec![
        ("no token, open path", "/", None, 200),
        ("no token, /ops needs a principal", "/ops/run", None, 403),
        ("valid token with the ops group", "/ops/run", Some(good.clone()), 200),
        (
            "valid token without the ops group",
            "/ops/run",
            Some(issuer.sign(claims("https://issuer.example", "shop", &["dev"], exp))),
            403,
        ),
        (
            "expired",
            "/",
            Some(issuer.sign(claims("https://issuer.example", "shop", &["ops"], exp - 7200))),
            401,
        ),
        ("wrong issuer", "/", Some(issuer.sign(claims("https://evil.example", "shop", &["ops"], exp))), 401),
        (
            "wrong audience",
            "/",
            Some(issuer.sign(claims("https://issuer.example", "bank", &["ops"], exp))),
            401,
        ),
        (
            "bad signature",
            "/ops/run",
            Some(other.sign(claims("https://issuer.example", "shop", &["ops"], exp))),
            401,
        ),
    ];
    for (name, path, token, want) in rows {
        let auth = token.map(|t| format!("authorization: Bearer {t}"));
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        let got = w.many(path, 1, &headers);
        assert_eq!(got[0].1, want, "{name}: {got:?}\n{}", w.waypoint_log());
    }
    // The token does not reach the app (forwardOriginalToken defaults to false).
    let out = w.curl(&["-H", &format!("authorization: Bearer {good}"), &format!("http://{VIP}/echo")]);
    assert!(out.contains("/echo host=") && out.contains("auth=None"), "{out}");
    // The apps saw /ops/run exactly once: the one allowed request.
    let seen = w.stats(&w.v1).get("/ops/run").copied().unwrap_or(0)
        + w.stats(&w.v2).get("/ops/run").copied().unwrap_or(0);
    assert_eq!(seen, 1);
}

#[test]
fn waypoint_carries_grpc_with_trailers_and_http_upgrades() {
    if !require_root("waypoint_carries_grpc_with_trailers_and_http_upgrades") {
        return;
    }
    let w = world(&[]);
    // gRPC (HTTP/2 prior knowledge) through the waypoint: unary, server streaming, and a status
    // that only trailers carry. The server may need a moment to listen: retry the client briefly.
    let client = w.c.scratch().join("grpc_client.py");
    std::fs::write(&client, GRPC_CLIENT).expect("script");
    let deadline = Instant::now() + scaled(Duration::from_secs(15));
    let out = loop {
        let mut cmd = w.c.pod_command(&w.client, "/usr/bin/python3").expect("cmd");
        let out =
            cmd.arg(&client).arg(format!("{VIP}:9090")).stdin(Stdio::null()).output().expect("grpc client");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}\n{}", String::from_utf8_lossy(&out.stderr), w.logs());
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("client json");
    let unary = v["unary"].as_str().unwrap_or("");
    assert!(unary == "v1:hi" || unary == "v2:hi", "{v}");
    let stream: Vec<&str> = v["stream"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
    assert_eq!(stream.len(), 5, "{v}");
    assert!(stream.iter().enumerate().all(|(i, m)| m.ends_with(&format!(":{i}"))), "{v}");
    assert_eq!(v["fail"], "PERMISSION_DENIED", "{v}");
    assert_eq!(v["aborted"], "UNAVAILABLE", "a fault abort with grpcStatus: {v}");
    assert!(w.waypoint_metric(&[("request_protocol", "grpc"), ("reporter", "waypoint")]) >= 3.0);

    // Opaque TCP (a Service port named tcp-*) through the waypoint. The world's DENY policy has
    // HTTP-only fields (paths, methods): at L4 it fails closed and denies the TCP connection.
    let probe = Probe::new(env!("CARGO_BIN_EXE_sl-probe"));
    let tcp = format!("{VIP}:7000").parse().expect("addr");
    let r = probe.client(&w.c, &w.client, tcp, 1024, 0).expect("probe");
    assert!(!r.ok, "an HTTP-only DENY must deny opaque TCP: {r:?}");
    // Without it, TCP is routed by the VirtualService's tcp route to v2 only; the app sees the
    // waypoint as its client (the waypoint's own HBONE leg).
    w.c.write_config("authz.yaml", "").expect("config");
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while !probe.client(&w.c, &w.client, tcp, 1024, 0).expect("probe").ok {
        assert!(
            Instant::now() < deadline,
            "TCP still refused after the DENY policy was removed\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..6 {
        let r = probe
            .client(&w.c, &w.client, format!("{VIP}:7000").parse().expect("addr"), 64 * 1024, 0)
            .expect("probe");
        assert!(r.ok, "tcp {i}: {}\n{}", r.error, w.logs());
        assert_eq!(r.server_name, "reviews-v2", "tcp {i}: the tcp route sends everything to v2");
        assert!(r.server_saw.starts_with(&w.waypoint.ipv4.to_string()), "tcp {i}: {}", r.server_saw);
    }

    // An HTTP/1.1 Upgrade (the WebSocket handshake) through the waypoint, then raw bytes both ways.
    let script = w.c.scratch().join("upgrade_client.py");
    std::fs::write(&script, UPGRADE_CLIENT).expect("script");
    let mut cmd = w.c.pod_command(&w.client, "/usr/bin/python3").expect("cmd");
    let out = cmd.arg(&script).arg(VIP).stdin(Stdio::null()).output().expect("upgrade client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "HTTP/1.1 101 Switching Protocols|HELLO THROUGH THE WAYPOINT",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.logs()
    );
}

#[test]
fn waypoint_ejects_outliers_and_bounds_the_connection_pool() {
    if !require_root("waypoint_ejects_outliers_and_bounds_the_connection_pool") {
        return;
    }
    let w = world(&[]);
    // v1 answers /broken with 500, v2 with 200; round robin over both. Two consecutive 5xx eject
    // v1 for 2 s (baseEjectionTime), so after its two failures every request lands on v2.
    let rows = w.many("/broken", 20, &[]);
    assert_eq!(rows.iter().filter(|(_, c)| *c == 500).count(), 2, "{rows:?}");
    assert!(
        rows[4..].iter().all(|(b, c)| b == "v2" && *c == 200),
        "v1 still served after its ejection: {rows:?}"
    );
    // Once the ejection time passed, v1 is back (and fails again).
    std::thread::sleep(Duration::from_millis(2500));
    let rows = w.many("/broken", 6, &[]);
    assert!(rows.iter().any(|(_, c)| *c == 500), "v1 never came back: {rows:?}");

    // maxConnections 1 and one pending request: of 8 concurrent half-second requests, two are
    // served (one at a time) and the rest overflow at once with 503 and Envoy's UO flag.
    let url = format!("http://{VIP}/sleep");
    let mut args = vec!["-Z", "--parallel-immediate", "--parallel-max", "8"];
    let urls = vec![url.as_str(); 8];
    args.extend(urls);
    let rows = parse(&w.curl(&args));
    let served = count(&rows, "v1", 200);
    let overflow = rows.iter().filter(|(_, c)| *c == 503).count();
    assert_eq!(served + overflow, 8, "{rows:?}");
    assert!(served >= 2 && overflow >= 3, "served {served}, overflowed {overflow}: {rows:?}");
    assert_eq!(w.waypoint_metric(&[("response_code", "503"), ("response_flags", "UO")]), overflow as f64);
}

#[test]
fn waypoint_is_no_open_relay_it_serves_only_what_is_bound_to_it() {
    if !require_root("waypoint_is_no_open_relay_it_serves_only_what_is_bound_to_it") {
        return;
    }
    let w = world(&[]);
    let cert =
        w.c.issue_cert(&w.c.ca_dir(), "spiffe://cluster.local/ns/mesh/sa/tester", "tester").expect("issue");
    let hbone = format!("{}:15008", w.waypoint.ipv4);
    // (row, CONNECT target, status the waypoint answers)
    let rows = [
        ("the bound Service's VIP", format!("{VIP}:80"), 200),
        ("a pod address (waypoint-for service takes no pod traffic)", format!("{}:8080", w.v1.ipv4), 401),
        ("an address outside the mesh", format!("{}:15020", w.waypoint.ipv4), 401),
    ];
    for (name, target, want) in rows {
        let report = w.hbone(&cert, &hbone, &target);
        assert_eq!(report["status"], want, "{name}: {report}");
    }
}

#[test]
fn a_workload_bound_to_its_waypoint_accepts_hbone_only_from_the_waypoint() {
    if !require_root("a_workload_bound_to_its_waypoint_accepts_hbone_only_from_the_waypoint") {
        return;
    }
    // waypoint-for: all: traffic to the pods' own addresses goes through the waypoint too.
    let base = BASE.replace(
        "metadata: {name: wp, namespace: mesh}",
        "metadata: {name: wp, namespace: mesh, labels: {istio.io/waypoint-for: all}}",
    );
    assert_ne!(base, BASE);
    let w = world(&[("base.yaml", &base)]);
    let before = w.waypoint_metric(&[("destination_workload", "reviews-v1"), ("response_code", "200")]);
    let out = w.curl(&[&format!("http://{}:8080/direct", w.v1.ipv4)]);
    assert!(out.starts_with("v1 GET /direct"), "{out}\n{}", w.logs());
    let after = w.waypoint_metric(&[("destination_workload", "reviews-v1"), ("response_code", "200")]);
    assert_eq!(after, before + 1.0, "the pod-addressed request went through the waypoint");

    // An independent HBONE client dialling the pod's 15008 directly: refused unless it is the waypoint.
    let issue = |uri: &str, name: &str| w.c.issue_cert(&w.c.ca_dir(), uri, name).expect("issue");
    let hbone = format!("{}:15008", w.v1.ipv4);
    let target = format!("{}:8080", w.v1.ipv4);
    let rows = [
        (
            "a mesh workload that is not the waypoint",
            issue("spiffe://cluster.local/ns/mesh/sa/client", "client"),
            401,
        ),
        (
            "the waypoint's identity",
            issue(&format!("spiffe://cluster.local/ns/mesh/sa/{}", w.waypoint.service_account), "wp"),
            200,
        ),
    ];
    for (name, cert, want) in rows {
        let report = w.hbone(&cert, &hbone, &target);
        assert_eq!(report["status"], want, "{name}: {report}");
    }
}

/// An HTTPS file server (the JWKS endpoint of an identity provider inside the mesh).
const HTTPS_SERVER: &str = r#"
import sys, ssl, functools, http.server
cert, key, root = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[test]
fn waypoint_fetches_jwks_over_https_from_a_mesh_service() {
    if !require_root("waypoint_fetches_jwks_over_https_from_a_mesh_service") {
        return;
    }
    let w = world_with(&[], |c| {
        vec!["--jwks-ca".into(), c.scratch().join("idp/ca.pem").to_string_lossy().into_owned()]
    });
    // A CA and a server certificate for the identity provider's Service name, made with openssl.
    let dir = w.c.scratch().join("idp");
    std::fs::create_dir_all(dir.join("www")).expect("dir");
    let host = "jwks.mesh.svc.cluster.local";
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"))
        .expect("ext");
    let openssl = |args: &[&str]| {
        let out =
            std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=idp-test-ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-subj", "/CN=jwks", "-keyout", "key.pem", "-out", "req.csr"]].concat());
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let issuer = Issuer::new();
    std::fs::write(dir.join("www/jwks.json"), &issuer.jwks).expect("jwks");

    let idp = w.c.add_pod_spec(2, PodSpec::new("mesh", "idp-0").label("app", "idp")).expect("idp pod");
    w.c.add_service(ServiceSpec {
        namespace: "mesh".into(),
        name: "jwks".into(),
        vips: vec!["10.96.7.9".parse().expect("vip")],
        ports: vec![(443, 8443)],
        port_names: vec![],
        selector: vec![("app".into(), "idp".into())],
    })
    .expect("service");
    let script = dir.join("https.py");
    std::fs::write(&script, HTTPS_SERVER).expect("script");
    let mut cmd = w.c.pod_command(&idp, "/usr/bin/python3").expect("cmd");
    cmd.arg(&script).arg(dir.join("cert.pem")).arg(dir.join("key.pem")).arg(dir.join("www"));
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    w.c.spawn_in_pod(&idp, cmd).expect("https server");

    let ra = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: mesh}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: wp}}]\n  jwtRules:\n  - issuer: https://issuer.example\n    jwksUri: https://{host}/jwks.json\n    timeout: 3s\n"
    );
    w.c.write_config("jwt.yaml", &ra).expect("config");
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let claims = serde_json::json!({"iss": "https://issuer.example", "sub": "ann", "exp": exp});
    let good = format!("authorization: Bearer {}", issuer.sign(claims.clone()));
    let forged = format!("authorization: Bearer {}", Issuer::new().sign(claims));
    let until = |headers: &[&str], want: u16, what: &str| {
        let deadline = Instant::now() + scaled(Duration::from_secs(20));
        loop {
            let rows = w.many("/jwks-check", 1, headers);
            if rows[0].1 == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {rows:?}\n{}", w.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // First the waypoint loads the RequestAuthentication (any token is then checked), then, once
    // the identity provider answers, the valid token is accepted (each try fetches while none was).
    until(&[&forged], 401, "the RequestAuthentication never took effect");
    until(&[&good], 200, "the valid token was never accepted (JWKS never fetched)");
    assert_eq!(w.many("/jwks-check", 1, &[&forged])[0].1, 401, "a token signed by another key");
    assert_eq!(w.many("/jwks-check", 1, &[])[0].1, 200, "no token: unauthenticated but allowed");
}
