//! [`RegistryDiscovery`]: endpoint sets that follow a [`Registry`].
//!
//! For each watched service (and metadata filter) one background task lists
//! the service, then watches it from the listing's revision, applying each
//! change and publishing the resulting endpoint set on the watch channel.
//!
//! **When the registry goes away** (the connection breaks, a call fails),
//! the last known set stays published: the balancer keeps routing on it,
//! stale but serving. Once a reconnection attempt fails the service is
//! marked stale: the gauge `switchyard_registry_stale{service}` is set to 1
//! and one warning is logged (not one per attempt). Attempts continue with
//! exponential backoff, jittered, between the configured bounds. When the
//! registry answers again the task resumes the watch from the last revision
//! it applied, so it receives exactly the changes it missed (or a resync
//! snapshot if the registry no longer has them, for example after a restart);
//! the gauge goes back to 0 and an info line says so.
//!
//! A task stops when every receiver of its service's channel is gone, or when
//! the `RegistryDiscovery` is dropped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::{sync::watch, task::AbortHandle};

use super::{Instance, Registry, RegistryError, WatchEventKind, validate_service_name};
use crate::{Discovery, DiscoveryError, Endpoint, Endpoints};

/// The first retry delay after the registry fails.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest retry delay.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);
/// The gauge that is 1 while a service's endpoints are stale.
pub const STALE_GAUGE: &str = "switchyard_registry_stale";

/// A metadata filter: an instance matches when its metadata has every pair.
pub type Filter = BTreeMap<String, String>;

/// A [`Discovery`] source backed by a [`Registry`]. See the
/// [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_discovery::Discovery;
/// use switchyard_discovery::registry::{EmbeddedRegistry, Registration, Registry, RegistryDiscovery};
///
/// let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None)?);
/// let discovery = RegistryDiscovery::new(Arc::clone(&registry));
/// let mut users = discovery.watch("users")?;
///
/// registry.register(Registration::new("users", "u1", "127.0.0.1:9001".parse()?, "me")).await?;
/// while users.borrow_and_update().is_empty() {
///     users.changed().await?;
/// }
/// assert_eq!(users.borrow()[0].addr.port(), 9001);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RegistryDiscovery {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Arc<dyn Registry>,
    retry: (Duration, Duration),
    watches: Mutex<HashMap<(String, Filter), Watched>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("retry", &self.retry)
            .field("watches", &self.watches.lock().len())
            .finish_non_exhaustive()
    }
}

struct Watched {
    tx: watch::Sender<Endpoints>,
    stale: Arc<AtomicBool>,
    task: AbortHandle,
}

impl RegistryDiscovery {
    /// Endpoint sets from `registry`, retrying between
    /// [`DEFAULT_RETRY_MIN`] and [`DEFAULT_RETRY_MAX`].
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Self::with_retry(registry, DEFAULT_RETRY_MIN, DEFAULT_RETRY_MAX)
    }

    /// Endpoint sets from `registry`, retrying after `min`, doubling up to
    /// `max` (each delay jittered down by up to half).
    pub fn with_retry(registry: Arc<dyn Registry>, min: Duration, max: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry,
                retry: (min, max.max(min)),
                watches: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The endpoints of `service`'s instances whose metadata contains every
    /// pair of `filter` (all instances for an empty filter).
    ///
    /// The receiver starts with an empty set and is marked changed when the
    /// first listing arrives (even if it is empty). Must be called inside a
    /// Tokio runtime.
    pub fn watch_filtered(
        &self,
        service: &str,
        filter: Filter,
    ) -> Result<watch::Receiver<Endpoints>, DiscoveryError> {
        validate_service_name(service)
            .map_err(|e| DiscoveryError::InvalidService(e.detail().to_owned()))?;
        let mut watches = self.shared.watches.lock();
        let key = (service.to_owned(), filter);
        if let Some(watched) = watches.get(&key) {
            return Ok(watched.tx.subscribe());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            DiscoveryError::Unavailable("registry discovery needs a Tokio runtime".into())
        })?;
        let tx = watch::Sender::new(Endpoints::from(Vec::new()));
        let rx = tx.subscribe();
        let stale = Arc::new(AtomicBool::new(false));
        let follower = Follower {
            registry: Arc::clone(&self.shared.registry),
            shared: Arc::downgrade(&self.shared),
            key: key.clone(),
            tx: tx.clone(),
            stale: Arc::clone(&stale),
            retry: self.shared.retry,
        };
        let task = runtime.spawn(follower.run()).abort_handle();
        watches.insert(key, Watched { tx, stale, task });
        Ok(rx)
    }

    /// Whether any watch of `service` is serving a stale set (its last
    /// attempt to reach the registry failed).
    pub fn is_stale(&self, service: &str) -> bool {
        self.shared
            .watches
            .lock()
            .iter()
            .any(|((s, _), w)| s == service && w.stale.load(Ordering::Relaxed))
    }
}

