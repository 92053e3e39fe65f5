//! Map keys, map values and constants shared by the kernel programs (`sluice-ebpf`) and the agent.
//!
//! Owns the byte layout of every map entry. Every type is `#[repr(C)]` with explicit padding and a
//! compile-time size and alignment check, so kernel and agent cannot drift apart. Changing a layout
//! means bumping [`LAYOUT_VERSION`], which is part of every pin name, so an upgraded agent never
//! misreads a map pinned by an older one.
#![no_std]

/// Version of the map layouts below; part of every bpffs pin name (`sluice_<map>_v<N>`).
pub const LAYOUT_VERSION: u32 = 2;

/// Outbound capture listener inside each enrolled pod's netns (ztunnel's port number).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound plaintext capture listener inside each enrolled pod's netns.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Inbound HBONE (mTLS) listener inside each enrolled pod's netns.
pub const INBOUND_HBONE_PORT: u16 = 15008;

/// SO_MARK carried by every socket the agent opens in a pod netns; the kernel programs never
/// redirect a socket carrying it, which is what keeps the agent's own connections out of the loop.
/// Same value as Istio's ztunnel uses for its own traffic.
pub const AGENT_SOCKET_MARK: u32 = 0x539;

/// SO_MARK of the agent's inbound delivery sockets (transparent: they carry the original client's
/// address). Exempt from capture like [`AGENT_SOCKET_MARK`], and the key of the policy route in the
/// pod netns that brings the application's replies back to the agent.
pub const INBOUND_DELIVERY_MARK: u32 = 0x53a;

/// Routing table (and rule priority) of the delivery policy route in each enrolled pod's netns.
pub const DELIVERY_ROUTE_TABLE: u32 = 0x53a;

/// `AF_INET` as the kernel spells it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel spells it.
pub const AF_INET6: u16 = 10;

/// An IPv4 or IPv6 socket address as the kernel programs store it.
///
/// `addr` holds the address in network byte order exactly as `bpf_sock_addr.user_ip4/user_ip6`
/// present it (IPv4 in `addr[0]`, the rest zero); `port` is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAddr {
    pub family: u16,
    pub port: u16,
    pub _pad: u32,
    pub addr: [u32; 4],
}

/// Key of the `ORIG_DST` map: one redirected outbound connection, named by what the agent can see
/// of it on its accepted socket: the pod's netns cookie, the address family and the client's source
/// port (the destination is always the agent's loopback capture listener).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    pub netns_cookie: u64,
    pub family: u16,
    pub src_port: u16,
    pub _pad: u32,
}

/// Key of the `DELIVERING` map: an inbound delivery connection the agent is opening to an
/// application, named as the pod's sk_lookup sees its SYN (remote = the original client's address
/// and the agent's source port; local port = the application's). Present only while connecting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub family: u16,
    pub remote_port: u16,
    pub local_port: u16,
    pub _pad: u16,
    /// Network byte order, IPv4 in `remote[0]`.
    pub remote: [u32; 4],
}

/// Value of the `ENROLLED` map, keyed by the pod's netns cookie (u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolledPod {
    /// Bit set of `ENROLL_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// Capture the pod's outbound TCP connects.
pub const ENROLL_OUTBOUND: u32 = 1;

/// Key of the `IN_PODS` map (value: the owning pod's netns cookie, u64) and of the `IN_SOCKS`
/// sockhash (value: the agent's inbound capture listener, 15006, in that pod's netns): a local
/// (pod) IP address of an enrolled pod. In `IN_PODS` but not in `IN_SOCKS` means "refuse".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboundKey {
    pub family: u32,
    /// Network byte order, IPv4 in `addr[0]`.
    pub addr: [u32; 4],
}

