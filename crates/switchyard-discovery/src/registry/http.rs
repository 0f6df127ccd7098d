//! The registry's HTTP API, served by whichever process holds the registry
//! (the gateway mounts [`router`] on one of its listeners) and spoken by
//! [`RemoteRegistry`](super::RemoteRegistry). The reference with examples
//! is `docs/registry.md`.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `PUT /v1/registry/services/{service}/instances/{id}` | register, or re-register (renew) | 200 [`Lease`](super::Lease) |
//! | `POST /v1/registry/leases/{lease}/renew` | renew a lease | 200 [`Lease`](super::Lease) |
//! | `DELETE /v1/registry/services/{service}/instances/{id}?owner=O` | deregister | 204 |
//! | `GET /v1/registry/services` | service names | 200 `{"services": [...]}` |
//! | `GET /v1/registry/services/{service}` | the instances and the revision | 200 [`ServiceListing`] |
//! | `GET /v1/registry/services/{service}/watch?from=REV` | the changes, streamed | 200 `application/x-ndjson`, one [`WatchEvent`] per line |
//!
//! Failures answer `application/problem+json` (RFC 9457) with the status and
//! `type` of the [`RegistryError`] (`https://switchyard.dev/problems/<kind>`),
//! and the kind in the `x-switchyard-error` header; a body over
//! [`MAX_BODY_BYTES`] is refused with 413 `payload-too-large`. A refused
//! request changes nothing.
//!
//! A watch response stays open; while no change comes it carries a
//! [`KEEPALIVE_LINE`] every [`KEEPALIVE_INTERVAL`], so clients can tell a
//! quiet service from a dead connection.

use std::{
    collections::BTreeMap, convert::Infallible, future::Future, net::SocketAddr, sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, task::JoinSet};

use super::{
    DEFAULT_TTL, Instance, Registration, Registry, RegistryError, WatchEvent, WatchStream,
};

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How often a quiet watch response carries a keep-alive line.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// The keep-alive line of watch responses (followed by `\n`).
pub const KEEPALIVE_LINE: &str = r#"{"kind":"keepalive"}"#;
/// The media type of watch responses: newline-delimited JSON.
pub const NDJSON: &str = "application/x-ndjson";
/// The media type of problem answers.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The URI prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "https://switchyard.dev/problems/";
/// The response header naming the cause of a problem answer.
pub const ERROR_HEADER: &str = "x-switchyard-error";

/// The body of `PUT /v1/registry/services/{service}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Where the instance listens.
    pub addr: SocketAddr,
    /// Who registers it. Required.
    pub owner: String,
    /// Relative share of traffic. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Labels. Default none.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The lease's TTL, like `"10s"`. Default [`DEFAULT_TTL`] (30s).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_weight() -> u32 {
    crate::DEFAULT_WEIGHT
}

fn default_ttl() -> Duration {
    DEFAULT_TTL
}

impl RegisterBody {
    /// The body for `registration` (its service and id go in the path).
    pub fn from_registration(r: &Registration) -> Self {
        Self {
            addr: r.addr,
            owner: r.owner.clone(),
            weight: r.weight,
            metadata: r.metadata.clone(),
            ttl: r.ttl,
        }
    }

    /// The registration of instance `id` of `service` this body asks for.
    pub fn into_registration(self, service: String, instance_id: String) -> Registration {
        Registration {
            service,
            instance_id,
            addr: self.addr,
            metadata: self.metadata,
            weight: self.weight,
            ttl: self.ttl,
            owner: self.owner,
        }
    }
}

/// The answer of `GET /v1/registry/services/{service}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceListing {
    /// The service's name.
    pub service: String,
    /// The registry's revision the listing reflects.
    pub revision: u64,
    /// Its live instances, ordered by id.
    pub instances: Vec<Instance>,
}

/// The answer of `GET /v1/registry/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNames {
    /// The services with at least one live instance, sorted.
    pub services: Vec<String>,
}

/// The problem+json body of a failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemBody {
    /// `https://switchyard.dev/problems/<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short fixed title.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong and how to fix it.
    pub detail: String,
}

/// The registry API for `registry`, to mount on any listener.
pub fn router(registry: Arc<dyn Registry>) -> Router {
    Router::new()
        .route("/v1/registry/services", get(list_services))
        .route("/v1/registry/services/{service}", get(get_service))
        .route(
            "/v1/registry/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route("/v1/registry/services/{service}/watch", get(watch))
        .route("/v1/registry/leases/{lease}/renew", post(renew))
        .with_state(registry)
}

/// Serves `router` on `listener` until `shutdown` resolves, then closes
/// every connection at once (watch responses never end on their own, so a
/// graceful drain would wait forever) and returns when they are gone.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off a moment
                // rather than spin.
                tracing::warn!(%error, "registry listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small NDJSON lines must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mut router = router.clone();
                tower_service::Service::call(&mut router, req)
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that goes away mid-stream is not our problem to report.
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    drop(listener);
    connections.shutdown().await;
}

// === handlers ===

type Shared = State<Arc<dyn Registry>>;

async fn register(
    State(registry): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Response {
    let Path((service, id)) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return *response,
    };
    let body: RegisterBody = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => {
            return problem(&RegistryError::InvalidRegistration(format!(
                "the body is not a registration: {e}"
            )));
        }
    };
    answer(registry.register(body.into_registration(service, id)).await)
}

