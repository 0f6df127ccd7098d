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

mod alloc;
mod bench;
mod demo;
mod registry;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use switchyard_gateway::{Gateway, StartError, config::Config};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: the proxy path allocates and
/// frees a few dozen small blocks per request, and glibc's malloc/free took
/// several percent of the CPU there (docs/performance.md).
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

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
    /// Run the gateway in front of a small example world under load, with
    /// faults injected on a schedule, and narrate what happens live.
    Demo {
        /// Stop after this long (e.g. "20s", "2m"); default: run until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Requests per second sent to the gateway.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// Look at and change a service registry (the embedded one of a running
    /// `switchyard serve`, served on its admin listener).
    Registry {
        /// The registry's URL (a Switchyard admin listener).
        #[arg(long, env = "SWITCHYARD_REGISTRY", global = true)]
        url: Option<String>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// Load an HTTP server at a fixed request rate (open loop, HTTP/1.1 or h2c)
    /// and report latency percentiles measured from each request's intended start.
    Bench(bench::BenchArgs),
    /// Create a development CA and certificates (for local TLS and mutual TLS).
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Create a CA: writes DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Switchyard development CA")]
        name: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by DIR/ca.pem: writes DIR/NAME.pem and DIR/NAME-key.pem.
    Issue {
        /// Directory holding the CA and receiving the certificate.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// File name stem of the certificate.
        #[arg(long)]
        name: String,
        /// A name the certificate is for, repeatable: DNS name, IP address, or
        /// a URI such as spiffe://example.org/frontend (the mTLS identity).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
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
    // The demo's and the bench's output is their table: only errors in
    // between, unless RUST_LOG asks for more.
    let default_level = match cli.command {
        Command::Demo { .. } | Command::Bench(_) => "error",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
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
        Command::Cert { command } => cert(command),
        Command::Registry { url, json, command } => block_on(registry::run(url, json, command)),
        Command::Demo { duration, rate } => demo(demo::DemoOptions { duration, rate }),
        Command::Bench(args) => bench::run(args),
    }
}

fn demo(options: demo::DemoOptions) -> ExitCode {
    block_on(async move {
        match demo::run(options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("switchyard demo: {err}");
                ExitCode::from(1)
            }
        }
    })
}

/// Runs `task` on a Tokio runtime; exit code 1 when the runtime itself
/// can't start.
///
/// One worker per core, or `TOKIO_WORKER_THREADS` of them. With one, the
/// current-thread scheduler runs everything on this thread: the same
/// behaviour without the bookkeeping that lets workers steal each other's
/// tasks (a tenth of the scheduler's cost per proxied request), and one
/// thread where one was asked for, as with HAProxy's `nbthread 1` or one
/// nginx worker.
pub(crate) fn block_on(task: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let workers = match worker_threads(std::env::var_os("TOKIO_WORKER_THREADS")) {
        Ok(workers) => workers,
        Err(err) => {
            eprintln!("switchyard: {err}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(task),
        Err(err) => {
            eprintln!("switchyard: cannot start the async runtime: {err}");
            ExitCode::from(1)
        }
    }
}

/// How many runtime workers to run: `TOKIO_WORKER_THREADS` when set (read
/// here rather than by Tokio, which panics on a bad value), else one per
/// core.
fn worker_threads(env: Option<std::ffi::OsString>) -> Result<usize, String> {
    match env {
        Some(value) => value
            .to_str()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!(
                    "TOKIO_WORKER_THREADS={}: not a whole number of threads above 0; \
                     set it to one (e.g. 1 or 4) or unset it for one worker per core",
                    value.to_string_lossy()
                )
            }),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

fn cert(command: CertCommand) -> ExitCode {
    use switchyard_gateway::tls::certs;
    let result = match command {
        CertCommand::Ca { dir, name, force } => certs::new_ca(&name)
            .and_then(|pem| certs::write(&dir, "ca", &pem, force).map_err(|e| e.to_string())),
        CertCommand::Issue { dir, name, sans, force } => certs::read(&dir, "ca")
            .map_err(|e| format!("{}: cannot read ca.pem and ca-key.pem ({e}); run `switchyard cert ca --dir {0}` first", dir.display()))
            .and_then(|ca| certs::issue(&ca, &sans))
            .and_then(|pem| certs::write(&dir, &name, &pem, force).map_err(|e| e.to_string())),
    };
    match result {
        Ok((cert, key)) => {
            println!("{}\n{}", cert.display(), key.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("switchyard cert: {err}");
            ExitCode::from(2)
        }
    }
}

fn serve(path: PathBuf) -> ExitCode {
    block_on(async move {
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

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn the_worker_count_comes_from_the_environment_or_the_cores() {
        assert_eq!(worker_threads(Some("1".into())), Ok(1));
        assert_eq!(worker_threads(Some(" 4 ".into())), Ok(4));
        assert!(worker_threads(None).is_ok_and(|n| n >= 1));
        for bad in ["0", "-1", "two", ""] {
            let err = worker_threads(Some(bad.into())).unwrap_err();
            assert!(
                err.contains("TOKIO_WORKER_THREADS") && err.contains("unset it"),
                "{err}"
            );
        }
    }
}
