//! The `switchyard` binary: a sidecar and edge gateway that makes calls
//! between services fast, resilient and visible.
//!
//! ```text
//! switchyard serve -c switchyard.toml     run the gateway
//! switchyard config check switchyard.toml validate a config and exit
//! ```
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or config error. Logs go
//! to stderr (`RUST_LOG` filters them), data to stdout.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use switchyard_gateway::{Gateway, StartError, config::Config};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: fast, resilient and visible calls between services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: listeners, routes, services and the admin API from one config file.
    ///
    /// SIGHUP (or POST /admin/reload) reloads the config without dropping
    /// requests; SIGTERM or Ctrl-C drains in-flight requests, then exits.
    Serve {
        /// The config file (TOML).
        #[arg(short, long, value_name = "FILE", env = "SWITCHYARD_CONFIG")]
        config: PathBuf,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file: exit 0 if it is good, 2 with `file:line: key: problem` if not.
    Check {
        /// The config file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} listener(s), {} service(s), {} route(s))",
                    file.display(),
                    config.listeners.len(),
                    config.services.len(),
                    config.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => serve(config),
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("switchyard: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::start(path).await {
            Ok(gateway) => gateway,
            Err(err @ (StartError::Config(_) | StartError::Bind { .. })) => {
                eprintln!("{err}");
                return ExitCode::from(2);
            }
            Err(err) => {
                eprintln!("switchyard: {err}");
                return ExitCode::from(1);
            }
        };
        match gateway.run_until_signalled().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("switchyard: {err}");
                ExitCode::from(1)
            }
        }
    })
}
