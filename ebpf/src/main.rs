//! sluice's kernel programs. Each hook is a thin entry point that reads its context into plain
//! facts, asks the pure decision functions in `sluice-common`, and applies the verdict.
//!
//! Outbound (attached to the agent's cgroup, gated on the pod's netns cookie in `ENROLLED`):
//! - `sluice_connect4/6` rewrite a captured connect() to the agent's loopback listener on 15001 and
//!   remember the original destination by socket cookie (`SOCK_ORIG`);
//! - `sluice_sockops` at TCP connect time (source port now known) publishes the original destination
//!   under (netns cookie, family, source port) in `ORIG_DST`, which is what the agent can see on its
//!   accepted socket, and removes the per-socket entry when the socket closes;
//! - `sluice_getpeername4/6` give the application back its original peer.
//!
//! Inbound (attached per enrolled pod netns): `sluice_sk_lookup` steers TCP for any local port of an
//! enrolled pod IP into the agent's 15006 listener (`IN_SOCKS`); if the pod is enrolled but the
//! listener is gone (agent down) the connection is refused, never delivered uncaptured.
//!
//! Decision log: every decision point that counts a `Decision` (and the two uncounted "not
//! enrolled" cases) can also write one aya-log record naming the decision's label and its facts.
//! It is compiled in but switched by the load-time global `LOG_DECISIONS` (off by default): the
//! loader freezes `.rodata`, so with the switch off the verifier removes the logging code and a
//! hook runs exactly as without it (docs/redirection.md, docs/performance.md).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_SOCK_OPS_STATE_CB_FLAG, sk_action},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use sluice_common::{
    AF_INET, AF_INET6, ConnectFacts, ConnectVerdict, Decision, DeliveryKey, EnrolledPod, InboundKey,
    LookupVerdict, OUTBOUND_CAPTURE_PORT, OrigDstKey, SockAddr, Uncounted, capture_address_v6,
    connect_verdict, ipv4_is_loopback, ipv6_is_loopback, ipv6_is_v4_mapped, lookup_verdict,
};

const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_TCP_CLOSE: u32 = 7;

/// Enrolled pods by netns cookie.
#[map]
static ENROLLED: HashMap<u64, EnrolledPod> = HashMap::pinned(65_536, 0);

/// Original destination of each redirected socket, by socket cookie (connect -> sockops, getpeername).
#[map]
static SOCK_ORIG: LruHashMap<u64, SockAddr> = LruHashMap::pinned(262_144, 0);

/// Original destination by what the agent sees on its accepted socket.
#[map]
static ORIG_DST: LruHashMap<OrigDstKey, SockAddr> = LruHashMap::pinned(262_144, 0);

/// Enrolled pod IPs (inbound). Present here but absent from `IN_SOCKS` means "refuse".
#[map]
static IN_PODS: HashMap<InboundKey, u64> = HashMap::pinned(65_536, 0);

/// The agent's inbound capture listener (15006) per enrolled pod IP.
#[map]
static IN_SOCKS: SockHash<InboundKey> = SockHash::pinned(65_536, 0);

/// The agent's in-flight inbound delivery connections (see `DeliveryKey`).
#[map]
static DELIVERING: HashMap<DeliveryKey, u32> = HashMap::pinned(65_536, 0);

/// One counter per `Decision`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Decision::COUNT, 0);

#[inline(always)]
fn count(d: Decision) {
    if let Some(c) = COUNTERS.get_ptr_mut(d as u32) {
        // SAFETY: per-CPU slot owned by this CPU for the program's run.
        unsafe { *c += 1 };
    }
}

/// The decision log's load-time switch (`sluice_common::LOG_DECISIONS_GLOBAL`): 0 = off (default).
#[unsafe(no_mangle)]
static LOG_DECISIONS: Global<u8> = Global::new(0);

/// Whether the decision log is on: one read of a frozen `.rodata` byte, which the verifier knows, so
/// with the switch off every branch it guards is dead code and is removed at load.
#[inline(always)]
fn log_on() -> bool {
    LOG_DECISIONS.load() != 0
}

/// An IPv6 address as the programs store it (network-order words) as its 16 octets, for the log.
#[inline(always)]
fn v6_octets(a: [u32; 4]) -> [u8; 16] {
    let [b0, b1, b2, b3] = a[0].to_ne_bytes();
    let [b4, b5, b6, b7] = a[1].to_ne_bytes();
    let [b8, b9, b10, b11] = a[2].to_ne_bytes();
    let [b12, b13, b14, b15] = a[3].to_ne_bytes();
    [b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15]
}

