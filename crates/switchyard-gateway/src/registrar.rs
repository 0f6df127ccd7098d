//! Sidecar registration (the SmartStack nerve role): each `[[register]]`
//! instance is health-checked on a timer; it is registered once its check
//! passes `healthy_threshold` times in a row, its lease is renewed every
//! third of its TTL, it is deregistered when the check fails
//! `unhealthy_threshold` times in a row and when the process shuts down.
//! After a crash nothing deregisters it: its lease expires on its own.
//!
//! The owner of the registration is `switchyard:<id>`, the same across
//! restarts, so a restarted sidecar takes its instance back at once instead
//! of waiting for the old lease to expire.

use std::{process::Stdio, sync::Arc, time::Duration};

use switchyard_discovery::registry::{LeaseId, Registration, Registry, RegistryError};
use switchyard_transport::{Body, Transport, TransportConfig};
use tokio::{sync::watch, time::MissedTickBehavior};

use crate::config::RegisterConfig;

/// Runs one registration until `stop` turns true, then deregisters it.
pub(crate) async fn run(
    registry: Arc<dyn Registry>,
    config: RegisterConfig,
    mut stop: watch::Receiver<bool>,
) {
    let id = config.id.clone().unwrap_or_else(|| config.addr.to_string());
    let owner = format!("switchyard:{id}");
    let mut registration = Registration::new(
        config.service.clone(),
        id.clone(),
        config.addr,
        owner.clone(),
    );
    registration.metadata = config.metadata.clone();
    registration.weight = config.weight;
    registration.ttl = config.ttl;
    let transport = Transport::new(&TransportConfig::default()).ok();
    let renew_every = (config.ttl / 3).max(Duration::from_millis(200));
    let mut check_tick = tokio::time::interval(config.check.interval);
    check_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut renew_tick = tokio::time::interval(renew_every);
    renew_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut lease: Option<LeaseId> = None;
    let gauge = metrics::gauge!("switchyard_registered", "service" => config.service.clone(), "instance" => id.clone());
    loop {
        tokio::select! {
            _ = check_tick.tick() => {
                if check(&config, transport.as_ref()).await {
                    passes += 1;
                    failures = 0;
                } else {
                    failures += 1;
                    passes = 0;
                }
                if lease.is_none() && passes >= config.check.healthy_threshold {
                    lease = register(&*registry, &registration).await;
                } else if lease.is_some() && failures >= config.check.unhealthy_threshold {
                    tracing::warn!(service = %config.service, instance = %id, "health check failing; deregistering");
                    deregister(&*registry, &registration).await;
                    lease = None;
                }
            }
            _ = renew_tick.tick(), if lease.is_some() => {
                if let Some(current) = lease {
                    lease = match registry.renew(current).await {
                        Ok(renewed) => Some(renewed.id),
                        // Expired (the registry restarted past the TTL, or we
                        // were partitioned): register again.
                        Err(RegistryError::NotFound(_)) => register(&*registry, &registration).await,
                        Err(err) => {
                            tracing::warn!(service = %config.service, instance = %id, %err, "lease renewal failed; will retry");
                            Some(current)
                        }
                    };
                }
            }
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
        }
        gauge.set(if lease.is_some() { 1.0 } else { 0.0 });
    }
    if lease.is_some() {
        deregister(&*registry, &registration).await;
    }
    gauge.set(0.0);
}

async fn register(registry: &dyn Registry, registration: &Registration) -> Option<LeaseId> {
    match registry.register(registration.clone()).await {
        Ok(lease) => {
            tracing::info!(service = %registration.service, instance = %registration.instance_id, "registered");
            Some(lease.id)
        }
        Err(err) => {
            tracing::warn!(service = %registration.service, instance = %registration.instance_id, %err, "registration failed; will retry");
            None
        }
    }
}

async fn deregister(registry: &dyn Registry, registration: &Registration) {
    let result = registry
        .deregister(
            &registration.service,
            &registration.instance_id,
            &registration.owner,
        )
        .await;
    match result {
        Ok(()) | Err(RegistryError::NotFound(_)) => {
            tracing::info!(service = %registration.service, instance = %registration.instance_id, "deregistered");
        }
        Err(err) => {
            tracing::warn!(service = %registration.service, %err, "deregistration failed; the lease will expire")
        }
    }
}

/// One health check of the instance.
async fn check(config: &RegisterConfig, transport: Option<&Transport>) -> bool {
    let c = &config.check;
    let attempt = async {
        if let Some(path) = &c.http {
            let Some(transport) = transport else {
                return false;
            };
            let Ok(req) =
                http::Request::get(format!("http://{}{path}", config.addr)).body(Body::empty())
            else {
                return false;
            };
            matches!(transport.send(req).await, Ok(res) if res.status().is_success())
        } else if let Some(argv) = &c.command {
            let Some((program, args)) = argv.split_first() else {
                return false;
            };
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status();
            matches!(child.await, Ok(status) if status.success())
        } else {
            tokio::net::TcpStream::connect(config.addr).await.is_ok()
        }
    };
    tokio::time::timeout(c.timeout, attempt)
        .await
        .unwrap_or(false)
}
