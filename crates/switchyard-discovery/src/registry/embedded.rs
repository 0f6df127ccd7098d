//! The embedded registry: state in this process, optionally persisted on disk.
//!
//! - **Revisions.** One counter for the whole registry, increased by every put
//!   and delete. The last [`HISTORY`] changes are kept in memory so a watcher
//!   can resume from a revision; older ones are compacted away and a watcher
//!   asking for them gets a resync snapshot (see [the trait docs](super)).
//! - **Leases.** An instance whose lease is not renewed within its TTL is
//!   deleted by a background sweeper task, which sleeps on
//!   [`tokio::time`] until the earliest lease deadline (so paused-clock tests
//!   drive it). Reads check lazily too: an expired instance is never listed or
//!   renewed, even before the sweeper has run.
//! - **Writes** are serialized by one async lock. With a store, each change is
//!   committed to disk (redb, fsync'd) before it is applied in memory and
//!   published, on a blocking thread that also applies it, so a caller that
//!   gives up half-way can't leave memory and disk disagreeing. A failed
//!   commit changes nothing and returns [`RegistryError::Unavailable`].
//!   Lease renewals are not written: they change no revision.
//! - **Restart.** [`EmbeddedRegistry::open`] with a path loads the instances,
//!   the revision and the lease counter. Lease deadlines are not stored (they
//!   would all be in the past after a long stop): **every loaded instance gets
//!   one fresh TTL to renew**, from the moment the registry opens, and is then
//!   expired like any other. Lease ids survive, so renewals keep working
//!   across the restart. The history starts empty: watchers resuming from a
//!   revision before the restart get a resync snapshot.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::Path,
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Notify, OwnedMutexGuard, broadcast},
    task::AbortHandle,
    time::Instant,
};

use super::{
    BoxFuture, Instance, Lease, LeaseId, Listing, Registration, Registry, RegistryError,
    WatchEvent, WatchEventKind, WatchStream, validate_instance_id, validate_owner,
    validate_service_name,
};

/// How many changes the registry remembers for watchers resuming from a
/// revision.
pub const HISTORY: usize = 10_000;

/// How many changes a watcher may fall behind the live feed before it
/// catches up from the history instead (it still misses nothing).
const FEED_CAPACITY: usize = 4096;

/// The in-process registry. Cheap to share behind an `Arc<dyn Registry>`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard_discovery::registry::{EmbeddedRegistry, Registration, Registry};
///
/// let registry = EmbeddedRegistry::open(None)?;
/// let lease = registry
///     .register(Registration::new("users", "u1", "127.0.0.1:9001".parse()?, "host-a"))
///     .await?;
/// assert_eq!(lease.revision, 1);
/// assert_eq!(registry.list("users").await?.instances.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EmbeddedRegistry {
    inner: Arc<Inner>,
    sweeper: AbortHandle,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Serializes writers; owned so a commit on a blocking thread can hold it.
    writer: Arc<tokio::sync::Mutex<()>>,
    store: Option<Store>,
    feed: broadcast::Sender<Arc<Change>>,
    /// Wakes the sweeper when a lease with an earlier deadline appears.
    sweep: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    /// The history holds every change with a revision above this.
    compacted: u64,
    next_lease: LeaseId,
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    leases: HashMap<LeaseId, (String, String)>,
    history: VecDeque<Arc<Change>>,
}

#[derive(Debug, Clone)]
struct Entry {
    instance: Instance,
    ttl: Duration,
    deadline: Instant,
}

/// One change as published to watchers.
#[derive(Debug)]
struct Change {
    revision: u64,
    service: String,
    kind: WatchEventKind,
}

/// What one write does.
#[derive(Debug)]
struct Mutation {
    service: String,
    id: String,
    write: Write,
    /// Whether it is a change watchers see (a new revision), or only a
    /// lease refresh (and maybe a new TTL to store).
    event: bool,
    /// Whether it must be committed to the store.
    persist: bool,
}

#[derive(Debug)]
enum Write {
    Put(Record),
    Delete,
}

/// An instance as stored: what it is and its lease's TTL.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    instance: Instance,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

// === impl EmbeddedRegistry ===

