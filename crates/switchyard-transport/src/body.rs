//! The body type requests and responses move through Switchyard with.
//!
//! A [`Body`] is either in memory (empty or one buffer: replayable, so a
//! retry or hedge can send it again) or streamed from a connection (sent
//! once, never buffered whole). [`Body::buffer_for_replay`] turns an incoming
//! stream into an in-memory body when it fits a limit, so retries work for
//! small bodies while large uploads stream through untouched.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use pin_project_lite::pin_project;
use switchyard_policy::{BoxError, ReplayBody};

pin_project! {
    /// A request or response body: in memory, or streamed.
    #[derive(Debug)]
    pub struct Body {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Full { data: Option<Bytes> },
        // In memory but sent once: the body of a request that must not be
        // repeated (it still goes out in one write).
        Once { data: Option<Bytes> },
        TooLarge { limit: u64 },
        Stream {
            prefix: Option<Bytes>,
            #[pin]
            rest: UnsyncBoxBody<Bytes, BoxError>,
            // Bytes still allowed before the body fails with `BodyTooLarge`.
            allowed: Option<u64>,
            limit: u64,
        },
        // A response read from its connection by our HTTP/1.1 client
        // (boxed: it would double the size of every request moved through
        // the policy layers, and only responses still arriving use it).
        Upstream {
            body: Box<crate::h1::ResponseBody>,
        },
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    /// A body held in memory.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// A body streamed from a connection (or any other source); it can be
    /// sent only once.
    pub fn streaming<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Stream {
                prefix: None,
                rest: body.map_err(Into::into).boxed_unsync(),
                allowed: None,
                limit: 0,
            },
        }
    }

    /// The same body, never sent twice: a retry or hedge repeats whatever
    /// body it can copy, so the gateway marks the bodies of requests that
    /// must not be repeated (even empty ones). An in-memory body stays in
    /// memory.
    pub fn sent_once(self) -> Self {
        match self.kind {
            Kind::Full { data } => Self {
                kind: Kind::Once { data },
            },
            kind => Self { kind },
        }
    }

    /// A response body our HTTP/1.1 client reads from its connection.
    pub(crate) fn upstream(body: crate::h1::ResponseBody) -> Self {
        Self {
            kind: Kind::Upstream {
                body: Box::new(body),
            },
        }
    }

    /// The bytes of an in-memory body, or none for a stream known to be
    /// empty: what our HTTP/1.1 client sends. Any other body comes back.
    pub(crate) fn into_sendable(self) -> Result<Bytes, Self> {
        match self.kind {
            Kind::Full { data } | Kind::Once { data } => Ok(data.unwrap_or_default()),
            Kind::Stream {
                prefix: None,
                ref rest,
                ..
            } if http_body::Body::is_end_stream(rest) => Ok(Bytes::new()),
            kind => Err(Self { kind }),
        }
    }

    /// True when the body is in memory and so can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }

    /// Reads `body` into memory if it is at most `limit` bytes; otherwise
    /// keeps what was read as a prefix and streams the rest (not replayable).
    ///
    /// A body already in memory stays there, replayable when it is within
    /// the limit. A stream announcing a size over the limit is not read at
    /// all.
    pub async fn buffer_for_replay(body: impl Into<Self>, limit: usize) -> Result<Self, BoxError> {
        use http_body::Body as _;
        let mut incoming = match body.into().kind {
            // A body marked to be sent once stays so.
            kind @ Kind::Once { .. } => return Ok(Self { kind }),
            Kind::Full { data } => {
                let fits = data.as_ref().is_none_or(|d| d.len() <= limit);
                let kind = if fits {
                    Kind::Full { data }
                } else {
                    Kind::Once { data }
                };
                return Ok(Self { kind });
            }
            Kind::Stream {
                prefix: None,
                rest,
                allowed: None,
                ..
            } => rest,
            kind => return Ok(Self { kind }),
        };
        if incoming.size_hint().lower() > limit as u64 {
            return Ok(Self {
                kind: Kind::Stream {
                    prefix: None,
                    rest: incoming,
                    allowed: None,
                    limit: 0,
                },
            });
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame?;
            if let Ok(mut data) = frame.into_data() {
                buf.extend_from_slice(&data.copy_to_bytes(data.remaining()));
            }
            // Trailers on a request body are dropped when buffering: HTTP/1.1
            // upstreams rarely accept them and gRPC bodies are not replayed.
            if buf.len() > limit {
                return Ok(Self {
                    kind: Kind::Stream {
                        prefix: Some(buf.freeze()),
                        rest: incoming,
                        allowed: None,
                        limit: 0,
                    },
                });
            }
        }
        Ok(Self::full(buf.freeze()))
    }

    /// Caps a streamed body at `limit` bytes in total: past it, the body
    /// yields a [`BodyTooLarge`] error (reachable with `is_caused_by`
    /// through the client's error) instead of more data. An in-memory body
    /// is returned as it is: its size is known, so the caller checks it.
    pub fn limited(mut self, limit: u64) -> Self {
        if let Kind::Stream {
            prefix,
            allowed,
            limit: max,
            ..
        } = &mut self.kind
        {
            let seen = prefix.as_ref().map_or(0, |p| p.len() as u64);
            if seen > limit {
                // The part already read is over: fail on the first poll.
                return Self {
                    kind: Kind::TooLarge { limit },
                };
            }
            *allowed = Some(limit - seen);
            *max = limit;
        }
        self
    }

    /// Collects the whole body into memory (for tests, health checks and
    /// small control-plane responses; the proxy path streams instead).
    pub async fn collect_bytes(self) -> Result<Bytes, BoxError> {
        Ok(BodyExt::collect(self).await?.to_bytes())
    }
}

/// A streamed body went past the limit set with [`Body::limited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: u64,
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl From<String> for Body {
    fn from(data: String) -> Self {
        Self::full(data)
    }
}

impl From<&'static str> for Body {
    fn from(data: &'static str) -> Self {
        Self::full(data)
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(incoming: hyper::body::Incoming) -> Self {
        Self::streaming(incoming)
    }
}

impl ReplayBody for Body {
    fn try_clone_body(&self) -> Option<Self> {
        match &self.kind {
            Kind::Full { data } => Some(Self {
                kind: Kind::Full { data: data.clone() },
            }),
            Kind::Once { .. }
            | Kind::Stream { .. }
            | Kind::TooLarge { .. }
            | Kind::Upstream { .. } => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } | KindProj::Once { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            KindProj::TooLarge { limit } => {
                Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))))
            }
            KindProj::Stream {
                prefix,
                rest,
                allowed,
                limit,
            } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                let frame = std::task::ready!(rest.poll_frame(cx));
                if let (Some(Ok(frame)), Some(allowed)) = (&frame, allowed) {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > *allowed {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))));
                    }
                    *allowed -= len;
                }
                Poll::Ready(frame)
            }
            KindProj::Upstream { body } => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } | Kind::Once { data } => data.is_none(),
            Kind::TooLarge { .. } => false,
            Kind::Stream { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
            Kind::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } | Kind::Once { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::TooLarge { .. } => SizeHint::new(),
            Kind::Stream { prefix, rest, .. } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            Kind::Upstream { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn full_bodies_replay_and_report_their_size() {
        let body = Body::full("hello");
        assert!(body.is_replayable());
        assert_eq!(body.size_hint().exact(), Some(5));
        let copy = body.try_clone_body().unwrap();
        assert_eq!(body.collect_bytes().await.unwrap(), "hello");
        assert_eq!(copy.collect_bytes().await.unwrap(), "hello");
        assert!(Body::empty().is_end_stream());
    }
}
