//! Driving `sl-probe` in pods: start echo servers, run clients, read what each side saw.
use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::cluster::{Cluster, Pod};

/// What one client run reported.
#[derive(Debug, Deserialize)]
pub struct ClientReport {
    pub ok: bool,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub local: String,
    #[serde(default)]
    pub server_saw: String,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub error: String,
}

/// The probe binary.
#[derive(Clone, Debug)]
pub struct Probe {
    pub bin: PathBuf,
}

impl Probe {
    pub fn new(bin: impl Into<PathBuf>) -> Probe {
        Probe { bin: bin.into() }
    }

    /// Starts an echo server in `pod` on `ports` and waits until they accept.
    pub fn serve(&self, c: &Cluster, pod: &Pod, ports: &[u16]) -> anyhow::Result<()> {
        let mut cmd = c.pod_command(pod, &self.bin)?;
        cmd.args(["serve", "--name", &pod.name]).args(ports.iter().map(u16::to_string)).stdout(Stdio::null());
        c.spawn_in_pod(pod, cmd)?;
        // Wait until every port is listening (checked from inside the pod, over loopback).
        for p in ports {
            let addr: SocketAddr = ([127, 0, 0, 1], *p).into();
            let deadline = std::time::Instant::now() + crate::cluster::scaled(Duration::from_secs(4));
            let ok = crate::sys::in_netns(&pod.netns_path(), move || {
                while std::time::Instant::now() < deadline {
                    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                false
            })?;
            if !ok {
                bail!("probe server in {} did not listen on {p}", pod.name);
            }
        }
        Ok(())
    }

    /// Runs a client in `pod` to `to`, sending `bytes`; spreads the sending over `hold_ms`.
    pub fn client(
        &self,
        c: &Cluster,
        pod: &Pod,
        to: SocketAddr,
        bytes: usize,
        hold_ms: u64,
    ) -> anyhow::Result<ClientReport> {
        self.client_bg(c, pod, to, bytes, hold_ms)?
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    }

    /// Starts a client in the background; join the handle for its report.
    pub fn client_bg(
        &self,
        c: &Cluster,
        pod: &Pod,
        to: SocketAddr,
        bytes: usize,
        hold_ms: u64,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<ClientReport>>> {
        self.client_pattern_bg(c, pod, to, bytes, hold_ms, "")
    }

    /// Like [`Probe::client_bg`], sending `pattern` repeated instead of random bytes.
    pub fn client_pattern_bg(
        &self,
        c: &Cluster,
        pod: &Pod,
        to: SocketAddr,
        bytes: usize,
        hold_ms: u64,
        pattern: &str,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<ClientReport>>> {
        let mut cmd = c.pod_command(pod, &self.bin)?;
        cmd.args(["client", &to.to_string(), &bytes.to_string(), &hold_ms.to_string(), pattern]);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        Ok(std::thread::spawn(move || {
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(stdout.trim()).with_context(|| {
                format!("sl-probe output {stdout:?} stderr {:?}", String::from_utf8_lossy(&out.stderr))
            })
        }))
    }
}
