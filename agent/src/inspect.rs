//! `sluice config` and `sluice status`: fetch an agent's admin JSON and render it for a human (or
//! pass the JSON through); `sluice ready-check`, the agent container's readiness probe.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cli::Output;

fn get(admin: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3)).with_context(|| {
        format!("cannot reach the agent's admin port {admin} (is the agent running? pass --admin)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").context("malformed HTTP response from the agent")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} from {admin}: {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: the agent did not answer JSON"))
}

fn strs(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn expires_in(unix: &Value) -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match unix.as_u64() {
        Some(t) if t >= now => format!("in {}s", t - now),
        Some(t) => format!("EXPIRED {}s ago", now - t),
        None => "-".into(),
    }
}

/// `sluice config`.
pub fn config(admin: SocketAddr, output: Output) -> anyhow::Result<()> {
    let d = get(admin, "/debug/config_dump")?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("config generation {}", d["generation"]);
    println!("\nNAMESPACE            AMBIENT");
    if let Some(ns) = d["namespaces"].as_object() {
        let mut names: Vec<_> = ns.keys().collect();
        names.sort();
        for n in names {
            let ambient = ns[n]["labels"]["istio.io/dataplane-mode"] == "ambient";
            println!("{n:<20} {ambient}");
        }
    }
    println!("\nWORKLOAD                          SERVICE ACCOUNT      ADDRESSES");
    for w in d["workloads"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", w["namespace"].as_str().unwrap_or(""), w["name"].as_str().unwrap_or(""));
        println!("{name:<33} {:<20} {}", w["service_account"].as_str().unwrap_or(""), strs(&w["ips"]));
    }
    println!("\nSERVICE                           VIPS                 PORTS          ENDPOINTS");
    for s in d["services"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", s["namespace"].as_str().unwrap_or(""), s["name"].as_str().unwrap_or(""));
        let ports: Vec<String> = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}->{}", p["port"], p["target_port"]))
            .collect();
        println!("{name:<33} {:<20} {:<14} {}", strs(&s["vips"]), ports.join(","), strs(&s["endpoints"]));
    }
    println!("\nPOLICY                                    KIND                 ACTION/MODE");
    for p in d["peer_authentications"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""));
        println!("{name:<41} PeerAuthentication   {}", p["spec"]["mtls"]["mode"].as_str().unwrap_or("UNSET"));
    }
    for p in d["authorization_policies"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""));
        let rules = p["spec"]["rules"].as_array().map_or(0, Vec::len);
        println!(
            "{name:<41} AuthorizationPolicy  {} ({rules} rules)",
            p["spec"]["action"].as_str().unwrap_or("ALLOW")
        );
    }
    print_certs(&d["certificates"]);
    Ok(())
}

fn print_certs(certs: &Value) {
    println!("\nCERTIFICATE                                              EXPIRES        ROTATIONS");
    for c in certs.as_array().into_iter().flatten() {
        println!(
            "{:<56} {:<14} {}",
            c["identity"].as_str().unwrap_or(""),
            expires_in(&c["expires_unix"]),
            c["rotations"]
        );
    }
}

/// `sluice status`.
pub fn status(admin: SocketAddr, output: Output) -> anyhow::Result<()> {
    let pods = get(admin, "/debug/pods")?;
    let certs = get(admin, "/debug/certs")?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"pods": pods, "certificates": certs}))?
        );
        return Ok(());
    }
    println!("POD                               ENROLLED  ADDRESSES                        REASON");
    for p in pods.as_array().into_iter().flatten() {
        let name = format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""));
        println!(
            "{name:<33} {:<9} {:<32} {}",
            p["enrolled"],
            strs(&p["ips"]),
            p["reason"].as_str().unwrap_or("")
        );
    }
    print_certs(&certs);
    Ok(())
}

/// `sluice ready-check`: ready when the agent answering on `admin` runs in this process's own
/// cgroup, i.e. in the container the probe is executed in. During an upgrade both agents of a node
/// share the host's ports, and an HTTP probe would be answered by the old agent until the new one
/// has taken over; this check is true for the new container only once its agent serves the admin
/// port, which it binds after the handover.
pub fn ready_check(admin: SocketAddr) -> anyhow::Result<()> {
    let info = get(admin, "/debug/agent")?;
    let pid = info["pid"].as_u64().context("the agent did not say its pid (/debug/agent)")?;
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("cannot read /proc/{pid}/cgroup (is hostPID on?)"))?;
    let ours = std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    if !same_container(&ours, &theirs) {
        bail!(
            "the agent answering on {admin} (pid {pid}) runs in another container: this one has not taken over yet"
        );
    }
    Ok(())
}

/// Two `/proc/<pid>/cgroup` texts name the same cgroups (one container).
fn same_container(a: &str, b: &str) -> bool {
    let (a, b) = (cgroup_lines(a), cgroup_lines(b));
    !a.is_empty() && a == b
}

fn cgroup_lines(t: &str) -> Vec<&str> {
    let mut l: Vec<&str> = t.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    l.sort_unstable();
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_told_apart_by_cgroup() {
        let new = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-aaa.scope\n";
        let old = "0::/kubepods.slice/kubepods-pod2.slice/cri-containerd-bbb.scope\n";
        assert!(same_container(new, new));
        assert!(!same_container(new, old));
        assert!(!same_container("", ""));
        let hybrid = "12:memory:/x\n0::/x\n";
        assert!(same_container(hybrid, "0::/x\n12:memory:/x\n"));
    }
}
