//! Phase 9, mirror: the route's `mirror`/`mirrors`, each with its percentage: a copy of the request
//! (its `Host` with `-shadow` appended) sent to the mirror's destination, its answer ignored.
//! Only a kept (replayable) body is mirrored.
//!
//! Owns the copies: bounded to [`MIRRORS_IN_FLIGHT`] at once (extra ones are dropped) and
//! [`MIRROR_TIMEOUT`] each. It must not change the request that goes on, nor wait for a copy.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, header, request::Parts};

use super::{
    fires,
    route::Routed,
    send::{self, Plan, ReqBody, RetryPolicy},
};
use crate::{
    config::{
        Snapshot,
        kinds::virtual_service::{Destination, HttpRoute},
    },
    waypoint::{Waypoint, handler::Conn, routes},
};

/// Mirrored copies in flight at once.
pub(crate) const MIRRORS_IN_FLIGHT: usize = 256;
/// How long one mirrored copy may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the copies of the request that `routed`'s mirrors ask for (none unless `body` is kept).
pub(crate) fn mirror(
    wp: &Arc<Waypoint>,
    snap: &Snapshot,
    conn: &Conn,
    routed: &Routed<'_>,
    parts: &Parts,
    body: &ReqBody,
    authority: &str,
) {
    let (Some(r), ReqBody::Kept(b)) = (routed.route, body) else { return };
    for (d, pct) in mirrors(r) {
        if !fires(pct, fastrand::f64) {
            continue;
        }
        let p = d.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok());
        let Ok(t) = routes::resolve_target(
            snap,
            &d.host,
            routed.namespace,
            p,
            conn.target.port(),
            d.subset.as_deref(),
            conn.target.is_ipv6(),
        ) else {
            continue;
        };
        let Some(ip) =
            wp.upstreams.choose(&format!("mirror/{}", d.host), &t.endpoints, t.target_port, None, None)
        else {
            continue;
        };
        let ep = wp.upstreams.endpoint(snap, ip, t.target_port);
        let mut mparts = http::Request::new(()).into_parts().0;
        mparts.method = parts.method.clone();
        mparts.uri = parts.uri.clone();
        mparts.version = parts.version;
        mparts.headers = parts.headers.clone();
        if let Ok(v) = HeaderValue::try_from(shadow_host(authority)) {
            mparts.headers.insert(header::HOST, v);
        }
        // Bounded: a slow mirror never holds more than MIRRORS_IN_FLIGHT copies (extra ones are
        // dropped) and each lives at most MIRROR_TIMEOUT.
        let Ok(permit) = wp.mirrors.clone().try_acquire_owned() else { continue };
        tokio::spawn(copy(wp.clone(), mparts, b.clone(), ep, permit));
    }
}

/// Sends one copy, once, and drops its answer.
async fn copy(
    wp: Arc<Waypoint>,
    parts: Parts,
    body: Bytes,
    ep: crate::waypoint::upstream::Endpoint,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut body = ReqBody::Kept(body);
    let none = RetryPolicy::none();
    let eps = [ep];
    let plan = Plan { eps: &eps, retry: &none, timeout: None, host: "", cluster: None };
    let _ = tokio::time::timeout(MIRROR_TIMEOUT, send::send(&wp, parts, &mut body, &plan, None, None)).await;
    drop(permit);
}

/// The route's mirrors with their percentages: the single `mirror` (with `mirrorPercentage`, else
/// the legacy `mirrorPercent`), then each of `mirrors`.
fn mirrors(r: &HttpRoute) -> Vec<(&Destination, Option<f64>)> {
    r.mirror
        .iter()
        .map(|d| (d, r.mirror_percentage.as_ref().map(|p| p.get()).or(r.mirror_percent.map(f64::from))))
        .chain(r.mirrors.iter().map(|m| (&m.destination, m.percentage.as_ref().map(|p| p.get()))))
        .collect()
}

/// The `Host` of a mirrored copy: the authority without its port, `-shadow` appended.
fn shadow_host(authority: &str) -> String {
    format!("{}-shadow", authority.split(':').next().unwrap_or(authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_and_their_percentages() {
        // (row, route, want (mirror host, percentage))
        type Row<'a> = (&'a str, &'a str, &'a [(&'a str, Option<f64>)]);
        let rows: &[Row<'_>] = &[
            ("none", r#"{}"#, &[]),
            ("single_mirror_always", r#"{"mirror": {"host": "a"}}"#, &[("a", None)]),
            (
                "single_mirror_percentage",
                r#"{"mirror": {"host": "a"}, "mirrorPercentage": {"value": 5}}"#,
                &[("a", Some(5.0))],
            ),
            (
                "single_mirror_legacy_percent",
                r#"{"mirror": {"host": "a"}, "mirrorPercent": 7}"#,
                &[("a", Some(7.0))],
            ),
            (
                "mirror_then_mirrors",
                r#"{"mirror": {"host": "a"}, "mirrors": [{"destination": {"host": "b"}, "percentage": {"value": 1}}]}"#,
                &[("a", None), ("b", Some(1.0))],
            ),
        ];
        for (name, json, want) in rows {
            let r: HttpRoute = serde_json::from_str(json).expect("route");
            let got: Vec<(&str, Option<f64>)> =
                mirrors(&r).into_iter().map(|(d, p)| (d.host.as_str(), p)).collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn shadow_hosts_drop_the_port() {
        for (name, authority, want) in
            [("with_port", "web:80", "web-shadow"), ("without_port", "web.shop", "web.shop-shadow")]
        {
            assert_eq!(shadow_host(authority), want, "{name}");
        }
    }
}