impl EmbeddedRegistry {
    /// Opens the registry: in memory only with `None`, or persisted in the
    /// redb file at `path` (created if missing), loading what it holds.
    ///
    /// Must be called inside a Tokio runtime (it starts the lease sweeper).
    /// Fails with [`RegistryError::Unavailable`] when the file can't be
    /// opened (another process holds it, it is corrupt, no permission).
    pub fn open(path: Option<&Path>) -> Result<Self, RegistryError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RegistryError::Unavailable(
                "the embedded registry must be opened inside a Tokio runtime".into(),
            )
        })?;
        let mut state = State {
            next_lease: 1,
            ..State::default()
        };
        let store = match path {
            Some(path) => {
                let (store, loaded) = Store::open(path)?;
                let now = Instant::now();
                state.revision = loaded.revision;
                state.compacted = loaded.revision;
                state.next_lease = loaded.next_lease.max(1);
                for record in loaded.records {
                    let instance = record.instance;
                    state.next_lease = state.next_lease.max(instance.lease + 1);
                    state.leases.insert(
                        instance.lease,
                        (instance.service.clone(), instance.id.clone()),
                    );
                    state
                        .services
                        .entry(instance.service.clone())
                        .or_default()
                        .insert(
                            instance.id.clone(),
                            Entry {
                                instance,
                                ttl: record.ttl,
                                deadline: now + record.ttl,
                            },
                        );
                }
                tracing::info!(
                    path = %path.display(),
                    revision = state.revision,
                    instances = state.leases.len(),
                    "registry loaded; every instance has one ttl to renew"
                );
                Some(store)
            }
            None => None,
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            store,
            feed: broadcast::channel(FEED_CAPACITY).0,
            sweep: Arc::new(Notify::new()),
        });
        let sweeper = runtime
            .spawn(sweep(Arc::downgrade(&inner), Arc::clone(&inner.sweep)))
            .abort_handle();
        Ok(Self { inner, sweeper })
    }

    /// The registry's current revision.
    pub fn revision(&self) -> u64 {
        self.inner.state.lock().revision
    }
}

impl Drop for EmbeddedRegistry {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl Registry for EmbeddedRegistry {
    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<Lease, RegistryError>> {
        Box::pin(self.inner.register(registration))
    }

    fn renew(&self, lease: LeaseId) -> BoxFuture<'_, Result<Lease, RegistryError>> {
        let result = self.inner.renew(lease);
        Box::pin(async move { result })
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(self.inner.deregister(service, instance_id, owner))
    }

    fn list<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Listing, RegistryError>> {
        let result = validate_service_name(service).map(|()| self.inner.list(service));
        Box::pin(async move { result })
    }

    fn list_services(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        let result = Ok(self.inner.list_services());
        Box::pin(async move { result })
    }

    fn watch<'a>(
        &'a self,
        service: &'a str,
        from: Option<u64>,
    ) -> BoxFuture<'a, Result<WatchStream, RegistryError>> {
        let result =
            validate_service_name(service).map(|()| watch_stream(&self.inner, service, from));
        Box::pin(async move { result })
    }
}

// === impl Inner ===

impl Inner {
    async fn register(self: &Arc<Self>, r: Registration) -> Result<Lease, RegistryError> {
        r.validate()?;
        let guard = Arc::clone(&self.writer).lock_owned().await;
        let mutation = {
            let state = self.state.lock();
            let now = Instant::now();
            let existing = state
                .services
                .get(&r.service)
                .and_then(|s| s.get(&r.instance_id))
                .filter(|e| e.deadline > now);
            let (lease, changed, ttl_changed) = match existing {
                Some(e) if e.instance.owner != r.owner => {
                    return Err(RegistryError::Conflict(format!(
                        "instance {:?} of service {:?} is registered by owner {:?}; \
                         pick another instance id or deregister it as that owner",
                        r.instance_id, r.service, e.instance.owner
                    )));
                }
                Some(e) => (
                    e.instance.lease,
                    e.instance.addr != r.addr
                        || e.instance.weight != r.weight
                        || e.instance.metadata != r.metadata,
                    e.ttl != r.ttl,
                ),
                None => (state.next_lease, true, true),
            };
            Mutation {
                service: r.service.clone(),
                id: r.instance_id.clone(),
                write: Write::Put(Record {
                    instance: Instance {
                        service: r.service,
                        id: r.instance_id,
                        addr: r.addr,
                        weight: r.weight,
                        metadata: r.metadata,
                        owner: r.owner,
                        lease,
                    },
                    ttl: r.ttl,
                }),
                event: changed,
                persist: changed || ttl_changed,
            }
        };
        let lease = match &mutation.write {
            Write::Put(record) => record.instance.lease,
            Write::Delete => 0,
        };
        let revision = self.commit(guard, mutation).await?;
        Ok(Lease {
            id: lease,
            ttl: r.ttl,
            revision,
        })
    }

