//! A registry in another process, spoken to over its HTTP API
//! ([`super::http`]).
//!
//! Every call has a deadline ([`DEFAULT_REQUEST_TIMEOUT`], connecting
//! within [`DEFAULT_CONNECT_TIMEOUT`]); a registry that can't be reached, or
//! doesn't answer in time, is [`RegistryError::Unavailable`]. Problem answers
//! come back as the [`RegistryError`] they stand for.
//!
//! A watch stream ends with an `Unavailable` error when the connection
//! breaks or carries nothing (not even a keep-alive line) for
//! [`DEFAULT_WATCH_IDLE_TIMEOUT`]; the caller resumes from its revision.

use std::{collections::VecDeque, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{
    BoxFuture, Lease, LeaseId, Listing, Registration, Registry, RegistryError, WatchEvent,
    WatchStream,
    http::{KEEPALIVE_INTERVAL, KEEPALIVE_LINE, RegisterBody, ServiceListing, ServiceNames},
    validate_instance_id, validate_owner, validate_service_name,
};

/// How long one request may take, answer included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a watch may carry nothing before it is considered broken
/// (three keep-alive intervals).
pub const DEFAULT_WATCH_IDLE_TIMEOUT: Duration =
    Duration::from_secs(3 * KEEPALIVE_INTERVAL.as_secs());
/// The longest watch line accepted (a resync of a very large service).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

type ReqBody = BoxBody<Bytes, std::convert::Infallible>;

/// A client of a registry served over HTTP.
///
/// ```
/// use switchyard_discovery::registry::RemoteRegistry;
///
/// let registry = RemoteRegistry::new("http://127.0.0.1:7070").unwrap();
/// assert!(RemoteRegistry::new("ftp://nowhere").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct RemoteRegistry {
    base: String,
    client: Client<HttpConnector, ReqBody>,
    request_timeout: Duration,
    watch_idle_timeout: Duration,
}

/// The registry URL is not `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry url {url:?} is invalid: {reason}; give it as http://HOST:PORT")]
pub struct InvalidRegistryUrl {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RemoteRegistry {
    /// A client of the registry at `url` (`http://HOST:PORT`, an optional
    /// trailing `/`). Connects lazily: a registry that is down fails calls,
    /// not this.
    pub fn new(url: &str) -> Result<Self, InvalidRegistryUrl> {
        let invalid = |reason: &str| InvalidRegistryUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("the scheme must be http"));
        }
        let Some(authority) = uri.authority() else {
            return Err(invalid("it has no host"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("it must not have a path or query"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base: format!("http://{authority}"),
            client,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            watch_idle_timeout: DEFAULT_WATCH_IDLE_TIMEOUT,
        })
    }

    /// Sets how long one request may take (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how long a watch may be silent before it is considered broken
    /// (default [`DEFAULT_WATCH_IDLE_TIMEOUT`]).
    pub fn watch_idle_timeout(mut self, timeout: Duration) -> Self {
        self.watch_idle_timeout = timeout;
        self
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends one request; returns the response head and its body, or the
    /// error a non-2xx answer stands for.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Incoming>, RegistryError> {
        let uri = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&uri);
        let body: ReqBody = match body {
            Some(bytes) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(bytes)).boxed()
            }
            None => Empty::new().boxed(),
        };
        let request = builder.body(body).map_err(|e| {
            RegistryError::InvalidRegistration(format!("bad request to {uri}: {e}"))
        })?;
        let response = tokio::time::timeout(self.request_timeout, self.client.request(request))
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!(
                    "{uri} did not answer within {}",
                    humantime::format_duration(self.request_timeout)
                ))
            })?
            .map_err(|e| RegistryError::Unavailable(format!("{uri}: {}", chain(&e))))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = self.collect(response.into_body()).await?;
        Err(super::http::error_from_problem(status, &body))
    }

    async fn collect(&self, body: Incoming) -> Result<Bytes, RegistryError> {
        tokio::time::timeout(self.request_timeout, body.collect())
            .await
            .map_err(|_| RegistryError::Unavailable("the registry's answer stalled".into()))?
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| RegistryError::Unavailable(format!("reading the registry's answer: {e}")))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RegistryError> {
        let response = self.send(method, path, body).await?;
        let bytes = self.collect(response.into_body()).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::Unavailable(format!(
                "the registry's answer is not what this client expects: {e}"
            ))
        })
    }
}

