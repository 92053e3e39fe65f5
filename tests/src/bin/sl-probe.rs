//! `sl-probe`: the test workload. A real TCP server and client that prove byte-exactness and show
//! what each side sees of the other.
//!
//! - `sl-probe serve [--name NAME] PORT...` listens on [::]:PORT (dual stack) for each port; every
//!   connection first receives `PEER <addr> NAME <name>\n` (the client address as the server sees
//!   it, and the server's name), then an echo.
//! - `sl-probe client ADDR BYTES [HOLD_MS [PATTERN]]` connects, sends BYTES pseudo-random bytes (or
//!   PATTERN repeated) spread over HOLD_MS, checks the echo, prints one JSON line and exits 0 only
//!   if all matched.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("client") => client(&args[1..]),
        _ => {
            eprintln!("usage: sl-probe serve PORT... | sl-probe client ADDR BYTES [HOLD_MS]");
            2
        }
    };
    std::process::exit(code);
}

fn serve(args: &[String]) -> i32 {
    let (name, ports) = match args {
        [flag, name, rest @ ..] if flag == "--name" => (name.clone(), rest),
        rest => (String::from("-"), rest),
    };
    let mut handles = Vec::new();
    for p in ports {
        let name = name.clone();
        let l = match TcpListener::bind(format!("[::]:{p}")) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bind {p}: {e}");
                return 1;
            }
        };
        handles.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || echo(s, &name));
            }
        }));
    }
    println!("listening");
    for h in handles {
        let _ = h.join();
    }
    0
}

fn echo(mut s: TcpStream, name: &str) {
    let peer = s.peer_addr().map(|a| canonical(a).to_string()).unwrap_or_default();
    if writeln!(s, "PEER {peer} NAME {name}").is_err() {
        return;
    }
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn client(args: &[String]) -> i32 {
    let result = (|| -> Result<String, String> {
        let to: SocketAddr = args.first().ok_or("missing ADDR")?.parse().map_err(|e| format!("ADDR: {e}"))?;
        let bytes: usize = args.get(1).ok_or("missing BYTES")?.parse().map_err(|e| format!("BYTES: {e}"))?;
        let hold_ms: u64 = args.get(2).map(|h| h.parse().unwrap_or(0)).unwrap_or(0);
        // Timeouts stretch with the harness's SLUICE_TIME_SCALE (inherited from the test).
        let scale: u32 =
            std::env::var("SLUICE_TIME_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(5) * scale)
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20) * scale)).map_err(|e| e.to_string())?;
        let peer = s.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
        let local = s.local_addr().map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("reading PEER line: {e}"))?;
        let greeting = line.trim().strip_prefix("PEER ").ok_or(format!("bad greeting {line:?}"))?;
        let (server_saw, server_name) = greeting.split_once(" NAME ").unwrap_or((greeting, "-"));
        let (server_saw, server_name) = (server_saw.to_string(), server_name.to_string());
        let data: Vec<u8> = match args.get(3) {
            Some(p) if !p.is_empty() => p.bytes().cycle().take(bytes).collect(),
            _ => pseudo_random(bytes),
        };
        let mut w = s;
        let chunks = if hold_ms > 0 { 10 } else { 1 };
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let step = data.len().div_ceil(chunks).max(1);
                for c in data.chunks(step) {
                    w.write_all(c).map_err(|e| format!("write: {e}"))?;
                    if hold_ms > 0 {
                        std::thread::sleep(Duration::from_millis(hold_ms / chunks as u64));
                    }
                }
                w.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())
            })
        };
        let start = Instant::now();
        let mut back = Vec::with_capacity(bytes);
        reader.read_to_end(&mut back).map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
        writer.join().map_err(|_| "writer panicked".to_string())??;
        if back != data {
            return Err(format!("echo mismatch: sent {} bytes, got {} back", data.len(), back.len()));
        }
        Ok(format!(
            r#"{{"ok":true,"peer":"{}","local":"{}","server_saw":"{}","server_name":"{}","bytes":{},"ms":{}}}"#,
            canonical(peer),
            canonical(local),
            server_saw,
            server_name,
            bytes,
            start.elapsed().as_millis()
        ))
    })();
    match result {
        Ok(j) => {
            println!("{j}");
            0
        }
        Err(e) => {
            println!(r#"{{"ok":false,"error":{:?}}}"#, e);
            1
        }
    }
}

fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x =
        Instant::now().elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15 ^ (std::process::id() as u64);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
