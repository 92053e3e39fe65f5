//! How an agent that stops without a successor decides whether it is being uninstalled, and the
//! state-directory lock that keeps an uninstall from racing a starting agent.
use anyhow::Context as _;
use tracing::warn;

use crate::{cli::AgentArgs, config};

/// Creates the state directory and takes its agent lock, shared.
pub(super) async fn shared_lock(
    state_dir: &std::path::Path,
) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let path = state_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared).map_err(|(_, e)| e)
    })
    .await
    .context("lock task")?
    .with_context(|| format!("cannot lock {}", path.display()))
}

/// Turns this agent's shared lock into an exclusive one if no other agent of the node holds it;
/// false (and a log line) when another agent runs: it owns the node now, nothing is uninstalled.
pub(super) fn alone(lock: &nix::fcntl::Flock<std::fs::File>) -> bool {
    match lock.relock(nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "another agent runs on this node: not uninstalling (it owns the pods and the CNI plugin)");
            false
        }
    }
}

/// Whether a terminated agent (that handed nothing over) is being uninstalled, per --cni-cleanup.
pub(super) async fn uninstalling(args: &AgentArgs) -> bool {
    use crate::cli::CniCleanup;
    match args.cni_cleanup {
        CniCleanup::Always => true,
        CniCleanup::Never => false,
        CniCleanup::Auto if !config::kubernetes::selected_by(&args.config) => false,
        CniCleanup::Auto => match daemonset_going(&args.daemonset).await {
            Ok(going) => going,
            Err(e) => {
                warn!(error = %e, daemonset = %args.daemonset,
                      "cannot tell whether the DaemonSet is being deleted; keeping the CNI plugin (fail closed)");
                false
            }
        },
    }
}

/// True when the agent's DaemonSet is gone or being deleted (an uninstall, not an upgrade).
async fn daemonset_going(name: &str) -> anyhow::Result<bool> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let ns = std::env::var("POD_NAMESPACE").context("POD_NAMESPACE is not set (downward API)")?;
    let client = config::kubernetes::client_from_env().await?;
    let api: kube::Api<DaemonSet> = kube::Api::namespaced(client, &ns);
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), api.get_opt(name))
        .await
        .context("the API server did not answer in 5 s")?;
    match got {
        Ok(ds) => Ok(ds.is_none_or(|d| d.metadata.deletion_timestamp.is_some())),
        // `helm uninstall` / `kubectl delete -f` remove the agent's RBAC and service account
        // together with the DaemonSet: losing them is an uninstall too.
        Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => Ok(true),
        Err(e) => Err(e.into()),
    }
}
