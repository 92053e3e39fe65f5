//! At the open-file limit (EMFILE) an accept loop must back off, not spin. Its own test binary: it
//! lowers the open-file limit of the whole process, which no other test may share.
use std::{os::fd::AsRawFd as _, sync::Arc, time::Duration};

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

/// User plus system CPU time of this process so far.
fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

#[test]
fn the_admin_accept_loop_backs_off_at_the_open_file_limit() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Connections waiting in the listen queue: the listener stays readable while accept fails.
        let waiting: Vec<std::net::TcpStream> =
            (0..8).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
        let metrics = Arc::new(sluice::telemetry::metrics::Metrics::new());
        // No descriptor left: the limit is the lowest free descriptor number.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        let lowest_free = probe.as_raw_fd() as u64;
        drop(probe);
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, lowest_free, hard).expect("lower the limit");
        assert!(std::net::TcpListener::bind("127.0.0.1:0").is_err(), "the limit should leave no descriptor");

        let before = cpu();
        let server = tokio::spawn(sluice::admin::serve_http(
            listener,
            "admin",
            sluice::admin::HttpLimits::default(),
            metrics.clone(),
            |_req| async { hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new())) },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu() - before;
        server.abort();
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("restore the limit");
        let errors: u64 = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("sluice_accept_errors_total{listener=\"admin\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        eprintln!("at EMFILE: {used:?} of CPU in 1 s, {errors} accept errors counted");
        // Spinning took a whole core (~1 s of CPU in 1 s); backing off 10 ms doubling to 1 s
        // makes 7 attempts in the second.
        assert!(used < Duration::from_millis(100), "the accept loop used {used:?} of CPU in 1 s");
        assert!((3..=10).contains(&errors), "{errors} accept errors counted in 1 s");
        drop(waiting);
    });
}
