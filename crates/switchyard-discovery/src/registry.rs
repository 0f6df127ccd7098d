//! The service registry: instances register under a service name with a TTL
//! lease, renew it, deregister, and watchers follow each service as a stream
//! of changes ordered by a revision.
//!
//! # Model
//!
//! - An **instance** is `(service, instance id)` with an address, a weight,
//!   metadata (`version`, `zone`, ...) and an **owner** (whoever registered
//!   it: a sidecar's name, a host name). Only its owner may change or remove it;
//!   anyone else gets [`RegistryError::Conflict`].
//! - Every instance has a **lease** with a TTL between [`MIN_TTL`] and
//!   [`MAX_TTL`]. A lease that is not renewed within its TTL expires and the
//!   instance is deleted, so a crashed service leaves no stale registration.
//!   Registering the same instance again with the same owner renews its lease
//!   (and updates address, weight and metadata if they changed).
//! - The registry has one **revision** counter, increased by every change
//!   (a put or a delete, in any service). Renewing a lease is not a change.
//!
//! # Watch guarantee
//!
//! [`Registry::watch`] with `from = Some(r)` yields exactly the changes to the
//! service with a revision greater than `r`, in revision order, each once.
//! A watcher that remembers the revision of the last event it applied and
//! reconnects with it therefore neither misses nor duplicates a change.
//! When the changes after `r` are no longer known (the backend keeps a
//! bounded history, [`embedded::HISTORY`] changes for the embedded one, and a
//! restarted backend starts with an empty history), or `r` is ahead of the
//! registry, the stream starts with a [`WatchEventKind::Resync`] event: the
//! service's complete instance set at that event's revision, which replaces
//! whatever the watcher had; changes after it follow as usual. `from = None`
//! starts with such a snapshot too.
//!
//! # Backends
//!
//! - [`EmbeddedRegistry`]: in-process, optionally persisted on disk (redb).
//! - [`RemoteRegistry`]: a client of another process's registry over the
//!   HTTP API that [`http::router`] serves (see `docs/registry.md`).
//!
//! [`RegistryDiscovery`] turns any registry into a [`crate::Discovery`] source.
//!
//! # Why boxed futures
//!
//! The gateway holds its registry as `Arc<dyn Registry>` and picks the backend
//! from config at run time, so the trait must be object-safe. `async fn` in
//! traits is not (and cannot state the `Send` bound callers need), so every
//! method returns a [`BoxFuture`]. The allocation is one per registry call,
//! which happens per registration or watch, never per proxied request.

use std::{collections::BTreeMap, fmt, future::Future, net::SocketAddr, pin::Pin, time::Duration};

use futures_core::Stream;
use serde::{Deserialize, Serialize};

pub mod discovery;
pub mod embedded;
pub mod http;
pub mod remote;

pub use discovery::RegistryDiscovery;
pub use embedded::EmbeddedRegistry;
pub use remote::RemoteRegistry;

/// The shortest lease TTL a registration may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest lease TTL a registration may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The TTL used over HTTP when a registration names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The largest weight an instance may have.
pub const MAX_WEIGHT: u32 = 10_000;
/// The longest service name, instance id, owner or metadata key, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 256;
/// The most metadata entries an instance may carry.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// A boxed, `Send` future, the return type of every [`Registry`] method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The stream of changes [`Registry::watch`] returns. It ends (or yields an
/// error) when the backend goes away; the watcher then reconnects with the
/// revision of the last event it applied.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, RegistryError>> + Send>>;

/// A lease's identifier, unique within one registry (and kept across its
/// restarts).
pub type LeaseId = u64;

/// What an instance asks to be registered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The service it is an instance of.
    pub service: String,
    /// Its id, unique within the service (for example `host:port`).
    pub instance_id: String,
    /// Where it listens. Must not be an unspecified address or port 0.
    pub addr: SocketAddr,
    /// Free-form labels (`version`, `zone`, ...) routes can filter on.
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// How long the lease lives without a renewal, [`MIN_TTL`] to [`MAX_TTL`].
    pub ttl: Duration,
    /// Who registers it; only the same owner may change or remove it.
    pub owner: String,
}

/// A granted (or renewed) lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Renew with this id.
    pub id: LeaseId,
    /// Renew before this much time has passed.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The registry's revision after the registration (or at the renewal).
    pub revision: u64,
}

/// A registered instance, as listed and watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service it is an instance of.
    pub service: String,
    /// Its id within the service.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic.
    pub weight: u32,
    /// Its labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Who registered it.
    pub owner: String,
    /// The lease keeping it registered.
    pub lease: LeaseId,
}

/// A service's instances at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The instances, ordered by id.
    pub instances: Vec<Instance>,
    /// The registry's revision the listing reflects; watch from it to follow.
    pub revision: u64,
}

