//! `cargo xtask demo`: placeholder until the data path exists; it shows what the binary offers.
fn main() -> std::process::ExitCode {
    let bin = std::env::var("SLUICE_BIN").unwrap_or_else(|_| "sluice".into());
    println!("sluice demo: the data path is not built yet; this is what exists today:\n");
    match std::process::Command::new(&bin).arg("--help").status() {
        Ok(s) if s.success() => std::process::ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("{bin} --help failed: {s}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("could not run {bin}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