    fn renew(&self, lease: LeaseId) -> Result<Lease, RegistryError> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let revision = state.revision;
        let State {
            leases, services, ..
        } = &mut *state;
        let entry = leases
            .get(&lease)
            .and_then(|(service, id)| services.get_mut(service)?.get_mut(id))
            .filter(|e| e.deadline > now)
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "lease {lease} is unknown or expired; register the instance again"
                ))
            })?;
        entry.deadline = now + entry.ttl;
        Ok(Lease {
            id: lease,
            ttl: entry.ttl,
            revision,
        })
    }

    async fn deregister(
        self: &Arc<Self>,
        service: &str,
        id: &str,
        owner: &str,
    ) -> Result<(), RegistryError> {
        validate_service_name(service)?;
        validate_instance_id(id)?;
        validate_owner(owner)?;
        let guard = Arc::clone(&self.writer).lock_owned().await;
        {
            let state = self.state.lock();
            let entry = state
                .services
                .get(service)
                .and_then(|s| s.get(id))
                .filter(|e| e.deadline > Instant::now())
                .ok_or_else(|| {
                    RegistryError::NotFound(format!("service {service:?} has no instance {id:?}"))
                })?;
            if entry.instance.owner != owner {
                return Err(RegistryError::Conflict(format!(
                    "instance {id:?} of service {service:?} is registered by owner {:?}, not {owner:?}",
                    entry.instance.owner
                )));
            }
        }
        self.commit(guard, Mutation::delete(service, id)).await?;
        Ok(())
    }

    fn list(&self, service: &str) -> Listing {
        let state = self.state.lock();
        Listing {
            instances: state.live(service, Instant::now()),
            revision: state.revision,
        }
    }

    fn list_services(&self) -> Vec<String> {
        let state = self.state.lock();
        let now = Instant::now();
        state
            .services
            .iter()
            .filter(|(_, entries)| entries.values().any(|e| e.deadline > now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Writes `m` to the store (if any, and if it needs it), then applies it
    /// in memory; returns the registry's revision after it.
    async fn commit(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
        m: Mutation,
    ) -> Result<u64, RegistryError> {
        if self.store.is_none() || !m.persist {
            let revision = self.apply(m);
            drop(guard);
            return Ok(revision);
        }
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let (revision, next_lease) = {
                let state = inner.state.lock();
                let lease = match &m.write {
                    Write::Put(r) => r.instance.lease,
                    Write::Delete => 0,
                };
                (
                    state.revision + u64::from(m.event),
                    state.next_lease.max(lease + 1),
                )
            };
            if let Some(store) = &inner.store {
                store.write(&m, revision, next_lease)?;
            }
            Ok(inner.apply(m))
        })
        .await
        .map_err(|e| RegistryError::Unavailable(format!("registry store task failed: {e}")))?
    }

    /// Applies `m` in memory and publishes it; returns the new revision.
    fn apply(&self, m: Mutation) -> u64 {
        let mut state = self.state.lock();
        let now = Instant::now();
        if m.event {
            state.revision += 1;
        }
        let revision = state.revision;
        let kind = match m.write {
            Write::Put(record) => {
                let lease = record.instance.lease;
                state.next_lease = state.next_lease.max(lease + 1);
                let entry = Entry {
                    instance: record.instance,
                    ttl: record.ttl,
                    deadline: now + record.ttl,
                };
                let kind = m.event.then(|| WatchEventKind::Put {
                    instance: entry.instance.clone(),
                });
                let previous = state
                    .services
                    .entry(m.service.clone())
                    .or_default()
                    .insert(m.id.clone(), entry);
                if let Some(previous) = previous.filter(|p| p.instance.lease != lease) {
                    state.leases.remove(&previous.instance.lease);
                }
                state
                    .leases
                    .insert(lease, (m.service.clone(), m.id.clone()));
                // A new lease may expire before the one the sweeper sleeps on.
                self.sweep.notify_one();
                kind
            }
            Write::Delete => {
                let service_entries = state.services.get_mut(&m.service);
                let removed = service_entries.and_then(|s| s.remove(&m.id));
                if state
                    .services
                    .get(&m.service)
                    .is_some_and(BTreeMap::is_empty)
                {
                    state.services.remove(&m.service);
                }
                if let Some(removed) = removed {
                    state.leases.remove(&removed.instance.lease);
                }
                m.event.then(|| WatchEventKind::Delete {
                    instance_id: m.id.clone(),
                })
            }
        };
        if let Some(kind) = kind {
            let change = Arc::new(Change {
                revision,
                service: m.service,
                kind,
            });
            state.history.push_back(Arc::clone(&change));
            if state.history.len() > HISTORY
                && let Some(old) = state.history.pop_front()
            {
                state.compacted = old.revision;
            }
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(change);
        }
        revision
    }

    /// Subscribes to the feed and collects what a watcher from `from` must
    /// see first, atomically (changes are published under the same lock).
    fn subscribe(
        &self,
        service: &str,
        from: Option<u64>,
    ) -> (broadcast::Receiver<Arc<Change>>, VecDeque<WatchEvent>, u64) {
        let state = self.state.lock();
        let feed = self.feed.subscribe();
        let backlog = match from {
            Some(from) if from >= state.compacted && from <= state.revision => state
                .history
                .iter()
                .filter(|c| c.revision > from && c.service == service)
                .map(|c| c.event())
                .collect(),
            _ => VecDeque::from([WatchEvent {
                revision: state.revision,
                kind: WatchEventKind::Resync {
                    instances: state.live(service, Instant::now()),
                },
            }]),
        };
        (feed, backlog, state.revision)
    }

    /// The expired leases' `(service, id, lease)` and the next deadline.
    fn due(&self, now: Instant) -> (Vec<(String, String, LeaseId)>, Option<Instant>) {
        let state = self.state.lock();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for entries in state.services.values() {
            for e in entries.values() {
                if e.deadline <= now {
                    due.push((
                        e.instance.service.clone(),
                        e.instance.id.clone(),
                        e.instance.lease,
                    ));
                } else {
                    next = Some(next.map_or(e.deadline, |n| n.min(e.deadline)));
                }
            }
        }
        (due, next)
    }

    async fn expire(self: &Arc<Self>, service: String, id: String, lease: LeaseId) {
        let guard = Arc::clone(&self.writer).lock_owned().await;
        let still_expired = self
            .state
            .lock()
            .services
            .get(&service)
            .and_then(|s| s.get(&id))
            .is_some_and(|e| e.instance.lease == lease && e.deadline <= Instant::now());
        if !still_expired {
            return;
        }
        match self.commit(guard, Mutation::delete(&service, &id)).await {
            Ok(revision) => {
                tracing::info!(%service, instance = %id, lease, revision, "lease expired; instance deregistered");
            }
            Err(error) => {
                tracing::warn!(%service, instance = %id, %error, "could not delete an expired instance; retrying");
            }
        }
    }
}

