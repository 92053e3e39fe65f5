//! Process termination: the one place that waits for SIGTERM/SIGINT, for every long-running
//! subcommand (agent, waypoint). Imports nothing from the crate.

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; running until killed");
            std::future::pending::<()>().await;
        }
    }
}
