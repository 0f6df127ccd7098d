//! The one error every policy returns.
//!
//! Every layer in this crate returns [`Error`]. An inner service's own error is
//! boxed into [`Error::Upstream`]; an [`Error`] that comes up from an inner
//! policy layer passes through unchanged (see [`Error::from_inner`]), so a stack
//! of layers never nests `Error<Error<E>>`.

use std::time::Duration;

/// A boxed error, as tower uses at its edges.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call through the policy stack did not produce a response.
///
/// Each variant names one cause, knows the HTTP status and gRPC code a
/// gateway answers with ([`Error::http_status`], [`Error::grpc_code`]) and the
/// policy that produced it ([`Error::policy`]). Source chains are kept: the
/// upstream error of the last attempt is reachable through
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The circuit breaker is open (or half-open with all probes taken).
    #[error("circuit breaker is open; next probe in {}ms", retry_after.as_millis())]
    BreakerOpen {
        /// Time until the breaker admits a probe.
        retry_after: Duration,
    },
    /// The bulkhead has no free slot and its wait queue is full, or the
    /// call waited longer than the queue's max wait.
    #[error("bulkhead is full ({max_concurrent} in flight, queue full or wait exceeded)")]
    BulkheadFull {
        /// The bulkhead's concurrency limit.
        max_concurrent: usize,
    },
    /// The rate limiter has no permit for this call.
    #[error("rate limited; next permit in {}ms", retry_after.as_millis())]
    RateLimited {
        /// Time until a permit is available.
        retry_after: Duration,
    },
    /// The call's deadline passed (overall or per attempt) before a response came.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Every attempt the retry policy allowed failed.
    #[error("retries exhausted after {attempts} attempts")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: Box<Error>,
    },
    /// A retry was wanted but the service's retry budget had nothing left.
    #[error("retry budget exhausted after {attempts} attempts")]
    BudgetExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: Box<Error>,
    },
    /// The inner service failed.
    #[error("upstream error")]
    Upstream(#[source] BoxError),
}

/// gRPC status codes used by [`Error::grpc_code`] (values from the gRPC spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcCode {
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded = 4,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted = 8,
    /// `UNAVAILABLE` (14).
    Unavailable = 14,
    /// `UNKNOWN` (2).
    Unknown = 2,
}

impl Error {
    /// Wraps an inner service's error: an [`Error`] from an inner policy
    /// layer is kept as it is, anything else becomes [`Error::Upstream`].
    pub fn from_inner(err: impl Into<BoxError>) -> Self {
        match err.into().downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::Upstream(other),
        }
    }

    /// The HTTP status a gateway answers with for this error.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Error::BreakerOpen { .. } | Error::BulkheadFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Error::RetriesExhausted { last, .. } | Error::BudgetExhausted { last, .. } => {
                last.http_status()
            }
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC status code a gateway answers with for this error.
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            Error::BreakerOpen { .. } | Error::BulkheadFull { .. } => GrpcCode::Unavailable,
            Error::RateLimited { .. } => GrpcCode::ResourceExhausted,
            Error::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Error::RetriesExhausted { last, .. } | Error::BudgetExhausted { last, .. } => {
                last.grpc_code()
            }
            Error::Upstream(_) => GrpcCode::Unavailable,
        }
    }

    /// A stable name for the cause, used in the `type` of problem+json
    /// answers, in the response header naming the policy, and in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BreakerOpen { .. } => "breaker-open",
            Error::BulkheadFull { .. } => "bulkhead-full",
            Error::RateLimited { .. } => "rate-limited",
            Error::DeadlineExceeded => "deadline-exceeded",
            Error::RetriesExhausted { .. } => "retries-exhausted",
            Error::BudgetExhausted { .. } => "budget-exhausted",
            Error::Upstream(_) => "upstream",
        }
    }

    /// The policy that produced this error (`None` for a plain upstream error).
    pub fn policy(&self) -> Option<&'static str> {
        match self {
            Error::BreakerOpen { .. } => Some("breaker"),
            Error::BulkheadFull { .. } => Some("bulkhead"),
            Error::RateLimited { .. } => Some("rate-limit"),
            Error::DeadlineExceeded => Some("deadline"),
            Error::RetriesExhausted { .. } | Error::BudgetExhausted { .. } => Some("retry"),
            Error::Upstream(_) => None,
        }
    }

    /// How long the caller should wait before trying again, when the policy knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::BreakerOpen { retry_after } | Error::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// True when a policy refused the call without it reaching the upstream
    /// (breaker open, bulkhead full, rate limited).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Error::BreakerOpen { .. } | Error::BulkheadFull { .. } | Error::RateLimited { .. }
        )
    }

    /// The innermost cause: the last attempt's error for retry errors, `self` otherwise.
    pub fn root(&self) -> &Error {
        match self {
            Error::RetriesExhausted { last, .. } | Error::BudgetExhausted { last, .. } => {
                last.root()
            }
            other => other,
        }
    }
}

/// True when `err` or any error in its source chain is an `E`.
///
/// Classifies by type, never by message.
pub fn is_caused_by<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[test]
    fn from_inner_keeps_policy_errors_and_boxes_others() {
        let boxed: BoxError = Box::new(Error::DeadlineExceeded);
        assert!(matches!(Error::from_inner(boxed), Error::DeadlineExceeded));
        let up = Error::from_inner(Refused);
        assert!(matches!(up, Error::Upstream(_)));
        assert!(is_caused_by::<Refused>(&up));
    }

    #[test]
    fn statuses_and_codes() {
        let open = Error::BreakerOpen {
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(open.http_status(), 503);
        assert_eq!(open.grpc_code(), GrpcCode::Unavailable);
        assert_eq!(open.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(
            Error::RateLimited {
                retry_after: Duration::ZERO
            }
            .http_status(),
            429
        );
        assert_eq!(Error::DeadlineExceeded.http_status(), 504);
        let exhausted = Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(Error::from_inner(Refused)),
        };
        assert_eq!(exhausted.http_status(), 502);
        assert!(is_caused_by::<Refused>(&exhausted));
        assert_eq!(exhausted.to_string(), "retries exhausted after 3 attempts");
    }
}
