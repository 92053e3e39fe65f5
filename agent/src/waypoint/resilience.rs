//! DestinationRule resilience at the waypoint, per upstream cluster (a Service, or one of its
//! subsets):
//!
//! - **outlier detection**: consecutive 5xx (`consecutive5xxErrors`) or gateway errors (502, 503,
//!   504 and connection failures, `consecutiveGatewayErrors`) eject an endpoint for
//!   `baseEjectionTime` x the number of times it was ejected; at most `maxEjectionPercent` of the
//!   cluster's endpoints are out at once (always at least one, as Envoy does). An endpoint comes
//!   back when its ejection time has passed.
//! - **connection pool**: at most `tcp.maxConnections` (HTTP/1.1) or `http.http2MaxRequests`
//!   (HTTP/2) requests in flight to the cluster, up to `http.http1MaxPendingRequests` waiting for
//!   one; beyond that the waypoint answers 503 with Envoy's `UO` flag at once.
//!
//! The state is keyed by cluster and endpoint and bounded by what the config names.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::kinds::destination_rule::{ConnectionPoolSettings, OutlierDetection};

#[derive(Default, Debug)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// What one attempt ended with, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// The endpoint could not be reached (counts as a gateway error).
    ConnectFailure,
}

/// Outlier state of every cluster's endpoints.
#[derive(Default)]
pub struct Outliers(Mutex<HashMap<(String, SocketAddr), Health>>);

/// Istio's defaults when `outlierDetection` is set without them.
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's default `max_ejection_time`.
const MAX_EJECTION: Duration = Duration::from_secs(300);

impl Outliers {
    /// Records an attempt's outcome; returns true when it ejected the endpoint.
    pub fn record(
        &self,
        cluster: &str,
        ep: SocketAddr,
        outcome: Outcome,
        od: &OutlierDetection,
        cluster_size: usize,
        now: Instant,
    ) -> bool {
        let mut m = self.0.lock();
        let ejected_now =
            m.iter().filter(|((c, _), h)| c == cluster && h.ejected_until.is_some_and(|u| u > now)).count();
        let h = m.entry((cluster.to_string(), ep)).or_default();
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure => (true, true),
        };
        if !is_5xx {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return false;
        }
        h.consecutive_5xx += 1;
        if is_gateway {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let limit_5xx = od
            .consecutive_5xx_errors
            .or(od.consecutive_errors.and_then(|e| u32::try_from(e).ok()))
            .unwrap_or(DEFAULT_CONSECUTIVE_5XX);
        let trips = (limit_5xx > 0 && h.consecutive_5xx >= limit_5xx)
            || od.consecutive_gateway_errors.is_some_and(|g| g > 0 && h.consecutive_gateway >= g);
        if !trips || h.ejected_until.is_some_and(|u| u > now) {
            return false;
        }
        let pct = od
            .max_ejection_percent
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT);
        let allowed = ((cluster_size as u64 * u64::from(pct)) / 100).max(1) as usize;
        if ejected_now >= allowed {
            return false;
        }
        h.times_ejected += 1;
        let base = od.base_ejection_time.as_ref().map_or(DEFAULT_BASE_EJECTION, |d| d.as_std());
        // Envoy's cap: an endpoint is never out for longer than max(base, 300 s) at once.
        let cap = base.max(MAX_EJECTION);
        h.ejected_until = Some(now + (base * h.times_ejected).min(cap));
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        true
    }

    /// Forgets the state of endpoints no longer in `live`.
    pub fn prune(&self, live: &std::collections::HashSet<std::net::IpAddr>) {
        self.0.lock().retain(|(_, ep), _| live.contains(&ep.ip()));
    }

    /// Whether `ep` of `cluster` is ejected now.
    pub fn is_ejected(&self, cluster: &str, ep: SocketAddr, now: Instant) -> bool {
        self.0
            .lock()
            .get(&(cluster.to_string(), ep))
            .is_some_and(|h| h.ejected_until.is_some_and(|u| u > now))
    }
}

/// A request slot in a cluster's connection pool (released on drop).
pub struct Slot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

struct Limit {
    sem: Arc<Semaphore>,
    max: usize,
    max_pending: usize,
    pending: AtomicUsize,
}

/// Connection-pool limits of every cluster.
#[derive(Default)]
pub struct Pools(Mutex<HashMap<String, Arc<Limit>>>);

/// Why a request got no slot.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

