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
pub mod compose;
pub mod config;
pub mod histograms;
pub mod limits;
pub mod paths;
pub mod problem;
pub mod proxy;
mod registrar;
pub mod routes;
mod runtime;
pub mod server;
pub mod tls;

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
};

use arc_swap::ArcSwap;
use histograms::MetricsHandle;
use switchyard_discovery::StaticDiscovery;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    config::{Config, ConfigError},
    proxy::{Proxy, RouteTable},
    runtime::{Runtime, Sources},
};
use switchyard_discovery::registry::{
    EmbeddedRegistry, Registry, RegistryDiscovery, RemoteRegistry, http as registry_http,
};
use switchyard_policy::{CachedMetricsObserver, Observer, events::Fanout};

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
    /// The config file, when the gateway was started from one.
    path: Option<PathBuf>,
    /// Where policy events go: the metrics, plus any observer given at start.
    observer: Arc<dyn Observer>,
    runtime: ArcSwap<Runtime>,
    /// The route table every listener's proxy serves, swapped on reload.
    table: Arc<ArcSwap<RouteTable>>,
    sources: Sources,
    metrics: MetricsHandle,
    draining: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Re-reads the config file and swaps it in; on any error the running
    /// config keeps serving untouched.
    pub(crate) async fn reload(&self) -> Result<(), ConfigError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let Some(path) = &self.path else {
            return Err(ConfigError {
                file: "(none)".to_owned(),
                line: 0,
                key: "(config)".to_owned(),
                message:
                    "this gateway was started without a config file, so there is nothing to reload"
                        .to_owned(),
            });
        };
        let config = Config::load(path)?;
        let current = self.runtime.load();
        let file = path.display().to_string();
        if config.listeners != current.config.listeners
            || config.admin != current.config.admin
            || config.registry != current.config.registry
            || config.register != current.config.register
        {
            return Err(ConfigError {
                file,
                line: 1,
                key: "listeners".to_owned(),
                message: "listeners, the admin listener, [registry] and [[register]] can't change while running; \
                          restart to apply them (the running config keeps serving)"
                    .to_owned(),
            });
        }
        let (runtime, table) =
            Runtime::build(config, Some(&current), &self.sources, &self.observer).map_err(
                |message| ConfigError {
                    file,
                    line: 1,
                    key: "(config)".to_owned(),
                    message,
                },
            )?;
        self.runtime.store(Arc::new(runtime));
        self.table.store(Arc::new(table));
        metrics::counter!("switchyard_config_reloads_total").increment(1);
        tracing::info!(file = %path.display(), "config reloaded");
        Ok(())
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    tasks: JoinSet<io::Result<()>>,
    /// Sidecar registrations; they deregister when shutdown is signalled.
    registrations: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    listener_addrs: BTreeMap<String, SocketAddr>,
    admin_addr: SocketAddr,
}

impl Gateway {
    /// Loads the config at `path`, binds every listener and the admin
    /// listener, and starts serving.
    pub async fn start(path: PathBuf) -> Result<Gateway, StartError> {
        let config = Config::load(&path)?;
        Gateway::start_with(config, Some(path), None).await
    }

    /// Starts from a config already loaded (and validated); `path`, if any,
    /// is what a reload re-reads. Policy events go to the metrics and to
    /// `observer`, if given (the demo's live table uses this).
    pub async fn start_with(
        config: Config,
        path: Option<PathBuf>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Gateway, StartError> {
        // The recorder first: the observer keeps handles from it.
        let metrics = admin::metrics_handle();
        let metrics_observer = Arc::new(CachedMetricsObserver::new());
        let observer: Arc<dyn Observer> = match observer {
            Some(extra) => Arc::new(Fanout(vec![metrics_observer, extra])),
            None => metrics_observer,
        };
        let (registry, hosted) = open_registry(&config, path.as_deref())?;
        let sources = Sources {
            statics: StaticDiscovery::default(),
            registry: registry
                .clone()
                .map(|r| Arc::new(RegistryDiscovery::new(r))),
        };
        let (runtime, table) =
            Runtime::build(config.clone(), None, &sources, &observer).map_err(StartError::Other)?;
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
            .map(|(l, _)| Proxy::new(l, table.clone()))
            .collect();
        let shared = Arc::new(Shared {
            path,
            observer,
            runtime: ArcSwap::from_pointee(runtime),
            table,
            sources,
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
            let app = admin::router(
                shared.clone(),
                config.admin.token_sha256.as_deref(),
                hosted.map(registry_http::router),
            );
            eprintln!("switchyard: admin on {admin_addr}");
            // Registry watches never end on their own, so the admin listener
            // closes its connections at shutdown rather than waiting for them.
            tasks.spawn(async move {
                registry_http::serve(admin, app, signal).await;
                Ok(())
            });
        }
        let mut registrations = JoinSet::new();
        if let Some(registry) = &registry {
            for entry in &config.register {
                registrations.spawn(registrar::run(
                    registry.clone(),
                    entry.clone(),
                    shutdown.subscribe(),
                ));
            }
        }
        {
            // The exporter's upkeep (its idle series and any histogram of its
            // own) runs off the request path.
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
            registrations,
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

    /// The state `/admin/services` shows: per service its endpoints (health,
    /// ejection, latency, in-flight), breaker and bulkhead.
    pub fn service_states(&self) -> serde_json::Value {
        serde_json::to_value(self.shared.runtime.load().service_states()).unwrap_or_default()
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
        // Sidecar registrations deregister as soon as shutdown is signalled,
        // so other gateways stop sending here while the listeners drain.
        while self.registrations.join_next().await.is_some() {}
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

/// The registry this process uses (if any), and the one it hosts (if
/// embedded), whose API the admin listener serves.
type Registries = (Option<Arc<dyn Registry>>, Option<Arc<dyn Registry>>);

fn open_registry(
    config: &Config,
    path: Option<&std::path::Path>,
) -> Result<Registries, StartError> {
    let Some(registry) = &config.registry else {
        return Ok((None, None));
    };
    if let Some(url) = &registry.url {
        let remote = RemoteRegistry::new(url)
            .map_err(|e| StartError::Other(format!("registry.url: {e}")))?;
        return Ok((Some(Arc::new(remote)), None));
    }
    // Without a config file (the demo), state lives in memory only.
    let data = path.map(|config_path| {
        let file = registry
            .data
            .clone()
            .unwrap_or_else(|| config::DEFAULT_REGISTRY_DATA.into());
        match config_path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file,
        }
    });
    let embedded = EmbeddedRegistry::open(data.as_deref()).map_err(|e| {
        StartError::Other(format!(
            "registry.data: cannot open {}: {e}",
            data.as_deref()
                .map_or_else(|| "(memory)".into(), |d| d.display().to_string())
        ))
    })?;
    let embedded: Arc<dyn Registry> = Arc::new(embedded);
    Ok((Some(embedded.clone()), Some(embedded)))
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
