//! Policy routing inside an enrolled pod's netns that lets the agent deliver inbound connections
//! to the application with the original client's address as source (transparent sockets).
//!
//! The agent's delivery socket carries `INBOUND_DELIVERY_MARK`; with `tcp_fwmark_accept` the
//! application's accepted socket inherits that mark, and a rule `fwmark -> table` whose table
//! routes everything to `lo` brings the application's replies back to the agent's socket instead
//! of out of the pod. Only sockets carrying that mark are affected. Set up with netlink (no
//! iptables), idempotently.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rtnetlink::{
    Error as NlError, RouteMessageBuilder,
    packet_route::{
        route::{RouteScope, RouteType},
        rule::RuleAction,
    },
};
use sluice_common::{DELIVERY_ROUTE_TABLE, INBOUND_DELIVERY_MARK};

use super::sys::NetNs;

const LOOPBACK_IFINDEX: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("netlink socket in {netns}: {source}")]
    Socket { netns: String, source: io::Error },
    #[error("adding {what} in {netns}: {source} (needs CAP_NET_ADMIN)")]
    Netlink { netns: String, what: &'static str, source: NlError },
    #[error("setting net.ipv4/ipv6 {what} in {netns}: {source} (needs CAP_NET_ADMIN in the pod's namespace)")]
    Sysctl { netns: String, what: &'static str, source: io::Error },
}

/// Installs the delivery rule and route (IPv4, and IPv6 when `v6`) and enables
/// `tcp_fwmark_accept` in `netns`. Existing entries are kept.
pub async fn ensure_delivery_routing(netns: &NetNs, v6: bool) -> Result<(), RoutingError> {
    let name = netns.path().display().to_string();
    let (conn, handle, _) = netns
        .run(rtnetlink::new_connection)
        .and_then(|r| r)
        .map_err(|source| RoutingError::Socket { netns: name.clone(), source })?;
    let conn_task = tokio::spawn(conn);
    let nl = |what: &'static str| {
        let name = name.clone();
        move |source| RoutingError::Netlink { netns: name, what, source }
    };
    let result = async {
        let families: &[IpAddr] = if v6 {
            &[IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        } else {
            &[IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        };
        for any in families {
            let rule = handle
                .rule()
                .add()
                .action(RuleAction::ToTable)
                .fw_mark(INBOUND_DELIVERY_MARK)
                .table_id(DELIVERY_ROUTE_TABLE)
                .priority(DELIVERY_ROUTE_TABLE);
            let added = if any.is_ipv4() { rule.v4().execute().await } else { rule.v6().execute().await };
            ignore_exists(added).map_err(nl("fwmark rule"))?;
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(*any, 0)
                .map_err(|e| nl("local route")(NlError::InvalidNla(e.to_string())))?
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .table_id(DELIVERY_ROUTE_TABLE)
                .output_interface(LOOPBACK_IFINDEX)
                .build();
            ignore_exists(handle.route().add(route).execute().await).map_err(nl("local route"))?;
        }
        // The sysctl file resolves to the netns of the thread that opens it.
        netns
            .run(|| std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1"))
            .and_then(|r| r)
            .map_err(|source| RoutingError::Sysctl { netns: name.clone(), what: "tcp_fwmark_accept", source })
    }
    .await;
    conn_task.abort();
    result
}

/// The sysctls that make the kernel's own replies in a pod (a RST from a closed port, an ICMP
/// error) carry the mark of the packet they answer: a RST answering the agent's transparent
/// delivery SYN then carries `INBOUND_DELIVERY_MARK`, the delivery rule routes it back to the
/// agent's socket (the connect fails at once), and it never leaves the pod with the client's
/// address as destination.
pub const FWMARK_REFLECT: [&str; 2] =
    ["/proc/sys/net/ipv4/fwmark_reflect", "/proc/sys/net/ipv6/fwmark_reflect"];

/// The values [`enable_fwmark_reflect`] replaced, to restore at release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedSysctls(pub Vec<(&'static str, String)>);

/// Sets [`FWMARK_REFLECT`] to 1 in `netns` (the IPv6 one where the namespace has IPv6) and returns
/// what they were.
pub fn enable_fwmark_reflect(netns: &NetNs) -> Result<SavedSysctls, RoutingError> {
    let name = netns.path().display().to_string();
    let err = |source| RoutingError::Sysctl { netns: name.clone(), what: "fwmark_reflect", source };
    // The sysctl files resolve to the netns of the thread that opens them.
    netns
        .run(|| {
            let mut saved = Vec::new();
            for path in FWMARK_REFLECT {
                let old = match std::fs::read_to_string(path) {
                    Ok(v) => v.trim().to_string(),
                    // No IPv6 in this kernel or namespace: nothing to reflect.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && path.contains("ipv6") => continue,
                    Err(e) => return Err(e),
                };
                if old != "1" {
                    std::fs::write(path, "1")?;
                }
                saved.push((path, old));
            }
            Ok(SavedSysctls(saved))
        })
        .and_then(|r| r)
        .map_err(err)
}

/// Puts back what [`enable_fwmark_reflect`] changed in `netns`.
pub fn restore_sysctls(netns: &NetNs, saved: &SavedSysctls) -> Result<(), RoutingError> {
    let name = netns.path().display().to_string();
    netns
        .run(|| {
            saved.0.iter().filter(|(_, old)| old != "1").try_for_each(|(path, old)| std::fs::write(path, old))
        })
        .and_then(|r| r)
        .map_err(|source| RoutingError::Sysctl { netns: name, what: "fwmark_reflect", source })
}

fn ignore_exists(r: Result<(), NlError>) -> Result<(), NlError> {
    match r {
        Err(NlError::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}
