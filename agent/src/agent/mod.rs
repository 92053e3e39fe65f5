//! The agent process: takes over from a running agent (upgrade) or re-adopts pods, loads config and
//! eBPF, serves the CNI socket and the admin endpoints, reconciles enrollment whenever the config
//! changes, and hands everything to the next agent when one asks.
pub mod claims;
mod cni_server;
pub mod discover;
pub mod handover;
mod lifecycle;
pub mod pods;
pub mod registry;

use std::sync::Arc;

use anyhow::Context as _;
use tracing::{info, warn};

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
    let nofile = crate::limits::raise_and_log();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args, nofile))
}

async fn run_async(args: AgentArgs, nofile: Option<u64>) -> anyhow::Result<()> {
    // Every agent of the node holds a lock on the state directory shared for its lifetime; an
    // uninstall takes it exclusively, so it never runs while a successor starts (and a successor
    // waits for it). Nothing is created before the config is checked: without a state directory
    // there is no running agent to take over from either.
    let early_lock =
        if args.state_dir.exists() { Some(lifecycle::shared_lock(&args.state_dir).await?) } else { None };

    // An agent already running on this node (an upgrade or a rollback): take its pods over, with
    // their listening sockets, first of all (the old agent waits for this one from then on, even
    // when it is terminated meanwhile).
    let handover_path = args.state_dir.join(handover::SOCKET_NAME);
    let mut takeover = {
        let p = handover_path.clone();
        match tokio::task::spawn_blocking(move || handover::take(&p)).await.context("handover task")? {
            Ok(t) => t,
            // Versions that cannot hand over: the operator must terminate the old agent.
            Err(e @ handover::HandoverError::Refused { .. }) => return Err(e.into()),
            // The old agent died or hung mid-way: start as after a crash (re-adopt the registry).
            Err(e) => {
                warn!(error = %e, "the handover failed; re-adopting the pods from the registry instead");
                None
            }
        }
    };
    if let Some(t) = &takeover {
        info!(from = %t.peer_version, pods = t.pods.len(), "a running agent handed its pods over");
    }
    let (snap, source) = config::source::load(&args.config, args.config_limits.limits()).await?;
    let store = SnapshotStore::new(snap);
    let lock = match early_lock {
        Some(l) => l,
        None => lifecycle::shared_lock(&args.state_dir).await?,
    };

    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => redirect::kernel::cgroup2_root()?,
    };
    let kernel = Arc::new(Kernel::load(&args.bpffs, &cgroup)?);

    let crate::cli::CaMode::Local = args.ca;
    let certs = crate::identity::cert_manager(&args.identity.settings())?;
    let pool = Pool::new(certs.clone(), args.connect_timeout, args.pool_idle_timeout);
    let metrics = Arc::new(Metrics::new());
    if let Some(n) = nofile {
        metrics.open_files_limit.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let caps = args.caps.caps(nofile.unwrap_or(1024));
    info!(
        budget_fds = caps.budget,
        plaintext_budget_fds = caps.plaintext_budget,
        handshake_budget_fds = caps.handshake_budget,
        per_pod = caps.per_pod,
        per_source = caps.per_source,
        "connection caps"
    );
    metrics.connection_budget.set(i64::try_from(caps.budget).unwrap_or(i64::MAX));
    let proxy = Arc::new(Proxy::new(
        caps,
        kernel.clone(),
        metrics.clone(),
        store.clone(),
        certs.clone(),
        pool,
        args.connect_timeout,
        &args.identity.trust_domain,
    ));
    // What the caps count now, for sluice_connection_budget_used_fds.
    let usage = {
        let (proxy, metrics) = (proxy.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let used = proxy.limiter().usage().fds;
                metrics.connection_budget_used.set(i64::try_from(used).unwrap_or(i64::MAX));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        })
    };
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
        proxy.clone(),
        store.clone(),
        registry::Registry::new(&args.state_dir),
        args.identity.trust_domain.clone(),
        args.node_name.clone(),
    ));
    if let Some(t) = &mut takeover {
        let adopted = pods.adopt(std::mem::take(&mut t.pods)).await?;
        info!(adopted, "enrolled the handed-over pods with their sockets");
    }
    pods.readopt().await?;
    let places = discover::Where { dirs: args.pod_netns_dir.clone(), proc: args.pod_netns_proc };
    let found = pods.discover(&args.node_name, &places).await?;
    if found > 0 {
        pods.reconcile().await;
    }

    let _watch = source.follow(store.clone())?;
    let reconciler = {
        let pods = pods.clone();
        let mut rx = store.subscribe();
        let node = args.node_name.clone();
        // On every config change, and every few seconds so a failed enrollment is retried.
        tokio::spawn(async move {
            let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = retry.tick() => {}
                }
                if let Err(e) = pods.discover(&node, &places).await {
                    warn!(error = %e, "looking for pods that ran before sluice failed");
                }
                pods.reconcile().await;
            }
        })
    };

    let sock = args.state_dir.join("cni.sock");
    let cni = cni_server::serve(&sock, pods.clone(), metrics.accept_errors("cni"))
        .with_context(|| format!("cannot listen on {}", sock.display()))?;

    if let Some(t) = takeover {
        if !args.handover_pause.is_zero() {
            info!(pause = ?args.handover_pause, "pausing in the middle of the handover (--handover-pause)");
            tokio::time::sleep(args.handover_pause).await;
        }
        let version = t.peer_version.clone();
        match tokio::task::spawn_blocking(move || t.channel.send(&handover::Msg::Taken, &[])).await {
            Ok(Ok(())) => {
                info!(from = %version, "took over from the running agent; it drains its connections")
            }
            // It is gone: its sockets closed with it, and the reconciler re-opens what is missing.
            Ok(Err(e)) => warn!(error = %e, "the previous agent vanished before the handover ended"),
            Err(e) => warn!(error = %e, "handover task failed"),
        }
    }
    // Only now is the CNI socket this agent's: a handover that failed before `Taken` leaves it
    // with the agent that still serves the pods.
    cni_server::publish(&sock).with_context(|| format!("cannot publish {}", sock.display()))?;
    // The plugin in the node's CNI config (after the handover: the old agent's copy stays put).
    let installer = args.cni_bin_dir.clone().zip(args.cni_conf_dir.clone()).map(|(bin_dir, conf_dir)| {
        crate::cni::install::Installer {
            bin_dir,
            conf_dir,
            agent_socket: args.cni_agent_socket.clone().unwrap_or_else(|| sock.clone()),
        }
    });
    let keeper = match &installer {
        Some(i) => {
            i.install_binary(std::path::Path::new("/proc/self/exe"))?;
            Some(
                crate::cni::install::keep_installed(i.clone(), std::time::Duration::from_secs(30))
                    .with_context(|| format!("cannot watch {}", i.conf_dir.display()))?,
            )
        }
        None => None,
    };
    let foreign = kernel.remove_foreign_pins();
    if foreign > 0 {
        info!(removed = foreign, "removed pinned state of another eBPF layout version");
    }
    let handover_listener = handover::Listener::bind(&handover_path)
        .with_context(|| format!("cannot listen on {}", handover_path.display()))?;
    let mut phase = handover_listener.serve(pods.clone()).context("cannot start the handover thread")?;

    let state = admin::State {
        metrics,
        kernel: kernel.clone(),
        pods: pods.clone(),
        connections: proxy.registry().clone(),
        store,
        certs,
    };
    // After a handover the previous agent lets go of these ports a moment after `Taken`.
    let http = admin::HttpLimits { max_connections: args.caps.max_admin_conns, ..Default::default() };
    let metrics_srv = serve_admin(args.metrics_addr, &state, admin::Surface::Metrics, http).await?;
    let ready_srv = serve_admin(args.ready_addr, &state, admin::Surface::Ready, http).await?;
    let admin_srv = serve_admin(args.admin_addr, &state, admin::Surface::Admin, http).await?;
    info!(node = %args.node_name, cni_socket = %sock.display(), metrics = %args.metrics_addr,
          admin = %args.admin_addr, "agent ready");

    let terminated = tokio::select! {
        () = crate::shutdown::signal() => true,
        _ = phase.wait_for(|p| *p == handover::Phase::Taken) => false,
    };
    if terminated {
        // A SIGTERM that races a handover in progress waits for it: the new agent is mid-way
        // through taking the pods.
        let _ =
            tokio::time::timeout(handover::IO_TIMEOUT, phase.wait_for(|p| *p != handover::Phase::Busy)).await;
    }
    let handed_over = *phase.borrow() == handover::Phase::Taken;
    cni.abort();
    metrics_srv.abort();
    admin_srv.abort();
    ready_srv.abort();
    reconciler.abort();
    if handed_over {
        // The new agent's links are pinned in place of ours; ours detach now.
        let links = kernel.release_links();
        proxy.begin_drain();
        info!(links, carried = proxy.active(), "handed over: not accepting; draining until terminated");
        if !terminated {
            crate::shutdown::signal().await;
        }
        let left = proxy.drained(args.drain_timeout).await;
        info!(left, deadline = ?args.drain_timeout, "drained; exiting");
    } else if lifecycle::uninstalling(&args).await && lifecycle::alone(&lock) {
        // Uninstall: the node must keep working without sluice. The plugin leaves the CNI config
        // first (no new pod depends on an agent), then every pod is released (its traffic is
        // plain again) and the pins go.
        drop(keeper);
        if let Some(i) = &installer {
            let changed = i.uninstall()?;
            info!(files = changed.len(), "uninstalled: removed the CNI plugin from the node");
        }
        let released = pods.release_all().await;
        let unpinned = kernel.uninstall();
        info!(
            pods = released,
            pins = unpinned,
            "uninstalled: released every pod and removed the pinned programs"
        );
    } else {
        // Pins and map entries stay: enrolled pods remain captured (fail closed) until the next
        // agent re-adopts them; so does the CNI plugin (pods cannot start without an agent).
        info!("shutting down; enrollment and the CNI plugin stay for the next agent (fail closed)");
    }
    reaper.abort();
    usage.abort();
    Ok(())
}

/// Binds an admin surface, retrying for a while when the address is taken (by the agent this
/// one is taking over from, which releases it right after the handover).
async fn serve_admin(
    addr: std::net::SocketAddr,
    state: &admin::State,
    surface: admin::Surface,
    limits: admin::HttpLimits,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tries = 0;
    loop {
        match admin::serve(addr, state.clone(), surface, limits).await {
            Ok(h) => return Ok(h),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot listen on {addr} (another agent holds it?)"));
            }
        }
    }
}
