//! Finding the network namespaces of pods that were already running when sluice was installed (no
//! CNI ADD ever reached an agent for them), so they are enrolled without a restart.
//!
//! The node's network namespaces are found where container runtimes keep them: the bind mounts in
//! `--pod-netns-dir` (containerd and CRI-O pin each pod sandbox's namespace in /var/run/netns) and,
//! with `--pod-netns-proc`, `/proc/<pid>/ns/net` of every process on the host (hostPID). Each distinct
//! namespace is entered once and its interface addresses listed; a pod of this node whose every
//! address is in one namespace lives there.
use std::{
    collections::HashSet,
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tracing::debug;

use crate::redirect::NetNs;

/// One network namespace of the node and its addresses.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub ips: Vec<IpAddr>,
}

/// Where to look.
#[derive(Clone, Debug)]
pub struct Where {
    pub dirs: Vec<PathBuf>,
    pub proc: bool,
}

/// A network namespace's identity: the nsfs inode a path to it resolves to, whatever the path.
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether two paths name the same network namespace.
pub fn same_netns(a: &Path, b: &Path) -> bool {
    netns_id(a).is_some_and(|x| Some(x) == netns_id(b))
}

/// Every network namespace reachable from `w` except the agent's own, with its addresses.
pub fn scan(w: &Where) -> Vec<Found> {
    let mut seen: HashSet<(u64, u64)> = netns_id(Path::new("/proc/self/ns/net")).into_iter().collect();
    let mut out = Vec::new();
    for path in candidates(w) {
        let Some(id) = netns_id(&path) else { continue };
        if !seen.insert(id) {
            continue;
        }
        match addresses(&path) {
            Ok(ips) if !ips.is_empty() => out.push(Found { path, ips }),
            Ok(_) => {}
            Err(e) => debug!(netns = %path.display(), error = %e, "cannot list addresses"),
        }
    }
    out
}

fn candidates(w: &Where) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in &w.dirs {
        let mut here: Vec<PathBuf> =
            std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        here.sort();
        paths.extend(here);
    }
    if w.proc {
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        paths.extend(pids.into_iter().map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))));
    }
    paths
}

/// True for a namespace path that names a process (`/proc/<pid>/ns/net`): it is only as stable as
/// that process, and a reused pid names another namespace.
pub fn is_process_path(path: &Path) -> bool {
    path.starts_with("/proc")
}

/// Whether the namespace at `path` (still) holds every one of `ips`.
pub fn holds(path: &Path, ips: &[IpAddr]) -> bool {
    addresses(path).is_ok_and(|have| !ips.is_empty() && ips.iter().all(|ip| have.contains(ip)))
}

/// The global addresses of every interface in the namespace at `path`.
fn addresses(path: &Path) -> io::Result<Vec<IpAddr>> {
    let ns = NetNs::open(path)?;
    let addrs = ns.run(nix::ifaddrs::getifaddrs)?.map_err(io::Error::from)?;
    let mut ips: Vec<IpAddr> = addrs
        .filter_map(|a| {
            let s = a.address?;
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// The namespace holding every one of `ips`.
pub fn find<'a>(found: &'a [Found], ips: &[IpAddr]) -> Option<&'a Found> {
    if ips.is_empty() {
        return None;
    }
    found.iter().find(|f| ips.iter().all(|ip| f.ips.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_lives_where_all_its_addresses_are() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let found = vec![
            Found { path: "/a".into(), ips: vec![ip("10.0.0.2")] },
            Found { path: "/b".into(), ips: vec![ip("10.0.0.3"), ip("fd00::3")] },
        ];
        assert_eq!(find(&found, &[ip("10.0.0.3"), ip("fd00::3")]).map(|f| f.path.clone()), Some("/b".into()));
        assert!(
            find(&found, &[ip("10.0.0.2"), ip("fd00::2")]).is_none(),
            "one address elsewhere: not this one"
        );
        assert!(find(&found, &[]).is_none());
    }

    #[test]
    fn the_agents_own_namespace_is_never_a_pod() {
        // With /proc scanned, this test process's own namespace is seen and skipped.
        let here = addresses(Path::new("/proc/self/ns/net")).expect("own addresses");
        let found = scan(&Where { dirs: vec![], proc: true });
        for f in &found {
            assert!(
                !same_netns(&f.path, Path::new("/proc/self/ns/net")),
                "own namespace listed: {f:?} (own addresses {here:?})"
            );
        }
    }
}
