//! Errors to clients: every failure the gateway answers becomes one
//! `application/problem+json` response (RFC 9457), built here and nowhere else.
//!
//! A problem answer carries:
//!
//! | where | what |
//! | --- | --- |
//! | status | per cause, see the table below |
//! | `content-type` | `application/problem+json` |
//! | `x-switchyard-error` | the cause's stable kind, e.g. `breaker-open` |
//! | `retry-after` | whole seconds (rounded up, at least 1) when the policy knows when to come back |
//! | `www-authenticate` | on `401 unauthenticated`: the challenge |
//! | `ratelimit-policy`, `ratelimit` | on a call limit's refusal: the refusing policy and what is left of it |
//! | body `type` | `https://switchyard.dev/problems/<kind>` |
//! | body `title`, `status`, `detail` | a short fixed title, the status code, and what happened |
//! | body `instance` | the request's `x-request-id` |
//!
//! | kind | status | produced by |
//! | --- | --- | --- |
//! | `breaker-open` | 503 | the circuit breaker refused the call |
//! | `bulkhead-full` | 503 | no free concurrency slot and the queue is full |
//! | `rate-limited` | 429 | no rate-limit permit (with `retry-after`) |
//! | `deadline-exceeded` | 504 | the call's deadline passed |
//! | `retries-exhausted` | that of the last attempt's cause | every allowed attempt failed |
//! | `budget-exhausted` | that of the last attempt's cause | the retry budget was empty |
//! | `upstream` | 502 | the upstream call failed (connect, reset, protocol) |
//! | `no-healthy-endpoint` | 503 | the balancer had no eligible endpoint (found anywhere in the source chain) |
//! | `route-not-found` | 404 | no route matched, or sidecar mode knows no such service |
//! | `bad-request` | 400 | an ambiguous or malformed request (framing, headers) |
//! | `payload-too-large` | 413 | the body exceeds the listener's `max_body_bytes` |
//! | `header-too-large` | 431 | more header fields than the listener's `max_headers`, or a larger head than its `max_header_bytes` |
//! | `unauthenticated` | 401 | no credential, or one that failed (with `www-authenticate`) |
//! | `forbidden` | 403 | the caller is known and the route's rules don't allow it |
//!
//! The client crate's "no healthy endpoint" error arrives boxed inside
//! [`Error::Upstream`] (possibly inside a retry error); it is found by type
//! anywhere in the source chain.
//!
//! ```
//! use switchyard_gateway::problem::{self, Problem};
//! use switchyard_policy::Error;
//! use std::time::Duration;
//!
//! let err = Error::RateLimited { retry_after: Duration::from_millis(1200) };
//! let res = Problem::from_error(&err).instance("req-1").into_response();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "2");
//! assert_eq!(res.headers()["x-switchyard-error"], "rate-limited");
//! ```

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, header};
use switchyard_client::NoHealthyEndpoint;
use switchyard_policy::{Error, is_caused_by};
use switchyard_transport::Body;

/// The URI prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "https://switchyard.dev/problems/";

/// The response header naming the policy or cause of a problem answer.
pub const ERROR_HEADER: &str = "x-switchyard-error";

/// The media type of problem answers.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// No route matched the request (or, in sidecar mode, no service has the
/// name it asked for). Answered with 404 `route-not-found`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no route for {method} {path}")]
pub struct NoRoute {
    /// The request's method.
    pub method: http::Method,
    /// The request's path.
    pub path: String,
}

/// One problem answer, built by a constructor per cause and turned into a
/// response with [`Problem::into_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    instance: Option<String>,
    retry_after: Option<Duration>,
    close: bool,
    /// Fields the cause adds: a 401's `WWW-Authenticate` challenge, a
    /// call limit's `RateLimit-Policy` and `RateLimit` (a boxed slice: it
    /// keeps `Problem` small enough to return by value in a `Result`, and
    /// an empty one allocates nothing).
    fields: Box<[(HeaderName, HeaderValue)]>,
}