/// The error and its sources, for messages (hyper's top-level message alone
/// says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Registry for RemoteRegistry {
    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<Lease, RegistryError>> {
        Box::pin(async move {
            // Checked here too so a malformed name never becomes a bad URL.
            registration.validate()?;
            let path = format!(
                "/v1/registry/services/{}/instances/{}",
                registration.service, registration.instance_id
            );
            let body = serde_json::to_vec(&RegisterBody::from_registration(&registration))
                .map_err(|e| RegistryError::InvalidRegistration(e.to_string()))?;
            self.json(Method::PUT, &path, Some(body)).await
        })
    }

    fn renew(&self, lease: LeaseId) -> BoxFuture<'_, Result<Lease, RegistryError>> {
        Box::pin(async move {
            self.json(
                Method::POST,
                &format!("/v1/registry/leases/{lease}/renew"),
                None,
            )
            .await
        })
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            validate_service_name(service)?;
            validate_instance_id(instance_id)?;
            validate_owner(owner)?;
            let path =
                format!("/v1/registry/services/{service}/instances/{instance_id}?owner={owner}");
            let response = self.send(Method::DELETE, &path, None).await?;
            // Drain so the connection can be reused.
            let _ = self.collect(response.into_body()).await;
            Ok(())
        })
    }

    fn list<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Listing, RegistryError>> {
        Box::pin(async move {
            validate_service_name(service)?;
            let listing: ServiceListing = self
                .json(
                    Method::GET,
                    &format!("/v1/registry/services/{service}"),
                    None,
                )
                .await?;
            Ok(Listing {
                instances: listing.instances,
                revision: listing.revision,
            })
        })
    }

    fn list_services(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        Box::pin(async move {
            let names: ServiceNames = self
                .json(Method::GET, "/v1/registry/services", None)
                .await?;
            Ok(names.services)
        })
    }

    fn watch<'a>(
        &'a self,
        service: &'a str,
        from: Option<u64>,
    ) -> BoxFuture<'a, Result<WatchStream, RegistryError>> {
        Box::pin(async move {
            validate_service_name(service)?;
            let path = match from {
                Some(from) => format!("/v1/registry/services/{service}/watch?from={from}"),
                None => format!("/v1/registry/services/{service}/watch"),
            };
            let response = self.send(Method::GET, &path, None).await?;
            let state = Lines {
                body: response.into_body(),
                buf: BytesMut::new(),
                ready: VecDeque::new(),
                idle: self.watch_idle_timeout,
                error: None,
                done: false,
            };
            let stream: WatchStream = Box::pin(futures_util::stream::unfold(state, next_event));
            Ok(stream)
        })
    }
}

/// A watch response being split into events.
struct Lines {
    body: Incoming,
    buf: BytesMut,
    ready: VecDeque<WatchEvent>,
    idle: Duration,
    /// Sent after the events parsed before it.
    error: Option<RegistryError>,
    done: bool,
}

async fn next_event(mut st: Lines) -> Option<(Result<WatchEvent, RegistryError>, Lines)> {
    loop {
        if let Some(event) = st.ready.pop_front() {
            return Some((Ok(event), st));
        }
        if let Some(error) = st.error.take() {
            return Some((Err(error), st));
        }
        if st.done {
            return None;
        }
        let frame = match tokio::time::timeout(st.idle, st.body.frame()).await {
            Err(_) => {
                st.done = true;
                let idle = humantime::format_duration(st.idle);
                return Some((
                    Err(RegistryError::Unavailable(format!(
                        "the watch was silent for {idle}"
                    ))),
                    st,
                ));
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                st.done = true;
                return Some((
                    Err(RegistryError::Unavailable(format!(
                        "the watch broke: {}",
                        chain(&e)
                    ))),
                    st,
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        st.buf.extend_from_slice(&data);
        while let Some(newline) = st.buf.iter().position(|&b| b == b'\n') {
            let line = st.buf.split_to(newline + 1);
            let line = line.chunk()[..newline].trim_ascii();
            if line.is_empty() || line == KEEPALIVE_LINE.as_bytes() {
                continue;
            }
            match serde_json::from_slice::<WatchEvent>(line) {
                Ok(event) => st.ready.push_back(event),
                Err(e) => {
                    st.done = true;
                    st.error = Some(RegistryError::Unavailable(format!(
                        "the registry sent an unreadable watch line: {e}"
                    )));
                    break;
                }
            }
        }
        if !st.done && st.buf.len() > MAX_LINE_BYTES {
            st.done = true;
            st.error = Some(RegistryError::Unavailable(
                "a watch line is too long".into(),
            ));
        }
    }
}