/// One decision-log record: `$d` is a constant `Decision`/`Uncounted` whose label is folded into a
/// constant string at compile time; the address (`$family`, network-order words as the maps hold
/// them) is written as an IPv4 `u32` or IPv6 octets, one record shape per family, so the record
/// only ever captures plain integers (the verifier refused a record holding a `core::net::IpAddr`:
/// the compiler spilled part of a stack pointer). The format's `{:i}` comes out as an address.
macro_rules! decision_log {
    ($ctx:expr, $d:expr, $family:expr, $addr:expr, $fmt:literal $(, $arg:expr)*) => {{
        let label: &str = const { $d.label() };
        let addr: [u32; 4] = $addr;
        if $family == AF_INET {
            let ip: u32 = u32::from_be(addr[0]);
            debug!($ctx, $fmt, label, ip $(, $arg)*)
        } else {
            let ip: [u8; 16] = v6_octets(addr);
            debug!($ctx, $fmt, label, ip $(, $arg)*)
        }
    }};
}

/// Decision-log record of the connect and getpeername hooks.
macro_rules! log_connect {
    ($ctx:expr, $d:expr, $cookie:expr, $family:expr, $addr:expr, $port:expr) => {{
        let (cookie, port): (u64, u16) = ($cookie, $port);
        decision_log!(
            $ctx,
            $d,
            $family,
            $addr,
            "decision={} dst={:i} dst_port={} netns_cookie={}",
            port,
            cookie
        )
    }};
}

/// Decision-log record of the sockops hook (the original destination published for the agent).
macro_rules! log_sockops {
    ($ctx:expr, $d:expr, $cookie:expr, $src_port:expr, $orig:expr) => {{
        let (cookie, src_port, orig): (u64, u16, SockAddr) = ($cookie, $src_port, $orig);
        let port = orig.port;
        decision_log!(
            $ctx,
            $d,
            orig.family,
            orig.addr,
            "decision={} dst={:i} dst_port={} netns_cookie={} src_port={}",
            port,
            cookie,
            src_port
        )
    }};
}

/// Decision-log record of the inbound sk_lookup hook (no netns cookie there: the pod is named by
/// its address, the destination). Both addresses are of one family.
macro_rules! log_lookup {
    ($ctx:expr, $d:expr, $family:expr, $local:expr, $local_port:expr, $remote:expr, $remote_port:expr) => {{
        let label: &str = const { $d.label() };
        let (local, remote): ([u32; 4], [u32; 4]) = ($local, $remote);
        let (local_port, remote_port): (u16, u16) = ($local_port, $remote_port);
        if $family == AF_INET {
            let (dst, src): (u32, u32) = (u32::from_be(local[0]), u32::from_be(remote[0]));
            debug!(
                $ctx,
                "decision={} dst={:i} dst_port={} src={:i} src_port={}",
                label,
                dst,
                local_port,
                src,
                remote_port
            )
        } else {
            let (dst, src): ([u8; 16], [u8; 16]) = (v6_octets(local), v6_octets(remote));
            debug!(
                $ctx,
                "decision={} dst={:i} dst_port={} src={:i} src_port={}",
                label,
                dst,
                local_port,
                src,
                remote_port
            )
        }
    }};
}

/// The socket's netns cookie, and whether that netns is enrolled.
#[inline(always)]
fn enrolled(ctx: &impl EbpfContext) -> (u64, bool) {
    // SAFETY: helper reads the netns of the context's socket.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup of a plain value.
    (cookie, unsafe { ENROLLED.get(cookie) }.is_some())
}

/// Reads `user_ip6` word by word: the verifier only accepts context accesses at constant offsets
/// from the unmodified context pointer, which a whole-array copy does not compile to.
#[inline(always)]
fn read_user_ip6(sa: *const aya_ebpf::bindings::bpf_sock_addr) -> [u32; 4] {
    // SAFETY: sa is the program's context; each read is a 4-byte context field access.
    unsafe {
        [
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[0])),
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[1])),
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[2])),
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[3])),
        ]
    }
}

