//! The agent's sockets inside a pod's network namespace: the capture listeners it opens at
//! enrollment, and the marked sockets it connects from (the mark exempts them from capture).
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    sync::Arc,
};

use sluice_common::{
    AGENT_SOCKET_MARK, INBOUND_CAPTURE_PORT, INBOUND_DELIVERY_MARK, INBOUND_HBONE_PORT, OUTBOUND_CAPTURE_PORT,
};
use tokio::net::{TcpListener, TcpSocket};

use super::sys::{self, NetNs};

/// Listen backlog of the capture listeners.
const BACKLOG: u32 = 1024;

/// What a listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 15001: redirected outbound connects land here.
    Outbound,
    /// 15006: inbound TCP steered by sk_lookup lands here.
    Inbound,
    /// 15008: HBONE (mutual TLS) from other agents; reachable on the pod's addresses.
    Hbone,
}

impl Role {
    /// The in-pod port a listener of this role is bound to.
    pub fn port(self) -> u16 {
        match self {
            Role::Outbound => OUTBOUND_CAPTURE_PORT,
            Role::Inbound => INBOUND_CAPTURE_PORT,
            Role::Hbone => INBOUND_HBONE_PORT,
        }
    }
}

/// The capture listeners of one enrolled pod.
pub struct PodListeners {
    pub netns_cookie: u64,
    /// (role, listener); IPv6 listeners are absent when the pod has no IPv6 loopback.
    pub listeners: Vec<(Role, TcpListener)>,
}

/// Errors opening in-pod sockets; each names the namespace and the address.
#[derive(Debug, thiserror::Error)]
pub enum InPodError {
    #[error("cannot enter network namespace {netns}: {source} (is the pod still running?)")]
    Enter { netns: String, source: io::Error },
    #[error("cannot listen on {addr} in network namespace {netns}: {source} (is the port taken by the app?)")]
    Listen { netns: String, addr: SocketAddr, source: io::Error },
    #[error("sockets handed over for network namespace {netns} are unusable: {detail}")]
    Adopt { netns: String, detail: String },
    #[error("cannot read the netns cookie of {netns}: {source} (needs Linux 5.14+)")]
    Cookie { netns: String, source: io::Error },
}

/// Opens the pod's listeners in `netns`: the capture listeners 15001 and 15006 on 127.0.0.1 (and
/// ::1 when the pod has IPv6) — bound to loopback so nothing outside the pod reaches them directly;
/// the kernel programs deliver captured traffic to them whatever its address — and the HBONE
/// listener on 15008, which other agents reach on the pod's own addresses.
pub fn open_listeners(netns: &NetNs) -> Result<PodListeners, InPodError> {
    let name = netns.path().display().to_string();
    let mut listeners = Vec::new();
    let mut cookie = None;
    for (role, port) in [(Role::Outbound, OUTBOUND_CAPTURE_PORT), (Role::Inbound, INBOUND_CAPTURE_PORT)] {
        for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            let addr = SocketAddr::new(ip, port);
            let res = netns
                .run(|| listen(addr))
                .map_err(|source| InPodError::Enter { netns: name.clone(), source })?;
            match res {
                Ok(l) => {
                    if cookie.is_none() {
                        cookie = Some(
                            sys::netns_cookie(l.as_fd())
                                .map_err(|source| InPodError::Cookie { netns: name.clone(), source })?,
                        );
                    }
                    listeners.push((role, l));
                }
                // A pod without IPv6 has no ::1; IPv4 is mandatory.
                Err(e) if ip.is_ipv6() && e.kind() == io::ErrorKind::AddrNotAvailable => {}
                Err(e) if ip.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                Err(source) => {
                    return Err(InPodError::Listen { netns: name.clone(), addr, source });
                }
            }
        }
    }
    // HBONE: [::]:15008 takes IPv4 and IPv6 (dual stack); 0.0.0.0 when the pod has no IPv6.
    let hbone =
        [SocketAddr::from(([0u16; 8], INBOUND_HBONE_PORT)), SocketAddr::from(([0u8; 4], INBOUND_HBONE_PORT))];
    let mut last_err = None;
    for addr in hbone {
        match netns
            .run(|| listen(addr))
            .map_err(|source| InPodError::Enter { netns: name.clone(), source })?
        {
            Ok(l) => {
                listeners.push((Role::Hbone, l));
                last_err = None;
                break;
            }
            Err(e) => last_err = Some((addr, e)),
        }
    }
    if let Some((addr, source)) = last_err {
        return Err(InPodError::Listen { netns: name.clone(), addr, source });
    }
    let netns_cookie = cookie.ok_or_else(|| InPodError::Cookie {
        netns: name.clone(),
        source: io::Error::other("no listener opened"),
    })?;
    Ok(PodListeners { netns_cookie, listeners })
}