async fn renew(State(registry): Shared, path: Result<Path<String>, PathRejection>) -> Response {
    let Path(lease) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    let Ok(lease) = lease.parse::<u64>() else {
        return problem(&RegistryError::InvalidRegistration(format!(
            "lease id {lease:?} is not a number"
        )));
    };
    answer(registry.renew(lease).await)
}

#[derive(Debug, Deserialize)]
struct OwnerQuery {
    owner: Option<String>,
}

async fn deregister(
    State(registry): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<OwnerQuery>, QueryRejection>,
) -> Response {
    let Path((service, id)) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    let owner = match query {
        Ok(Query(OwnerQuery { owner: Some(owner) })) => owner,
        Ok(_) => {
            return problem(&RegistryError::InvalidRegistration(
                "the owner is missing; add ?owner=<the owner that registered it>".into(),
            ));
        }
        Err(rejection) => {
            return problem(&RegistryError::InvalidRegistration(format!(
                "bad query: {rejection}"
            )));
        }
    };
    match registry.deregister(&service, &id, &owner).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => problem(&e),
    }
}

async fn list_services(State(registry): Shared) -> Response {
    answer(
        registry
            .list_services()
            .await
            .map(|services| ServiceNames { services }),
    )
}

async fn get_service(
    State(registry): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(service) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    answer(registry.list(&service).await.map(|listing| ServiceListing {
        service,
        revision: listing.revision,
        instances: listing.instances,
    }))
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    from: Option<u64>,
}

async fn watch(
    State(registry): Shared,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    let Path(service) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    let from = match query {
        Ok(Query(q)) => q.from,
        Err(rejection) => {
            return problem(&RegistryError::InvalidRegistration(format!(
                "bad query (from must be a revision number): {rejection}"
            )));
        }
    };
    match registry.watch(&service, from).await {
        Ok(events) => {
            let mut response = Body::from_stream(ndjson(events)).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => problem(&e),
    }
}

/// Events as JSON lines, with keep-alive lines while the service is quiet.
/// Ends when the event stream ends or fails; the client resumes from its
/// revision.
fn ndjson(events: WatchStream) -> impl futures_core::Stream<Item = Result<Bytes, Infallible>> {
    let start = tokio::time::Instant::now() + KEEPALIVE_INTERVAL;
    let mut keepalive = tokio::time::interval_at(start, KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures_util::stream::unfold(
        (events, keepalive),
        |(mut events, mut keepalive)| async move {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => Some((Ok(line(&event)), (events, keepalive))),
                    Some(Err(error)) => {
                        tracing::debug!(%error, "registry watch ended");
                        None
                    }
                    None => None,
                },
                _ = keepalive.tick() => {
                    Some((Ok(Bytes::from(format!("{KEEPALIVE_LINE}\n"))), (events, keepalive)))
                }
            }
        },
    )
}

fn line(event: &WatchEvent) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

async fn read_body(body: Body) -> Result<Bytes, Box<Response>> {
    match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Box::new(problem_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ))),
        Err(e) => Err(Box::new(problem(&RegistryError::InvalidRegistration(
            format!("the body could not be read: {e}"),
        )))),
    }
}

fn answer<T: Serialize>(result: Result<T, RegistryError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => problem(&e),
    }
}

fn bad_path(rejection: &PathRejection) -> Response {
    problem(&RegistryError::InvalidRegistration(format!(
        "bad path: {rejection}"
    )))
}

/// The problem+json answer for `err`.
pub fn problem(err: &RegistryError) -> Response {
    let title = match err {
        RegistryError::InvalidRegistration(_) => "Invalid registration",
        RegistryError::Conflict(_) => "Registration conflict",
        RegistryError::NotFound(_) => "Not found",
        RegistryError::Unavailable(_) => "Registry unavailable",
    };
    problem_response(err.status(), err.kind(), title, err.detail().to_owned())
}

fn problem_response(
    status: StatusCode,
    kind: &'static str,
    title: &str,
    detail: String,
) -> Response {
    let body = ProblemBody {
        kind: format!("{PROBLEM_TYPE_PREFIX}{kind}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
    };
    let mut response = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(kind));
    response
}

/// Reads a problem answer back into the error it stands for.
pub(crate) fn error_from_problem(status: StatusCode, body: &[u8]) -> RegistryError {
    let parsed = serde_json::from_slice::<ProblemBody>(body).ok();
    parsed
        .and_then(|p| {
            let kind = p.kind.strip_prefix(PROBLEM_TYPE_PREFIX)?.to_owned();
            RegistryError::from_kind(&kind, p.detail)
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            if status.is_client_error() {
                RegistryError::InvalidRegistration(format!(
                    "the registry answered {status}: {text}"
                ))
            } else {
                RegistryError::Unavailable(format!("the registry answered {status}: {text}"))
            }
        })
}
