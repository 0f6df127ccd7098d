//! Why an outbound request failed, classified by type.

use std::fmt;

use switchyard_policy::BoxError;

/// What kind of failure a [`TransportError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// No connection could be made: refused, unreachable, DNS, or the
    /// connect timeout passed. Nothing was sent, so a retry is always safe.
    Connect,
    /// The connection was closed or reset while the request was in flight;
    /// the upstream may have seen (part of) the request.
    Closed,
    /// The upstream spoke invalid HTTP (a malformed response, an HTTP/2
    /// protocol error or stream reset).
    Protocol,
    /// The request itself could not be sent (for example a relative URI or a
    /// request body that failed while streaming).
    Request,
}

impl TransportErrorKind {
    /// A stable lowercase name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
            Self::Request => "request",
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outbound request failed before a response head arrived.
///
/// The underlying hyper or I/O error is kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("upstream {kind} error")]
pub struct TransportError {
    kind: TransportErrorKind,
    #[source]
    source: BoxError,
}

impl TransportError {
    /// An error of `kind` caused by `source`.
    pub fn new(kind: TransportErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// True when no connection could be made, so nothing reached the
    /// upstream and a retry is safe whatever the request's method.
    pub fn is_connect(&self) -> bool {
        self.kind == TransportErrorKind::Connect
    }

    /// The first [`TransportError`] in `err`'s source chain, if any.
    ///
    /// Policy and client layers wrap transport errors; this finds the
    /// transport's verdict under them without matching on messages.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a TransportError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<TransportError>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }

    /// Classifies an error from hyper-util's pooled client.
    pub(crate) fn from_client(err: hyper_util::client::legacy::Error) -> Self {
        let kind = if err.is_connect() {
            TransportErrorKind::Connect
        } else {
            classify_chain(&err)
        };
        Self::new(kind, err)
    }
}

/// Walks the source chain for the first error that tells what happened.
fn classify_chain(err: &(dyn std::error::Error + 'static)) -> TransportErrorKind {
    let mut cur = err.source();
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return TransportErrorKind::Protocol;
            }
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return TransportErrorKind::Closed;
            }
            if h.is_user() || h.is_body_write_aborted() {
                return TransportErrorKind::Request;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused | K::AddrNotAvailable | K::NetworkUnreachable => {
                    TransportErrorKind::Connect
                }
                _ => TransportErrorKind::Closed,
            };
        }
        cur = e.source();
    }
    // hyper reports HTTP/2 stream and connection errors (RST_STREAM, GOAWAY,
    // protocol violations) with an h2 source and no predicate of its own.
    TransportErrorKind::Protocol
}