/// Writes `user_ip6` word by word (see [`read_user_ip6`]).
#[inline(always)]
fn write_user_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr, v: [u32; 4]) {
    // SAFETY: sa is the program's context; user_ip6 is writable in connect6/getpeername6.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[0]), v[0]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[1]), v[1]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[2]), v[2]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[3]), v[3]);
    }
}

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, AF_INET);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sluice_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, AF_INET6);
    1
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, family: u16) {
    // SAFETY: the verifier guarantees ctx points at a valid bpf_sock_addr for this hook.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (netns_cookie, is_enrolled) = enrolled(ctx);
    if !is_enrolled {
        if log_on() {
            let addr = if family == AF_INET { [sa.user_ip4, 0, 0, 0] } else { read_user_ip6(ctx.sock_addr) };
            let port = u16::from_be(sa.user_port as u16);
            log_connect!(ctx, Uncounted::OutboundNotEnrolled, netns_cookie, family, addr, port);
        }
        return;
    }
    let addr = if family == AF_INET { [sa.user_ip4, 0, 0, 0] } else { read_user_ip6(ctx.sock_addr) };
    let port = u16::from_be(sa.user_port as u16);
    // SAFETY: in sock_addr programs `sk` is a non-null full socket.
    let mark = unsafe { (*sa.__bindgen_anon_1.sk).mark };
    let facts = ConnectFacts {
        enrolled: is_enrolled,
        is_tcp: sa.type_ == SOCK_STREAM && (sa.protocol == IPPROTO_TCP || sa.protocol == 0),
        socket_mark: mark,
        dst_is_loopback: if family == AF_INET { ipv4_is_loopback(addr[0]) } else { ipv6_is_loopback(addr) },
    };
    match connect_verdict(&facts) {
        ConnectVerdict::NotEnrolled => {}
        ConnectVerdict::Exempt(d) => {
            count(d);
            if log_on() {
                // One arm per exemption `connect_verdict` returns, so each label is a constant.
                match d {
                    Decision::OutboundExemptAgent => {
                        log_connect!(ctx, Decision::OutboundExemptAgent, netns_cookie, family, addr, port)
                    }
                    Decision::OutboundExemptLoopback => {
                        log_connect!(ctx, Decision::OutboundExemptLoopback, netns_cookie, family, addr, port)
                    }
                    Decision::OutboundExemptNotTcp => {
                        log_connect!(ctx, Decision::OutboundExemptNotTcp, netns_cookie, family, addr, port)
                    }
                    _ => {}
                }
            }
        }
        ConnectVerdict::Redirect => {
            let orig = SockAddr { family, port, _pad: 0, addr };
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if SOCK_ORIG.insert(cookie, orig, 0).is_err() {
                // Without a record the agent could not forward it: leave it alone, loudly.
                count(Decision::OrigDstRecordFailed);
                if log_on() {
                    log_connect!(ctx, Decision::OrigDstRecordFailed, netns_cookie, family, addr, port);
                }
                return;
            }
            if family == AF_INET {
                sa.user_ip4 = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            } else {
                write_user_ip6(ctx.sock_addr, capture_address_v6(addr));
            }
            sa.user_port = (OUTBOUND_CAPTURE_PORT.to_be()) as u32;
            count(Decision::OutboundRedirected);
            if log_on() {
                log_connect!(ctx, Decision::OutboundRedirected, netns_cookie, family, addr, port);
            }
        }
    }
}

#[sock_ops]
pub fn sluice_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = SOCK_ORIG.remove(cookie);
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn on_tcp_connect(ctx: &SockOpsContext) {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup; the value is copied out at once.
    let Some(orig) = (unsafe { SOCK_ORIG.get(cookie) }).copied() else {
        return;
    };
    // SAFETY: helper on the program's own context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // An IPv6 socket connected to the IPv4 listener (v4-mapped) is seen by the agent as IPv4.
    let mut family = ctx.family() as u16;
    if family == AF_INET6 {
        // SAFETY: ctx.ops is the program's context; word-wise constant-offset reads.
        let local = unsafe {
            let p = ctx.ops;
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*p).local_ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).local_ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).local_ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).local_ip6[3])),
            ]
        };
        if ipv6_is_v4_mapped(local) {
            family = AF_INET;
        }
    }
    let src_port = ctx.local_port() as u16;
    let key = OrigDstKey { netns_cookie, family, src_port, _pad: 0 };
    if ORIG_DST.insert(key, orig, 0).is_ok() {
        count(Decision::OrigDstRecorded);
        if log_on() {
            log_sockops!(ctx, Decision::OrigDstRecorded, netns_cookie, src_port, orig);
        }
    } else {
        count(Decision::OrigDstRecordFailed);
        if log_on() {
            log_sockops!(ctx, Decision::OrigDstRecordFailed, netns_cookie, src_port, orig);
        }
    }
    // Ask for the state callback so SOCK_ORIG is cleaned when the socket closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[cgroup_sock_addr(getpeername4)]
