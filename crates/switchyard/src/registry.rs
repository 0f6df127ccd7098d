//! `switchyard registry`: look at and change a registry from a shell.

use std::{collections::BTreeMap, net::SocketAddr, process::ExitCode, time::Duration};

use clap::Subcommand;
use futures_util::StreamExt;
use switchyard_discovery::registry::{Registration, Registry, RemoteRegistry, WatchEventKind};

/// The registry URL when neither `--url` nor `SWITCHYARD_REGISTRY` says.
const DEFAULT_URL: &str = "http://127.0.0.1:9901";

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// List the services that have instances.
    List,
    /// Show a service's instances and the registry's revision.
    Get {
        /// The service.
        service: String,
    },
    /// Register an instance. Its lease expires after --ttl unless renewed:
    /// with --keep this command renews it until Ctrl-C, then deregisters it.
    Register {
        /// The service.
        service: String,
        /// Where the instance listens.
        #[arg(long)]
        addr: SocketAddr,
        /// Its id within the service (default: the address).
        #[arg(long)]
        id: Option<String>,
        /// A metadata label, repeatable: --meta version=v2 --meta zone=a.
        #[arg(long = "meta", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Relative share of traffic.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Lease time to live.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who owns the registration (only the owner may change or remove it).
        #[arg(long, default_value = "cli")]
        owner: String,
        /// Keep renewing until Ctrl-C, then deregister.
        #[arg(long)]
        keep: bool,
    },
    /// Remove an instance.
    Deregister {
        /// The service.
        service: String,
        /// The instance id.
        id: String,
        /// The owner it was registered with.
        #[arg(long, default_value = "cli")]
        owner: String,
    },
    /// Print a service's changes as they happen (until Ctrl-C).
    Watch {
        /// The service.
        service: String,
        /// Resume after this revision instead of starting with a snapshot.
        #[arg(long)]
        from: Option<u64>,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?}: write a label as key=value"))
}

pub(crate) async fn run(url: Option<String>, json: bool, command: RegistryCommand) -> ExitCode {
    let url = url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    let registry = match RemoteRegistry::new(&url) {
        Ok(r) => r,
        Err(err) => {
            eprintln!("switchyard registry: {err}");
            return ExitCode::from(2);
        }
    };
    match execute(&registry, json, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("switchyard registry: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn fail(err: impl std::fmt::Display) -> Failure {
    // Bad input is a usage error (2); an unreachable registry a runtime one (1).
    let text = err.to_string();
    let code = if text.contains("unavailable") { 1 } else { 2 };
    (code, text)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| (1, e.to_string()))?;
    println!("{text}");
    Ok(())
}

async fn execute(
    registry: &RemoteRegistry,
    json: bool,
    command: RegistryCommand,
) -> Result<(), Failure> {
    match command {
        RegistryCommand::List => {
            let services = registry.list_services().await.map_err(fail)?;
            if json {
                return print_json(&services);
            }
            for service in services {
                println!("{service}");
            }
        }
        RegistryCommand::Get { service } => {
            let listing = registry.list(&service).await.map_err(fail)?;
            if json {
                return print_json(&listing);
            }
            println!(
                "{service} at revision {}: {} instance(s)",
                listing.revision,
                listing.instances.len()
            );
            for i in listing.instances {
                let meta: Vec<String> =
                    i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "  {:<24} {:<22} weight {:<4} {}",
                    i.id,
                    i.addr,
                    i.weight,
                    meta.join(" ")
                );
            }
        }
        RegistryCommand::Register {
            service,
            addr,
            id,
            metadata,
            weight,
            ttl,
            owner,
            keep,
        } => {
            let mut registration =
                Registration::new(service, id.unwrap_or_else(|| addr.to_string()), addr, owner);
            registration.metadata = metadata.into_iter().collect::<BTreeMap<_, _>>();
            registration.weight = weight;
            registration.ttl = ttl;
            let lease = registry
                .register(registration.clone())
                .await
                .map_err(fail)?;
            if json {
                print_json(&lease)?;
            } else {
                println!(
                    "registered {}/{} with lease {} (ttl {:?})",
                    registration.service, registration.instance_id, lease.id, lease.ttl
                );
            }
            if keep {
                let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(err) = registry.renew(lease.id).await {
                                eprintln!("switchyard registry: renewal failed: {err}");
                            }
                        }
                        _ = tokio::signal::ctrl_c() => break,
                    }
                }
                registry
                    .deregister(
                        &registration.service,
                        &registration.instance_id,
                        &registration.owner,
                    )
                    .await
                    .map_err(fail)?;
                println!(
                    "deregistered {}/{}",
                    registration.service, registration.instance_id
                );
            }
        }
        RegistryCommand::Deregister { service, id, owner } => {
            registry
                .deregister(&service, &id, &owner)
                .await
                .map_err(fail)?;
            if !json {
                println!("deregistered {service}/{id}");
            }
        }
        RegistryCommand::Watch { service, from } => {
            let mut events = registry.watch(&service, from).await.map_err(fail)?;
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(event) = event else {
                    return Err((1, "the watch ended".to_owned()));
                };
                let event = event.map_err(fail)?;
                if json {
                    print_json(&event)?;
                    continue;
                }
                match event.kind {
                    WatchEventKind::Put { instance } => {
                        println!(
                            "{:>8}  put     {} {} weight {}",
                            event.revision, instance.id, instance.addr, instance.weight
                        )
                    }
                    WatchEventKind::Delete { instance_id } => {
                        println!("{:>8}  delete  {instance_id}", event.revision)
                    }
                    WatchEventKind::Resync { instances } => {
                        println!(
                            "{:>8}  resync  {} instance(s)",
                            event.revision,
                            instances.len()
                        );
                        for i in instances {
                            println!("          {} {} weight {}", i.id, i.addr, i.weight);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
