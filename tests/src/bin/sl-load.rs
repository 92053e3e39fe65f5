//! `sl-load`: the benchmark's load generator and echo server, run inside pod network namespaces
//! (started by `sluice-bench` through [`sluice_e2e::Cluster::pod_command`], like `sl-probe`).
//!
//! - `sl-load serve ECHO_PORT ONCE_PORT [SIZE]`: a tokio server on `[::]` (dual stack). On ECHO_PORT
//!   every connection is echoed until the client closes (no greeting, unlike `sl-probe`); on
//!   ONCE_PORT the server reads exactly SIZE bytes (default 1024), writes them back and closes first,
//!   so TIME_WAIT lands on the server and a churning client never runs out of ports.
//! - `sl-load latency ADDR RATE SECS [SIZE]`: one long-lived connection to an echo port, requests
//!   of SIZE bytes sent open loop at RATE per second for SECS seconds. Request `i` is due at
//!   `t0 + i / RATE`; its latency is measured from that due time, not from when it was actually
//!   written, so a stall delays every request queued behind it (no coordinated omission). Prints
//!   `{"ok":true,"requests":..,"p50_us":..,"p90_us":..,"p99_us":..,"p999_us":..,"max_us":..}`.
//! - `sl-load churn ADDR SECS WORKERS [SIZE]`: WORKERS threads each loop for SECS seconds over new
//!   connections to a once port: connect, send SIZE bytes, read them back, read EOF, close. Prints
//!   `{"ok":true,"connections":..,"errors":..,"per_sec":..,"conn_p50_us":..,...}` with the
//!   median time of each phase (connect, echo, the server's EOF).
//! - `sl-load idle ADDR N`: opens N connections to an echo port one after another, proving each end
//!   to end with a one-byte echo, prints `{"ok":true,"established":N,...}` and keeps them open
//!   until its stdin closes.
//! - `sl-load relay PORT=ADDR...`: a plaintext TCP relay, the benchmark's reference for what any
//!   proxy that terminates and re-originates TCP costs on this machine: for every mapping it
//!   listens on `[::]:PORT` and copies each accepted connection to a new connection to ADDR, both
//!   ways with half-close, in 64 KiB chunks with TCP_NODELAY, on a multi-threaded tokio runtime
//!   (like the agent, minus TLS, HTTP/2 and policy). Prints `listening` once every port is bound.
//!
//! Every command raises its RLIMIT_NOFILE soft limit to the hard limit first. Every report is one
//! JSON line on stdout; the exit status is 0 only when the run was valid.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = raise_limits() {
        eprintln!("sl-load: raising limits: {e}");
    }
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("latency") => latency(&args[1..]),
        Some("churn") => churn(&args[1..]),
        Some("idle") => idle(&args[1..]),
        Some("relay") => relay(&args[1..]),
        _ => Err(anyhow::anyhow!(
            "usage: sl-load serve ECHO_PORT ONCE_PORT [SIZE] | latency ADDR RATE SECS [SIZE] | \
             churn ADDR SECS WORKERS [SIZE] | idle ADDR N | relay PORT=ADDR..."
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit, and asks for a 1 µs timer slack so the
/// latency sender wakes close to each due time (the default slack is 50 µs).
#[allow(unsafe_code, reason = "getrlimit, setrlimit and prctl have no safe std equivalent")]
fn raise_limits() -> std::io::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit for the duration of the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // PR_SET_TIMERSLACK takes the slack in nanoseconds; it applies to this thread and to the
        // threads it creates afterwards.
        if libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let s = args.get(i).with_context(|| format!("missing {name}"))?;
    s.parse().map_err(|e| anyhow::anyhow!("{name} {s:?}: {e}"))
}

fn arg_or<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    if args.get(i).is_some() { arg(args, i, name) } else { Ok(default) }
}

// ---------------------------------------------------------------------------------------------
// serve

fn serve(args: &[String]) -> anyhow::Result<()> {
    let echo_port: u16 = arg(args, 0, "ECHO_PORT")?;
    let once_port: u16 = arg(args, 1, "ONCE_PORT")?;
    let size: usize = arg_or(args, 2, "SIZE", 1024)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let echo = tokio::net::TcpListener::bind(("::", echo_port)).await.context("bind echo port")?;
        let once = tokio::net::TcpListener::bind(("::", once_port)).await.context("bind once port")?;
        println!("listening");
        let echo_task = tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = echo.accept().await {
                    tokio::spawn(echo_conn(s));
                }
            }
        });
        let once_task = tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = once.accept().await {
                    tokio::spawn(once_conn(s, size));
                }
            }
        });
        let _ = tokio::join!(echo_task, once_task);
        Ok(())
    })
}

