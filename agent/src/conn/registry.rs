//! The live-connection registry (ztunnel's "connection manager"): every connection a proxy carries
//! (plain, tunnelled, same node, each HBONE stream, each waypoint stream) is registered here by its
//! record with the facts admission decided it on, can be listed and counted, and can be closed
//! from outside (`/debug/connections`; policy re-evaluation builds on [`Registry::close_where`]).
//!
//! Closing is cooperative and immediate: the copy loops wait on [`Live::closed`] beside the
//! bytes and reset both sides (TCP RST, HTTP/2 RST_STREAM CONNECT_ERROR, which the peer agent
//! turns into a reset too) the moment a close is asked for, so a client never mistakes a closed
//! connection for a complete one. The registry owns no socket and makes no decision.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use crate::telemetry::reason::Reason;

/// What a live connection was admitted on; fixed once it is registered.
#[derive(Clone, Debug, Serialize)]
pub struct ConnInfo {
    /// `outbound` or `inbound`, from the reporting proxy's point of view.
    pub direction: &'static str,
    /// How it arrived: `outbound`, `inbound`, `hbone`, `same_node`, `waypoint`.
    pub path: &'static str,
    /// The node-local pod it belongs to (or the waypoint): its name and namespace.
    pub pod: Arc<str>,
    pub namespace: Arc<str>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_principal: Arc<str>,
    pub dst_principal: Arc<str>,
    /// The AuthorizationPolicy that allowed (or denied) it, or `-`.
    pub policy: std::borrow::Cow<'static, str>,
}

/// One registered connection.
#[derive(Debug)]
pub struct Live {
    pub id: u64,
    pub info: ConnInfo,
    pub opened: SystemTime,
    /// Client -> server bytes so far.
    pub sent: AtomicU64,
    /// Server -> client bytes so far.
    pub received: AtomicU64,
    close: OnceLock<Reason>,
    wake: Notify,
}

impl Live {
    /// Asks the carrying task to close this connection for `reason`; the first reason wins.
    /// Returns whether this call asked first.
    pub fn close(&self, reason: Reason) -> bool {
        let first = self.close.set(reason).is_ok();
        // Wakes every waiter (the copy and the record may both wait); a waiter that registers
        // later sees the reason before it sleeps (see `closed`).
        self.wake.notify_waiters();
        first
    }

    /// Resolves with the reason once a close was asked for. Any number of futures may wait.
    pub async fn closed(&self) -> Reason {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the check and the await is not lost.
            notified.as_mut().enable();
            if let Some(r) = self.close.get() {
                return *r;
            }
            notified.await;
        }
    }

    /// Resolves, with the text a copy reports as its error, once a close was asked for: the
    /// `stop` argument of the copy loops.
    pub async fn stopped(&self) -> String {
        format!("closed: {}", self.closed().await)
    }

    /// The reason a close was asked for, if one was.
    pub fn close_reason(&self) -> Option<Reason> {
        self.close.get().copied()
    }
}

/// A row of `/debug/connections`.
#[derive(Debug, Serialize)]
pub struct ConnView {
    pub id: u64,
    #[serde(flatten)]
    pub info: ConnInfo,
    /// Seconds since the Unix epoch.
    pub opened: u64,
    pub sent: u64,
    pub received: u64,
    /// Set while a close that was asked for is being carried out.
    pub closing: Option<Reason>,
}

/// Every live connection of one proxy process.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Live>>>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Registers a connection; it stays listed until the returned [`Registration`] is dropped.
    pub fn register(self: &Arc<Self>, info: ConnInfo) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Arc::new(Live {
            id,
            info,
            opened: SystemTime::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            close: OnceLock::new(),
            wake: Notify::new(),
        });
        self.live.lock().insert(id, live.clone());
        Registration { registry: self.clone(), live }
    }

    /// How many connections are live.
    pub fn count(&self) -> usize {
        self.live.lock().len()
    }

    /// Every live connection, oldest first.
    pub fn list(&self) -> Vec<ConnView> {
        let mut all: Vec<Arc<Live>> = self.live.lock().values().cloned().collect();
        all.sort_by_key(|l| l.id);
        all.iter()
            .map(|l| ConnView {
                id: l.id,
                info: l.info.clone(),
                opened: l.opened.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                sent: l.sent.load(Ordering::Relaxed),
                received: l.received.load(Ordering::Relaxed),
                closing: l.close_reason(),
            })
            .collect()
    }

    /// Closes connection `id` for `reason`; false when no such connection is live.
    pub fn close(&self, id: u64, reason: Reason) -> bool {
        let live = self.live.lock().get(&id).cloned();
        live.is_some_and(|l| {
            l.close(reason);
            true
        })
    }

    /// Closes every live connection `pred` selects, for `reason`; returns how many were asked.
    /// `pred` runs outside the registry's lock, so a slow check never stalls accepts.
    pub fn close_where(&self, reason: Reason, pred: impl Fn(&Live) -> bool) -> usize {
        let all: Vec<Arc<Live>> = self.live.lock().values().cloned().collect();
        all.iter().filter(|l| pred(l)).filter(|l| l.close(reason)).count()
    }
}

