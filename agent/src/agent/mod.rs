//! The agent process: loads config and eBPF, re-adopts pods, serves the CNI socket and the admin
//! endpoints, and reconciles enrollment whenever the config changes.
mod cni_server;
pub mod pods;
pub mod registry;

use std::sync::Arc;

use anyhow::Context as _;
use tracing::{error, info};

use crate::{
    admin,
    cli::AgentArgs,
    config::{self, SnapshotStore},
    proxy::Proxy,
    redirect::{self, Kernel},
    telemetry::metrics::Metrics,
    tunnel::pool::Pool,
};

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Before anything is loaded: a kernel without what the eBPF object needs is refused with the
    // missing features named, rather than failing later in the verifier.
    let features = redirect::features::probe();
    features.check()?;
    info!(kernel = %features.release, "kernel has every feature sluice needs");
    redirect::sys::init_home().context("cannot open the agent's own network namespace")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: AgentArgs) -> anyhow::Result<()> {
    let (snap, source) = config::source::load(&args.config).await?;
    let store = SnapshotStore::new(snap);

    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => redirect::kernel::cgroup2_root()?,
    };
    let kernel = Arc::new(Kernel::load(&args.bpffs, &cgroup)?);
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create state directory {}", args.state_dir.display()))?;

    let crate::cli::CaMode::Local = args.ca;
    let certs = crate::identity::cert_manager(&args.identity)?;
    let pool = Pool::new(certs.clone(), args.connect_timeout, args.pool_idle_timeout);
    let metrics = Arc::new(Metrics::new());
    let proxy = Arc::new(Proxy::new(
        kernel.clone(),
        metrics.clone(),
        store.clone(),
        certs.clone(),
        pool,
        args.connect_timeout,
    ));
    let reaper = {
        let proxy = proxy.clone();
        let every = (args.pool_idle_timeout / 4).max(std::time::Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let closed = proxy.pool.reap_idle();
                if closed > 0 {
                    tracing::debug!(closed, "idle HBONE connections closed");
                }
            }
        })
    };
    let pods = Arc::new(pods::Pods::new(
        proxy,
        store.clone(),
        registry::Registry::new(&args.state_dir),
        args.identity.trust_domain.clone(),
    ));
    pods.readopt().await?;

    let _watch = source.follow(store.clone())?;
    let reconciler = {
        let pods = pods.clone();
        let mut rx = store.subscribe();
        // On every config change, and every few seconds so a failed enrollment is retried.
        tokio::spawn(async move {
            let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = retry.tick() => {}
                }
                pods.reconcile().await;
            }
        })
    };

    let sock = args.state_dir.join("cni.sock");
    let cni = cni_server::serve(&sock, pods.clone())
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    let state = admin::State { metrics, kernel, pods: pods.clone(), store, certs };
    let metrics_srv = admin::serve(args.metrics_addr, state.clone(), admin::Surface::Metrics)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let ready_srv = admin::serve(args.ready_addr, state.clone(), admin::Surface::Ready)
        .await
        .with_context(|| format!("cannot listen on {}", args.ready_addr))?;
    let admin_srv = admin::serve(args.admin_addr, state, admin::Surface::Admin)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_addr))?;
    info!(node = %args.node_name, cni_socket = %sock.display(), metrics = %args.metrics_addr,
          admin = %args.admin_addr, "agent ready");

    shutdown_signal().await;
    // Pins and map entries stay: enrolled pods remain captured (fail closed) until the next agent
    // re-adopts them.
    info!("shutting down; enrollment stays pinned for the next agent");
    cni.abort();
    metrics_srv.abort();
    admin_srv.abort();
    ready_srv.abort();
    reconciler.abort();
    reaper.abort();
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "cannot install signal handlers; running until killed");
            std::future::pending::<()>().await;
        }
    }
}
