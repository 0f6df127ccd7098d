//! The Switchyard gateway and sidecar.
//!
//! One process that accepts client traffic on its listeners, routes each
//! request to a named service, and calls that service through the policy
//! stack (deadline, rate limit, bulkhead, circuit breaker, retry with budget,
//! hedge) and a load balancer with outlier ejection and health checks; plus
//! an admin listener with metrics, health and state, and hot reload.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = switchyard_gateway::Gateway::start("switchyard.toml".into()).await?;
//! println!("admin on {}", gateway.admin_addr());
//! gateway.run_until_signalled().await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod auth;
pub mod config;
pub mod framing;
pub mod paths;
pub mod problem;
pub mod proxy;
pub mod routes;
mod runtime;
pub mod server;

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_discovery::StaticDiscovery;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    config::{Config, ConfigError},
    proxy::{Proxy, RouteTable},
    runtime::Runtime,
};
use switchyard_client::NoHealthyEndpoint;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config file is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener's address can't be bound.
    #[error("{key}: cannot listen on {addr}: {source}; pick a free port or stop what uses it")]
    Bind {
        /// The config key of the address.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// State shared by the listeners, the admin API and reloads.
pub(crate) struct Shared {
    path: PathBuf,
    runtime: ArcSwap<Runtime>,
    /// The route table every listener's proxy serves, swapped on reload.
    table: Arc<ArcSwap<RouteTable>>,
    discovery: StaticDiscovery,
    metrics: PrometheusHandle,
    draining: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Re-reads the config file and swaps it in; on any error the running
    /// config keeps serving untouched.
    pub(crate) async fn reload(&self) -> Result<(), ConfigError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let config = Config::load(&self.path)?;
        let current = self.runtime.load();
        let file = self.path.display().to_string();
        if config.listeners != current.config.listeners || config.admin != current.config.admin {
            return Err(ConfigError {
                file,
                line: 1,
                key: "listeners".to_owned(),
                message: "listeners and the admin listener can't change while running; restart to apply them \
                          (the running config keeps serving)"
                    .to_owned(),
            });
        }
        let (runtime, table) =
            Runtime::build(config, Some(&current), &self.discovery).map_err(|message| {
                ConfigError {
                    file,
                    line: 1,
                    key: "(config)".to_owned(),
                    message,
                }
            })?;
        self.runtime.store(Arc::new(runtime));
        self.table.store(Arc::new(table));
        metrics::counter!("switchyard_config_reloads_total").increment(1);
        tracing::info!(file = %self.path.display(), "config reloaded");
        Ok(())
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    tasks: JoinSet<io::Result<()>>,
    shutdown: watch::Sender<bool>,
    listener_addrs: BTreeMap<String, SocketAddr>,
    admin_addr: SocketAddr,
}

impl Gateway {
    /// Loads the config at `path`, binds every listener and the admin
    /// listener, and starts serving.
    pub async fn start(path: PathBuf) -> Result<Gateway, StartError> {
        let config = Config::load(&path)?;
        let discovery = StaticDiscovery::default();
        let metrics = admin::metrics_handle();
        let (runtime, table) =
            Runtime::build(config.clone(), None, &discovery).map_err(StartError::Other)?;
        let table = Arc::new(ArcSwap::from_pointee(table));

        let mut bound = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let listener =
                TcpListener::bind(l.listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        key: format!("listeners[{i}].listen"),
                        addr: l.listen,
                        source,
                    })?;
            bound.push((l.clone(), listener));
        }
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "admin.listen".to_owned(),
                addr: config.admin.listen,
                source,
            })?;
        let admin_addr = admin
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;

        let proxies: Vec<Proxy> = bound
            .iter()
            .map(|(l, _)| {
                Proxy::new(l, table.clone()).with_causes(problem::caused_by::<NoHealthyEndpoint>(
                    problem::Cause::NO_HEALTHY_ENDPOINT,
                ))
            })
            .collect();
        let shared = Arc::new(Shared {
            path,
            runtime: ArcSwap::from_pointee(runtime),
            table,
            discovery,
            metrics,
            draining: AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
        });

        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut listener_addrs = BTreeMap::new();
        let drain = config.shutdown.drain_timeout;
        for ((l, listener), proxy) in bound.into_iter().zip(proxies) {
            let addr = listener
                .local_addr()
                .map_err(|e| StartError::Other(e.to_string()))?;
            tracing::info!(listener = %l.name, %addr, "listening");
            eprintln!("switchyard: listener {} on {addr}", l.name);
            listener_addrs.insert(l.name.clone(), addr);
            let signal = wait_for(shutdown.subscribe());
            tasks.spawn(async move { server::serve(listener, &l, proxy, signal, drain).await });
        }
        {
            let signal = wait_for(shutdown.subscribe());
            let app = admin::router(shared.clone());
            eprintln!("switchyard: admin on {admin_addr}");
            tasks
                .spawn(async move { axum::serve(admin, app).with_graceful_shutdown(signal).await });
        }
        {
            // Histogram buckets and idle series are maintained off the request path.
            let handle = shared.metrics.clone();
            let mut stop = shutdown.subscribe();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => handle.run_upkeep(),
                        _ = stop.changed() => return Ok(()),
                    }
                }
            });
        }
        Ok(Gateway {
            shared,
            tasks,
            shutdown,
            listener_addrs,
            admin_addr,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs.get(name).copied()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Re-reads the config file and applies it atomically; see
    /// `POST /admin/reload`.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        self.shared.reload().await
    }

    /// Stops accepting, lets in-flight requests finish (up to the configured
    /// drain timeout), and returns when every listener has stopped.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(err)) => result = Err(err),
                Err(err) => result = Err(io::Error::other(err)),
            }
        }
        result
    }

    /// Serves until SIGTERM or Ctrl-C (then drains and returns); SIGHUP
    /// reloads the config.
    pub async fn run_until_signalled(self) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = hup.recv() => match self.reload().await {
                    Ok(()) => eprintln!("switchyard: config reloaded"),
                    Err(err) => eprintln!("switchyard: reload rejected, still serving the previous config: {err}"),
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("switchyard: draining");
        self.shutdown().await?;
        eprintln!("switchyard: stopped");
        Ok(())
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
