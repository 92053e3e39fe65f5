//! Phase 10, send: the request body kept for replay (up to 64 KiB) or streamed once, the
//! cluster's connection-pool slot, then one attempt per endpoint under the route's `timeout` and
//! `perTryTimeout`, retried as `retries` (or Istio's default) allow; outlier detection told each
//! endpoint's outcome; a WebSocket upgrade joined once the endpoint answers 101.
//!
//! Owns the exchange with the upstream: it answers 504 `UT`, 503 `UO` (pool overflow), 503 with
//! the upstream error's flag (`UF`, `UC`, ...), the last retried answer (`URX`) or 503 `UH`. The
//! retry and timeout decisions are pure ([`RetryPolicy`], [`timeout`]); the rest is I/O. It must not
//! pick the route or the destination, and sets only the destination workload labels.
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, Version, header, request::Parts};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::{Local, destination::Cluster, headers::strip_hop_by_hop, local};
use crate::{
    config::{
        Snapshot,
        kinds::virtual_service::{HttpRetry, HttpRoute},
    },
    waypoint::{
        Waypoint,
        handler::{Conn, workload_labels},
        metrics::RequestLabels,
        resilience::{Outcome, Slot},
        upstream::{Body, BoxError, Endpoint, InFlight},
    },
};

/// Largest request body kept in memory so it can be retried or mirrored; larger or unsized bodies
/// stream through once (no retry, no mirror).
const REPLAY_LIMIT: u64 = 64 * 1024;

/// Retry settings in force: the route's, else Istio's default (2 attempts on connect failures,
/// refused streams and 503).
#[derive(Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try: Option<Duration>,
    pub on: Vec<String>,
}

impl RetryPolicy {
    /// The policy of a route's `retries` (None: Istio's default).
    pub fn of(r: Option<&HttpRetry>) -> RetryPolicy {
        match r {
            Some(r) => RetryPolicy {
                attempts: r.attempts.map_or(2, |a| u32::try_from(a).unwrap_or(0)),
                per_try: r.per_try_timeout.as_ref().map(|d| d.as_std()).filter(|d| !d.is_zero()),
                on: r
                    .retry_on
                    .as_deref()
                    .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
            },
            None => RetryPolicy {
                attempts: 2,
                per_try: None,
                on: vec!["connect-failure".into(), "refused-stream".into(), "503".into()],
            },
        }
    }

    /// No retry at all (a mirrored copy).
    pub fn none() -> RetryPolicy {
        RetryPolicy { attempts: 0, per_try: None, on: vec![] }
    }

    /// Attempts in all: one, plus the retries when the body can be replayed.
    fn tries(&self, replayable: bool) -> u32 {
        if replayable { self.attempts + 1 } else { 1 }
    }

    fn on_status(&self, s: StatusCode) -> bool {
        let code = s.as_u16();
        self.on.iter().any(|o| match o.as_str() {
            "5xx" => code >= 500,
            "gateway-error" => matches!(code, 502..=504),
            "retriable-4xx" => code == 409,
            n => n.parse::<u16>().is_ok_and(|n| n == code),
        })
    }

    fn on_connect_failure(&self) -> bool {
        self.on.iter().any(|o| {
            matches!(o.as_str(), "connect-failure" | "5xx" | "gateway-error" | "reset" | "refused-stream")
        })
    }

    fn on_reset(&self) -> bool {
        self.on.iter().any(|o| matches!(o.as_str(), "reset" | "5xx"))
    }

    /// Whether an attempt that failed (connect failure or reset) is tried again.
    fn after_error(&self, connect_failure: bool) -> bool {
        if connect_failure { self.on_connect_failure() } else { self.on_reset() }
    }

    /// Whether an attempt that timed out is tried again: a per-try timeout counts as a 504 (as in
    /// Envoy), retried only when `retryOn` covers it, since the upstream may have acted on the
    /// request; never once the route's deadline has passed.
    fn after_timeout(&self, deadline_passed: bool) -> bool {
        !deadline_passed && self.on_status(StatusCode::GATEWAY_TIMEOUT)
    }
}

/// The route's `timeout` around the whole exchange (zero or unset: none).
pub fn timeout(route: Option<&HttpRoute>) -> Option<Duration> {
    route.and_then(|r| r.timeout.as_ref()).map(|d| d.as_std()).filter(|d| !d.is_zero())
}

