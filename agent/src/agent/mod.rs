//! The agent process: takes over from a running agent (upgrade) or re-adopts pods, loads config and
//! eBPF, serves the CNI socket and the admin endpoints, reconciles enrollment whenever the config
//! changes, and hands everything to the next agent when one asks.
mod cni_server;
pub mod discover;
pub mod handover;
pub mod pods;
pub mod registry;

use std::sync::Arc;

use anyhow::Context as _;
use tracing::{error, info, warn};

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
    // Every agent of the node holds a lock on the state directory shared for its lifetime; an
    // uninstall takes it exclusively, so it never runs while a successor starts (and a successor
    // waits for it). Nothing is created before the config is checked: without a state directory
    // there is no running agent to take over from either.
    let early_lock = if args.state_dir.exists() { Some(shared_lock(&args.state_dir).await?) } else { None };

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
    let (snap, source) = config::source::load(&args.config).await?;
    let store = SnapshotStore::new(snap);
    let lock = match early_lock {
        Some(l) => l,
        None => shared_lock(&args.state_dir).await?,
    };

    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => redirect::kernel::cgroup2_root()?,
    };
    let kernel = Arc::new(Kernel::load(&args.bpffs, &cgroup)?);

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
        proxy.clone(),
        store.clone(),
        registry::Registry::new(&args.state_dir),
        args.identity.trust_domain.clone(),
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
    let cni = cni_server::serve(&sock, pods.clone())
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
    let taken = Arc::new(tokio::sync::Notify::new());
    let handing_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    serve_handover(handover_listener, pods.clone(), taken.clone(), handing_over.clone())?;

    let state = admin::State { metrics, kernel: kernel.clone(), pods: pods.clone(), store, certs };
    // After a handover the previous agent lets go of these ports a moment after `Taken`.
    let metrics_srv = serve_admin(args.metrics_addr, &state, admin::Surface::Metrics).await?;
    let ready_srv = serve_admin(args.ready_addr, &state, admin::Surface::Ready).await?;
    let admin_srv = serve_admin(args.admin_addr, &state, admin::Surface::Admin).await?;
    info!(node = %args.node_name, cni_socket = %sock.display(), metrics = %args.metrics_addr,
          admin = %args.admin_addr, "agent ready");

    let (handed_over, terminated) = tokio::select! {
        () = shutdown_signal() => {
            // A SIGTERM that races a handover in progress waits for it: the new agent is mid-way
            // through taking the pods.
            let deadline = tokio::time::Instant::now() + handover::IO_TIMEOUT;
            let mut done = false;
            while handing_over.load(std::sync::atomic::Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    () = taken.notified() => { done = true; break; }
                    () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                }
            }
            (done, true)
        }
        () = taken.notified() => (true, false),
    };
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
            shutdown_signal().await;
        }
        let left = proxy.drained(args.drain_timeout).await;
        info!(left, deadline = ?args.drain_timeout, "drained; exiting");
    } else if uninstalling(&args).await && alone(&lock) {
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
    Ok(())
}

/// Creates the state directory and takes its agent lock, shared.
async fn shared_lock(state_dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
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
fn alone(lock: &nix::fcntl::Flock<std::fs::File>) -> bool {
    match lock.relock(nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "another agent runs on this node: not uninstalling (it owns the pods and the CNI plugin)");
            false
        }
    }
}

/// Whether a terminated agent (that handed nothing over) is being uninstalled, per --cni-cleanup.
async fn uninstalling(args: &AgentArgs) -> bool {
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

/// Serves handover requests on a thread of its own (the exchange is blocking socket I/O); notifies
/// `taken` once a newer agent has taken the pods.
fn serve_handover(
    listener: handover::Listener,
    pods: Arc<pods::Pods>,
    taken: Arc<tokio::sync::Notify>,
    busy: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("sluice-handover".into())
        .spawn(move || {
            loop {
                let ch = match listener.accept() {
                    Ok(ch) => ch,
                    Err(e) => {
                        warn!(error = %e, "handover socket: accept failed");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                };
                busy.store(true, std::sync::atomic::Ordering::SeqCst);
                match rt.block_on(pods.hand_over(&ch)) {
                    Ok(_) => {
                        // `busy` stays set: a SIGTERM racing this still waits for `taken`.
                        taken.notify_one();
                        return;
                    }
                    Err(e) => {
                        busy.store(false, std::sync::atomic::Ordering::SeqCst);
                        warn!(error = %e, "handover aborted; this agent keeps serving its pods");
                    }
                }
            }
        })
        .context("cannot start the handover thread")?;
    Ok(())
}

/// Binds an admin surface, retrying for a while when the address is taken (by the agent this
/// one is taking over from, which releases it right after the handover).
async fn serve_admin(
    addr: std::net::SocketAddr,
    state: &admin::State,
    surface: admin::Surface,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tries = 0;
    loop {
        match admin::serve(addr, state.clone(), surface).await {
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
