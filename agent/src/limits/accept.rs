//! Backing off when `accept` fails. At the open-file limit (EMFILE) the pending connection stays
//! in the listen queue, so the listener is readable again at once: a loop that simply retries
//! spins a core per listener. Every accept loop of the agent and the waypoint goes through
//! [`AcceptBackoff`]: it sleeps 10 ms, doubling to 1 s while accept keeps failing, counts each
//! failure (`sluice_accept_errors_total{listener}`) and logs at most once every 10 s per listener
//! (with how many failures the interval saw). Imports nothing from the crate.
use std::{
    io,
    time::{Duration, Instant},
};

/// First pause after a failed accept.
pub const MIN_DELAY: Duration = Duration::from_millis(10);
/// Longest pause while accept keeps failing.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per listener in this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The back-off state of one accept loop.
pub struct AcceptBackoff {
    listener: &'static str,
    errors: Option<prometheus::IntCounter>,
    delay: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    /// `listener` names the loop in the metric and the log (`hbone`, `inbound`, `admin`, ...);
    /// `errors` is its `sluice_accept_errors_total` series, if the process reports one.
    pub fn new(listener: &'static str, errors: Option<prometheus::IntCounter>) -> AcceptBackoff {
        AcceptBackoff { listener, errors, delay: MIN_DELAY, last_log: None, unlogged: 0 }
    }

    /// An accept succeeded: the next failure starts from the shortest pause again.
    pub fn succeeded(&mut self) {
        self.delay = MIN_DELAY;
    }

    /// An accept failed with `e`: counts it, logs it (rate-limited) and sleeps before the caller
    /// accepts again. A failure of one connection (aborted or reset before it was accepted) is
    /// counted but not waited on; anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM) is.
    pub async fn failed(&mut self, e: &io::Error) {
        if let Some(c) = &self.errors {
            c.inc();
        }
        self.unlogged += 1;
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::warn!(listener = self.listener, error = %e, failures = self.unlogged,
                           next_try_ms = self.delay.as_millis() as u64,
                           "accept failed; backing off (at the open-file limit, raise RLIMIT_NOFILE \
                            or lower the connection caps)");
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        if per_connection(e) {
            return;
        }
        tokio::time::sleep(self.next_pause()).await;
    }

    /// The pause before the next accept; each call doubles the following one, up to the ceiling.
    fn next_pause(&mut self) -> Duration {
        let pause = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        pause
    }
}

/// Errors that concern only the connection being accepted, not the process.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_a_ceiling_and_reset_on_success() {
        let mut b = AcceptBackoff::new("test", None);
        let pauses: Vec<u64> = (0..9).map(|_| b.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next_pause(), MIN_DELAY);
    }

    #[tokio::test]
    async fn an_aborted_connection_is_not_waited_on_and_emfile_is() {
        let mut b = AcceptBackoff::new("test", None);
        let t = std::time::Instant::now();
        b.failed(&io::Error::from(io::ErrorKind::ConnectionAborted)).await;
        assert!(t.elapsed() < MIN_DELAY);
        b.failed(&io::Error::from_raw_os_error(libc::EMFILE)).await;
        assert!(t.elapsed() >= MIN_DELAY);
    }

    #[tokio::test]
    async fn every_failure_is_counted() {
        let c = prometheus::IntCounter::new("t", "t").expect("counter");
        let mut b = AcceptBackoff::new("test", Some(c.clone()));
        for _ in 0..3 {
            b.failed(&io::Error::from_raw_os_error(libc::ENFILE)).await;
        }
        assert_eq!(c.get(), 3);
    }
}