pub fn sluice_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, AF_INET);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn sluice_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, AF_INET6);
    1
}

#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, family: u16) {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup; the value is copied out at once.
    let Some(orig) = (unsafe { SOCK_ORIG.get(cookie) }).copied() else {
        return;
    };
    if orig.family != family {
        return;
    }
    // SAFETY: the verifier guarantees ctx points at a valid bpf_sock_addr for this hook.
    let sa = unsafe { &mut *ctx.sock_addr };
    if family == AF_INET {
        sa.user_ip4 = orig.addr[0];
    } else {
        write_user_ip6(ctx.sock_addr, orig.addr);
    }
    sa.user_port = (orig.port.to_be()) as u32;
    count(Decision::PeerNameRestored);
    if log_on() {
        // SAFETY: helper reads the netns of the context's socket.
        let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        log_connect!(ctx, Decision::PeerNameRestored, netns_cookie, family, orig.addr, orig.port);
    }
}

/// Reads a 4-word IPv6 field of the sk_lookup context word by word (see [`read_user_ip6`]).
macro_rules! lookup_ip6 {
    ($p:expr, $field:ident) => {
        // SAFETY: $p is the program's context; each read is a 4-byte context field access.
        unsafe {
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*$p).$field[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$p).$field[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$p).$field[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$p).$field[3])),
            ]
        }
    };
}

#[sk_lookup]
pub fn sluice_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the verifier guarantees ctx points at a valid bpf_sk_lookup.
    let l = unsafe { &*ctx.lookup };
    let (family, local, remote) = if l.family == AF_INET as u32 {
        (AF_INET, [l.local_ip4, 0, 0, 0], [l.remote_ip4, 0, 0, 0])
    } else {
        (AF_INET6, lookup_ip6!(ctx.lookup, local_ip6), lookup_ip6!(ctx.lookup, remote_ip6))
    };
    let verdict = lookup_verdict(l.protocol == IPPROTO_TCP, l.local_port as u16, local == remote);
    if verdict == LookupVerdict::Pass {
        return sk_action::SK_PASS;
    }
    // remote_port is in network byte order; local_port in host order.
    let (remote_port, local_port) = (u16::from_be(l.remote_port), l.local_port as u16);
    let delivery = DeliveryKey { family, remote_port, local_port, _pad: 0, remote };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { DELIVERING.get(delivery) }.is_some() {
        count(Decision::InboundAgentDelivery);
        if log_on() {
            log_lookup!(&ctx, Decision::InboundAgentDelivery, family, local, local_port, remote, remote_port);
        }
        return sk_action::SK_PASS;
    }
    let key = InboundKey { family: family as u32, addr: local };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { IN_PODS.get(key) }.is_none() {
        if log_on() {
            log_lookup!(&ctx, Uncounted::InboundNotEnrolled, family, local, local_port, remote, remote_port);
        }
        return sk_action::SK_PASS;
    }
    match IN_SOCKS.redirect_sk_lookup(&ctx, key, 0) {
        Ok(()) => {
            count(Decision::InboundSteered);
            if log_on() {
                log_lookup!(&ctx, Decision::InboundSteered, family, local, local_port, remote, remote_port);
            }
            sk_action::SK_PASS
        }
        Err(e) => {
            // Enrolled pod without its capture listener: refuse rather than deliver uncaptured.
            if e == -2 {
                count(Decision::InboundNoListener);
                if log_on() {
                    log_lookup!(
                        &ctx,
                        Decision::InboundNoListener,
                        family,
                        local,
                        local_port,
                        remote,
                        remote_port
                    );
                }
            } else {
                count(Decision::InboundAssignFailed);
                if log_on() {
                    log_lookup!(
                        &ctx,
                        Decision::InboundAssignFailed,
                        family,
                        local,
                        local_port,
                        remote,
                        remote_port
                    );
                }
            }
            sk_action::SK_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