/// The earlier of two optional instants (an attempt's limit: the route's deadline or its per-try
/// timeout, whichever comes first).
fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The absolute-form URI an HTTP/2 upstream needs: the request's `Host`, else its URI's
/// authority, else `host`.
fn absolute_uri(parts: &Parts, host: &str) -> Option<Uri> {
    let a = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| host.to_string());
    format!("http://{a}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str())).parse::<Uri>().ok()
}

/// The request body: kept (replayable) or streamed once.
pub(crate) enum ReqBody {
    Kept(Bytes),
    Stream(Option<Incoming>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Kept(b) => Some(Full::new(b.clone()).map_err(|e| -> BoxError { match e {} }).boxed()),
            ReqBody::Stream(s) => s.take().map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Kept(_))
    }
}

/// Reads the body into memory when it is small enough to replay, else leaves it to stream; 400
/// `DPE` when it cannot be read.
pub(crate) async fn read_body(parts: &Parts, body: Incoming) -> Result<ReqBody, Local> {
    let len = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    // HTTP/2 has no Content-Length requirement: a stream that already ended (a GET, most gRPC
    // calls' headers-only frames aside) or announces an exact small size is kept too.
    let exact = hyper::body::Body::size_hint(&body).exact();
    let small = match len.or(exact) {
        Some(n) => n <= REPLAY_LIMIT,
        None => hyper::body::Body::is_end_stream(&body) || (!chunked && parts.version < Version::HTTP_2),
    };
    if !small {
        return Ok(ReqBody::Stream(Some(body)));
    }
    match http_body_util::Limited::new(body, REPLAY_LIMIT as usize).collect().await {
        Ok(c) => Ok(ReqBody::Kept(c.to_bytes())),
        Err(_) => Err(local(StatusCode::BAD_REQUEST, "DPE", "request body could not be read\n")),
    }
}

/// How one request is sent.
pub(crate) struct Plan<'a> {
    /// One endpoint per attempt, in turn.
    pub eps: &'a [Endpoint],
    pub retry: &'a RetryPolicy,
    /// The route's timeout around all attempts.
    pub timeout: Option<Duration>,
    /// The authority an HTTP/2 upstream gets when the request names none.
    pub host: &'a str,
    /// The cluster's pool and outlier detection; None for a pod addressed directly or a mirror.
    pub cluster: Option<&'a Cluster<'a>>,
}

/// A pod addressed directly: no Service, so no VirtualService; straight to it, with Istio's default
/// retries and no timeout.
pub(crate) async fn to_pod(
    wp: &Waypoint,
    snap: &Snapshot,
    conn: &Conn,
    req: Request<Incoming>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    labels: &mut RequestLabels,
) -> Result<Response<Body>, Local> {
    let target = conn.target;
    if let Some(w) = snap.workload_by_ip(target.ip()) {
        workload_labels(labels, w, &wp.trust_domain, false);
    }
    let ep = wp.upstreams.endpoint(snap, target.ip(), target.port());
    let (parts, body) = req.into_parts();
    let mut body = read_body(&parts, body).await?;
    let eps = [ep];
    let plan = Plan { eps: &eps, retry: &RetryPolicy::of(None), timeout: None, host: "", cluster: None };
    send(wp, parts, &mut body, &plan, None, upgrade).await
}

