//! Loading, attaching and pinning the eBPF programs, and the agent's handles on their maps.
//!
//! Everything is pinned below the agent's bpffs directory (`--bpffs`) with a layout version in each
//! name, so a restarted or upgraded agent re-adopts the same maps (its enrolled pods stay enrolled)
//! and replaces program links without a gap: it attaches its new links first, then removes the old
//! pinned ones, then pins the new ones.
//!
//! The programs' decision log ([`super::klog`]) is switched here, at load, by a global in the object.
use std::{
    collections::HashSet,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps, links::FdLink, links::PinnedLink},
};
use parking_lot::Mutex;
use sluice_common::{
    AF_INET, AF_INET6, Decision, DeliveryKey, ENROLL_OUTBOUND, EnrolledPod, InboundKey, LAYOUT_VERSION,
    LOG_DECISIONS_GLOBAL, OrigDstKey, SockAddr,
};
use tracing::{debug, info, warn};

use super::{
    klog,
    sys::{self, NetNs},
};

/// The eBPF object compiled from `ebpf/` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

/// ELF map name -> pin file stem.
const MAPS: &[(&str, &str)] = &[
    ("ENROLLED", "enrolled"),
    ("SOCK_ORIG", "sock_orig"),
    ("ORIG_DST", "orig_dst"),
    ("IN_PODS", "in_pods"),
    ("IN_SOCKS", "in_socks"),
    ("COUNTERS", "counters"),
    ("DELIVERING", "delivering"),
];

/// Cgroup programs: ELF program name -> pin stem.
const CGROUP_PROGRAMS: &[(&str, &str)] = &[
    ("sluice_connect4", "connect4"),
    ("sluice_connect6", "connect6"),
    ("sluice_getpeername4", "getpeername4"),
    ("sluice_getpeername6", "getpeername6"),
    ("sluice_sockops", "sockops"),
];

const SK_LOOKUP_PROGRAM: &str = "sluice_sk_lookup";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "{path} is not on a bpffs mount; mount one (`mount -t bpf bpf /sys/fs/bpf`) or pass --bpffs \
         pointing below an existing bpffs"
    )]
    NotBpffs { path: PathBuf },
    #[error("bpffs directory {path}: {source}")]
    BpffsDir { path: PathBuf, source: io::Error },
    #[error("cgroup {path}: {source} (pass --cgroup with a cgroup2 directory, or mount cgroup2)")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("no cgroup2 mount found in /proc/self/mountinfo; mount cgroup2 or pass --cgroup")]
    NoCgroup2,
    #[error("loading the eBPF object failed: {source} (needs root/CAP_BPF and a kernel with BTF, 6.1+)")]
    Load { source: Box<aya::EbpfError> },
    #[error("eBPF program {program}: {source}")]
    Program { program: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("eBPF program {program} was attached without a bpf_link ({detail}); sluice needs Linux 5.7+")]
    NotALink { program: &'static str, detail: String },
    #[error("eBPF program {program} is missing from the embedded object (build/ebpf mismatch)")]
    MissingProgram { program: &'static str },
    #[error("eBPF map {map} is missing from the embedded object (build/ebpf mismatch)")]
    MissingMap { map: &'static str },
    #[error("eBPF map {map}: {op}: {source}")]
    Map { map: &'static str, op: &'static str, source: Box<aya::maps::MapError> },
    #[error("pinning {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
}

impl KernelError {
    fn map(map: &'static str, op: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
        move |e| KernelError::Map { map, op, source: Box::new(e) }
    }
    fn prog(program: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> KernelError {
        move |e| KernelError::Program { program, source: Box::new(e) }
    }
}

struct Maps {
    enrolled: BpfHashMap<MapData, u64, EnrolledPod>,
    orig_dst: BpfHashMap<MapData, OrigDstKey, SockAddr>,
    in_pods: BpfHashMap<MapData, InboundKey, u64>,
    in_socks: SockHash<MapData, InboundKey>,
    counters: PerCpuArray<MapData, u64>,
    delivering: BpfHashMap<MapData, DeliveryKey, u32>,
}

/// The loaded programs and the agent's handles on their pinned maps.
pub struct Kernel {
    bpf: Mutex<Ebpf>,
    dir: PathBuf,
    maps: Mutex<Maps>,
    /// Cgroup links kept open (also pinned); dropped after a handover, when the next agent's
    /// links are pinned in their place.
    links: Mutex<Vec<PinnedLink>>,
}

fn pin_name(stem: &str) -> String {
    format!("sluice_{stem}_v{LAYOUT_VERSION}")
}

/// Finds the cgroup2 mount point in /proc/self/mountinfo (pure v2 or hybrid).
pub fn cgroup2_root() -> Result<PathBuf, KernelError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| KernelError::NoCgroup2)?;
    parse_cgroup2_root(&text).ok_or(KernelError::NoCgroup2)
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from)).flatten()
    })
}