/// One change to a watched service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The registry's revision after this change.
    pub revision: u64,
    /// What changed.
    #[serde(flatten)]
    pub kind: WatchEventKind,
}

/// What a [`WatchEvent`] says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEventKind {
    /// An instance was registered or changed.
    Put {
        /// The instance as it now is.
        instance: Instance,
    },
    /// An instance was deregistered or its lease expired.
    Delete {
        /// The instance's id.
        instance_id: String,
    },
    /// The service's complete instance set at the event's revision; replaces
    /// everything the watcher knew. Sent first when the watch starts without
    /// a revision or from one the registry no longer has history for.
    Resync {
        /// Every instance of the service, ordered by id.
        instances: Vec<Instance>,
    },
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registration (or request) is malformed; nothing changed.
    #[error("invalid registration: {0}")]
    InvalidRegistration(String),
    /// The instance belongs to another owner; nothing changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No such instance or lease (it may have expired).
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend can't be reached or its store failed; retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

impl RegistryError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> ::http::StatusCode {
        use ::http::StatusCode;
        match self {
            Self::InvalidRegistration(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable kind naming the cause: the last segment of the problem
    /// `type` (`https://switchyard.dev/problems/<kind>`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRegistration(_) => "invalid-registration",
            Self::Conflict(_) => "registration-conflict",
            Self::NotFound(_) => "registry-not-found",
            Self::Unavailable(_) => "registry-unavailable",
        }
    }

    /// The error of kind `kind` (as [`RegistryError::kind`] names it) with
    /// `detail`; `None` for a kind this version does not know.
    pub fn from_kind(kind: &str, detail: String) -> Option<Self> {
        Some(match kind {
            "invalid-registration" => Self::InvalidRegistration(detail),
            "registration-conflict" => Self::Conflict(detail),
            "registry-not-found" => Self::NotFound(detail),
            "registry-unavailable" => Self::Unavailable(detail),
            _ => return None,
        })
    }

    /// The message without the kind prefix.
    pub fn detail(&self) -> &str {
        match self {
            Self::InvalidRegistration(m)
            | Self::Conflict(m)
            | Self::NotFound(m)
            | Self::Unavailable(m) => m,
        }
    }
}

/// Where instances register and watchers follow them.
///
/// Implementations: [`EmbeddedRegistry`], [`RemoteRegistry`]. See the
/// [module docs](self) for the model and the watch guarantee.
pub trait Registry: Send + Sync + 'static {
    /// Registers (or re-registers, renewing its lease) an instance.
    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<Lease, RegistryError>>;

    /// Extends a lease by its TTL from now.
    fn renew(&self, lease: LeaseId) -> BoxFuture<'_, Result<Lease, RegistryError>>;

    /// Removes an instance; `owner` must be the one that registered it.
    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), RegistryError>>;

    /// The service's instances now (empty for a service nobody registered).
    fn list<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Listing, RegistryError>>;

    /// The names of the services with at least one instance, sorted.
    fn list_services(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>>;

    /// The service's changes after `from` (or a snapshot first: see the
    /// [module docs](self)).
    fn watch<'a>(
        &'a self,
        service: &'a str,
        from: Option<u64>,
    ) -> BoxFuture<'a, Result<WatchStream, RegistryError>>;
}

// === validation ===

/// Checks a service name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn validate_service_name(service: &str) -> Result<(), RegistryError> {
    validate_name("service name", service, &['-', '_', '.'])
}

fn validate_name(what: &str, value: &str, extra: &[char]) -> Result<(), RegistryError> {
    let invalid = |why: &str| {
        Err(RegistryError::InvalidRegistration(format!(
            "{what} {value:?} {why}"
        )))
    };
    if value.is_empty() {
        return Err(RegistryError::InvalidRegistration(format!(
            "{what} is empty; give a non-empty name"
        )));
    }
    if value.len() > MAX_NAME_LEN {
        return invalid(&format!("is longer than {MAX_NAME_LEN} bytes"));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("must start with a letter or a digit");
    }
    if let Some(c) = value
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(c))
    {
        let allowed: String = extra.iter().map(|c| format!(" {c:?}")).collect();
        return invalid(&format!(
            "contains {c:?}; use ASCII letters, digits and{allowed}"
        ));
    }
    Ok(())
}

/// Checks a lease TTL against [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<(), RegistryError> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(RegistryError::InvalidRegistration(format!(
            "ttl {} is outside {} to {}; renew more often with a shorter ttl",
            humantime::format_duration(ttl),
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(MAX_TTL),
        )));
    }
    Ok(())
}

/// Checks an owner: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits,
/// `-`, `_`, `.`, `:` and `@`.
pub fn validate_owner(owner: &str) -> Result<(), RegistryError> {
    validate_name("owner", owner, &['-', '_', '.', ':', '@'])
}

