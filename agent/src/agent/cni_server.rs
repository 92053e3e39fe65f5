//! The agent's end of the CNI protocol: a Unix socket in the state directory.
use std::{path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use super::pods::Pods;
use crate::cni::protocol::{MAX_MESSAGE, Reply, Request};

/// Binds the socket at a temporary name next to `path` and serves requests until the task is
/// dropped; the socket is published under `path` by [`publish`] (an atomic rename over the
/// previous agent's, so a plugin never finds no socket). Accept errors back off and are counted in
/// `accept_errors` (`sluice_accept_errors_total{listener="cni"}`).
pub fn serve(
    path: &Path,
    pods: Arc<Pods>,
    accept_errors: prometheus::IntCounter,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let tmp = staging(path);
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    let listener = bind_private(&tmp)?;
    Ok(tokio::spawn(async move {
        let mut backoff = crate::limits::accept::AcceptBackoff::new("cni", Some(accept_errors));
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    backoff.succeeded();
                    let pods = pods.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(s, pods).await {
                            warn!(error = %e, "CNI request failed");
                        }
                    });
                }
                Err(e) => backoff.failed(&e).await,
            }
        }
    }))
}

/// Mode of the CNI socket: only root (the container runtime running the plugin) may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds a Unix stream socket at `path` whose mode is [`SOCKET_MODE`] before anyone can connect:
/// bind, chmod, then listen (a connect to a bound socket that does not listen yet is refused).
/// Not by setting the umask around `bind`: the umask is process-wide, and the agent's other
/// threads create files (the pod registry) meanwhile.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;

    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listen(&fd, Backlog::new(128).map_err(std::io::Error::from)?)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

fn staging(path: &Path) -> std::path::PathBuf {
    path.with_extension("sock.new")
}

/// Makes the socket [`serve`] bound the one at `path`.
pub fn publish(path: &Path) -> std::io::Result<()> {
    std::fs::rename(staging(path), path)
}

async fn handle(s: UnixStream, pods: Arc<Pods>) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    BufReader::new(r.take(MAX_MESSAGE as u64)).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::err(format!("malformed request: {e}")),
        Ok(req) => {
            debug!(?req, "CNI request");
            match req {
                Request::Add { pod } => match pods.add(pod).await {
                    Ok(enrolled) => Reply::ok(enrolled),
                    Err(super::pods::PodError::Claim(e)) => Reply::conflict(e.field(), e.to_string()),
                    Err(e) => Reply::err(e.to_string()),
                },
                Request::Del { pod } => match pods.del(&pod).await {
                    Ok(()) => Reply::ok(false),
                    Err(e) => Reply::err(e.to_string()),
                },
                Request::Check { pod } => match pods.check(&pod.key()).await {
                    Ok(enrolled) => Reply::ok(enrolled),
                    Err(e) => Reply::err(e),
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_from_its_creation_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cni.sock");
        let listener = crate::identity::ca::tests::with_open_umask(|| bind_private(&path)).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE, "cni.sock mode {mode:o}");
        // It listens (after the chmod).
        let _client = UnixStream::connect(&path).await.expect("connect");
        let _ = listener.accept().await.expect("accept");
    }
}
