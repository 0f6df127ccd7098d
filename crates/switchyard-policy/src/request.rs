//! What the policies need from a request: a deadline it carries, and a way to
//! copy it for another attempt.
//!
//! Implemented for [`http::Request`] (the deadline lives in its extensions) and
//! for [`Call`], a plain wrapper for non-HTTP requests.

use tokio::time::Instant;

/// A request the policy layers can carry a deadline on and replay.
pub trait PolicyRequest: Sized {
    /// The instant by which the whole call must be answered, if one is set.
    fn deadline(&self) -> Option<Instant>;

    /// Sets the deadline. Layers only ever shorten it.
    fn set_deadline(&mut self, deadline: Instant);

    /// A copy for another attempt (retry or hedge), or `None` when this request
    /// can't be replayed (for example a streamed body past the buffer limit).
    fn try_clone(&self) -> Option<Self>;

    /// Time left until the deadline (`None` without a deadline, zero once passed).
    fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(crate::clock::now()))
    }
}

/// The deadline as stored in an [`http::Request`]'s extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline(Instant);

/// A request body that may be replayed for another attempt.
///
/// Implemented for in-memory bodies (always replayable); a streamed body
/// type implements it by answering `None` once it can't be replayed.
pub trait ReplayBody: Sized {
    /// A copy of the body for another attempt, or `None` if it can't be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($ty:ty),*) => {$(
        impl ReplayBody for $ty {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

replay_by_clone!((), String, Vec<u8>, &'static str, &'static [u8]);

impl<B: ReplayBody> PolicyRequest for http::Request<B> {
    fn deadline(&self) -> Option<Instant> {
        self.extensions().get::<Deadline>().map(|d| d.0)
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.extensions_mut().insert(Deadline(deadline));
    }

    fn try_clone(&self) -> Option<Self> {
        let mut req = http::Request::new(self.body().try_clone_body()?);
        *req.method_mut() = self.method().clone();
        *req.uri_mut() = self.uri().clone();
        *req.version_mut() = self.version();
        *req.headers_mut() = self.headers().clone();
        *req.extensions_mut() = self.extensions().clone();
        Some(req)
    }
}

/// A plain request with a deadline, for services that don't speak HTTP.
///
/// ```
/// use switchyard_policy::{Call, PolicyRequest};
/// let call = Call::new("get user 7");
/// assert!(call.deadline().is_none());
/// assert_eq!(call.into_inner(), "get user 7");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<T> {
    inner: T,
    deadline: Option<Instant>,
}

impl<T> Call<T> {
    /// Wraps a request with no deadline.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            deadline: None,
        }
    }

    /// The wrapped request.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped request, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the request.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Clone> PolicyRequest for Call<T> {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn http_request_carries_deadline_and_clones() {
        let mut req = http::Request::builder()
            .method("POST")
            .uri("/x")
            .header("a", "b")
            .body("body")
            .unwrap();
        assert_eq!(req.remaining(), None);
        req.set_deadline(Instant::now() + Duration::from_secs(2));
        let copy = req.try_clone().unwrap();
        assert_eq!(copy.method(), "POST");
        assert_eq!(copy.headers()["a"], "b");
        assert_eq!(*copy.body(), "body");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(copy.remaining(), Some(Duration::from_millis(1500)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(copy.remaining(), Some(Duration::ZERO));
    }
}
