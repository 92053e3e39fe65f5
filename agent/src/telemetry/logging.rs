//! tracing subscriber setup: text or JSON to stderr, filter from `--log-level`/`SLUICE_LOG`.
use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber once; later calls are ignored (tests call it repeatedly).
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("sluice: invalid log filter `{filter}` ({e}); using `info`");
        EnvFilter::new("info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Renders an error and its causes on one line, skipping a cause whose text the previous message
/// already contains (typed errors in this crate embed their source in their message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !last.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        last = t;
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_skips_repeated_causes() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io).context("reading x: disk on fire").context("starting");
        assert_eq!(super::error_chain(e.as_ref()), "starting: reading x: disk on fire");
    }
}