impl State {
    fn live(&self, service: &str, now: Instant) -> Vec<Instance> {
        self.services
            .get(service)
            .map(|entries| {
                entries
                    .values()
                    .filter(|e| e.deadline > now)
                    .map(|e| e.instance.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Mutation {
    fn delete(service: &str, id: &str) -> Self {
        Self {
            service: service.to_owned(),
            id: id.to_owned(),
            write: Write::Delete,
            event: true,
            persist: true,
        }
    }
}

impl Change {
    fn event(&self) -> WatchEvent {
        WatchEvent {
            revision: self.revision,
            kind: self.kind.clone(),
        }
    }
}

/// Deletes instances whose lease expired, sleeping until the next deadline.
///
/// Holds the registry only while it works, so dropping the registry closes
/// its store at once.
async fn sweep(inner: Weak<Inner>, wake: Arc<Notify>) {
    /// A delete the store refused is retried after this long.
    const RETRY: Duration = Duration::from_secs(1);
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let (due, _) = inner.due(Instant::now());
            for (service, id, lease) in due {
                inner.expire(service, id, lease).await;
            }
            let now = Instant::now();
            let (still_due, next) = inner.due(now);
            // Only a store failure leaves expired entries behind.
            if still_due.is_empty() {
                next
            } else {
                Some(now + RETRY)
            }
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

// === the watch stream ===

struct WatchState {
    inner: Weak<Inner>,
    service: String,
    feed: broadcast::Receiver<Arc<Change>>,
    backlog: VecDeque<WatchEvent>,
    /// The last revision of the whole registry this watcher has passed
    /// (changes to other services included): anything at or below it is done.
    position: u64,
}

fn watch_stream(inner: &Arc<Inner>, service: &str, from: Option<u64>) -> WatchStream {
    let (feed, backlog, position) = inner.subscribe(service, from);
    let state = WatchState {
        inner: Arc::downgrade(inner),
        service: service.to_owned(),
        feed,
        backlog,
        position,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.backlog.pop_front() {
                return Some((Ok(event), st));
            }
            match st.feed.recv().await {
                Ok(change) => {
                    if change.revision <= st.position {
                        continue;
                    }
                    st.position = change.revision;
                    if change.service == st.service {
                        return Some((Ok(change.event()), st));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live feed: catch up from the history
                    // (or a snapshot), which misses nothing.
                    let inner = st.inner.upgrade()?;
                    let (feed, backlog, position) = inner.subscribe(&st.service, Some(st.position));
                    st.feed = feed;
                    st.backlog = backlog;
                    st.position = position;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

// === the store ===

const INSTANCES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("instances");
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
const REVISION: &str = "revision";
const NEXT_LEASE: &str = "next_lease";

struct Store {
    db: redb::Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

struct Loaded {
    revision: u64,
    next_lease: LeaseId,
    records: Vec<Record>,
}

fn store_error(what: &str) -> impl Fn(redb::Error) -> RegistryError + '_ {
    move |e| RegistryError::Unavailable(format!("registry store: {what}: {e}"))
}

/// Service names and instance ids never contain a NUL, so it separates them.
fn key(service: &str, id: &str) -> String {
    format!("{service}\0{id}")
}

impl Store {
    fn open(path: &Path) -> Result<(Self, Loaded), RegistryError> {
        let open = |path: &Path| -> Result<(Self, Loaded), redb::Error> {
            let db = redb::Database::create(path)?;
            let txn = db.begin_write()?;
            let loaded = {
                let instances = txn.open_table(INSTANCES)?;
                let meta = txn.open_table(META)?;
                use redb::ReadableTable;
                let revision = meta.get(REVISION)?.map_or(0, |v| v.value());
                let next_lease = meta.get(NEXT_LEASE)?.map_or(1, |v| v.value());
                let mut records = Vec::new();
                for item in instances.iter()? {
                    let (k, v) = item?;
                    match serde_json::from_slice::<Record>(v.value()) {
                        Ok(record) => records.push(record),
                        Err(e) => {
                            tracing::warn!(key = k.value(), error = %e, "skipping an unreadable registry record")
                        }
                    }
                }
                Loaded {
                    revision,
                    next_lease,
                    records,
                }
            };
            txn.commit()?;
            Ok((Self { db }, loaded))
        };
        open(path).map_err(|e| {
            RegistryError::Unavailable(format!("registry store {}: {e}", path.display()))
        })
    }

    fn write(&self, m: &Mutation, revision: u64, next_lease: LeaseId) -> Result<(), RegistryError> {
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut instances = txn.open_table(INSTANCES)?;
                let key = key(&m.service, &m.id);
                match &m.write {
                    Write::Put(record) => {
                        let bytes = serde_json::to_vec(record)
                            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                        instances.insert(key.as_str(), bytes.as_slice())?;
                    }
                    Write::Delete => {
                        instances.remove(key.as_str())?;
                    }
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(REVISION, revision)?;
                meta.insert(NEXT_LEASE, next_lease)?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(store_error("commit"))
    }
}

#[cfg(test)]
mod tests;
