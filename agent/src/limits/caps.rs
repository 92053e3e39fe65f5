//! Connection caps: what one client, one pod or the whole data path may hold at once, so a flood
//! of connections from outside the mesh cannot take the node's descriptors (and with them HBONE,
//! readiness and metrics for every pod).
//!
//! Three counters, checked together and taken at accept, before any allocation-heavy work:
//! - the **budget**: descriptors all carried connections together may hold, derived from the
//!   open-file limit (90 %; the rest stays free for the admin, metrics and readiness servers,
//!   HBONE handshakes to peers, config and certificates). Plaintext from outside the mesh may take
//!   only half of it and HBONE connections whose handshake has not verified the peer yet only a
//!   quarter, so neither can starve the mesh (nor each other);
//! - **per pod**: connections to and from one node-local pod (plaintext and HBONE streams to it,
//!   captured outbound connections it opens), so one pod can take neither the node's budget nor
//!   another pod's share of it;
//! - **per source**: connections and HBONE streams from one client address (IPv4-mapped IPv6
//!   addresses count as the IPv4 address they carry, so a dual-stack listener cannot split it).
//!
//! An HBONE connection counts in the handshake share until its TLS handshake verified the peer's
//! identity ([`Permit::into_mesh`]): anyone who can reach a pod's address can open one, and must
//! not take the share kept for the mesh by holding handshakes open. It is a share of its own, not
//! the plaintext one, so a plaintext flood cannot keep mesh peers from connecting either.
//!
//! A taken [`Permit`] is given back when it is dropped, so a connection's task holds it for as
//! long as it lives. Imports nothing from the crate; the proxy names refusals with
//! `telemetry::reason::Reason`.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use parking_lot::Mutex;

/// Share of the open-file limit carried connections may use, in percent.
pub const BUDGET_PERCENT: u64 = 90;
/// Default cap of concurrent connections to one pod.
pub const DEFAULT_PER_POD: usize = 8192;
/// Default cap of concurrent connections from one client address.
pub const DEFAULT_PER_SOURCE: usize = 2048;

/// Default cap of concurrent connections to each admin, metrics and readiness listener.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 64;

/// The configured caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Caps {
    /// Descriptors all carried connections may hold together.
    pub budget: usize,
    /// Descriptors plaintext connections from outside the mesh may hold (a part of `budget`).
    pub plaintext_budget: usize,
    /// Descriptors HBONE connections may hold before their peer is verified (a part of `budget`).
    pub handshake_budget: usize,
    /// Concurrent connections (and HBONE streams) to one pod.
    pub per_pod: usize,
    /// Concurrent connections (and HBONE streams) from one client address.
    pub per_source: usize,
}

impl Caps {
    /// Caps for a process whose open-file limit is `nofile`; `budget` overrides the derived one.
    pub fn derive(nofile: u64, budget: Option<usize>, per_pod: usize, per_source: usize) -> Caps {
        let budget = budget.unwrap_or_else(|| {
            usize::try_from(nofile.saturating_mul(BUDGET_PERCENT) / 100).unwrap_or(usize::MAX)
        });
        Caps { budget, plaintext_budget: budget / 2, handshake_budget: budget / 4, per_pod, per_source }
    }

    /// No cap at all (tests, tools).
    pub fn unlimited() -> Caps {
        Caps {
            budget: usize::MAX,
            plaintext_budget: usize::MAX,
            handshake_budget: usize::MAX,
            per_pod: usize::MAX,
            per_source: usize::MAX,
        }
    }
}

/// What kind of connection asks, for the budget's plaintext and handshake shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// HBONE (mTLS) connections whose peer is verified and their streams, and connections the
    /// pods open themselves.
    Mesh,
    /// Plaintext from outside the mesh to a pod (a PERMISSIVE port).
    Plaintext,
    /// An HBONE connection before its TLS handshake verified the peer (anyone can open one).
    Handshake,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the node's connection budget is used up")]
    Budget,
    #[error("the pod has as many connections as --max-conns-per-pod allows")]
    Pod,
    #[error("the client address has as many connections as --max-conns-per-source allows")]
    Source,
}

