//! The `sluice` binary: parse the command line, set up logging, dispatch. Nothing else lives here.
use std::process::ExitCode;

use clap::Parser as _;
use sluice::cli::{Cli, Command};

fn main() -> ExitCode {
    // The CNI runtime executes the plugin by its file name with no arguments.
    if sluice::cni::invoked_as_plugin() {
        return sluice::cni::plugin::main();
    }
    let cli = Cli::parse();
    sluice::telemetry::logging::init(cli.log_format, &cli.log_level);
    let result: anyhow::Result<()> = match cli.command {
        Command::Agent(args) => sluice::agent::run(*args),
        Command::Cni => return sluice::cni::plugin::main(),
        Command::Ca(sluice::cli::CaCommand::Issue { dir, uri, lifetime, out }) => {
            sluice::identity::ca::LocalCa::load(&dir)
                .and_then(|ca| ca.issue_files(&uri, lifetime, &out))
                .map(|()| println!("issued {uri} to {}.crt/.key", out.display()))
                .map_err(anyhow::Error::from)
        }
        Command::Ca(sluice::cli::CaCommand::Init { dir, trust_domain, lifetime }) => {
            sluice::identity::ca::LocalCa::init(&dir, &trust_domain, lifetime)
                .map(|()| println!("created a root CA for {trust_domain} in {}", dir.display()))
                .map_err(anyhow::Error::from)
        }
        Command::Config { admin, output } => sluice::inspect::config(admin, output),
        Command::Status { admin, output } => sluice::inspect::status(admin, output),
        Command::ReadyCheck { admin } => sluice::inspect::ready_check(admin),
        Command::Analyze { paths, output } => return sluice::analyze::run(&paths, output),
        Command::KernelCheck => {
            let report = sluice::redirect::features::probe();
            println!("{report}");
            return if report.check().is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        Command::Waypoint(w) => match (w.action, w.run) {
            (Some(sluice::cli::WaypointAction::Generate(g)), _) => {
                use sluice::waypoint::generate::{check_name, generate};
                check_name("--name", &g.name)
                    .and_then(|()| check_name("--namespace", &g.namespace))
                    .map(|()| print!("{}", generate(&g)))
                    .map_err(anyhow::Error::msg)
            }
            (None, args) => sluice::waypoint::run(args),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {}", sluice::telemetry::logging::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