async fn echo_conn(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let _ = s.set_nodelay(true);
    // The buffer lives only while data is in flight: 10,000 idle connections must not each hold
    // one (the agents' memory is what is measured, and the machine is shared).
    loop {
        if s.readable().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        match s.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    let _ = s.shutdown().await;
}

async fn once_conn(mut s: tokio::net::TcpStream, size: usize) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; size];
    if s.read_exact(&mut buf).await.is_err() {
        return;
    }
    if s.write_all(&buf).await.is_err() {
        return;
    }
    // Close first (FIN from the server), then wait for the client's FIN so the close is orderly.
    let _ = s.shutdown().await;
    let mut rest = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await;
}

// ---------------------------------------------------------------------------------------------
// relay

fn relay(args: &[String]) -> anyhow::Result<()> {
    let mut maps: Vec<(u16, SocketAddr)> = Vec::new();
    for a in args {
        let (port, to) = a.split_once('=').with_context(|| format!("mapping {a:?}: expected PORT=ADDR"))?;
        let port: u16 = port.parse().with_context(|| format!("mapping {a:?}: port {port:?}"))?;
        let to: SocketAddr = to.parse().with_context(|| format!("mapping {a:?}: address {to:?}"))?;
        maps.push((port, to));
    }
    if maps.is_empty() {
        bail!("relay needs at least one PORT=ADDR mapping");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (port, to) in maps {
            let l =
                tokio::net::TcpListener::bind(("::", port)).await.with_context(|| format!("bind {port}"))?;
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        tokio::spawn(relay_conn(s, to));
                    }
                }
            }));
        }
        println!("listening");
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn relay_conn(mut a: tokio::net::TcpStream, to: SocketAddr) {
    let Ok(mut b) = tokio::net::TcpStream::connect(to).await else {
        return;
    };
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await;
}

// ---------------------------------------------------------------------------------------------
// latency

/// A request's payload: its index, then a fixed pattern, so the echo can be checked cheaply.
fn fill(buf: &mut [u8], i: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(31).wrapping_add(7);
    }
    buf[..8].copy_from_slice(&i.to_le_bytes());
}

fn latency(args: &[String]) -> anyhow::Result<()> {
    let to: SocketAddr = arg(args, 0, "ADDR")?;
    let rate: f64 = arg(args, 1, "RATE")?;
    let secs: f64 = arg(args, 2, "SECS")?;
    let size: usize = arg_or(args, 3, "SIZE", 1024)?;
    if !(rate > 0.0 && secs > 0.0 && size >= 8) {
        bail!("RATE and SECS must be positive and SIZE at least 8");
    }
    let n = (rate * secs).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).with_context(|| format!("connect {to}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; size];
    let mut back = vec![0u8; size];
    // Warm up closed loop (through the mesh this also proves the tunnel end to end).
    for i in 0..20u64 {
        fill(&mut buf, u64::MAX - i);
        s.write_all(&buf)?;
        s.read_exact(&mut back).context("warm-up echo")?;
        if back != buf {
            bail!("warm-up echo mismatch");
        }
    }
    let mut w = s.try_clone()?;
    let t0 = Instant::now() + Duration::from_millis(10);
    let stop = Arc::new(AtomicBool::new(false));
    let late = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, late) = (stop.clone(), late.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; size];
            for i in 0..n {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = t0 + period.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now - due > period {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                fill(&mut buf, i);
                w.write_all(&buf).with_context(|| format!("write request {i}"))?;
            }
            Ok(())
        })
    };
    let mut lat_ns: Vec<u64> = Vec::with_capacity(n as usize);
    let mut expect = vec![0u8; size];
    let read_result = (|| -> anyhow::Result<()> {
        for i in 0..n {
            s.read_exact(&mut back).with_context(|| format!("reading response {i}"))?;
            let now = Instant::now();
            fill(&mut expect, i);
            if back != expect {
                bail!("response {i} does not match its request");
            }
            let due = t0 + period.mul_f64(i as f64);
            lat_ns.push(now.saturating_duration_since(due).as_nanos() as u64);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let write_result = writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    read_result?;
    write_result?;
    lat_ns.sort_unstable();
    let pct = |p: f64| percentile(&lat_ns, p) as f64 / 1000.0;
    let mean = lat_ns.iter().sum::<u64>() as f64 / lat_ns.len().max(1) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "ok": true,
            "requests": lat_ns.len(),
            "rate": rate,
            "size": size,
            "late_sends": late.load(Ordering::Relaxed),
            "mean_us": mean,
            "p50_us": pct(50.0),
            "p90_us": pct(90.0),
            "p99_us": pct(99.0),
            "p999_us": pct(99.9),
            "max_us": pct(100.0),
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// churn

/// Microseconds spent connecting, getting the echo back and getting the server's EOF.
type Phases = [u64; 3];

fn one_exchange(to: &SocketAddr, req: &[u8], back: &mut [u8]) -> anyhow::Result<Phases> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(to, Duration::from_secs(5)).context("connect")?;
    let connected = t.elapsed();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req).context("write")?;
    s.read_exact(back).context("read echo")?;
    let echoed = t.elapsed();
    if back != req {
        bail!("echo mismatch");
    }
    let mut tail = [0u8; 1];
    match s.read(&mut tail).context("read EOF")? {
        0 => {}
        _ => bail!("bytes after the echo"),
    }
    let eof = t.elapsed();
    Ok([connected, echoed - connected, eof - echoed].map(|d| d.as_micros() as u64))
}

/// The `p`th percentile of sorted `v`.
fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[idx.saturating_sub(1).min(v.len() - 1)]
}