/// One counter per decision the kernel programs make; the index into the per-CPU `COUNTERS` array.
/// The agent exports them as `sluice_redirect_decisions_total{decision=...}`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// connect() from an enrolled pod rewritten to the outbound capture listener.
    OutboundRedirected = 0,
    /// connect() from an enrolled pod left alone: the socket carries the agent's mark.
    OutboundExemptAgent = 1,
    /// connect() from an enrolled pod left alone: the destination is loopback.
    OutboundExemptLoopback = 2,
    /// connect() from an enrolled pod left alone: not TCP.
    OutboundExemptNotTcp = 3,
    /// Original destination recorded for the agent at TCP connect time.
    OrigDstRecorded = 4,
    /// Original destination could not be recorded (map full or update failed).
    OrigDstRecordFailed = 5,
    /// Inbound TCP steered into the agent's capture listener.
    InboundSteered = 6,
    /// Inbound TCP to an enrolled pod whose capture socket is missing: dropped (fail closed), never
    /// left to reach the application uncaptured.
    InboundNoListener = 7,
    /// bpf_sk_assign refused the capture socket.
    InboundAssignFailed = 8,
    /// getpeername() on a redirected socket answered with the original destination.
    PeerNameRestored = 9,
    /// Inbound SYN of the agent's own delivery connection, left to reach the application.
    InboundAgentDelivery = 10,
}

impl Decision {
    /// Number of counters; the size of the `COUNTERS` array.
    pub const COUNT: u32 = 11;
    /// Every decision, in index order.
    pub const ALL: [Decision; Self::COUNT as usize] = [
        Decision::OutboundRedirected,
        Decision::OutboundExemptAgent,
        Decision::OutboundExemptLoopback,
        Decision::OutboundExemptNotTcp,
        Decision::OrigDstRecorded,
        Decision::OrigDstRecordFailed,
        Decision::InboundSteered,
        Decision::InboundNoListener,
        Decision::InboundAssignFailed,
        Decision::PeerNameRestored,
        Decision::InboundAgentDelivery,
    ];

    /// Stable label value for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Decision::OutboundRedirected => "outbound_redirected",
            Decision::OutboundExemptAgent => "outbound_exempt_agent",
            Decision::OutboundExemptLoopback => "outbound_exempt_loopback",
            Decision::OutboundExemptNotTcp => "outbound_exempt_not_tcp",
            Decision::OrigDstRecorded => "orig_dst_recorded",
            Decision::OrigDstRecordFailed => "orig_dst_record_failed",
            Decision::InboundSteered => "inbound_steered",
            Decision::InboundNoListener => "inbound_no_listener",
            Decision::InboundAssignFailed => "inbound_assign_failed",
            Decision::PeerNameRestored => "peername_restored",
            Decision::InboundAgentDelivery => "inbound_agent_delivery",
        }
    }
}

/// Decisions the kernel programs name in their debug log (see [`LOG_DECISIONS_GLOBAL`]) but do not
/// count: they are about traffic that is not the mesh's (every connect() on the node passes the
/// outbound hook), so a counter would measure the node, not the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncounted {
    /// connect() from a network namespace that is not enrolled: left alone.
    OutboundNotEnrolled,
    /// Inbound TCP in an enrolled pod's netns to an address that is not an enrolled pod IP (or a pod
    /// released meanwhile): left alone.
    InboundNotEnrolled,
}

impl Uncounted {
    /// Every uncounted decision.
    pub const ALL: [Uncounted; 2] = [Uncounted::OutboundNotEnrolled, Uncounted::InboundNotEnrolled];

    /// Stable label in the decision log, in the same vocabulary as [`Decision::label`].
    pub const fn label(self) -> &'static str {
        match self {
            Uncounted::OutboundNotEnrolled => "outbound_not_enrolled",
            Uncounted::InboundNotEnrolled => "inbound_not_enrolled",
        }
    }
}

/// Name of the kernel programs' load-time switch (a `u8` in `.rodata`): 0, the default, leaves the
/// decision log out of the loaded programs; 1 makes every decision point above write one debug
/// record (`decision=<label>` and its facts) through aya-log. The loader freezes `.rodata`, so the
/// verifier sees the constant and removes the logging code when it is 0.
pub const LOG_DECISIONS_GLOBAL: &str = "LOG_DECISIONS";

/// What the outbound connect hook should do with one connect() call. Pure, so it is unit-tested on
/// the host and called unchanged by the kernel program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Not an enrolled pod: do nothing, count nothing.
    NotEnrolled,
    /// Enrolled, but leave this connect alone for the given reason.
    Exempt(Decision),
    /// Rewrite the destination to the capture listener.
    Redirect,
}

/// Facts the connect hook reads from its context.
#[derive(Clone, Copy, Debug)]
pub struct ConnectFacts {
    pub enrolled: bool,
    pub is_tcp: bool,
    pub socket_mark: u32,
    pub dst_is_loopback: bool,
}

