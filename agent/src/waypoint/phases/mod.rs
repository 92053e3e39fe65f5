//! The request phases of the waypoint, one concern each, called in order by the driver
//! ([`super::handler`]'s `pipeline`). A phase either hands the next one a value or ends the
//! request with a [`Local`] answer: a status and the Envoy/Istio response flag it is counted with.
//!
//! | phase | module | input | output | answers itself with |
//! |---|---|---|---|---|
//! | normalize | [`normalize`] | request head | one authority, a normalized path, hop-by-hop headers gone | 400 `-` |
//! | authenticate | [`authn`] | snapshot, Service, request head (JWKS fetched when a token needs it) | the verified token, or none | 401 `-` |
//! | authorize | [`authz`] | snapshot, Service, connection facts, request head, token | allowed | 403 `DENY` |
//! | route | [`route`] | snapshot, Service, connection facts, request head | the HTTP route (or the Service as addressed) | 404 `NR` |
//! | answer | [`answer`] | route, request head | CORS preflight, `directResponse`, `redirect`, or the CORS headers to add | (200/3xx, no flag) |
//! | fault | [`fault`] | route, a random roll | a delay (`DI`) and/or an abort | abort status `FI` |
//! | destination | [`destination`] | snapshot, route, a random roll | Service, subset, endpoints, cluster | 503 `NR`, `NC`, `UH` |
//! | rewrite | [`rewrite`] | route, destination, request head | the upstream request head | — |
//! | mirror | [`mirror`] | route, kept body | copies sent, answers ignored | — |
//! | (body) | [`send`] | request body | kept for replay (up to 64 KiB) or streamed | 400 `DPE` |
//! | send | [`send`] | endpoints, retry policy, timeout | the upstream's response | 504 `UT`, 503 `UO`, `UF`, `UC`, `URX`, `UH` |
//! | respond | [`respond`] | route, destination, response | response headers set | — |
//!
//! The phases never count metrics or write the access log: the request's one metrics update and
//! access-log line are [`super::handler`]'s, and connection-level ones are `crate::conn`'s.
pub mod answer;
pub mod authn;
pub mod authz;
pub mod destination;
pub mod fault;
pub mod headers;
pub mod mirror;
pub mod normalize;
pub mod respond;
pub mod rewrite;
pub mod route;
pub mod send;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};

use super::upstream::{Body, BoxError};

/// A response the waypoint makes itself, with the response flag it is counted with (boxed: the
/// phases return it as their error, and it should stay small).
pub struct Local {
    pub resp: Box<Response<Body>>,
    pub flag: &'static str,
}

impl Local {
    /// `resp`, counted with `flag`.
    pub(crate) fn new(resp: Response<Body>, flag: &'static str) -> Local {
        Local { resp: Box::new(resp), flag }
    }

    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        self.resp.status()
    }
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("status", &self.resp.status()).field("flag", &self.flag).finish()
    }
}

/// A response with `body` and nothing else.
pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| -> BoxError { match e {} }).boxed());
    *r.status_mut() = status;
    r
}

/// A plain-text answer the waypoint makes itself, counted with `flag`.
pub(crate) fn local(status: StatusCode, flag: &'static str, body: impl Into<Bytes>) -> Local {
    let mut resp = full(status, body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Local::new(resp, flag)
}

/// Whether `percent` (Istio's Percent, unset = 100) fires, `roll` giving a number in `[0, 1)`
/// (asked only when the answer is not certain).
pub(crate) fn fires(percent: Option<f64>, roll: impl FnOnce() -> f64) -> bool {
    let p = percent.unwrap_or(100.0);
    p >= 100.0 || (p > 0.0 && roll() * 100.0 < p)
}

/// The body of a local answer, for tests.
#[cfg(test)]
pub(crate) fn body_text(resp: Response<Body>) -> String {
    use futures::FutureExt as _;
    // A local answer's body is in memory: collecting it never waits.
    let collected = resp.into_body().collect().now_or_never().and_then(Result::ok);
    let bytes = collected.map(|c| c.to_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_fire_by_the_roll() {
        let rows: &[(&str, Option<f64>, f64, bool)] = &[
            ("unset_always_fires", None, 0.99, true),
            ("hundred_always_fires", Some(100.0), 0.99, true),
            ("zero_never_fires", Some(0.0), 0.0, false),
            ("below_the_percentage_fires", Some(50.0), 0.49, true),
            ("at_the_percentage_does_not", Some(50.0), 0.5, false),
        ];
        for (name, pct, roll, want) in rows {
            assert_eq!(fires(*pct, || *roll), *want, "{name}");
        }
    }
}