fn churn(args: &[String]) -> anyhow::Result<()> {
    let to: SocketAddr = arg(args, 0, "ADDR")?;
    let secs: f64 = arg(args, 1, "SECS")?;
    let workers: usize = arg(args, 2, "WORKERS")?;
    let size: usize = arg_or(args, 3, "SIZE", 1024)?;
    if secs.is_nan() || secs <= 0.0 || workers == 0 || size < 8 {
        bail!("SECS and WORKERS must be positive and SIZE at least 8");
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || {
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, String::new());
                let mut phases: Vec<Phases> = Vec::new();
                let mut req = vec![0u8; size];
                let mut back = vec![0u8; size];
                let mut i = 0u64;
                while Instant::now() < deadline {
                    fill(&mut req, (w as u64) << 48 | i);
                    i += 1;
                    match one_exchange(&to, &req, &mut back) {
                        Ok(p) => {
                            ok += 1;
                            phases.push(p);
                        }
                        Err(e) => {
                            errors += 1;
                            if first_error.is_empty() {
                                first_error = format!("{e:#}");
                            }
                            // Do not spin on an error that repeats at once (e.g. refused).
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (ok, errors, first_error, phases)
            })
        })
        .collect();
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, String::new());
    let mut phases: Vec<Phases> = Vec::new();
    for h in handles {
        let (o, e, f, p) = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        phases.extend(p);
        ok += o;
        errors += e;
        if first_error.is_empty() {
            first_error = f;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut total: Vec<u64> = phases.iter().map(|p| p.iter().sum()).collect();
    total.sort_unstable();
    let phase_p50 = |k: usize| {
        let mut v: Vec<u64> = phases.iter().map(|p| p[k]).collect();
        v.sort_unstable();
        percentile(&v, 50.0)
    };
    println!(
        "{}",
        json!({
            "ok": errors == 0 && ok > 0,
            "connections": ok,
            "errors": errors,
            "workers": workers,
            "secs": elapsed,
            "per_sec": ok as f64 / elapsed,
            "conn_p50_us": percentile(&total, 50.0),
            "conn_p99_us": percentile(&total, 99.0),
            "connect_p50_us": phase_p50(0),
            "echo_p50_us": phase_p50(1),
            "eof_p50_us": phase_p50(2),
            "first_error": first_error,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// idle

fn idle(args: &[String]) -> anyhow::Result<()> {
    let to: SocketAddr = arg(args, 0, "ADDR")?;
    let n: usize = arg(args, 1, "N")?;
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut error = String::new();
    for i in 0..n {
        let r = (|| -> anyhow::Result<TcpStream> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).context("connect")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&[i as u8])?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).context("one-byte echo")?;
            if b[0] != i as u8 {
                bail!("echo mismatch");
            }
            Ok(s)
        })();
        match r {
            Ok(s) => conns.push(s),
            Err(e) => {
                error = format!("connection {}: {e:#}", i + 1);
                break;
            }
        }
    }
    println!(
        "{}",
        json!({
            "ok": error.is_empty(),
            "established": conns.len(),
            "wanted": n,
            "secs": start.elapsed().as_secs_f64(),
            "error": error,
        })
    );
    std::io::stdout().flush()?;
    // Hold them until told to stop (stdin closes).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(conns);
    Ok(())
}