/// Decides one connect(): the single place the outbound capture policy lives.
#[inline(always)]
pub fn connect_verdict(f: &ConnectFacts) -> ConnectVerdict {
    if !f.enrolled {
        return ConnectVerdict::NotEnrolled;
    }
    if !f.is_tcp {
        return ConnectVerdict::Exempt(Decision::OutboundExemptNotTcp);
    }
    if f.socket_mark == AGENT_SOCKET_MARK || f.socket_mark == INBOUND_DELIVERY_MARK {
        return ConnectVerdict::Exempt(Decision::OutboundExemptAgent);
    }
    if f.dst_is_loopback {
        return ConnectVerdict::Exempt(Decision::OutboundExemptLoopback);
    }
    ConnectVerdict::Redirect
}

/// True for 127.0.0.0/8 given in network byte order as the kernel stores it.
#[inline(always)]
pub fn ipv4_is_loopback(addr_be: u32) -> bool {
    u32::from_be(addr_be) >> 24 == 127
}

/// True for ::1 and for IPv4-mapped loopback (::ffff:127.x.y.z), words in network byte order.
#[inline(always)]
pub fn ipv6_is_loopback(addr_be: [u32; 4]) -> bool {
    let w = [
        u32::from_be(addr_be[0]),
        u32::from_be(addr_be[1]),
        u32::from_be(addr_be[2]),
        u32::from_be(addr_be[3]),
    ];
    (w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 1)
        || (w[0] == 0 && w[1] == 0 && w[2] == 0xffff && w[3] >> 24 == 127)
}

/// True for an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), words in network byte order.
#[inline(always)]
pub fn ipv6_is_v4_mapped(addr_be: [u32; 4]) -> bool {
    addr_be[0] == 0 && addr_be[1] == 0 && u32::from_be(addr_be[2]) == 0xffff
}

/// Where a captured connect is sent: the capture listener on loopback of the socket's own kind.
/// An IPv6 socket dialling an IPv4-mapped address goes to `::ffff:127.0.0.1` (the IPv4 listener),
/// so pods without IPv6 (no `::1`) still work; other IPv6 destinations go to `::1`.
#[inline(always)]
pub fn capture_address_v6(dst_be: [u32; 4]) -> [u32; 4] {
    if ipv6_is_v4_mapped(dst_be) {
        [0, 0, 0xffffu32.to_be(), u32::from_be_bytes([127, 0, 0, 1]).to_be()]
    } else {
        [0, 0, 0, 1u32.to_be()]
    }
}

/// What the inbound sk_lookup hook should do with one lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupVerdict {
    /// Leave the lookup to the kernel.
    Pass,
    /// Steer into the agent's capture listener.
    Steer,
}

/// Decides one inbound lookup: everything but the agent's own ports and traffic a pod sends to
/// itself (source address equal to the destination address, which is how the agent's own delivery
/// connections to the application arrive) is steered.
///
/// `ingress_ifindex` cannot tell local traffic apart: for a connection to the pod's own address it
/// carries the ifindex of the interface owning that address, not loopback's.
#[inline(always)]
pub fn lookup_verdict(is_tcp: bool, local_port: u16, remote_is_local: bool) -> LookupVerdict {
    if !is_tcp || remote_is_local {
        return LookupVerdict::Pass;
    }
    match local_port {
        OUTBOUND_CAPTURE_PORT | INBOUND_CAPTURE_PORT | INBOUND_HBONE_PORT => LookupVerdict::Pass,
        _ => LookupVerdict::Steer,
    }
}