/// A connection's place in the registry; dropping it unregisters the connection.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    live: Arc<Live>,
}

impl Registration {
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.live.lock().remove(&self.live.id);
    }
}

/// A connection's facts for tests: an HBONE stream from `shop/client` to `shop/web` at `dst`.
#[cfg(test)]
pub(crate) fn test_info(dst: SocketAddr) -> ConnInfo {
    ConnInfo {
        direction: "inbound",
        path: "hbone",
        pod: "web".into(),
        namespace: "shop".into(),
        src: "10.0.0.1:40000".parse().expect("addr"),
        dst,
        src_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
        dst_principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
        policy: "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(port: u16) -> ConnInfo {
        test_info(SocketAddr::new("10.0.0.2".parse().expect("ip"), port))
    }

    #[test]
    fn registers_lists_counts_and_unregisters_on_drop() {
        let r = Registry::new();
        let a = r.register(info(80));
        let b = r.register(info(81));
        assert_eq!(r.count(), 2);
        let ids: Vec<u64> = r.list().iter().map(|v| v.id).collect();
        assert_eq!(ids, vec![a.live().id, b.live().id], "oldest first");
        a.live().sent.fetch_add(7, Ordering::Relaxed);
        assert_eq!(r.list()[0].sent, 7, "byte counts are live");
        drop(a);
        assert_eq!(r.count(), 1);
        assert_eq!(r.list()[0].info.dst.port(), 81);
        drop(b);
        assert_eq!(r.count(), 0);
    }

    #[tokio::test]
    async fn close_one_wakes_its_carrier_with_the_reason() {
        let r = Registry::new();
        let a = r.register(info(80));
        let b = r.register(info(81));
        let live = a.live().clone();
        let waiter = tokio::spawn(async move { live.closed().await });
        tokio::task::yield_now().await;
        assert!(r.close(a.live().id, Reason::AdminClosed));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert_eq!(got.expect("woken").expect("task"), Reason::AdminClosed);
        assert_eq!(b.live().close_reason(), None, "only the chosen connection is closed");
        assert!(!r.close(999, Reason::AdminClosed), "an unknown id closes nothing");
    }

    #[tokio::test]
    async fn every_waiter_is_woken() {
        let r = Registry::new();
        let a = r.register(info(80));
        let (l1, l2) = (a.live().clone(), a.live().clone());
        let w1 = tokio::spawn(async move { l1.closed().await });
        let w2 = tokio::spawn(async move { l2.closed().await });
        tokio::task::yield_now().await;
        a.live().close(Reason::AdminClosed);
        for w in [w1, w2] {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
            assert_eq!(got.expect("woken").expect("task"), Reason::AdminClosed);
        }
    }

    #[tokio::test]
    async fn a_close_before_anyone_waits_is_not_lost() {
        let r = Registry::new();
        let a = r.register(info(80));
        a.live().close(Reason::Deny);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), a.live().closed()).await;
        assert_eq!(got.expect("resolves at once"), Reason::Deny);
        assert_eq!(r.list()[0].closing, Some(Reason::Deny));
    }

    #[test]
    fn close_where_selects_by_facts_and_counts_first_closes_only() {
        let r = Registry::new();
        let keep = r.register(info(80));
        let hit1 = r.register(info(5432));
        let hit2 = r.register(info(5432));
        assert_eq!(r.close_where(Reason::Deny, |l| l.info.dst.port() == 5432), 2);
        assert_eq!(r.close_where(Reason::Deny, |l| l.info.dst.port() == 5432), 0, "already closing");
        assert_eq!(keep.live().close_reason(), None);
        assert_eq!(hit1.live().close_reason(), Some(Reason::Deny));
        assert_eq!(hit2.live().close_reason(), Some(Reason::Deny));
    }
}
