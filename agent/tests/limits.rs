//! The open-file limit is raised at start. Its own test binary: it changes the limit of the whole
//! process, which must not happen under the unit tests running in parallel threads.
use nix::sys::resource::{Resource, getrlimit, setrlimit};

#[test]
fn a_low_soft_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    // As containerd starts many containers: soft 1,024 under a higher hard limit.
    let low = hard.min(1024);
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).expect("lower the soft limit");
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit"), (low, hard));
    assert_eq!(sluice::limits::raise_nofile().expect("raise"), (hard, hard));
}