const _: () = {
    assert!(core::mem::size_of::<SockAddr>() == 24 && core::mem::align_of::<SockAddr>() == 4);
    assert!(core::mem::size_of::<OrigDstKey>() == 16 && core::mem::align_of::<OrigDstKey>() == 8);
    assert!(core::mem::size_of::<EnrolledPod>() == 8);
    assert!(core::mem::size_of::<InboundKey>() == 20);
    assert!(core::mem::size_of::<DeliveryKey>() == 24 && core::mem::align_of::<DeliveryKey>() == 4);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are repr(C), Copy, with explicit padding fields and no pointers.
    #[allow(unsafe_code)]
    mod imp {
        use crate::*;
        unsafe impl aya::Pod for SockAddr {}
        unsafe impl aya::Pod for OrigDstKey {}
        unsafe impl aya::Pod for EnrolledPod {}
        unsafe impl aya::Pod for InboundKey {}
        unsafe impl aya::Pod for DeliveryKey {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ConnectFacts {
        ConnectFacts { enrolled: true, is_tcp: true, socket_mark: 0, dst_is_loopback: false }
    }

    #[test]
    fn connect_verdicts() {
        let cases: [(&str, ConnectFacts, ConnectVerdict); 6] = [
            ("enrolled tcp", facts(), ConnectVerdict::Redirect),
            ("not enrolled", ConnectFacts { enrolled: false, ..facts() }, ConnectVerdict::NotEnrolled),
            (
                "udp",
                ConnectFacts { is_tcp: false, ..facts() },
                ConnectVerdict::Exempt(Decision::OutboundExemptNotTcp),
            ),
            (
                "agent mark",
                ConnectFacts { socket_mark: AGENT_SOCKET_MARK, ..facts() },
                ConnectVerdict::Exempt(Decision::OutboundExemptAgent),
            ),
            (
                "agent delivery mark",
                ConnectFacts { socket_mark: INBOUND_DELIVERY_MARK, ..facts() },
                ConnectVerdict::Exempt(Decision::OutboundExemptAgent),
            ),
            (
                "loopback",
                ConnectFacts { dst_is_loopback: true, ..facts() },
                ConnectVerdict::Exempt(Decision::OutboundExemptLoopback),
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(connect_verdict(&f), want, "{name}");
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(ipv4_is_loopback(u32::from_be_bytes([127, 0, 0, 1]).to_be()));
        assert!(ipv4_is_loopback(u32::from_be_bytes([127, 9, 8, 7]).to_be()));
        assert!(!ipv4_is_loopback(u32::from_be_bytes([10, 0, 0, 1]).to_be()));
        let one = [0u32, 0, 0, 1u32.to_be()];
        assert!(ipv6_is_loopback(one));
        let mapped = [0u32, 0, 0xffffu32.to_be(), u32::from_be_bytes([127, 0, 0, 1]).to_be()];
        assert!(ipv6_is_loopback(mapped));
        let other = [0xfd00_0000u32.to_be(), 0, 0, 1u32.to_be()];
        assert!(!ipv6_is_loopback(other));
    }

    #[test]
    fn v4_mapped_destinations_go_to_the_ipv4_listener() {
        let mapped = [0u32, 0, 0xffffu32.to_be(), u32::from_be_bytes([10, 1, 2, 3]).to_be()];
        assert!(ipv6_is_v4_mapped(mapped));
        let to = capture_address_v6(mapped);
        assert_eq!(u32::from_be(to[3]), u32::from_be_bytes([127, 0, 0, 1]));
        assert!(ipv6_is_loopback(to));
        let v6 = [0xfd00_0000u32.to_be(), 0, 0, 2u32.to_be()];
        assert!(!ipv6_is_v4_mapped(v6));
        assert_eq!(capture_address_v6(v6), [0, 0, 0, 1u32.to_be()]);
    }

    #[test]
    fn lookup_verdicts() {
        assert_eq!(lookup_verdict(true, 8080, false), LookupVerdict::Steer);
        assert_eq!(lookup_verdict(true, 8080, true), LookupVerdict::Pass);
        assert_eq!(lookup_verdict(false, 8080, false), LookupVerdict::Pass);
        for p in [OUTBOUND_CAPTURE_PORT, INBOUND_CAPTURE_PORT, INBOUND_HBONE_PORT] {
            assert_eq!(lookup_verdict(true, p, false), LookupVerdict::Pass, "port {p}");
        }
    }

    #[test]
    fn decision_log_labels_are_unique() {
        let mut labels = [""; Decision::COUNT as usize + Uncounted::ALL.len()];
        for (i, d) in Decision::ALL.iter().enumerate() {
            labels[i] = d.label();
        }
        for (i, u) in Uncounted::ALL.iter().enumerate() {
            labels[Decision::COUNT as usize + i] = u.label();
        }
        for (i, a) in labels.iter().enumerate() {
            assert!(!a.is_empty());
            assert!(labels[i + 1..].iter().all(|b| b != a), "{a} twice");
        }
    }

    #[test]
    fn decision_table_is_dense() {
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as u32, i as u32, "{}", d.label());
        }
    }
}