impl Discovery for RegistryDiscovery {
    fn watch(&self, service: &str) -> Result<watch::Receiver<Endpoints>, DiscoveryError> {
        self.watch_filtered(service, Filter::new())
    }
}

impl Drop for RegistryDiscovery {
    fn drop(&mut self) {
        for watched in self.shared.watches.lock().values() {
            watched.task.abort();
        }
    }
}

// === the follower task ===

struct Follower {
    registry: Arc<dyn Registry>,
    shared: Weak<Shared>,
    key: (String, Filter),
    tx: watch::Sender<Endpoints>,
    stale: Arc<AtomicBool>,
    retry: (Duration, Duration),
}

/// What a follower knows of its service.
#[derive(Default)]
struct Known {
    instances: BTreeMap<String, Instance>,
    /// The revision of the last listing or event applied.
    revision: Option<u64>,
    published: bool,
}

impl Follower {
    async fn run(self) {
        let service = self.key.0.clone();
        let mut known = Known::default();
        let mut failures: u32 = 0;
        loop {
            let outcome = tokio::select! {
                outcome = self.session(&mut known, &mut failures) => outcome,
                () = self.tx.closed() => {
                    if self.unused() {
                        return;
                    }
                    continue;
                }
            };
            if let Err(error) = outcome
                && !self.stale.swap(true, Ordering::Relaxed)
            {
                metrics::gauge!(STALE_GAUGE, "service" => service.clone()).set(1.0);
                tracing::warn!(
                    %service,
                    %error,
                    revision = known.revision,
                    endpoints = self.tx.borrow().len(),
                    "registry unreachable; routing on the last known endpoints (stale) until it returns"
                );
            }
            failures = failures.saturating_add(1);
            let delay = self.delay(failures);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.tx.closed() => {
                    if self.unused() {
                        return;
                    }
                }
            }
        }
    }

    /// Lists (first time only), then follows the watch until it ends.
    async fn session(&self, known: &mut Known, failures: &mut u32) -> Result<(), RegistryError> {
        let service = &self.key.0;
        if known.revision.is_none() {
            let listing = self.registry.list(service).await?;
            known.instances = listing
                .instances
                .into_iter()
                .map(|i| (i.id.clone(), i))
                .collect();
            known.revision = Some(listing.revision);
            self.publish(known);
        }
        let mut events = self.registry.watch(service, known.revision).await?;
        *failures = 0;
        if self.stale.swap(false, Ordering::Relaxed) {
            tracing::info!(
                %service,
                revision = known.revision,
                "registry reachable again; catching up from the last revision"
            );
        }
        metrics::gauge!(STALE_GAUGE, "service" => service.clone()).set(0.0);
        while let Some(event) = events.next().await {
            let event = event?;
            match event.kind {
                WatchEventKind::Put { instance } => {
                    known.instances.insert(instance.id.clone(), instance);
                }
                WatchEventKind::Delete { instance_id } => {
                    known.instances.remove(&instance_id);
                }
                WatchEventKind::Resync { instances } => {
                    known.instances = instances.into_iter().map(|i| (i.id.clone(), i)).collect();
                }
            }
            known.revision = Some(event.revision);
            self.publish(known);
        }
        Ok(())
    }

    fn publish(&self, known: &mut Known) {
        let filter = &self.key.1;
        let endpoints: Endpoints = known
            .instances
            .values()
            .filter(|i| filter.iter().all(|(k, v)| i.metadata.get(k) == Some(v)))
            .map(Endpoint::from)
            .collect::<Vec<_>>()
            .into();
        let first = !known.published;
        known.published = true;
        self.tx.send_if_modified(|current| {
            if first || *current != endpoints {
                *current = endpoints;
                true
            } else {
                false
            }
        });
    }

    /// Exponential backoff, jittered down by up to half so many followers
    /// don't reconnect in step.
    fn delay(&self, failures: u32) -> Duration {
        let (min, max) = self.retry;
        let exp = min.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let full = exp.min(max);
        let jitter = rand::rng().random_range(0.5..=1.0);
        full.mul_f64(jitter)
    }

    /// Forgets this watch if nobody receives it any more; true if forgotten.
    fn unused(&self) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return true;
        };
        let mut watches = shared.watches.lock();
        if self.tx.receiver_count() == 0 {
            watches.remove(&self.key);
            true
        } else {
            false
        }
    }
}