/// Sends to the endpoints in turn (one per attempt), retrying as the plan allows.
pub(crate) async fn send(
    wp: &Waypoint,
    mut parts: Parts,
    body: &mut ReqBody,
    plan: &Plan<'_>,
    mut labels: Option<&mut RequestLabels>,
    mut upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<Body>, Local> {
    let Plan { eps, retry, timeout, host, cluster } = *plan;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let h2 = parts.version == Version::HTTP_2;
    // The cluster's connection pool: a slot for the whole request (all attempts and the body).
    let mut slot = match cluster {
        Some(c) => match wp.pools.acquire(c.key, c.pool, h2).await {
            Ok(s) => Some(s),
            Err(_) => {
                return Err(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UO",
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow\n",
                ));
            }
        },
        None => None,
    };
    let record = |ep: SocketAddr, outcome: Outcome| {
        if let Some(c) = cluster
            && let Some(od) = c.outlier
            && wp.outliers.record(c.key, ep, outcome, od, c.size, std::time::Instant::now())
        {
            warn!(cluster = c.key, endpoint = %ep, "endpoint ejected by outlier detection");
        }
    };
    parts.extensions = http::Extensions::new();
    let attempts = retry.tries(body.replayable());
    let snap = wp.store.load();
    let mut last: Option<Local> = None;
    for (attempt, ep) in eps.iter().cycle().take(attempts as usize).enumerate() {
        let Some(b) = body.take() else { break };
        let mut req = Request::from_parts(parts.clone(), b);
        if h2 {
            // An HTTP/2 upstream needs the absolute form.
            if let Some(u) = absolute_uri(&parts, host) {
                *req.uri_mut() = u;
            }
            // The authority travels as :authority alone.
            req.headers_mut().remove(header::HOST);
        } else {
            *req.version_mut() = Version::HTTP_11;
        }
        if let Some(l) = labels.as_deref_mut()
            && let Some(w) = snap.workload_by_ip(ep.addr.ip())
        {
            workload_labels(l, w, &wp.trust_domain, false);
        }
        let fut = wp.upstreams.send(ep, req, h2);
        let limit = earliest(deadline, retry.per_try.map(|t| tokio::time::Instant::now() + t));
        let result = match limit {
            Some(l) => match tokio::time::timeout_at(l, fut).await {
                Ok(r) => r,
                Err(_) => {
                    last = Some(local(StatusCode::GATEWAY_TIMEOUT, "UT", "upstream request timeout"));
                    if !retry.after_timeout(deadline.is_some_and(|d| tokio::time::Instant::now() >= d)) {
                        break;
                    }
                    continue;
                }
            },
            None => fut.await,
        };
        match result {
            Ok((resp, flight)) => {
                record(ep.addr, Outcome::Status(resp.status().as_u16()));
                let retryable = attempt + 1 < attempts as usize && retry.on_status(resp.status());
                if retryable {
                    last = Some(Local::new(
                        resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
                        "URX",
                    ));
                    continue;
                }
                return Ok(deliver(resp, flight, slot.take(), upgrade.take()));
            }
            Err(e) => {
                if e.is_connect_failure() {
                    record(ep.addr, Outcome::ConnectFailure);
                }
                debug!(endpoint = %ep.addr, error = %e, attempt, "upstream failed");
                let again = retry.after_error(e.is_connect_failure());
                last = Some(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.flag(),
                    format!("upstream connect error or disconnect/reset before headers: {e}\n"),
                ));
                if !again {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n")))
}

/// The client's response to an attempt the upstream answered (and that is not retried): a 101
/// joined to the client's upgrade; otherwise hop-by-hop headers removed and a body that keeps the
/// endpoint counted in flight, and the cluster's pool slot taken, until it is dropped.
fn deliver(
    mut resp: Response<Incoming>,
    flight: InFlight,
    slot: Option<Slot>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = upgrade {
            let server = hyper::upgrade::on(&mut resp);
            tokio::spawn(join_upgrade(client, server));
        }
        return resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed());
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    // Keep the endpoint counted while the body streams.
    let rbody = InFlightBody { inner: rbody, _flight: flight, _slot: slot };
    Response::from_parts(rparts, BoxBody::new(rbody))
}

/// Copies bytes between the two sides of an upgraded connection (WebSocket) until both close.
async fn join_upgrade(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((c, s)) => {
            let (mut c, mut s) = (hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(s));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => warn!(error = %e, "upgrade failed"),
    }
}

/// A response body that keeps its endpoint's in-flight count (and the cluster's pool slot) until
/// it is dropped.
struct InFlightBody {
    inner: Incoming,
    _flight: InFlight,
    _slot: Option<Slot>,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx).map_err(|e| -> BoxError { Box::new(e) })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(json: &str) -> HttpRetry {
        serde_json::from_str(json).expect("retries")
    }

    #[test]
    fn retry_policy_of_the_route_or_istios_default() {
        let default = RetryPolicy::of(None);
        assert_eq!((default.attempts, default.per_try), (2, None));
        assert_eq!(default.on, ["connect-failure", "refused-stream", "503"]);
        // (row, retries, want attempts, per-try ms, retryOn)
        type Row<'a> = (&'a str, &'a str, u32, Option<u64>, &'a [&'a str]);
        let rows: &[Row<'_>] = &[
            (
                "attempts_only_keeps_envoys_retry_on",
                r#"{"attempts": 4}"#,
                4,
                None,
                &["connect-failure", "refused-stream", "unavailable", "cancelled", "503"],
            ),
            (
                "zero_per_try_is_unset",
                r#"{"attempts": 1, "perTryTimeout": "0s", "retryOn": "5xx"}"#,
                1,
                None,
                &["5xx"],
            ),
            (
                "per_try_and_list",
                r#"{"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error, reset"}"#,
                3,
                Some(2000),
                &["gateway-error", "reset"],
            ),
            (
                "negative_attempts_are_none",
                r#"{"attempts": -1}"#,
                0,
                None,
                &["connect-failure", "refused-stream", "unavailable", "cancelled", "503"],
            ),
            ("unset_attempts_are_two", r#"{"retryOn": "5xx"}"#, 2, None, &["5xx"]),
        ];
        for (name, json, attempts, per_try, on) in rows {
            let p = RetryPolicy::of(Some(&retry(json)));
            assert_eq!(p.attempts, *attempts, "{name}");
            assert_eq!(p.per_try, per_try.map(Duration::from_millis), "{name}");
            assert_eq!(&p.on, on, "{name}");
        }
    }

    #[test]
    fn which_outcomes_are_retried() {
        // (row, retryOn, status retried: (code, want), connect failure, reset, timeout before the deadline)
        type Row<'a> = (&'a str, &'a str, (u16, bool), bool, bool, bool);
        let rows: &[Row<'_>] = &[
            ("5xx_covers_every_5xx_and_errors", "5xx", (500, true), true, true, true),
            ("gateway_error_is_502_to_504", "gateway-error", (502, true), true, false, true),
            ("gateway_error_not_500", "gateway-error", (500, false), true, false, true),
            ("retriable_4xx_is_409", "retriable-4xx", (409, true), false, false, false),
            ("a_status_code", "503", (503, true), false, false, false),
            ("another_status_code", "503", (504, false), false, false, false),
            ("connect_failure_only", "connect-failure", (503, false), true, false, false),
            ("refused_stream_covers_connect_failures", "refused-stream", (503, false), true, false, false),
            ("reset_covers_both", "reset", (503, false), true, true, false),
            ("504_covers_timeouts", "504", (504, true), false, false, true),
        ];
        for (name, on, (code, retried), connect, reset, timeout) in rows {
            let p = RetryPolicy::of(Some(&retry(&format!(r#"{{"retryOn": "{on}"}}"#))));
            let status = StatusCode::from_u16(*code).expect("status");
            assert_eq!(p.on_status(status), *retried, "{name}: status");
            assert_eq!(p.after_error(true), *connect, "{name}: connect failure");
            assert_eq!(p.after_error(false), *reset, "{name}: reset");
            assert_eq!(p.after_timeout(false), *timeout, "{name}: timeout");
            assert!(!p.after_timeout(true), "{name}: never past the deadline");
        }
    }

    #[test]
    fn only_a_replayable_body_is_retried() {
        let p = RetryPolicy::of(None);
        assert_eq!((p.tries(true), p.tries(false)), (3, 1));
        assert_eq!(RetryPolicy::none().tries(true), 1);
    }

    #[test]
    fn timeouts_take_the_earliest_limit() {
        let route = |json: &str| -> HttpRoute { serde_json::from_str(json).expect("route") };
        assert_eq!(timeout(None), None);
        assert_eq!(timeout(Some(&route(r#"{"timeout": "0s"}"#))), None, "zero is unset");
        assert_eq!(timeout(Some(&route(r#"{"timeout": "1.5s"}"#))), Some(Duration::from_millis(1500)));
        // (row, deadline, per-try limit, want)
        type Row<'a> = (&'a str, Option<u32>, Option<u32>, Option<u32>);
        let rows: &[Row<'_>] = &[
            ("neither", None, None, None),
            ("deadline_only", Some(5), None, Some(5)),
            ("per_try_only", None, Some(2), Some(2)),
            ("per_try_first", Some(5), Some(2), Some(2)),
            ("deadline_first", Some(1), Some(2), Some(1)),
        ];
        for (name, deadline, per_try, want) in rows {
            assert_eq!(earliest(*deadline, *per_try), *want, "{name}");
        }
    }

    #[test]
    fn http2_upstreams_get_the_absolute_form() {
        let parts = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            b.body(()).expect("request").into_parts().0
        };
        let rows: &[(&str, &str, Option<&str>, &str)] = &[
            ("host_header_first", "/a?q=1", Some("web:80"), "http://web:80/a?q=1"),
            ("uri_authority_next", "http://api/a", None, "http://api/a"),
            ("the_service_host_last", "/a", None, "http://web.shop.svc.cluster.local/a"),
        ];
        for (name, uri, host, want) in rows {
            let got = absolute_uri(&parts(uri, *host), "web.shop.svc.cluster.local");
            assert_eq!(got.map(|u| u.to_string()).as_deref(), Some(*want), "{name}");
        }
    }
}
