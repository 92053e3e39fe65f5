//! The CNI plugin (`sluice cni`, or the binary installed as `sluice-cni`).
pub mod plugin {
    //! Placeholder until the redirection issue lands.
    pub fn main() -> std::process::ExitCode {
        eprintln!("sluice cni: not implemented yet");
        std::process::ExitCode::from(2)
    }
}

/// True when the binary was executed under the plugin name `sluice-cni` by a container runtime.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::PathBuf::from(a).file_name().map(|f| f == "sluice-cni"))
        .unwrap_or(false)
}