impl Pools {
    /// Takes a slot for one request to `cluster` under `cp`, waiting in the bounded queue when all
    /// are busy; Err(Overflow) when the queue is full too (503, `UO`).
    pub async fn acquire(
        &self,
        cluster: &str,
        cp: Option<&ConnectionPoolSettings>,
        h2: bool,
    ) -> Result<Slot, Overflow> {
        let positive = |v: Option<i32>| v.and_then(|n| usize::try_from(n).ok()).filter(|n| *n > 0);
        let max = match cp {
            Some(cp) if h2 => positive(cp.http.as_ref().and_then(|h| h.http2_max_requests)),
            Some(cp) => positive(cp.tcp.as_ref().and_then(|t| t.max_connections)),
            None => None,
        };
        let Some(max) = max else {
            return Ok(Slot(None));
        };
        let max_pending = cp
            .and_then(|c| c.http.as_ref())
            .and_then(|h| h.http1_max_pending_requests)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        let key = format!("{cluster}/{}", if h2 { "h2" } else { "h1" });
        let limit = {
            let mut m = self.0.lock();
            let l = m.entry(key.clone()).or_insert_with(|| {
                Arc::new(Limit {
                    sem: Arc::new(Semaphore::new(max)),
                    max,
                    max_pending,
                    pending: AtomicUsize::new(0),
                })
            });
            if l.max != max || l.max_pending != max_pending {
                // The config changed: new limits for new requests; requests in flight keep theirs.
                *l = Arc::new(Limit {
                    sem: Arc::new(Semaphore::new(max)),
                    max,
                    max_pending,
                    pending: AtomicUsize::new(0),
                });
            }
            l.clone()
        };
        if let Ok(p) = limit.sem.clone().try_acquire_owned() {
            return Ok(Slot(Some(p)));
        }
        if limit.pending.fetch_add(1, Ordering::SeqCst) >= limit.max_pending {
            limit.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(Overflow);
        }
        let p = limit.sem.clone().acquire_owned().await;
        limit.pending.fetch_sub(1, Ordering::SeqCst);
        p.map(|p| Slot(Some(p))).map_err(|_| Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(yaml: &str) -> OutlierDetection {
        serde_json::from_str(yaml).expect("outlierDetection")
    }

    #[test]
    fn consecutive_errors_eject_for_a_growing_time_and_endpoints_come_back() {
        let o = Outliers::default();
        let d = od(r#"{"consecutive5xxErrors": 2, "baseEjectionTime": "10s", "maxEjectionPercent": 50}"#);
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:80".parse().expect("a"), "10.0.0.2:80".parse().expect("b"));
        let t0 = Instant::now();
        assert!(!o.record("c", a, Outcome::Status(500), &d, 2, t0));
        assert!(!o.record("c", a, Outcome::Status(200), &d, 2, t0), "a success resets the count");
        assert!(!o.record("c", a, Outcome::Status(500), &d, 2, t0));
        assert!(o.record("c", a, Outcome::Status(503), &d, 2, t0), "second consecutive 5xx ejects");
        assert!(o.is_ejected("c", a, t0 + Duration::from_secs(9)));
        assert!(!o.is_ejected("c", a, t0 + Duration::from_secs(11)), "back after baseEjectionTime");
        // 50% of two endpoints: b cannot be ejected while a is out.
        assert!(!o.record("c", b, Outcome::ConnectFailure, &d, 2, t0));
        assert!(!o.record("c", b, Outcome::ConnectFailure, &d, 2, t0), "max ejection percent");
        // State of an endpoint that left the config is forgotten.
        let live: std::collections::HashSet<std::net::IpAddr> = [b.ip()].into_iter().collect();
        o.prune(&live);
        assert!(!o.is_ejected("c", a, t0 + Duration::from_secs(1)), "a's state was pruned");
        o.record("c", a, Outcome::Status(500), &d, 2, t0);
        assert!(o.record("c", a, Outcome::Status(503), &d, 2, t0), "a starts afresh");
        // The second ejection of a lasts twice as long.
        let t1 = t0 + Duration::from_secs(11);
        o.record("c", a, Outcome::Status(500), &d, 2, t1);
        assert!(o.record("c", a, Outcome::Status(500), &d, 2, t1));
        assert!(o.is_ejected("c", a, t1 + Duration::from_secs(19)));
        assert!(!o.is_ejected("c", a, t1 + Duration::from_secs(21)));
        // Gateway errors only: a 500 does not count towards consecutiveGatewayErrors.
        let g =
            od(r#"{"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 1, "maxEjectionPercent": 100}"#);
        assert!(!o.record("g", a, Outcome::Status(500), &g, 1, t0));
        assert!(o.record("g", a, Outcome::Status(502), &g, 1, t0));
    }

    #[tokio::test]
    async fn a_full_pool_queues_up_to_the_pending_limit_then_overflows() {
        let p = Pools::default();
        let cp: ConnectionPoolSettings =
            serde_json::from_str(r#"{"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}"#)
                .expect("cp");
        let first = p.acquire("c", Some(&cp), false).await.expect("first slot");
        let p = Arc::new(p);
        let cp2 = cp.clone();
        let p2 = p.clone();
        let queued = tokio::spawn(async move { p2.acquire("c", Some(&cp2), false).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.acquire("c", Some(&cp), false).await.err(), Some(Overflow), "queue full");
        drop(first);
        assert_eq!(queued.await.expect("task"), Ok(()), "the queued request gets the slot");
        assert!(p.acquire("c", None, false).await.is_ok(), "no limits, no waiting");
    }
}
