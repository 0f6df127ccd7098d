//! An in-process `CallService` for tests: per service a latency, a status or
//! an error, and a body; it records every call's start, end and cancellation
//! (observed by a drop guard) in virtual time.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::Value;
use switchyard_compose::{CallError, CallService};
use tokio::time::Instant;

type BodyFn = Arc<dyn Fn(&Request<Bytes>) -> Value + Send + Sync>;

/// How one fake service behaves.
#[derive(Clone)]
pub struct Behaviour {
    pub delay: Duration,
    pub status: u16,
    pub error: Option<&'static str>,
    /// Give up at the deadline, as the gateway's policies do.
    pub honor_deadline: bool,
    pub body: BodyFn,
}

impl Behaviour {
    pub fn ok(delay_ms: u64, body: Value) -> Self {
        Self {
            delay: Duration::from_millis(delay_ms),
            status: 200,
            error: None,
            honor_deadline: true,
            body: Arc::new(move |_| body.clone()),
        }
    }

    pub fn with(
        delay_ms: u64,
        f: impl Fn(&Request<Bytes>) -> Value + Send + Sync + 'static,
    ) -> Self {
        Self {
            body: Arc::new(f),
            ..Self::ok(delay_ms, Value::Null)
        }
    }

    pub fn error(delay_ms: u64, kind: &'static str) -> Self {
        Self {
            error: Some(kind),
            ..Self::ok(delay_ms, Value::Null)
        }
    }

    pub fn status(delay_ms: u64, status: u16) -> Self {
        Self {
            status,
            ..Self::ok(delay_ms, Value::Null)
        }
    }
}

/// What the fake saw, in virtual time since it was made.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Start {
        service: String,
        at: Duration,
        uri: String,
        body: Option<Value>,
        /// Time left until the deadline it was given.
        left: Duration,
    },
    End {
        service: String,
        at: Duration,
    },
    Cancelled {
        service: String,
        at: Duration,
    },
}

pub struct Fake {
    start: Instant,
    services: HashMap<String, Behaviour>,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    pub fn new<K: Into<String>>(services: impl IntoIterator<Item = (K, Behaviour)>) -> Self {
        Self {
            start: Instant::now(),
            services: services.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn record(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }

    fn now(&self) -> Duration {
        Instant::now() - self.start
    }

    /// The start record of `service`, if it was called.
    pub fn start_of(&self, service: &str) -> Option<Seen> {
        self.seen()
            .into_iter()
            .find(|s| matches!(s, Seen::Start { service: x, .. } if x == service))
    }

    pub fn calls_to(&self, service: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| matches!(s, Seen::Start { service: x, .. } if x == service))
            .count()
    }

    pub fn cancelled(&self) -> Vec<(String, Duration)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Cancelled { service, at } => Some((service, at)),
                _ => None,
            })
            .collect()
    }
}

/// Records a cancellation when the call future is dropped before it ends.
struct Guard<'a> {
    fake: &'a Fake,
    service: String,
    finished: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let at = self.fake.now();
        let service = std::mem::take(&mut self.service);
        self.fake.record(if self.finished {
            Seen::End { service, at }
        } else {
            Seen::Cancelled { service, at }
        });
    }
}

impl CallService for Fake {
    async fn call(
        &self,
        service: &str,
        req: Request<Bytes>,
        deadline: Instant,
    ) -> Result<Response<Bytes>, CallError> {
        let b = self
            .services
            .get(service)
            .cloned()
            .unwrap_or_else(|| Behaviour::ok(0, Value::Null));
        self.record(Seen::Start {
            service: service.to_owned(),
            at: self.now(),
            uri: req.uri().to_string(),
            body: serde_json::from_slice(req.body()).ok(),
            left: deadline.saturating_duration_since(Instant::now()),
        });
        let mut guard = Guard {
            fake: self,
            service: service.to_owned(),
            finished: false,
        };
        let sleep = tokio::time::sleep(b.delay);
        if b.honor_deadline {
            if tokio::time::timeout_at(deadline, sleep).await.is_err() {
                guard.finished = true;
                return Err(CallError::new("deadline-exceeded", "deadline exceeded"));
            }
        } else {
            sleep.await;
        }
        guard.finished = true;
        if let Some(kind) = b.error {
            return Err(CallError::new(kind, format!("{service} failed")));
        }
        let body = (b.body)(&req);
        let mut res = Response::new(Bytes::from(body.to_string()));
        *res.status_mut() = StatusCode::from_u16(b.status).unwrap();
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        Ok(res)
    }
}