impl Problem {
    /// A problem with this status, kind and title, and an empty detail.
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            status,
            kind,
            title,
            detail: String::new(),
            instance: None,
            retry_after: None,
            close: false,
            fields: Box::default(),
        }
    }

    /// The answer for a failed call through the policy stack.
    ///
    /// "No healthy endpoint" anywhere in the source chain answers 503;
    /// otherwise the policy error's own [`Error::kind`] and
    /// [`Error::http_status`] decide. The detail is the error's top-level
    /// message only: the source chain can name internal addresses, so it is
    /// logged, not sent.
    pub fn from_error(err: &Error) -> Self {
        let mut problem = if is_caused_by::<NoHealthyEndpoint>(err) {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-healthy-endpoint",
                "No healthy endpoint",
            )
        } else {
            Self::new(err.http_status(), err.kind(), title_of(err.kind()))
        };
        problem.detail = err.to_string();
        problem.retry_after = err.retry_after().or_else(|| err.root().retry_after());
        problem
    }

    /// 404 `route-not-found`.
    pub fn route_not_found(no_route: &NoRoute) -> Self {
        Self::new(StatusCode::NOT_FOUND, "route-not-found", "No route").detail(no_route.to_string())
    }

    /// 400 `bad-request`; the connection is closed after the answer, since a
    /// request with ambiguous framing leaves the connection's byte stream
    /// untrustworthy.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail);
        p.close = true;
        p
    }

    /// 413 `payload-too-large`; the connection is closed after the answer
    /// (the unread body is not drained).
    pub fn payload_too_large(limit: u64) -> Self {
        let mut p = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .detail(format!(
            "the request body exceeds the limit of {limit} bytes"
        ));
        p.close = true;
        p
    }

    /// 431 `header-too-large`: more header fields than `limit`.
    pub fn header_too_large(limit: usize) -> Self {
        Self::headers_refused(format!("the request has more than {limit} header fields"))
    }

    /// 431 `header-too-large`, saying what was too large.
    pub fn headers_refused(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-too-large",
            "Request header fields too large",
        )
        .detail(detail)
    }

    /// Sets the human-readable detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Sets the `instance` member (the request id).
    pub fn instance(mut self, request_id: impl Into<String>) -> Self {
        self.instance = Some(request_id.into());
        self
    }

    /// The status answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable kind, as sent in `x-switchyard-error` and the `type` URI.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The `type` URI: [`TYPE_PREFIX`] followed by the kind.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.kind)
    }

    /// The problem+json response.
    pub fn into_response(self) -> http::Response<Body> {
        let body = serde_json::json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "instance": self.instance,
        });
        let mut res = http::Response::new(Body::full(body.to_string()));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.kind));
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in self.fields {
            headers.insert(name, value);
        }
        res
    }
}

/// Whole seconds, rounded up, at least 1 (`Retry-After: 0` would invite a
/// tight loop).
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

fn title_of(kind: &str) -> &'static str {
    match kind {
        "breaker-open" => "Circuit breaker open",
        "bulkhead-full" => "Too many concurrent requests",
        "rate-limited" => "Rate limited",
        "deadline-exceeded" => "Deadline exceeded",
        "retries-exhausted" => "Retries exhausted",
        "budget-exhausted" => "Retry budget exhausted",
        "upstream" => "Upstream request failed",
        _ => "Request failed",
    }
}

// === 401 and 403 ===

impl Problem {
    /// 401 `unauthenticated`: no credential where one is required, or one
    /// that failed; `www_authenticate` is sent as the `WWW-Authenticate`
    /// challenge (RFC 9110 §11.6.1 requires one on every 401).
    pub fn unauthenticated(detail: impl Into<String>, www_authenticate: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Unauthenticated",
        )
        .detail(detail);
        if let Ok(challenge) = HeaderValue::from_str(&www_authenticate.into()) {
            p.fields = Box::new([(header::WWW_AUTHENTICATE, challenge)]);
        }
        p
    }

    /// 403 `forbidden`: the caller is authenticated and not allowed here.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }
}

#[cfg(test)]
mod tests;

// === call limits ===

impl Problem {
    /// The answer to a call refused by a call limit
    /// ([`limits`](crate::limits)): 429 `rate-limited`, `quota-exceeded` or
    /// `concurrency-limited` with `retry-after`, or 503 `limits-unavailable`
    /// when a shared limit can't reach Redis in `fail_closed` mode, with
    /// the refusing policy's `RateLimit-Policy` and `RateLimit` fields.
    pub fn call_limited(rejection: &crate::limits::LimitRejection) -> Self {
        use crate::limits::LimitReason;
        let title = match rejection.reason {
            LimitReason::Rate => "Rate limited",
            LimitReason::Quota => "Quota exceeded",
            LimitReason::Concurrency => "Too many concurrent requests",
            _ => "Call limits unavailable",
        };
        let mut problem = Self::new(rejection.status(), rejection.reason.kind(), title)
            .detail(rejection.to_string());
        problem.retry_after = Some(rejection.retry_after);
        // The refusing policy's fields travel with the answer, so a client
        // learns the limit it hit (and when it is whole again) from the 429.
        problem.fields = rejection
            .headers()
            .into_iter()
            .filter(|(name, _)| name != header::RETRY_AFTER)
            .collect();
        problem
    }
}
