//! Deciding what an outcome means: success, failure or ignored; retryable or
//! not; with a `Retry-After` hint or not.
//!
//! The breaker, retry and hedging layers take a classifier so that the HTTP
//! layer can say that a `503` response is a failure worth retrying while a
//! `404` is a success as far as the service's health is concerned.

use std::time::Duration;

use crate::Error;

/// What an outcome counts as for the circuit breaker and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The service did its job.
    Success,
    /// The service failed: counted against its health.
    Failure,
    /// Counts nowhere (for example a call the caller cancelled, or a
    /// rejection by an inner policy that says nothing about the service).
    Ignored,
}

impl Outcome {
    /// A stable lowercase name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The full verdict on one attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// What the outcome counts as.
    pub outcome: Outcome,
    /// Whether another attempt may help.
    pub retryable: bool,
    /// A delay the upstream asked for before the next attempt (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Class {
    /// A success: not retried.
    pub const SUCCESS: Class = Class {
        outcome: Outcome::Success,
        retryable: false,
        retry_after: None,
    };
    /// A failure worth retrying.
    pub const RETRYABLE: Class = Class {
        outcome: Outcome::Failure,
        retryable: true,
        retry_after: None,
    };
    /// A failure not worth retrying.
    pub const FATAL: Class = Class {
        outcome: Outcome::Failure,
        retryable: false,
        retry_after: None,
    };
    /// An outcome that counts nowhere and is not retried.
    pub const IGNORED: Class = Class {
        outcome: Outcome::Ignored,
        retryable: false,
        retry_after: None,
    };
}

/// Classifies the result of one attempt.
///
/// A verdict must depend on the result alone: the policies may classify
/// one result more than once (the retry, the breaker and the call's report
/// each need it) or share one verdict among them (the fused stack, see
/// [`Policy`](crate::Policy)).
pub trait Classify<Res>: Clone + Send + Sync + 'static {
    /// The verdict on `result`.
    fn classify(&self, result: Result<&Res, &Error>) -> Class;
}

/// The classifier for any response type: every response is a success; an
/// upstream error or a timed-out attempt is a retryable failure; a rejection by
/// an inner policy is ignored (it says nothing about the service's health) and
/// not retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Res> Classify<Res> for DefaultClassifier {
    fn classify(&self, result: Result<&Res, &Error>) -> Class {
        match result {
            Ok(_) => Class::SUCCESS,
            Err(err) => classify_error(err),
        }
    }
}

fn classify_error(err: &Error) -> Class {
    match err.root() {
        Error::Upstream(_) | Error::DeadlineExceeded => Class::RETRYABLE,
        _ => Class::IGNORED,
    }
}

/// Default statuses an [`HttpClassifier`] retries.
pub const DEFAULT_RETRYABLE_STATUSES: [u16; 4] = [429, 502, 503, 504];

/// Classifies [`http::Response`]s: `5xx` and `429` are failures; the
/// retryable statuses (by default 429, 502, 503, 504) are retried, honouring a
/// `Retry-After` header given in seconds or as an HTTP date.
#[derive(Debug, Clone, Copy)]
pub struct HttpClassifier {
    // Only failures (5xx and 429) are ever retried, so the retryable
    // statuses are bits: 500–599 in two words, and 429. Plain bits, not a
    // shared list: every layer holding the classifier is cloned per call,
    // and an `Arc` costs an atomic increment and decrement each time.
    server_errors: [u64; 2],
    too_many_requests: bool,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new(DEFAULT_RETRYABLE_STATUSES)
    }
}

impl HttpClassifier {
    /// A classifier retrying the given statuses instead of the defaults.
    /// Statuses other than `5xx` and `429` are successes, never retried, so
    /// listing them changes nothing.
    pub fn new(retryable: impl IntoIterator<Item = u16>) -> Self {
        let mut classifier = Self {
            server_errors: [0; 2],
            too_many_requests: false,
        };
        for status in retryable {
            match status {
                429 => classifier.too_many_requests = true,
                500..=599 => {
                    let bit = usize::from(status - 500);
                    classifier.server_errors[bit / 64] |= 1 << (bit % 64);
                }
                _ => {}
            }
        }
        classifier
    }

    fn retries(&self, status: u16) -> bool {
        match status {
            429 => self.too_many_requests,
            500..=599 => {
                let bit = usize::from(status - 500);
                self.server_errors[bit / 64] & (1 << (bit % 64)) != 0
            }
            _ => false,
        }
    }
}

impl<B> Classify<http::Response<B>> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &Error>) -> Class {
        let res = match result {
            Ok(res) => res,
            Err(err) => return classify_error(err),
        };
        let status = res.status();
        if !(status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS) {
            return Class::SUCCESS;
        }
        let retryable = self.retries(status.as_u16());
        let retry_after = res
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Class {
            outcome: Outcome::Failure,
            retryable,
            retry_after,
        }
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // Wall-clock time is right here: the header names a calendar instant.
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, retry_after: Option<&str>) -> http::Response<()> {
        let mut b = http::Response::builder().status(status);
        if let Some(v) = retry_after {
            b = b.header("retry-after", v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http_statuses() {
        let c = HttpClassifier::default();
        assert_eq!(c.classify(Ok(&res(200, None))), Class::SUCCESS);
        assert_eq!(c.classify(Ok(&res(404, None))), Class::SUCCESS);
        assert_eq!(c.classify(Ok(&res(500, None))), Class::FATAL);
        let busy = c.classify(Ok(&res(503, Some("3"))));
        assert_eq!(busy.outcome, Outcome::Failure);
        assert!(busy.retryable);
        assert_eq!(busy.retry_after, Some(Duration::from_secs(3)));
        assert!(c.classify(Ok(&res(429, None))).retryable);
        let rejected = Error::BreakerOpen {
            retry_after: Duration::ZERO,
        };
        assert_eq!(
            Classify::<http::Response<()>>::classify(&c, Err(&rejected)),
            Class::IGNORED
        );
    }

    #[test]
    fn custom_retryable_statuses_across_the_whole_5xx_range() {
        let c = HttpClassifier::new([500, 563, 564, 599, 408]);
        for status in [500, 563, 564, 599] {
            assert!(c.classify(Ok(&res(status, None))).retryable, "{status}");
        }
        for status in [429, 501, 502, 503, 565, 598] {
            let class = c.classify(Ok(&res(status, None)));
            assert_eq!(class.outcome, Outcome::Failure, "{status}");
            assert!(!class.retryable, "{status}");
        }
        // Not a failure, so never retried, listed or not.
        assert_eq!(c.classify(Ok(&res(408, None))), Class::SUCCESS);
        let none = HttpClassifier::new([]);
        assert!(!none.classify(Ok(&res(503, None))).retryable);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