/// Identifies a node-local pod to the caps: its network namespace cookie.
pub type PodKey = u64;

/// What one connection asks for.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub class: Class,
    /// Descriptors it holds while idle (a plaintext connection: 2, an HBONE stream: 1).
    pub fds: usize,
    /// The node-local pod it is for (its network namespace cookie: unique per pod, unlike a
    /// name without its namespace), if it counts against that pod's cap.
    pub pod: Option<PodKey>,
    /// The client address, if it counts against that address's cap.
    pub source: Option<IpAddr>,
}

#[derive(Debug, Default)]
struct Counts {
    fds: usize,
    plaintext_fds: usize,
    handshake_fds: usize,
    pods: HashMap<PodKey, usize>,
    sources: HashMap<IpAddr, usize>,
}

impl Counts {
    /// The count of the share `class` is limited by (the mesh has none: only the budget).
    fn share(&mut self, class: Class) -> Option<&mut usize> {
        match class {
            Class::Plaintext => Some(&mut self.plaintext_fds),
            Class::Handshake => Some(&mut self.handshake_fds),
            Class::Mesh => None,
        }
    }
}

/// The counters of one process.
#[derive(Debug)]
pub struct Limiter {
    caps: Caps,
    counts: Mutex<Counts>,
}

/// Counts in use, for metrics and `/debug`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub fds: usize,
    pub plaintext_fds: usize,
    pub handshake_fds: usize,
    pub pods: usize,
    pub sources: usize,
}

impl Limiter {
    pub fn new(caps: Caps) -> Arc<Limiter> {
        Arc::new(Limiter { caps, counts: Mutex::new(Counts::default()) })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Takes what `ask` needs from every cap it counts against, or none of them.
    pub fn acquire(self: &Arc<Self>, ask: Ask) -> Result<Permit, Refused> {
        // `[::]` listeners see IPv4 clients as ::ffff:a.b.c.d, HBONE streams name them canonically.
        let ask = Ask { source: ask.source.map(|s| s.to_canonical()), ..ask };
        let mut c = self.counts.lock();
        if c.fds.saturating_add(ask.fds) > self.caps.budget {
            return Err(Refused::Budget);
        }
        let (held, share) = match ask.class {
            Class::Mesh => (0, usize::MAX),
            Class::Plaintext => (c.plaintext_fds, self.caps.plaintext_budget),
            Class::Handshake => (c.handshake_fds, self.caps.handshake_budget),
        };
        if held.saturating_add(ask.fds) > share {
            return Err(Refused::Budget);
        }
        if let Some(p) = ask.pod
            && c.pods.get(&p).copied().unwrap_or(0) >= self.caps.per_pod
        {
            return Err(Refused::Pod);
        }
        if let Some(s) = ask.source
            && c.sources.get(&s).copied().unwrap_or(0) >= self.caps.per_source
        {
            return Err(Refused::Source);
        }
        c.fds += ask.fds;
        if let Some(n) = c.share(ask.class) {
            *n += ask.fds;
        }
        if let Some(p) = ask.pod {
            *c.pods.entry(p).or_default() += 1;
        }
        if let Some(s) = ask.source {
            *c.sources.entry(s).or_default() += 1;
        }
        Ok(Permit { limiter: self.clone(), fds: ask.fds, class: ask.class, pod: ask.pod, source: ask.source })
    }

    pub fn usage(&self) -> Usage {
        let c = self.counts.lock();
        Usage {
            fds: c.fds,
            plaintext_fds: c.plaintext_fds,
            handshake_fds: c.handshake_fds,
            pods: c.pods.len(),
            sources: c.sources.len(),
        }
    }

    /// Connections counted against `pod` now.
    pub fn pod_count(&self, pod: PodKey) -> usize {
        self.counts.lock().pods.get(&pod).copied().unwrap_or(0)
    }

    /// Connections counted against `source` now.
    pub fn source_count(&self, source: IpAddr) -> usize {
        self.counts.lock().sources.get(&source.to_canonical()).copied().unwrap_or(0)
    }
}

/// What one connection holds; given back on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    fds: usize,
    class: Class,
    pod: Option<PodKey>,
    source: Option<IpAddr>,
}

