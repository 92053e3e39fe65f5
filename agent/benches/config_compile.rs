//! Mesh-config compile benchmark: parses and compiles a synthetic mesh of 10,000 pods, 2,000
//! services and 5,000 policies (4,000 AuthorizationPolicies, 1,000 PeerAuthentications) in 50
//! namespaces, and measures whether a reload pauses readers: connection lookups against the
//! current snapshot while another thread recompiles the mesh, once discarding the results (the
//! control) and once swapping each in.
//!
//! `cargo bench -p sluice --bench config_compile -- [--quick] [--out DIR]`; `cargo xtask bench`
//! runs it. Writes `DIR/config.json` (records like the data-plane benchmark's) and prints a table.
//! The full run fails when the compile takes 1 s or more; `--quick` (a tenth of the mesh) only
//! checks that valid numbers came out.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice::config::{Diagnostics, Snapshot, SnapshotStore, yaml};

const NAMESPACES: usize = 50;

struct Scale {
    pods: usize,
    services: usize,
    authz: usize,
    peer_auth: usize,
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1 + (i / 65536) as u8, ((i / 256) % 256) as u8, (i % 256) as u8)
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 256) as u8, (i % 256) as u8)
}

/// Documents per synthetic file (a real config is split over files too; one file may hold at most
/// `yaml::MAX_DOCUMENTS`).
const DOCS_PER_FILE: usize = 1000;

/// The synthetic mesh as multi-document YAML files, shaped like real objects.
fn mesh(s: &Scale) -> Vec<String> {
    let mut out = String::with_capacity(s.pods * 300);
    for n in 0..NAMESPACES {
        out += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{n}\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n"
        );
    }
    let apps = (s.services / NAMESPACES).max(1);
    for i in 0..s.pods {
        let (ns, app) = (i % NAMESPACES, (i / NAMESPACES) % apps);
        out += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod{i}\n  namespace: ns{ns}\n  labels:\n    app: app{app}\n    version: v{}\nspec:\n  serviceAccountName: sa{app}\nstatus:\n  podIP: {}\n  podIPs:\n  - ip: {}\n---\n",
            i % 3,
            pod_ip(i),
            pod_ip(i)
        );
    }
    for i in 0..s.services {
        let (ns, app) = (i % NAMESPACES, (i / NAMESPACES) % apps);
        out += &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc{i}\n  namespace: ns{ns}\nspec:\n  clusterIP: {}\n  selector:\n    app: app{app}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n",
            vip(i)
        );
    }
    for i in 0..s.authz {
        let (ns, app) = (i % NAMESPACES, (i / NAMESPACES) % apps);
        let action = if i % 4 == 0 { "DENY" } else { "ALLOW" };
        out += &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ap{i}\n  namespace: ns{ns}\nspec:\n  selector:\n    matchLabels:\n      app: app{app}\n  action: {action}\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/ns{}/sa/sa{}]\n    to:\n    - operation:\n        ports: [\"8080\"]\n---\n",
            (ns + 1) % NAMESPACES,
            i % apps
        );
    }
    for i in 0..s.peer_auth {
        let (ns, app) = (i % NAMESPACES, (i / NAMESPACES) % apps);
        out += &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: pa{i}\n  namespace: ns{ns}\nspec:\n  selector:\n    matchLabels:\n      app: app{app}\n  mtls:\n    mode: STRICT\n---\n"
        );
    }
    let docs: Vec<&str> = out.split_inclusive("---\n").collect();
    docs.chunks(DOCS_PER_FILE).map(|c| c.concat()).collect()
}