impl Kernel {
    /// Loads the programs, re-adopting pinned maps in `dir`, and attaches the outbound programs to
    /// `cgroup` (replacing links a previous agent pinned there).
    pub fn load(dir: &Path, cgroup: &Path) -> Result<Kernel, KernelError> {
        std::fs::create_dir_all(dir.join("pods"))
            .map_err(|source| KernelError::BpffsDir { path: dir.to_path_buf(), source })?;
        if !sys::is_bpffs(dir).map_err(|source| KernelError::BpffsDir { path: dir.to_path_buf(), source })? {
            return Err(KernelError::NotBpffs { path: dir.to_path_buf() });
        }
        let cg = File::open(cgroup)
            .map_err(|source| KernelError::Cgroup { path: cgroup.to_path_buf(), source })?;

        let pin_paths: Vec<(&str, PathBuf)> = MAPS.iter().map(|(m, s)| (*m, dir.join(pin_name(s)))).collect();
        // The decision log is compiled into the programs and switched here; off, the verifier drops it.
        let log_decisions = klog::wanted() && tokio::runtime::Handle::try_current().is_ok();
        let log_switch = u8::from(log_decisions);
        let mut loader = EbpfLoader::new();
        for (m, p) in &pin_paths {
            loader.map_pin_path(m, p.as_path());
        }
        loader.override_global(LOG_DECISIONS_GLOBAL, &log_switch, true);
        let mut bpf = loader.load(EBPF_OBJECT).map_err(|e| KernelError::Load { source: Box::new(e) })?;
        let log_decisions = log_decisions && klog::spawn(&mut bpf);

        let mut links = Vec::new();
        for (name, stem) in CGROUP_PROGRAMS {
            let link: FdLink = if *name == "sluice_sockops" {
                let p: &mut SockOps = program(&mut bpf, name)?;
                p.load().map_err(KernelError::prog(name))?;
                let id = p.attach(&cg, CgroupAttachMode::Single).map_err(KernelError::prog(name))?;
                FdLink::try_from(p.take_link(id).map_err(KernelError::prog(name))?)
                    .map_err(|e| KernelError::NotALink { program: name, detail: e.to_string() })?
            } else {
                let p: &mut CgroupSockAddr = program(&mut bpf, name)?;
                p.load().map_err(KernelError::prog(name))?;
                let id = p.attach(&cg, CgroupAttachMode::Single).map_err(KernelError::prog(name))?;
                FdLink::try_from(p.take_link(id).map_err(KernelError::prog(name))?)
                    .map_err(|e| KernelError::NotALink { program: name, detail: e.to_string() })?
            };
            links.push(replace_pin(link, &dir.join(pin_name(&format!("link_{stem}"))))?);
        }
        let p: &mut SkLookup = program(&mut bpf, SK_LOOKUP_PROGRAM)?;
        p.load().map_err(KernelError::prog(SK_LOOKUP_PROGRAM))?;

        let maps = Maps {
            enrolled: take_map(&mut bpf, "ENROLLED")?,
            orig_dst: take_map(&mut bpf, "ORIG_DST")?,
            in_pods: take_map(&mut bpf, "IN_PODS")?,
            in_socks: take_map(&mut bpf, "IN_SOCKS")?,
            counters: take_map(&mut bpf, "COUNTERS")?,
            delivering: take_map(&mut bpf, "DELIVERING")?,
        };
        info!(dir = %dir.display(), cgroup = %cgroup.display(), decision_log = log_decisions, "eBPF programs attached");
        let k = Kernel {
            bpf: Mutex::new(bpf),
            dir: dir.to_path_buf(),
            maps: Mutex::new(maps),
            links: Mutex::new(links),
        };
        for p in k.foreign_pins() {
            warn!(pin = %p.display(), layout = LAYOUT_VERSION,
                  "pinned state of another eBPF layout version (another sluice release): not read; removed once the pods are re-enrolled");
        }
        Ok(k)
    }

    /// Lets go of this agent's program links after a handover (the next agent pinned its own in
    /// their place, so they detach now).
    pub fn release_links(&self) -> usize {
        let mut links = self.links.lock();
        let n = links.len();
        links.clear();
        n
    }