impl Permit {
    /// Moves a permit to the mesh (an HBONE connection whose peer the TLS handshake verified):
    /// its descriptors leave the handshake (or plaintext) share. Cannot be refused: they stay
    /// counted in the budget, which the mesh may use all of. A no-op for a mesh permit.
    pub fn into_mesh(&mut self) {
        if self.class == Class::Mesh {
            return;
        }
        let mut c = self.limiter.counts.lock();
        if let Some(n) = c.share(self.class) {
            *n = n.saturating_sub(self.fds);
        }
        self.class = Class::Mesh;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.limiter.counts.lock();
        c.fds = c.fds.saturating_sub(self.fds);
        if let Some(n) = c.share(self.class) {
            *n = n.saturating_sub(self.fds);
        }
        // Entries at zero go, so a scan of many addresses leaves no memory behind.
        if let Some(p) = self.pod
            && let Some(n) = c.pods.get_mut(&p)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.pods.remove(&p);
            }
        }
        if let Some(s) = self.source
            && let Some(n) = c.sources.get_mut(&s)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.sources.remove(&s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(class: Class, pod: Option<PodKey>, source: &str) -> Ask {
        Ask { class, fds: 2, pod, source: Some(source.parse().expect("ip")) }
    }

    #[test]
    fn the_budget_is_ninety_percent_of_the_open_file_limit_plaintext_gets_half_handshakes_a_quarter() {
        let c = Caps::derive(20_000, None, DEFAULT_PER_POD, DEFAULT_PER_SOURCE);
        assert_eq!((c.budget, c.plaintext_budget, c.handshake_budget), (18_000, 9_000, 4_500));
        assert_eq!(Caps::derive(20_000, Some(100), 1, 1).budget, 100);
    }

    #[test]
    fn each_cap_refuses_on_its_own_and_permits_give_back_on_drop() {
        let l = Limiter::new(Caps {
            budget: 100,
            plaintext_budget: 8,
            handshake_budget: 8,
            per_pod: 3,
            per_source: 2,
        });
        let (a, b) = (1, 2);
        // Per source: the third from one address is refused, another address still gets in.
        let p1 = l.acquire(ask(Class::Mesh, Some(a), "10.0.0.1")).expect("first");
        let p2 = l.acquire(ask(Class::Mesh, Some(a), "10.0.0.1")).expect("second");
        assert_eq!(l.acquire(ask(Class::Mesh, Some(b), "10.0.0.1")).expect_err("refused"), Refused::Source);
        // Per pod: the fourth to `a` is refused, `b` still gets in.
        let p3 = l.acquire(ask(Class::Mesh, Some(a), "10.0.0.2")).expect("third");
        assert_eq!(l.acquire(ask(Class::Mesh, Some(a), "10.0.0.3")).expect_err("refused"), Refused::Pod);
        let p4 = l.acquire(ask(Class::Mesh, Some(b), "10.0.0.3")).expect("other pod");
        assert_eq!(l.pod_count(a), 3);
        drop((p1, p2, p3, p4));
        assert_eq!(l.usage(), Usage { fds: 0, plaintext_fds: 0, handshake_fds: 0, pods: 0, sources: 0 });
        assert!(l.acquire(ask(Class::Mesh, Some(a), "10.0.0.1")).is_ok());
    }

    #[test]
    fn plaintext_cannot_take_the_share_reserved_for_the_mesh() {
        let l = Limiter::new(Caps {
            budget: 10,
            plaintext_budget: 4,
            handshake_budget: 4,
            per_pod: 100,
            per_source: 100,
        });
        let held: Vec<Permit> = (0..2)
            .map(|i| l.acquire(ask(Class::Plaintext, None, &format!("10.0.0.{i}"))).expect("plaintext"))
            .collect();
        assert_eq!(l.acquire(ask(Class::Plaintext, None, "10.0.1.1")).expect_err("refused"), Refused::Budget);
        // HBONE still has the rest of the budget, and then no more.
        let mesh: Vec<Permit> = (0..3)
            .map(|i| l.acquire(ask(Class::Mesh, None, &format!("10.0.2.{i}"))).expect("mesh"))
            .collect();
        assert_eq!(l.acquire(ask(Class::Mesh, None, "10.0.3.1")).expect_err("refused"), Refused::Budget);
        drop((held, mesh));
        assert_eq!(l.usage().fds, 0);
    }

    #[test]
    fn ipv4_mapped_sources_count_as_their_ipv4_address() {
        let l = Limiter::new(Caps {
            budget: 100,
            plaintext_budget: 50,
            handshake_budget: 25,
            per_pod: 100,
            per_source: 2,
        });
        let mapped = l.acquire(ask(Class::Mesh, None, "::ffff:10.0.0.1")).expect("mapped");
        let plain = l.acquire(ask(Class::Mesh, None, "10.0.0.1")).expect("plain");
        assert_eq!(l.source_count("10.0.0.1".parse().expect("ip")), 2);
        assert_eq!(l.usage().sources, 1);
        // The cap of 2 holds across both spellings.
        assert_eq!(
            l.acquire(ask(Class::Mesh, None, "::ffff:10.0.0.1")).expect_err("refused"),
            Refused::Source
        );
        assert_eq!(l.acquire(ask(Class::Mesh, None, "10.0.0.1")).expect_err("refused"), Refused::Source);
        drop((mapped, plain));
        assert_eq!(l.usage(), Usage { fds: 0, plaintext_fds: 0, handshake_fds: 0, pods: 0, sources: 0 });
    }

    #[test]
    fn unverified_hbone_connections_take_neither_the_mesh_nor_the_plaintext_share() {
        let l = Limiter::new(Caps {
            budget: 12,
            plaintext_budget: 6,
            handshake_budget: 3,
            per_pod: 100,
            per_source: 100,
        });
        let one = |class, ip: &str| Ask { fds: 1, ..ask(class, None, ip) };
        // Silent connections to 15008 fill the handshake share, and no more.
        let mut silent: Vec<Permit> = (0..3)
            .map(|i| l.acquire(one(Class::Handshake, &format!("10.0.0.{i}"))).expect("handshake"))
            .collect();
        assert_eq!(l.acquire(one(Class::Handshake, "10.0.0.9")).expect_err("refused"), Refused::Budget);
        // Plaintext still has its share, the mesh the rest of the budget.
        let plain: Vec<Permit> = (0..6)
            .map(|i| l.acquire(one(Class::Plaintext, &format!("10.0.1.{i}"))).expect("plaintext"))
            .collect();
        let mesh: Vec<Permit> =
            (0..3).map(|i| l.acquire(one(Class::Mesh, &format!("10.0.2.{i}"))).expect("mesh")).collect();
        assert_eq!(l.acquire(one(Class::Mesh, "10.0.2.9")).expect_err("refused"), Refused::Budget);
        // Verified, a connection moves to the mesh: still in the budget, out of the handshake
        // share, which has room for the next handshake again.
        silent[0].into_mesh();
        let u = l.usage();
        assert_eq!((u.fds, u.handshake_fds, u.plaintext_fds), (12, 2, 6));
        drop(mesh);
        let next = l.acquire(one(Class::Handshake, "10.0.0.9")).expect("room in the handshake share");
        silent[0].into_mesh();
        assert_eq!(l.usage().handshake_fds, 3);
        drop((silent, plain, next));
        assert_eq!(l.usage(), Usage { fds: 0, plaintext_fds: 0, handshake_fds: 0, pods: 0, sources: 0 });
    }
}
