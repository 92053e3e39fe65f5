//! The per-pod capture listeners' accept loops and the connections they carry.
//!
//! Until the tunnel lands, captured connections pass through as plain TCP: outbound ones are
//! re-originated from inside the source pod's netns to their original destination, inbound ones
//! are delivered to the application from inside the destination pod's netns. Every connection is
//! counted with Istio's TCP metrics and logged on the `sluice::access` target.
mod copy;
mod inbound;
mod outbound;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sluice_common::{INBOUND_CAPTURE_PORT, INBOUND_HBONE_PORT, OUTBOUND_CAPTURE_PORT};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    redirect::{Kernel, NetNs, inpod::Role},
    telemetry::metrics::{ConnLabels, Metrics},
};

/// What the proxy knows about the pod a listener belongs to.
#[derive(Debug)]
pub struct PodCtx {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub trust_domain: String,
    pub netns: Arc<NetNs>,
    pub netns_cookie: u64,
    /// Inbound connections reach the app from the original client's address (the pod's delivery
    /// policy route is in place); otherwise from the pod's own address.
    pub transparent: bool,
}

impl PodCtx {
    /// The pod's SPIFFE identity.
    pub fn principal(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Shared by every pod's listeners.
pub struct Proxy {
    pub kernel: Arc<Kernel>,
    pub metrics: Arc<Metrics>,
    pub connect_timeout: Duration,
}

/// Why a captured connection was dropped or failed; one label value per reason
/// (`sluice_proxy_failures_total{reason}`) and one access-log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No original destination recorded for an outbound connection.
    NoOriginalDst,
    /// The original destination is one of the agent's own ports (a loop).
    Loop,
    /// Connecting to the destination failed or was refused.
    ConnectFailed,
    /// Connecting to the destination timed out.
    ConnectTimeout,
    /// Could not create a socket in the pod's network namespace.
    Socket,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::NoOriginalDst,
        Failure::Loop,
        Failure::ConnectFailed,
        Failure::ConnectTimeout,
        Failure::Socket,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::NoOriginalDst => "no_original_dst",
            Failure::Loop => "loop",
            Failure::ConnectFailed => "connect_failed",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Socket => "socket",
        }
    }
}

/// Which way a captured connection goes, as metrics and access logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

fn is_agent_port(addr: SocketAddr) -> bool {
    matches!(
        addr.port(),
        OUTBOUND_CAPTURE_PORT | INBOUND_CAPTURE_PORT | INBOUND_HBONE_PORT
    )
}

impl Proxy {
    /// Starts the accept loop of each listener; abort the handles to stop accepting (connections
    /// already accepted keep running in their own tasks).
    pub fn spawn(
        self: &Arc<Self>,
        pod: Arc<PodCtx>,
        listeners: Vec<(Role, TcpListener)>,
    ) -> Vec<JoinHandle<()>> {
        listeners
            .into_iter()
            .map(|(role, l)| {
                let me = self.clone();
                let pod = pod.clone();
                tokio::spawn(async move { me.accept_loop(role, l, pod).await })
            })
            .collect()
    }

    /// Carries one captured connection once its other side is connected (or failed): metrics,
    /// byte copying, access log. The one place both directions share.
    #[allow(
        clippy::too_many_arguments,
        reason = "each argument is one fact of the connection"
    )]
    async fn carry(
        &self,
        dir: Direction,
        pod: &PodCtx,
        src: SocketAddr,
        dst: SocketAddr,
        mut labels: ConnLabels,
        client: TcpStream,
        other: Result<TcpStream, (Failure, String)>,
    ) {
        let other = match other {
            Ok(s) => s,
            Err((f, detail)) => {
                self.metrics.failure(dir.label(), f.label());
                labels.response_flags = f.label().to_string();
                self.metrics.conn_opened(&labels);
                self.metrics.conn_closed(&labels, 0, 0);
                warn!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
                      %src, %dst, reason = f.label(), detail, "connection failed");
                return;
            }
        };
        self.metrics.conn_opened(&labels);
        let start = std::time::Instant::now();
        let (sent, received, err) = copy::splice(client, other).await;
        self.metrics.conn_closed(&labels, sent, received);
        info!(target: "sluice::access", direction = dir.label(), pod = %pod.name, namespace = %pod.namespace,
              %src, %dst, sent, received, duration_ms = start.elapsed().as_millis() as u64,
              error = err.map(|e| e.to_string()), "connection closed");
    }

    async fn accept_loop(self: Arc<Self>, role: Role, listener: TcpListener, pod: Arc<PodCtx>) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    let pod = pod.clone();
                    tokio::spawn(async move {
                        match role {
                            Role::Outbound => me.outbound(stream, peer, pod).await,
                            Role::Inbound => me.inbound(stream, peer, pod).await,
                        }
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    warn!(pod = %pod.name, namespace = %pod.namespace, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ports_are_loops() {
        assert!(is_agent_port("10.0.0.1:15001".parse().expect("addr")));
        assert!(is_agent_port("10.0.0.1:15006".parse().expect("addr")));
        assert!(is_agent_port("[fd00::1]:15008".parse().expect("addr")));
        assert!(!is_agent_port("10.0.0.1:8080".parse().expect("addr")));
    }

    #[test]
    fn failure_labels_are_unique() {
        let mut labels: Vec<&str> = Failure::ALL.iter().map(|f| f.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Failure::ALL.len());
    }
}