/// Checks an instance id: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters,
/// digits, `-`, `_`, `.` and `:`.
pub fn validate_instance_id(id: &str) -> Result<(), RegistryError> {
    validate_name("instance id", id, &['-', '_', '.', ':'])
}

impl Registration {
    /// A registration with weight 1, no metadata and [`DEFAULT_TTL`].
    pub fn new(
        service: impl Into<String>,
        instance_id: impl Into<String>,
        addr: SocketAddr,
        owner: impl Into<String>,
    ) -> Self {
        Self {
            service: service.into(),
            instance_id: instance_id.into(),
            addr,
            metadata: BTreeMap::new(),
            weight: crate::DEFAULT_WEIGHT,
            ttl: DEFAULT_TTL,
            owner: owner.into(),
        }
    }

    /// Checks every field; the error says which one is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), RegistryError> {
        validate_service_name(&self.service)?;
        validate_instance_id(&self.instance_id)?;
        validate_owner(&self.owner)?;
        validate_ttl(self.ttl)?;
        if self.addr.ip().is_unspecified() || self.addr.port() == 0 {
            return Err(RegistryError::InvalidRegistration(format!(
                "addr {} is not reachable; give the instance's real IP and port",
                self.addr
            )));
        }
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(RegistryError::InvalidRegistration(format!(
                "weight {} is outside 1 to {MAX_WEIGHT}",
                self.weight
            )));
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(RegistryError::InvalidRegistration(format!(
                "{} metadata entries; at most {MAX_METADATA_ENTRIES} are allowed",
                self.metadata.len()
            )));
        }
        for (key, value) in &self.metadata {
            validate_name("metadata key", key, &['-', '_', '.', '/'])?;
            if value.len() > MAX_METADATA_VALUE_LEN || value.chars().any(char::is_control) {
                return Err(RegistryError::InvalidRegistration(format!(
                    "metadata {key:?}: the value must be at most {MAX_METADATA_VALUE_LEN} bytes without control characters"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} at {}", self.service, self.id, self.addr)
    }
}

impl From<&Instance> for crate::Endpoint {
    fn from(instance: &Instance) -> Self {
        crate::Endpoint {
            addr: instance.addr,
            weight: instance.weight,
            metadata: instance.metadata.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        Registration::new("users", "a-1", "127.0.0.1:9001".parse().unwrap(), "host-1")
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(reg().validate(), Ok(()));
        type Edit = Box<dyn Fn(&mut Registration)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|r| r.service = String::new()),
                "service name is empty",
            ),
            (Box::new(|r| r.service = "a b".into()), "contains ' '"),
            (Box::new(|r| r.service = "-x".into()), "must start"),
            (Box::new(|r| r.service = "x".repeat(200)), "longer than"),
            (Box::new(|r| r.instance_id = "a/b".into()), "instance id"),
            (Box::new(|r| r.owner = String::new()), "owner is empty"),
            (Box::new(|r| r.ttl = Duration::from_millis(10)), "ttl 10ms"),
            (Box::new(|r| r.ttl = Duration::from_secs(86400)), "ttl 1day"),
            (Box::new(|r| r.addr = "0.0.0.0:80".parse().unwrap()), "addr"),
            (
                Box::new(|r| r.addr = "127.0.0.1:0".parse().unwrap()),
                "addr",
            ),
            (Box::new(|r| r.weight = 0), "weight 0"),
            (
                Box::new(|r| {
                    r.metadata.insert("zone".into(), "a\nb".into());
                }),
                "metadata \"zone\"",
            ),
        ];
        for (edit, expected) in cases {
            let mut r = reg();
            edit(&mut r);
            let err = r.validate().unwrap_err();
            assert!(matches!(err, RegistryError::InvalidRegistration(_)));
            assert!(err.to_string().contains(expected), "{err} !~ {expected}");
        }
    }

    #[test]
    fn errors_know_status_and_kind() {
        for err in [
            RegistryError::InvalidRegistration("x".into()),
            RegistryError::Conflict("x".into()),
            RegistryError::NotFound("x".into()),
            RegistryError::Unavailable("x".into()),
        ] {
            assert_eq!(
                RegistryError::from_kind(err.kind(), "x".into()).as_ref(),
                Some(&err)
            );
        }
        assert_eq!(RegistryError::Conflict(String::new()).status(), 409);
        assert_eq!(RegistryError::Unavailable(String::new()).status(), 503);
    }

    #[test]
    fn events_have_a_flat_json_shape() {
        let ev = WatchEvent {
            revision: 3,
            kind: WatchEventKind::Delete {
                instance_id: "a".into(),
            },
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(json, r#"{"revision":3,"kind":"delete","instance_id":"a"}"#);
        assert_eq!(serde_json::from_str::<WatchEvent>(&json).unwrap(), ev);
    }
}
