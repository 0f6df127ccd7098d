//! Service discovery: where a service's endpoints come from.
//!
//! The balancer never reads endpoints from config directly: it watches a
//! [`Discovery`], which hands out a [`tokio::sync::watch`] receiver per
//! service carrying the service's current endpoint set. Endpoints can come and
//! go at runtime without a restart; a watcher always sees the latest set (sets
//! are snapshots, so a slow watcher skips intermediate ones and never sees a
//! half-applied change).
//!
//! [`StaticDiscovery`] serves the endpoints listed in config and can be
//! updated in place (a config reload does that).
//! [`registry::RegistryDiscovery`] follows a service [`registry`] instead:
//! instances register with a TTL lease and watchers see them come and go
//! within milliseconds, resuming by revision after a disconnect and serving
//! the last known set while the registry is unreachable.
//!
//! ```
//! use switchyard_discovery::{Discovery, Endpoint, StaticDiscovery};
//!
//! let discovery = StaticDiscovery::default();
//! discovery.set("catalog", vec![Endpoint::new("127.0.0.1:9001".parse().unwrap())]);
//! let rx = discovery.watch("catalog").unwrap();
//! assert_eq!(rx.borrow().len(), 1);
//!
//! discovery.set("catalog", vec![]);
//! assert!(rx.borrow().is_empty());
//! ```

//!
//! # The embedded registry
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use futures_util::StreamExt;
//! use switchyard_discovery::registry::{
//!     EmbeddedRegistry, Registration, Registry, RegistryError, WatchEventKind,
//! };
//!
//! // `Some(path)` persists it in a redb file; `None` keeps it in memory.
//! let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None)?);
//!
//! let mut users = Registration::new("users", "users-1", "127.0.0.1:9001".parse()?, "host-a");
//! users.ttl = Duration::from_secs(10);
//! users.metadata.insert("zone".into(), "eu-1".into());
//! let lease = registry.register(users).await?;
//!
//! // A watcher from revision 0 sees the registration, then later changes.
//! let mut watch = registry.watch("users", Some(0)).await?;
//! let event = watch.next().await.unwrap()?;
//! assert_eq!(event.revision, lease.revision);
//! assert!(matches!(event.kind, WatchEventKind::Put { .. }));
//!
//! // Renew within the TTL, or the instance expires on its own.
//! registry.renew(lease.id).await?;
//!
//! // Only the owner may remove it.
//! let err = registry.deregister("users", "users-1", "host-b").await.unwrap_err();
//! assert!(matches!(err, RegistryError::Conflict(_)));
//! assert_eq!(err.status(), 409);
//! registry.deregister("users", "users-1", "host-a").await?;
//! assert!(registry.list("users").await?.instances.is_empty());
//! # Ok(()) }
//! ```
//!
//! The same registry is served over HTTP by [`registry::http::router`] and
//! used from other processes through [`registry::RemoteRegistry`]; the API is
//! documented in `docs/registry.md`.

pub mod registry;

use std::{collections::BTreeMap, collections::HashMap, net::SocketAddr, sync::Arc};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Default weight of an endpoint.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where the instance listens.
    pub addr: SocketAddr,
    /// Relative share of traffic. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels (`version`, `zone`, ...) that routes can filter on.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Endpoint {
    /// An endpoint at `addr` with the default weight and no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: DEFAULT_WEIGHT,
            metadata: BTreeMap::new(),
        }
    }
}

/// A service's endpoints, as one snapshot.
pub type Endpoints = Arc<[Endpoint]>;

/// Why a service's endpoints can't be watched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// No source knows this service.
    #[error("unknown service {0:?}; define it under [services] or register an instance of it")]
    UnknownService(String),
    /// The service name can't be watched (it is malformed).
    #[error("invalid service: {0}")]
    InvalidService(String),
    /// The source can't start watching (for example, outside a Tokio runtime).
    #[error("discovery unavailable: {0}")]
    Unavailable(String),
}

/// Where endpoint sets come from.
pub trait Discovery: Send + Sync + 'static {
    /// The service's endpoint set now, and every later change to it.
    fn watch(&self, service: &str) -> Result<watch::Receiver<Endpoints>, DiscoveryError>;
}

/// Endpoints listed by hand (in config), changeable at runtime.
#[derive(Debug, Default, Clone)]
pub struct StaticDiscovery {
    services: Arc<Mutex<HashMap<String, watch::Sender<Endpoints>>>>,
}

impl StaticDiscovery {
    /// Sets `service`'s endpoints; every watcher sees the new set.
    pub fn set(&self, service: &str, endpoints: Vec<Endpoint>) {
        let endpoints: Endpoints = endpoints.into();
        let mut services = self.services.lock();
        match services.get(service) {
            Some(tx) => {
                tx.send_if_modified(|current| {
                    let changed = *current != endpoints;
                    *current = endpoints;
                    changed
                });
            }
            None => {
                services.insert(service.to_owned(), watch::Sender::new(endpoints));
            }
        }
    }

    /// Forgets `service`; watchers keep the last set they saw.
    pub fn remove(&self, service: &str) {
        self.services.lock().remove(service);
    }

    /// Names of the services this source knows.
    pub fn services(&self) -> Vec<String> {
        self.services.lock().keys().cloned().collect()
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self, service: &str) -> Result<watch::Receiver<Endpoints>, DiscoveryError> {
        self.services
            .lock()
            .get(service)
            .map(watch::Sender::subscribe)
            .ok_or_else(|| DiscoveryError::UnknownService(service.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test]
    async fn watchers_see_changes_and_unknown_services_are_errors() {
        let d = StaticDiscovery::default();
        assert_eq!(
            d.watch("x").unwrap_err().to_string(),
            "unknown service \"x\"; define it under [services] or register an instance of it"
        );
        d.set("x", vec![ep(1)]);
        let mut rx = d.watch("x").unwrap();
        assert_eq!(&rx.borrow_and_update()[..], &[ep(1)]);

        // Setting the same set again is not a change.
        d.set("x", vec![ep(1)]);
        assert!(!rx.has_changed().unwrap());

        d.set("x", vec![ep(1), ep(2)]);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().len(), 2);
    }

    #[test]
    fn endpoint_config_defaults_and_unknown_keys() {
        let e: Endpoint = toml::from_str("addr = \"127.0.0.1:80\"").unwrap();
        assert_eq!(e, ep(80));
        let err = toml::from_str::<Endpoint>("addr = \"127.0.0.1:80\"\nwieght = 2").unwrap_err();
        assert!(err.to_string().contains("unknown field `wieght`"), "{err}");
    }
}