fn compile(files: &[String]) -> (Snapshot, Duration, Duration) {
    let t0 = Instant::now();
    let mut docs = Vec::new();
    for (i, text) in files.iter().enumerate() {
        match yaml::parse(text) {
            Ok(d) => docs.extend(d.into_iter().map(|d| (PathBuf::from(format!("bench-{i}.yaml")), d))),
            Err(e) => panic!("synthetic mesh file {i} does not parse: {e}"),
        }
    }
    let parsed = t0.elapsed();
    let mut diags = Diagnostics::default();
    let t1 = Instant::now();
    let snap = Snapshot::compile(&docs, &mut diags);
    let compiled = t1.elapsed();
    assert!(!diags.has_errors(), "synthetic mesh has errors:\n{diags}");
    (snap, parsed, compiled)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What one connection does with the snapshot: VIP -> service -> endpoint -> workload -> policies.
fn lookup(store: &SnapshotStore, i: usize, s: &Scale) -> usize {
    let snap = store.load();
    let addr = SocketAddr::new(IpAddr::V4(vip(i % s.services)), 80);
    let Some((svc, _)) = snap.service_by_vip(addr) else { return 0 };
    let Some(ep) = svc.endpoints.get(i % svc.endpoints.len().max(1)) else { return 0 };
    let Some(w) = snap.workload_by_ip(*ep) else { return 0 };
    snap.authz_for(w).len() + usize::from(snap.workload_peer_auth(w).is_some())
}

/// Lookup latencies (ns) of one reader thread for `window`, optionally with reloads running.
fn reader_latencies(store: &Arc<SnapshotStore>, s: &Scale, window: Duration) -> Vec<u64> {
    let mut lat = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let mut i = 0usize;
    let mut found = 0usize;
    while start.elapsed() < window {
        let t = Instant::now();
        found += lookup(store, i, s);
        lat.push(t.elapsed().as_nanos() as u64);
        i = i.wrapping_add(7919);
    }
    assert!(found > 0, "lookups found no policies: the synthetic mesh is not linked");
    lat.sort_unstable();
    lat
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() {
    let mut quick = false;
    let mut out = PathBuf::from("target/bench");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "--bench" => {} // passed by `cargo bench`
            other => {
                eprintln!("unknown argument {other}; usage: config_compile [--quick] [--out DIR]");
                std::process::exit(2);
            }
        }
    }
    let div = if quick { 10 } else { 1 };
    let s = Scale { pods: 10_000 / div, services: 2_000 / div, authz: 4_000 / div, peer_auth: 1_000 / div };
    let text = mesh(&s);
    let runs = if quick { 3 } else { 5 };
    let mut parses = Vec::new();
    let mut compiles = Vec::new();
    let mut snap = None;
    for _ in 0..runs {
        let (sn, p, c) = compile(&text);
        parses.push(p);
        compiles.push(c);
        snap = Some(sn);
    }
    let Some(snap) = snap else { return };
    assert_eq!(snap.pods.len(), s.pods);
    assert_eq!(snap.services.len(), s.services);
    assert_eq!(snap.authorization_policies.len() + snap.peer_authentications.len(), s.authz + s.peer_auth);
    let (parse, comp) = (median(parses), median(compiles));

    // Reload pause: one reader thread measures lookups while another thread recompiles the mesh
    // as fast as it can, first discarding each result (the control: same CPU load, no swap), then
    // swapping each one in. The ratio isolates what a swap costs readers.
    let store = SnapshotStore::new(snap);
    let window = Duration::from_secs(if quick { 1 } else { 3 });
    let measure = |swap: bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let reloader = {
            let (store, stop, text) = (store.clone(), stop.clone(), text.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (sn, _, _) = compile(&text);
                    if swap {
                        store.store(sn);
                    }
                    n += 1;
                }
                n
            })
        };
        let lat = reader_latencies(&store, &s, window);
        stop.store(true, Ordering::Relaxed);
        (lat, reloader.join().unwrap_or(0))
    };
    let (quiet, _) = measure(false);
    let (busy, reloads) = measure(true);

    let objects = NAMESPACES + s.pods + s.services + s.authz + s.peer_auth;
    let rec = |metric: &str, value: f64, unit: &str, ratio: Value| json!({"scenario": "config", "metric": metric, "value": value, "unit": unit, "ratio_to_direct": ratio});
    let records = vec![
        rec("objects", objects as f64, "count", Value::Null),
        rec("parse_time", parse.as_secs_f64() * 1e3, "ms", Value::Null),
        rec("compile_time", comp.as_secs_f64() * 1e3, "ms", Value::Null),
        rec("reloads_during_measurement", f64::from(reloads), "count", Value::Null),
        rec("lookup_p50_quiet", pct(&quiet, 0.5), "us", Value::Null),
        rec("lookup_p999_quiet", pct(&quiet, 0.999), "us", Value::Null),
        rec("lookup_p50_reloading", pct(&busy, 0.5), "us", json!(pct(&busy, 0.5) / pct(&quiet, 0.5))),
        rec("lookup_p999_reloading", pct(&busy, 0.999), "us", json!(pct(&busy, 0.999) / pct(&quiet, 0.999))),
        rec("lookup_max_quiet", pct(&quiet, 1.0), "us", Value::Null),
        rec("lookup_max_reloading", pct(&busy, 1.0), "us", json!(pct(&busy, 1.0) / pct(&quiet, 1.0))),
    ];
    for r in &records {
        let v = r["value"].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v >= 0.0, "invalid measurement {r}");
    }
    assert!(reloads > 0, "no reload completed during the measurement window");
    let mut md = String::from(
        "| scenario | metric | value | unit | ratio (reloading / quiet) |\n|---|---|---|---|---|\n",
    );
    for r in &records {
        let ratio = r["ratio_to_direct"].as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        md += &format!(
            "| config | {} | {:.2} | {} | {ratio} |\n",
            r["metric"].as_str().unwrap_or(""),
            r["value"].as_f64().unwrap_or(0.0),
            r["unit"].as_str().unwrap_or("")
        );
    }
    println!("{md}");
    if let Err(e) = std::fs::create_dir_all(&out)
        .and_then(|()| std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&records)?))
        .and_then(|()| std::fs::write(out.join("config.md"), &md))
    {
        eprintln!("cannot write results to {}: {e}", out.display());
        std::process::exit(1);
    }
    println!(
        "{objects} objects: parse {parse:?}, compile {comp:?} (median of {runs}); wrote {}",
        out.display()
    );
    if !quick && comp >= Duration::from_secs(1) {
        eprintln!("FAIL: compiling {objects} objects took {comp:?}; the target is under 1 s");
        std::process::exit(1);
    }
}