/// Takes over listeners another agent opened in a pod (received in a handover): checks that each
/// is a listening TCP socket on its role's port and that all are in one network namespace, whose
/// cookie is returned with them. The sockets are the very ones the kernel maps already point at,
/// so nothing a client can see changes.
pub fn adopt_listeners(
    netns: &NetNs,
    fds: Vec<(Role, std::os::fd::OwnedFd)>,
) -> Result<PodListeners, InPodError> {
    let name = netns.path().display().to_string();
    let bad = |detail: String| InPodError::Adopt { netns: name.clone(), detail };
    let mut cookie = None;
    let mut listeners = Vec::with_capacity(fds.len());
    for (role, fd) in fds {
        let c = sys::netns_cookie(fd.as_fd())
            .map_err(|source| InPodError::Cookie { netns: name.clone(), source })?;
        if *cookie.get_or_insert(c) != c {
            return Err(bad("the sockets are in different network namespaces".into()));
        }
        let std_listener = std::net::TcpListener::from(fd);
        let local = std_listener.local_addr().map_err(|e| bad(format!("not a TCP socket: {e}")))?;
        if local.port() != role.port() {
            return Err(bad(format!("{role:?} socket is bound to {local}, not port {}", role.port())));
        }
        std_listener.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
        let l = TcpListener::from_std(std_listener).map_err(|e| bad(e.to_string()))?;
        listeners.push((role, l));
    }
    if !listeners.iter().any(|(r, _)| *r == Role::Hbone)
        || !listeners.iter().any(|(r, _)| *r == Role::Outbound)
    {
        return Err(bad("the outbound or HBONE listener is missing".into()));
    }
    let netns_cookie = cookie.ok_or_else(|| bad("no sockets".into()))?;
    Ok(PodListeners { netns_cookie, listeners })
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(BACKLOG)
}

/// A TCP socket created inside `netns`, carrying `mark`.
fn socket_in(netns: &NetNs, v6: bool, mark: u32) -> io::Result<TcpSocket> {
    let s = netns.run(|| if v6 { TcpSocket::new_v6() } else { TcpSocket::new_v4() })??;
    sys::set_mark(s.as_fd(), mark)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A TCP socket created inside `netns` and marked so the kernel programs leave it alone; connect it
/// from any thread.
pub fn marked_socket(netns: &Arc<NetNs>, v6: bool) -> io::Result<TcpSocket> {
    socket_in(netns, v6, AGENT_SOCKET_MARK)
}

/// A transparent delivery socket inside `netns`, bound to the original client's address `client_ip`
/// (port chosen by the kernel) and marked so the pod's delivery policy route returns the
/// application's replies to it. Returns the socket and the address it is bound to.
pub fn transparent_socket(netns: &Arc<NetNs>, client_ip: IpAddr) -> io::Result<(TcpSocket, SocketAddr)> {
    let v6 = client_ip.is_ipv6();
    let s = socket_in(netns, v6, INBOUND_DELIVERY_MARK)?;
    sys::set_transparent(s.as_fd(), v6)?;
    s.bind(SocketAddr::new(client_ip, 0))?;
    let local = s.local_addr()?;
    Ok((s, local))
}
