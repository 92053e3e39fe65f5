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
/// previous agent's, so a plugin never finds no socket).
pub fn serve(path: &Path, pods: Arc<Pods>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let tmp = staging(path);
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    let listener = UnixListener::bind(&tmp)?;
    Ok(tokio::spawn(async move {
        let mut backoff = crate::limits::accept::AcceptBackoff::new("cni", None);
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