    /// Uninstall: detaches every program (this agent's links, and any link pinned in its
    /// directory) and removes every pin and the directory. Returns how many pins went.
    pub fn uninstall(&self) -> usize {
        self.release_links();
        let removed = self.pins().iter().filter(|p| remove_pin(p)).count();
        let _ = std::fs::remove_dir(self.dir.join("pods"));
        let _ = std::fs::remove_dir(&self.dir);
        removed
    }

    /// Every pin in the agent's directory and its `pods/` directory.
    fn pins(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = [self.dir.clone(), self.dir.join("pods")]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| !p.is_dir())
            .collect();
        found.sort();
        found
    }

    /// Pins in the agent's directory written by an agent of another layout version.
    pub fn foreign_pins(&self) -> Vec<PathBuf> {
        let ours = format!("_v{LAYOUT_VERSION}");
        let foreign =
            |p: &PathBuf| p.file_name().is_some_and(|n| is_foreign_pin(&n.to_string_lossy(), &ours));
        self.pins().into_iter().filter(foreign).collect()
    }

    /// Removes the pins of another layout version (their links detach, their maps are freed once no
    /// process holds them). Call once the pods are enrolled in this agent's maps.
    pub fn remove_foreign_pins(&self) -> usize {
        let mut removed = 0;
        for p in self.foreign_pins() {
            if remove_pin(&p) {
                info!(pin = %p.display(), "removed the pin of another eBPF layout version");
                removed += 1;
            }
        }
        removed
    }

    /// Starts capturing outbound connects from the pod whose netns has this cookie.
    pub fn enroll_outbound(&self, netns_cookie: u64) -> Result<(), KernelError> {
        let v = EnrolledPod { flags: ENROLL_OUTBOUND, _pad: 0 };
        self.maps.lock().enrolled.insert(netns_cookie, v, 0).map_err(KernelError::map("ENROLLED", "insert"))
    }

    /// Stops capturing outbound connects (existing connections are untouched).
    pub fn release_outbound(&self, netns_cookie: u64) -> Result<(), KernelError> {
        ignore_missing(self.maps.lock().enrolled.remove(&netns_cookie))
            .map_err(KernelError::map("ENROLLED", "remove"))
    }

    /// The original destination of a captured outbound connection, consumed.
    pub fn take_orig_dst(&self, netns_cookie: u64, peer: SocketAddr) -> Option<SocketAddr> {
        let key = OrigDstKey {
            netns_cookie,
            family: if peer.is_ipv4() { AF_INET } else { AF_INET6 },
            src_port: peer.port(),
            _pad: 0,
        };
        let mut maps = self.maps.lock();
        let v = maps.orig_dst.get(&key, 0).ok()?;
        let _ = maps.orig_dst.remove(&key);
        sock_addr_to_std(&v)
    }

    /// Marks `ip` as an enrolled pod address and steers its inbound TCP to `listener`.
    /// Marks `ip` as an address of the enrolled pod whose netns cookie is `owner` and steers its
    /// inbound TCP to `listener`; without a listener its inbound TCP is refused (fail closed).
    pub fn add_inbound(&self, ip: IpAddr, listener: Option<RawFd>, owner: u64) -> Result<(), KernelError> {
        let key = inbound_key(ip);
        let mut maps = self.maps.lock();
        match listener {
            Some(fd) => maps.in_socks.insert(key, fd, 0).map_err(KernelError::map("IN_SOCKS", "insert"))?,
            None => {
                ignore_missing(maps.in_socks.remove(&key)).map_err(KernelError::map("IN_SOCKS", "remove"))?
            }
        }
        maps.in_pods.insert(key, owner, 0).map_err(KernelError::map("IN_PODS", "insert"))
    }

    /// The netns cookie of the enrolled pod whose inbound entry `ip` is, if any.
    pub fn inbound_owner(&self, ip: IpAddr) -> Option<u64> {
        self.maps.lock().in_pods.get(&inbound_key(ip), 0).ok()
    }

    /// Forgets `ip` if the pod with netns cookie `owner` still holds it (another pod may have been
    /// given the address since): its inbound traffic is no longer steered or refused.
    pub fn remove_inbound(&self, ip: IpAddr, owner: u64) -> Result<(), KernelError> {
        let key = inbound_key(ip);
        let mut maps = self.maps.lock();
        match maps.in_pods.get(&key, 0) {
            Ok(o) if o == owner => {}
            _ => return Ok(()),
        }
        ignore_missing(maps.in_pods.remove(&key)).map_err(KernelError::map("IN_PODS", "remove"))?;
        ignore_missing(maps.in_socks.remove(&key)).map_err(KernelError::map("IN_SOCKS", "remove"))
    }

    /// Removes kernel state a previous agent left for pods that are gone: inbound entries of
    /// addresses no known pod holds (unless their owner is enrolled now), enrolled cookies no
    /// current or remaining entry refers to, and sk_lookup links of unknown pods. Returns how many
    /// entries went.
    pub fn gc(
        &self,
        enrolled: &HashSet<u64>,
        known_ips: &HashSet<IpAddr>,
        known_pods: &HashSet<String>,
    ) -> usize {
        let mut removed = 0;
        let mut maps = self.maps.lock();
        let entries: Vec<(InboundKey, u64)> = maps.in_pods.iter().filter_map(Result::ok).collect();
        let mut owners = enrolled.clone();
        for (key, owner) in entries {
            let ip = key_ip(&key);
            if enrolled.contains(&owner) || ip.is_some_and(|ip| known_ips.contains(&ip)) {
                owners.insert(owner);
                continue;
            }
            let _ = maps.in_pods.remove(&key);
            let _ = maps.in_socks.remove(&key);
            removed += 1;
        }
        let cookies: Vec<u64> = maps.enrolled.keys().filter_map(Result::ok).collect();
        for c in cookies {
            if !owners.contains(&c) && maps.enrolled.remove(&c).is_ok() {
                removed += 1;
            }
        }
        drop(maps);
        let prefix = "sluice_sk_lookup_";
        let suffix = format!("_v{LAYOUT_VERSION}");
        if let Ok(dir) = std::fs::read_dir(self.dir.join("pods")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(key) = name.strip_prefix(prefix).and_then(|n| n.strip_suffix(&suffix)) else {
                    continue;
                };
                if !known_pods.contains(key) && unpin_link(&e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Lets the SYN of the agent's own delivery connection from `from` (the client's address and
    /// the agent's source port) to the application's `app_port` through the pod's sk_lookup.
    pub fn begin_delivery(&self, from: SocketAddr, app_port: u16) -> Result<(), KernelError> {
        let key = delivery_key(from, app_port);
        self.maps.lock().delivering.insert(key, 1, 0).map_err(KernelError::map("DELIVERING", "insert"))
    }

    /// Ends [`Kernel::begin_delivery`] once the connection is established (or failed).
    pub fn end_delivery(&self, from: SocketAddr, app_port: u16) -> Result<(), KernelError> {
        let key = delivery_key(from, app_port);
        ignore_missing(self.maps.lock().delivering.remove(&key))
            .map_err(KernelError::map("DELIVERING", "remove"))
    }

    fn sk_lookup_pin(&self, pod_key: &str) -> PathBuf {
        self.dir.join("pods").join(pin_name(&format!("sk_lookup_{pod_key}")))
    }

    /// Attaches inbound steering to a pod's netns (replacing a link a previous agent pinned).
    pub fn attach_sk_lookup(&self, pod_key: &str, netns: &NetNs) -> Result<(), KernelError> {
        let mut bpf = self.bpf.lock();
        let p: &mut SkLookup = program(&mut bpf, SK_LOOKUP_PROGRAM)?;
        let id = p.attach(netns.as_fd()).map_err(KernelError::prog(SK_LOOKUP_PROGRAM))?;
        let link: FdLink = p.take_link(id).map_err(KernelError::prog(SK_LOOKUP_PROGRAM))?.into();
        drop(replace_pin(link, &self.sk_lookup_pin(pod_key))?);
        Ok(())
    }

    /// Detaches a pod's inbound steering.
    pub fn detach_sk_lookup(&self, pod_key: &str) -> Result<(), KernelError> {
        unpin_link(&self.sk_lookup_pin(pod_key))
    }

    /// Per-decision counters summed over CPUs.
    pub fn counters(&self) -> Vec<(Decision, u64)> {
        let maps = self.maps.lock();
        Decision::ALL
            .iter()
            .map(|d| {
                let v = maps.counters.get(&(*d as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
                (*d, v)
            })
            .collect()
    }
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = bpf.program_mut(name).ok_or(KernelError::MissingProgram { program: name })?;
    p.try_into().map_err(KernelError::prog(name))
}

fn take_map<T>(bpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = bpf.take_map(name).ok_or(KernelError::MissingMap { map: name })?;
    T::try_from(m).map_err(KernelError::map(name, "open"))
}

/// Pins `link` at `path`; an older link pinned there is detached only after the new one is live.
fn replace_pin(link: FdLink, path: &Path) -> Result<PinnedLink, KernelError> {
    unpin_link(path)?;
    link.pin(path).map_err(|e| KernelError::Pin { path: path.to_path_buf(), detail: e.to_string() })
}

/// Removes one pin: a link is unpinned (it detaches once no one else holds it), a map's pin is
/// unlinked (the map is freed once no one else holds it).
fn remove_pin(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.contains("_link_") || name.starts_with("sluice_sk_lookup_") {
        unpin_link(path).is_ok()
    } else {
        std::fs::remove_file(path).is_ok()
    }
}

/// Removes a pinned link (detaching it once no one else holds it). Missing is fine.
fn unpin_link(path: &Path) -> Result<(), KernelError> {
    if !path.exists() {
        return Ok(());
    }
    match PinnedLink::from_pin(path) {
        Ok(old) => {
            let fd = old
                .unpin()
                .map_err(|e| KernelError::Pin { path: path.to_path_buf(), detail: e.to_string() })?;
            drop(fd);
            debug!(path = %path.display(), "replaced pinned link");
            Ok(())
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "stale pin is not a link; removing it");
            std::fs::remove_file(path)
                .map_err(|e| KernelError::Pin { path: path.to_path_buf(), detail: e.to_string() })
        }
    }
}

/// A pin of ours (`sluice_<stem>_v<N>`) whose version is not `ours` (`_v<LAYOUT_VERSION>`).
fn is_foreign_pin(name: &str, ours: &str) -> bool {
    let Some(rest) = name.strip_prefix("sluice_") else { return false };
    let versioned =
        rest.rsplit_once("_v").is_some_and(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    versioned && !rest.ends_with(ours)
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

fn inbound_key(ip: IpAddr) -> InboundKey {
    match ip {
        IpAddr::V4(v4) => {
            InboundKey { family: AF_INET as u32, addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0] }
        }
        IpAddr::V6(v6) => InboundKey { family: AF_INET6 as u32, addr: words_from_v6(v6) },
    }
}

fn key_ip(k: &InboundKey) -> Option<IpAddr> {
    match k.family as u16 {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(k.addr[0].to_ne_bytes()))),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (i, w) in k.addr.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn delivery_key(from: SocketAddr, app_port: u16) -> DeliveryKey {
    let k = inbound_key(from.ip());
    DeliveryKey {
        family: k.family as u16,
        remote_port: from.port(),
        local_port: app_port,
        _pad: 0,
        remote: k.addr,
    }
}

fn words_from_v6(v6: Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    [0, 1, 2, 3].map(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// Converts the kernel's record (network-order address words, host-order port) to a socket
/// address; IPv4-mapped IPv6 destinations become IPv4.
pub fn sock_addr_to_std(v: &SockAddr) -> Option<SocketAddr> {
    let ip = match v.family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(v.addr[0].to_ne_bytes())),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (i, w) in v.addr.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(o);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, v.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_pure_layouts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_cgroup2_root(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_root(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_root("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn pins_of_other_layout_versions_are_told_apart() {
        let ours = format!("_v{LAYOUT_VERSION}");
        assert!(!is_foreign_pin(&pin_name("enrolled"), &ours));
        assert!(!is_foreign_pin(&pin_name("sk_lookup_uid-1"), &ours));
        let other = LAYOUT_VERSION + 1;
        assert!(is_foreign_pin(&format!("sluice_enrolled_v{other}"), &ours));
        assert!(is_foreign_pin(&format!("sluice_link_connect4_v{other}"), &ours));
        assert!(!is_foreign_pin("pods", &ours));
        assert!(!is_foreign_pin("sluice_notes", &ours));
    }

    #[test]
    fn address_round_trips_match_kernel_layout() {
        let v4 = SockAddr {
            family: AF_INET,
            port: 8080,
            _pad: 0,
            addr: [u32::from_ne_bytes([10, 1, 2, 3]), 0, 0, 0],
        };
        assert_eq!(sock_addr_to_std(&v4), Some("10.1.2.3:8080".parse().expect("addr")));
        let v6: Ipv6Addr = "fd00::1:2".parse().expect("v6");
        let s6 = SockAddr { family: AF_INET6, port: 443, _pad: 0, addr: words_from_v6(v6) };
        assert_eq!(sock_addr_to_std(&s6), Some("[fd00::1:2]:443".parse().expect("addr")));
        let mapped: Ipv6Addr = "::ffff:10.0.0.7".parse().expect("v6");
        let sm = SockAddr { family: AF_INET6, port: 80, _pad: 0, addr: words_from_v6(mapped) };
        assert_eq!(sock_addr_to_std(&sm), Some("10.0.0.7:80".parse().expect("addr")));
        assert_eq!(inbound_key("10.1.2.3".parse().expect("ip")).addr[0], v4.addr[0]);
    }
}
