//! Our own HTTP/1.1 client for requests whose body is in memory.
//!
//! Why not hyper's client here: hyper runs every connection in a task of its
//! own and hands each request, response and body chunk across channels to
//! it, and hyper-util's pool adds its own bookkeeping around every checkout.
//! A proxy forwarding one request at a time per connection pays two task
//! wake-ups and that bookkeeping per request — about a third of Switchyard's
//! user-space time per proxied request before this module existed. Here the
//! task that sends the request writes it and reads the response itself, and
//! a response whose body has already arrived is returned in memory with its
//! connection back in the pool before the caller sees it.
//!
//! Scope: HTTP/1.1 requests whose body is in memory (empty, or buffered for
//! retries). Streamed request bodies, HTTP/2 and upgrades stay on hyper.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and
//! 304; `Transfer-Encoding` ending in `chunked` is decoded; another
//! `Transfer-Encoding` or no length at all reads to the end of the
//! connection; `Content-Length` must be one valid number (equal duplicates
//! are allowed). `Connection: keep-alive|close` and `Keep-Alive` are acted
//! on here and not passed up (a `Connection` naming other fields is). A
//! connection is reused only when the response said so
//! (HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `keep-alive`) and
//! was read exactly to its end.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header,
    uri::{Authority, Scheme},
};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use switchyard_policy::BoxError;
use tokio::{io::AsyncWriteExt, time::Instant};

use crate::{
    Body, Head, TransportError, TransportErrorKind,
    connect::{CountingConnector, OpenGuard, Stream},
};

/// Most header fields a response head may have.
const MAX_HEADERS: usize = 128;
/// Largest response head (status line and fields) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of chunk extensions accepted over a whole body: nothing here
/// reads them, and without a total a body of one-byte chunks could make a
/// peer send (and us parse) thousands of times its size.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// How much room a read makes in a connection's buffer.
const READ_CHUNK: usize = 8 * 1024;

/// A pool of idle HTTP/1.1 connections per endpoint, and the client that
/// uses it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.inner.max_idle)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish_non_exhaustive()
    }
}

struct PoolInner {
    connector: CountingConnector,
    // foldhash: hashed twice per request; the keys are our own endpoints,
    // so SipHash's DoS resistance buys nothing here.
    idle: Mutex<HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper_started: AtomicBool,
}

/// An endpoint's authority, hashed and compared byte for byte: the
/// `Authority` impls ignore ASCII case, which costs more than the lookup
/// (a case difference only splits a pool in two).
#[derive(Clone)]
struct Key(Authority);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One open connection: the stream, bytes read but not consumed yet, and
/// the guard counting it as open.
struct Conn {
    io: Stream,
    buf: BytesMut,
    authority: Key,
    _open: OpenGuard,
}

impl Pool {
    pub(crate) fn new(
        connector: CountingConnector,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                connector,
                idle: Mutex::new(HashMap::default()),
                max_idle,
                idle_timeout,
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends the request `parts` with the body `data`, and reads the
    /// response head (and the body too, when it has already arrived).
    pub(crate) fn send(
        &self,
        head: Arc<Head>,
        scheme: Scheme,
        authority: Authority,
        field: Option<(HeaderName, HeaderValue)>,
        data: Bytes,
    ) -> impl Future<Output = Result<http::Response<Body>, TransportError>> + Send + 'static {
        let pool = self.inner.clone();
        async move {
            let wire = encode_request(&head, &authority, field.as_ref(), &data);
            // The head is not needed past this point: let a retry's copy
            // be the last holder rather than keep it for the whole call.
            let method = head.parts.method.clone();
            let raw_fields = head.raw_response_fields;
            drop(head);
            let key = Key(authority);
            let head_only = method == Method::HEAD;
            let mut fresh_only = false;
            loop {
                let (mut conn, reused) = match (!fresh_only).then(|| pool.checkout(&key)).flatten()
                {
                    Some(conn) => (conn, true),
                    // Boxed: connecting is the rare case, and its state
                    // would more than double every request's future.
                    None => (Box::pin(pool.connect(&scheme, key.clone())).await?, false),
                };
                match conn.round_trip(&wire, head_only, raw_fields).await {
                    Ok(head) => return Ok(pool.finish(conn, head)),
                    // A pooled connection the endpoint closed while it sat
                    // idle fails before any byte of a response: send again
                    // once on a new connection, when repeating is harmless.
                    Err(Failure {
                        nothing_received: true,
                        ..
                    }) if reused && is_idempotent(&method) => {
                        fresh_only = true;
                    }
                    Err(failure) => return Err(failure.error),
                }
            }
        }
    }
}

impl PoolInner {
    /// The most recently used idle connection to `authority` that is still
    /// open, if any.
    fn checkout(&self, authority: &Key) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(authority)?;
        while let Some(idle) = list.pop() {
            if idle.is_usable(self.idle_timeout) {
                return Some(idle.conn);
            }
        }
        None
    }

    async fn connect(&self, scheme: &Scheme, authority: Key) -> Result<Conn, TransportError> {
        let uri = http::Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.0.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| TransportError::new(TransportErrorKind::Request, e))?;
        let (io, open) = self
            .connector
            .open(uri)
            .await
            .map_err(|e| TransportError::new(TransportErrorKind::Connect, e))?;
        Ok(Conn {
            io,
            buf: BytesMut::new(),
            authority,
            _open: open,
        })
    }

    /// Turns a parsed head into the response, taking the body out of the
    /// connection's buffer when it is all there (the connection then goes
    /// back to the pool at once) or streaming it from the connection.
    fn finish(self: &Arc<Self>, mut conn: Conn, head: ResponseHead) -> http::Response<Body> {
        let ResponseHead {
            mut response,
            framing,
            keep_alive,
        } = head;
        let body = match framing {
            Framing::Length(0) => {
                self.release(conn, keep_alive);
                Body::empty()
            }
            Framing::Length(len) if conn.buf.len() as u64 >= len => {
                let data = conn.buf.split_to(len as usize).freeze();
                self.release(conn, keep_alive);
                Body::full(data)
            }
            framing => Body::upstream(ResponseBody {
                conn: Some(conn),
                pool: Arc::downgrade(self),
                framing,
                keep_alive,
            }),
        };
        *response.body_mut() = body;
        response
    }

    /// Puts a connection whose response was read to its end back in the
    /// pool, or closes it.
    fn release(self: &Arc<Self>, mut conn: Conn, keep_alive: bool) {
        // Bytes past the response mean the endpoint sent more than one
        // response: the connection can't be trusted with another request.
        if !keep_alive || !conn.buf.is_empty() || self.max_idle == 0 || !conn.io.is_clean() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = match idle.get_mut(&conn.authority) {
            Some(list) => list,
            None => idle.entry(conn.authority.clone()).or_default(),
        };
        if list.len() < self.max_idle {
            list.push(Idle {
                conn,
                since: switchyard_policy::clock::now(),
            });
        }
        drop(idle);
        self.start_reaper();
    }

    /// Starts, once, the task that closes idle connections past the idle
    /// timeout or closed by their endpoint, so none lingers half-closed.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.load(Ordering::Relaxed)
            || self.reaper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper_started.store(false, Ordering::Relaxed);
            return;
        };
        let period =
            (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let pool = Arc::downgrade(self);
        runtime.spawn(reap(pool, period));
    }
}

/// Lets the next release start a new sweep when this one ends (its runtime
/// shut down while the pool lives on).
struct SweepRunning(Weak<PoolInner>);

impl Drop for SweepRunning {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.reaper_started.store(false, Ordering::Relaxed);
        }
    }
}

async fn reap(pool: Weak<PoolInner>, period: Duration) {
    let _running = SweepRunning(pool.clone());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock();
        for list in idle.values_mut() {
            list.retain(|i| i.is_usable(pool.idle_timeout));
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

impl Idle {
    /// Not idle past `timeout`, and neither closed nor written to by the
    /// endpoint meanwhile.
    fn is_usable(&self, timeout: Duration) -> bool {
        switchyard_policy::clock::now().saturating_duration_since(self.since) < timeout
            && self.conn.is_open_and_quiet()
    }
}

impl Conn {
    /// True when the endpoint has neither closed this idle connection nor
    /// sent anything on it. Costs no system call unless the socket was
    /// reported readable.
    fn is_open_and_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.tcp().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes the request and reads up to the end of the final response head.
    async fn round_trip(
        &mut self,
        wire: &[u8],
        head_only: bool,
        raw_fields: bool,
    ) -> Result<ResponseHead, Failure> {
        if let Err(e) = self.io.write_all(wire).await {
            return Err(Failure::closed(e, true));
        }
        if let Err(e) = self.io.flush().await {
            return Err(Failure::closed(e, true));
        }
        let mut informational = false;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, head_only, raw_fields)? {
                    Some(Parsed::Final(head)) => return Ok(head),
                    Some(Parsed::Informational) => {
                        informational = true;
                        continue;
                    }
                    None => {}
                }
            }
            let nothing_received = self.buf.is_empty() && !informational;
            match read_some(&mut self.io, &mut self.buf).await {
                Ok(0) => {
                    return Err(Failure::closed(
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the endpoint closed the connection before a complete response head",
                        ),
                        nothing_received,
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(Failure::closed(e, nothing_received)),
            }
        }
    }
}

/// Reads what is available into `buf`, making room first.
async fn read_some(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(Pin::new(&mut *io), cx, buf)).await
}

pub(crate) fn poll_read_some(
    io: Pin<&mut impl tokio::io::AsyncRead>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    buf.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(io, cx, buf)
}

/// A failed round trip, and whether nothing of a response arrived (so a
/// request sent on a stale pooled connection may be sent again).
struct Failure {
    error: TransportError,
    nothing_received: bool,
}

impl Failure {
    fn closed(err: std::io::Error, nothing_received: bool) -> Self {
        Self {
            error: TransportError::new(TransportErrorKind::Closed, err),
            nothing_received,
        }
    }

    fn protocol(msg: impl Into<BoxError>) -> Self {
        Self {
            error: TransportError::new(TransportErrorKind::Protocol, msg),
            nothing_received: false,
        }
    }
}

struct ResponseHead {
    response: http::Response<Body>,
    framing: Framing,
    keep_alive: bool,
}

// Returned by value and matched at once: boxing the head would cost an
// allocation per response for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Final(ResponseHead),
    Informational,
}

/// Where each field's value lies in a head, by name, while the head's bytes
/// are still borrowed by the parser: on the stack for the usual dozen or so
/// fields (a heap vector was an allocation per message).
pub(crate) type Spans = smallvec::SmallVec<[(HeaderName, std::ops::Range<usize>); 16]>;

/// How a body is delimited (a response's here, a request's in the server).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding, at this point of a chunk, with the bytes of
    /// chunk extensions seen so far (capped at [`MAX_CHUNK_EXTENSIONS`]).
    Chunked(Chunk, u32),
    /// Until the endpoint closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting the trailer section after the last chunk.
    Trailers,
}

/// Parses one response head off the front of `buf`. `None`: more bytes needed.
/// `raw_fields`: the caller passes the response on ([`Head::raw_response_fields`]).
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    raw_fields: bool,
) -> Result<Option<Parsed>, Failure> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(Failure::protocol(format!(
                "the response head is larger than {MAX_HEAD_BYTES} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::protocol(format!("invalid response head: {e}"))),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| Failure::protocol(format!("invalid response status {code}")))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Failure::protocol(
                "the endpoint switched protocols without being asked",
            ));
        }
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    let no_body =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let base = buf.as_ptr() as usize;

    // Passed on unparsed when the caller asked and nothing needs the map:
    // the failure classifiers read `Retry-After` off 5xx and 429 answers,
    // and `Connection` naming fields, another hop-by-hop field or a length
    // with a coding needs the map's removal (all rare).
    let mut framing = FramingFields::default();
    let mut passed = smallvec::SmallVec::new();
    let passed_on = raw_fields
        && !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
        && pass_on(
            parsed.headers,
            buf,
            head_only,
            status,
            &mut framing,
            &mut passed,
        )?;
    // Otherwise framing and persistence are read off the raw fields in the
    // same pass that records where each value lies; the values become
    // slices of the head's bytes, not copies.
    let mut spans = Spans::new();
    if !passed_on {
        framing = FramingFields::default();
        for h in parsed.headers.iter() {
            let name = header_name(h.name.as_bytes())
                .map_err(|_| Failure::protocol(format!("invalid header name {:?}", h.name)))?;
            if framing.note(field_kind(h.name.as_bytes()), h.value)? {
                continue;
            }
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start..start + h.value.len()));
        }
    }
    // RFC 9112 §6.1: HTTP/1.0 has no transfer codings; the framing of such
    // a response can't be trusted.
    if framing.chunked.is_some() && version == Version::HTTP_10 {
        return Err(Failure::protocol(
            "an HTTP/1.0 response with Transfer-Encoding",
        ));
    }
    let head = buf.split_to(len).freeze();
    // §6.3: with both, Transfer-Encoding wins; the length is removed before
    // the response goes further, and the connection is not reused (the
    // message may be an attempt at response splitting). Never so when the
    // fields were passed on.
    let both = framing.chunked.is_some() && framing.length.is_some();
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = status;
    *response.version_mut() = version;
    if passed_on {
        response.extensions_mut().insert(RawFields {
            head,
            fields: passed,
        });
    } else {
        // Room for the request id a proxy adds without growing the map.
        let mut headers = HeaderMap::with_capacity(spans.len() + 2);
        for (name, range) in spans.drain(..) {
            headers.append(name, parsed_value(&head, range));
        }
        if both {
            headers.remove(header::CONTENT_LENGTH);
        }
        *response.headers_mut() = headers;
    }

    let body = if no_body {
        Framing::Length(0)
    } else {
        framing.framing()
    };
    let keep_alive = !both && !framing.close && (version != Version::HTTP_10 || framing.keep_alive);
    Ok(Some(Parsed::Final(ResponseHead {
        response,
        keep_alive: keep_alive && !matches!(body, Framing::Close),
        framing: body,
    })))
}

/// Notes `fields`' framing into `framing` and where each end-to-end field
/// lies into `passed`, for a response passed on unparsed ([`RawFields`]);
/// false when the response needs its map after all (`Connection` naming
/// fields, another hop-by-hop field, a length with a coding).
fn pass_on(
    fields: &[httparse::Header<'_>],
    head: &[u8],
    head_only: bool,
    status: StatusCode,
    framing: &mut FramingFields,
    passed: &mut smallvec::SmallVec<[RawField; 8]>,
) -> Result<bool, Failure> {
    // A length where no body follows only informs (HEAD, 304): passed on,
    // as the server would keep it.
    let keep_length =
        (head_only && status != StatusCode::NO_CONTENT) || status == StatusCode::NOT_MODIFIED;
    let base = head.as_ptr() as usize;
    for h in fields {
        let kind = field_kind(h.name.as_bytes());
        let handled = framing.note(kind, h.value)?;
        match kind {
            FieldKind::EndToEnd => {}
            FieldKind::Length if keep_length => {}
            FieldKind::Length | FieldKind::Coding | FieldKind::KeepAlive => continue,
            FieldKind::Connection if handled => continue,
            FieldKind::Connection | FieldKind::OtherHopByHop => return Ok(false),
        }
        // httparse's default configuration (in `parse_head`) allows no
        // space before the colon and no folded lines: a field is `name:`,
        // optional blanks and its value, on one line, all of it checked, so
        // it can be written on as it is. Were that configuration changed,
        // this would not hold.
        let start = h.name.as_ptr() as usize - base;
        let value_start = h.value.as_ptr() as usize - base;
        debug_assert_eq!(head[start + h.name.len()], b':');
        // Offsets within a head of at most MAX_HEAD_BYTES plus a read.
        passed.push(RawField {
            start: start as u32,
            name_end: (start + h.name.len()) as u32,
            value_start: value_start as u32,
            end: (value_start + h.value.len()) as u32,
        });
    }
    Ok(framing.chunked.is_none() || framing.length.is_none())
}

/// What a response field means to the connection it came on, by its name
/// as sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Length,
    Coding,
    Connection,
    KeepAlive,
    /// `TE`, `Trailer`, `Upgrade`, `Proxy-Connection`, `Proxy-Authenticate`,
    /// `Proxy-Authorization`: not for the next hop, removed by a proxy.
    OtherHopByHop,
    EndToEnd,
}

/// The kind of the field named `name` (any case): the usual spellings are
/// compared whole; otherwise most lengths rule a name out without comparing
/// a byte (a byte-wise case-blind comparison of a name costs as much as the
/// rest of its field's handling).
fn field_kind(name: &[u8]) -> FieldKind {
    match name {
        b"Content-Length" | b"content-length" => return FieldKind::Length,
        b"Connection" | b"connection" => return FieldKind::Connection,
        b"Transfer-Encoding" | b"transfer-encoding" => return FieldKind::Coding,
        _ => {}
    }
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        14 if is("content-length") => FieldKind::Length,
        17 if is("transfer-encoding") => FieldKind::Coding,
        10 if is("connection") => FieldKind::Connection,
        10 if is("keep-alive") => FieldKind::KeepAlive,
        2 if is("te") => FieldKind::OtherHopByHop,
        7 if is("trailer") || is("upgrade") => FieldKind::OtherHopByHop,
        16 if is("proxy-connection") => FieldKind::OtherHopByHop,
        18 if is("proxy-authenticate") => FieldKind::OtherHopByHop,
        19 if is("proxy-authorization") => FieldKind::OtherHopByHop,
        _ => FieldKind::EndToEnd,
    }
}

/// The end-to-end fields of an HTTP/1 response, as the endpoint wrote
/// them, for a proxy that passes the response on.
///
/// A request whose [`Head::raw_response_fields`] is set gets its response's
/// fields here, in the response's extensions, rather than in its
/// `HeaderMap`, which then holds only what the caller adds. The
/// transport's [`server`](crate::server) writes them after the map's,
/// leaving out those whose name the map has: a field the caller sets
/// replaces the endpoint's. Building the map, looking fields up in it and
/// writing it out field by field again cost a tenth of the user-space work
/// of a proxied request; the fields here are written as they came.
///
/// Never here: `Transfer-Encoding`, `Connection`, `Keep-Alive`, and
/// `Content-Length` unless no body follows (a HEAD request's answer, 304):
/// the framing is the server's to write. A response that had other
/// hop-by-hop fields, or `Connection` naming fields, has its map as usual,
/// and so has a 5xx or 429 answer (the failure classifiers read its
/// `Retry-After`). A server other than the transport's must move these
/// fields into the map itself ([`RawFields::append_to`]).
#[derive(Clone, Debug)]
pub struct RawFields {
    /// The response head the fields lie in.
    head: Bytes,
    fields: smallvec::SmallVec<[RawField; 8]>,
}

/// Where one field lies in its head: `name: value` is `start..end`, the
/// name `start..name_end`, the value `value_start..end`.
#[derive(Clone, Copy, Debug)]
struct RawField {
    start: u32,
    name_end: u32,
    value_start: u32,
    end: u32,
}

impl RawFields {
    /// The fields in order, each as (name as sent, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| {
            (
                &self.head[f.start as usize..f.name_end as usize],
                &self.head[f.value_start as usize..f.end as usize],
            )
        })
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Appends the fields to `headers` (names lower-cased), for code that
    /// reads them or a server that writes only the map.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for f in &self.fields {
            let name = &self.head[f.start as usize..f.name_end as usize];
            let Ok(name) = header_name(name) else {
                continue; // httparse accepted it, so HeaderName does too.
            };
            headers.append(
                name,
                parsed_value(&self.head, f.value_start as usize..f.end as usize),
            );
        }
    }

    /// Writes each field as `name: value\r\n` into `buf`, except those
    /// whose name `map` has and, unless `keep_length`, `Content-Length`;
    /// true when one of them was `Date`.
    pub(crate) fn write(&self, buf: &mut Vec<u8>, map: &HeaderMap, keep_length: bool) -> bool {
        let mut has_date = false;
        for f in &self.fields {
            let name = &self.head[f.start as usize..f.name_end as usize];
            let replaced = !map.is_empty()
                && map
                    .keys()
                    .any(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()));
            if replaced || (!keep_length && field_kind(name) == FieldKind::Length) {
                continue;
            }
            has_date |= name.len() == 4 && name.eq_ignore_ascii_case(b"date");
            buf.extend_from_slice(&self.head[f.start as usize..f.end as usize]);
            buf.extend_from_slice(b"\r\n");
        }
        has_date
    }
}

/// What a response's fields say about its framing and persistence.
#[derive(Default)]
struct FramingFields {
    length: Option<u64>,
    /// `Some(true)`: chunked (the one coding accepted); `Some(false)`: a
    /// `Transfer-Encoding` field naming no coding.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    /// Records what a field of `kind` says; true when the field only
    /// managed this connection and was fully acted on here (`Keep-Alive`,
    /// or a `Connection` naming nothing but `keep-alive`/`close`), so it is
    /// not passed up. A `Connection` naming other fields is kept, so a
    /// proxy above can remove the fields it names.
    fn note(&mut self, kind: FieldKind, value: &[u8]) -> Result<bool, Failure> {
        match kind {
            FieldKind::Length => {
                for part in value.split(|&b| b == b',') {
                    let n = decimal(part.trim_ascii()).ok_or_else(|| {
                        Failure::protocol("invalid Content-Length in the response")
                    })?;
                    if self.length.is_some_and(|l| l != n) {
                        return Err(Failure::protocol(
                            "conflicting Content-Length values in the response",
                        ));
                    }
                    self.length = Some(n);
                }
            }
            FieldKind::Coding => {
                // `chunked`, once, is the only coding taken off here; the
                // server frames the body again itself. Another one (gzip,
                // ...) would reach the client still applied but no longer
                // declared: refused, as nginx refuses it (and as the
                // server refuses it in requests).
                for coding in value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty())
                {
                    if !coding.eq_ignore_ascii_case(b"chunked") || self.chunked == Some(true) {
                        return Err(Failure::protocol(format!(
                            "unsupported transfer coding in the response: {}",
                            String::from_utf8_lossy(value)
                        )));
                    }
                    self.chunked = Some(true);
                }
                self.chunked.get_or_insert(false);
            }
            // The usual value, without splitting it into tokens.
            FieldKind::Connection if value == b"keep-alive" => {
                self.keep_alive = true;
                return Ok(true);
            }
            FieldKind::Connection => {
                let mut only_management = true;
                for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let close = token.eq_ignore_ascii_case(b"close");
                    let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                    self.close |= close;
                    self.keep_alive |= keep_alive;
                    only_management &= close || keep_alive || token.is_empty();
                }
                return Ok(only_management);
            }
            FieldKind::KeepAlive => return Ok(true),
            FieldKind::OtherHopByHop | FieldKind::EndToEnd => {}
        }
        Ok(false)
    }

    /// RFC 9112 §6.3: a transfer coding wins over a length; an empty
    /// `Transfer-Encoding`, or no length at all, reads to the close.
    fn framing(&self) -> Framing {
        match (self.chunked, self.length) {
            (Some(true), _) => Framing::Chunked(Chunk::Size, 0),
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request head and body as they go on the wire: origin-form target,
/// `Host` from the URI when the request has none, and framing from the body
/// (any `Content-Length` or `Transfer-Encoding` the request carried is
/// replaced).
fn encode_request(
    head: &Head,
    authority: &Authority,
    field: Option<&(HeaderName, HeaderValue)>,
    body: &Bytes,
) -> Vec<u8> {
    let parts = &head.parts;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let fields_start = out.len();
    // One pass over the fields notes Host and Content-Length (two map
    // lookups less per request).
    let (mut has_host, mut had_length) = (false, false);
    // The head's fields, its added ones, then this attempt's own (in place
    // of any the head has).
    let own = field.map(|(name, _)| name);
    let fields = parts
        .headers
        .iter()
        .chain(head.added.iter().map(|(name, value)| (name, value)))
        .filter(|(name, _)| Some(*name) != own);
    for (name, value) in fields.chain(field.map(|(name, value)| (name, value))) {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            had_length |= name == header::CONTENT_LENGTH;
            continue;
        }
        has_host |= name == header::HOST;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        // Host goes first (RFC 9110 §7.2); a request without one is rare.
        let line = [b"host: ", authority.as_str().as_bytes(), b"\r\n"].concat();
        out.splice(fields_start..fields_start, line);
    }
    // A body, or a method that carries one, says its length; an empty GET
    // says nothing, as clients do.
    let body_method = !matches!(
        parts.method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    );
    if !body.is_empty() || had_length || body_method {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The value httparse found at `range` of `head`, without checking its
/// bytes again.
///
/// httparse accepts in a field value exactly the bytes `HeaderValue` does
/// (tab, 0x20–0x7E, 0x80–0xFF; the test
/// `httparse_and_header_value_accept_the_same_bytes` holds both crates to
/// it), so the check `HeaderValue::from_maybe_shared` repeats, a branch per
/// byte of every field of every request and response, is skipped, as hyper
/// does (405 instructions less per proxied request, `bench/instructions.sh`).
#[allow(unsafe_code)]
#[inline]
pub(crate) fn parsed_value(head: &Bytes, range: std::ops::Range<usize>) -> HeaderValue {
    let value = head.slice(range);
    // SAFETY: `value` is a field value httparse parsed from `head` with its
    // default configuration (no obsolete line folding, invalid fields are
    // errors), so every byte is one `HeaderValue` accepts (see above).
    unsafe { HeaderValue::from_maybe_shared_unchecked(value) }
}

/// `digits` as a number: one or more ASCII digits (no sign, no space)
/// whose value fits in a `u64`; `None` otherwise.
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// The field name for `bytes`: the names most messages carry are matched as
/// they are spelled on the wire, the rest go through
/// [`HeaderName::from_bytes`], which lower-cases every name into a scratch
/// buffer before it looks it up (about five times the cost, for each field
/// of every request and response).
pub(crate) fn header_name(bytes: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    Ok(match bytes {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Connection" | b"connection" => header::CONNECTION,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(bytes),
    })
}

/// A response body read from its connection as the caller polls it; the
/// connection goes back to the pool when the body has been read to its end.
pub(crate) struct ResponseBody {
    conn: Option<Conn>,
    pool: Weak<PoolInner>,
    framing: Framing,
    keep_alive: bool,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The body was read to its end: the connection goes back to the pool.
    fn done(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.release(conn, self.keep_alive);
        }
    }
}

/// What decoding the buffered bytes gave.
pub(crate) enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body ended.
    End,
}

/// The buffered chunk-size line up to its CRLF, or all of `buf` when the
/// line is not complete yet. httparse takes any byte in a chunk extension,
/// a bare LF included; a hop that ends lines at LF would read the body's
/// boundaries differently (request smuggling), so the line may hold no
/// control byte other than a tab and must end in CRLF.
fn chunk_size_line(buf: &[u8]) -> Result<&[u8], &'static str> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(buf);
    };
    let line = &buf[..end];
    match line.split_last() {
        Some((b'\r', text)) if !text.iter().any(|&b| b.is_ascii_control() && b != b'\t') => {
            Ok(&buf[..=end])
        }
        _ => Err("a chunk-size line with a bare CR or LF or a control byte"),
    }
}

/// Decodes the next frame of a body framed by `framing` out of `buf`. When
/// it returns the body's last frame, `framing` is left at `Length(0)`.
pub(crate) fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, BoxError> {
    loop {
        match framing {
            Framing::Length(0) => return Ok(Step::End),
            Framing::Length(rest) | Framing::Chunked(Chunk::Data(rest), _) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*rest).min(buf.len() as u64);
                *rest -= n;
                let data = buf.split_to(n as usize).freeze();
                if let Framing::Chunked(chunk @ Chunk::Data(0), _) = framing {
                    *chunk = Chunk::DataEnd;
                }
                return Ok(Step::Frame(Frame::data(data)));
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                return Ok(Step::Frame(Frame::data(buf.split().freeze())));
            }
            // httparse reads a size line without digits as 0, the last chunk.
            Framing::Chunked(Chunk::Size, _)
                if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) =>
            {
                return Err("a chunk-size line without a size in the body".into());
            }
            Framing::Chunked(Chunk::Size, extensions) => match chunk_size_line(buf)
                .and_then(|line| httparse::parse_chunk_size(line).map_err(|_| "invalid chunk size"))
            {
                Err(e) => return Err(format!("{e} in the body").into()),
                Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                    return Err("chunk-size line too long in the body".into());
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    // Everything on the line but the digits and its CRLF.
                    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    let extra = u32::try_from(used - digits - 2).unwrap_or(u32::MAX);
                    let extensions = extensions.saturating_add(extra);
                    if extensions as usize > MAX_CHUNK_EXTENSIONS {
                        return Err(format!(
                            "chunk extensions longer than {MAX_CHUNK_EXTENSIONS} bytes in the body"
                        )
                        .into());
                    }
                    buf.advance(used);
                    let next = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                    *framing = Framing::Chunked(next, extensions);
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    return Err("chunk-size line too long in the body".into());
                }
                Ok(httparse::Status::Partial) => return Ok(Step::More),
            },
            Framing::Chunked(Chunk::DataEnd, extensions) => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("missing CRLF after a chunk in the body".into());
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size, *extensions);
            }
            Framing::Chunked(Chunk::Trailers, _) => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(name, value);
                            }
                        }
                        buf.advance(used);
                        *framing = Framing::Length(0);
                        if !trailers.is_empty() {
                            return Ok(Step::Frame(Frame::trailers(trailers)));
                        }
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err("trailer section too long in the body".into());
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(e) => {
                        return Err(format!("invalid trailers in the body: {e}").into());
                    }
                }
            }
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode(&mut this.framing, &mut conn.buf) {
                Ok(Step::Frame(frame)) => {
                    if matches!(this.framing, Framing::Length(0)) {
                        this.done();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.done();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(TransportError::new(
                        TransportErrorKind::Protocol,
                        e,
                    )))));
                }
            }
            match ready!(poll_read_some(Pin::new(&mut conn.io), cx, &mut conn.buf)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(TransportError::new(
                        TransportErrorKind::Closed,
                        "the endpoint closed the connection before the end of the response body",
                    )))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(TransportError::new(
                        TransportErrorKind::Closed,
                        e,
                    )))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_takes_digits_that_fit_and_nothing_else() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"007"), Some(7));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"-1",
            b" 1",
            b"1a",
            b"1,1",
        ] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn field_kinds_ignore_case_and_only_exact_names_match() {
        for (name, kind) in [
            ("Content-Length", FieldKind::Length),
            ("CONTENT-length", FieldKind::Length),
            ("transfer-encoding", FieldKind::Coding),
            ("Connection", FieldKind::Connection),
            ("keep-ALIVE", FieldKind::KeepAlive),
            ("TE", FieldKind::OtherHopByHop),
            ("Trailer", FieldKind::OtherHopByHop),
            ("upgrade", FieldKind::OtherHopByHop),
            ("Proxy-Connection", FieldKind::OtherHopByHop),
            ("proxy-authenticate", FieldKind::OtherHopByHop),
            ("Proxy-Authorization", FieldKind::OtherHopByHop),
            ("Content-Lengths", FieldKind::EndToEnd),
            ("connections", FieldKind::EndToEnd),
            ("tea", FieldKind::EndToEnd),
            ("date", FieldKind::EndToEnd),
        ] {
            assert!(field_kind(name.as_bytes()) == kind, "{name}");
        }
    }

    /// What makes [`parsed_value`] sound: whatever byte a field value
    /// holds, a value httparse returns is one `HeaderValue` accepts, in a
    /// request as in a response, and the bytes both refuse are refused.
    #[test]
    fn httparse_and_header_value_accept_the_same_bytes() {
        for b in 0..=255u8 {
            let fields = [b"x: a".as_slice(), &[b], b"b\r\n\r\n"].concat();
            let request = [b"GET / HTTP/1.1\r\n".as_slice(), &fields].concat();
            let response = [b"HTTP/1.1 200 OK\r\n".as_slice(), &fields].concat();

            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut slots);
            let parsed = req.parse(&request);
            let mut values: Vec<Vec<u8>> = match parsed {
                Ok(httparse::Status::Complete(_)) => {
                    req.headers.iter().map(|h| h.value.to_vec()).collect()
                }
                _ => Vec::new(),
            };
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut res = httparse::Response::new(&mut slots);
            if let Ok(httparse::Status::Complete(_)) = res.parse(&response) {
                values.extend(res.headers.iter().map(|h| h.value.to_vec()));
            }
            for value in &values {
                assert!(
                    HeaderValue::from_bytes(value).is_ok(),
                    "httparse returned {value:?} (byte {b:#04x}), which HeaderValue refuses"
                );
            }
            // A byte that can sit inside a value is accepted by both or by
            // neither (CR and LF end the line instead).
            if b != b'\r' && b != b'\n' {
                assert_eq!(
                    parsed.is_ok(),
                    HeaderValue::from_bytes(&[b'a', b, b'b']).is_ok(),
                    "byte {b:#04x}"
                );
            }
        }
    }

    #[test]
    fn the_fast_field_names_are_the_ones_from_bytes_gives() {
        for name in [
            "Host",
            "host",
            "HOST",
            "Date",
            "server",
            "Accept",
            "connection",
            "User-Agent",
            "Content-Type",
            "content-length",
            "Content-length",
            "Accept-Encoding",
            "transfer-encoding",
            "X-Request-Id",
            "x-forwarded-for",
            "Te",
        ] {
            assert_eq!(
                header_name(name.as_bytes()).unwrap(),
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "{name}"
            );
        }
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
    }

    fn encoded_with(
        req: http::Request<()>,
        added: &[(&'static str, &'static str)],
        field: Option<(HeaderName, HeaderValue)>,
        body: &'static [u8],
    ) -> String {
        let (parts, ()) = req.into_parts();
        let mut head = Head::from(parts);
        for (name, value) in added {
            head.added.push((
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            ));
        }
        let authority = Authority::from_static("10.0.0.7:8080");
        String::from_utf8(encode_request(
            &head,
            &authority,
            field.as_ref(),
            &Bytes::from_static(body),
        ))
        .unwrap()
    }

    fn encoded(req: http::Request<()>, body: &'static [u8]) -> String {
        encoded_with(req, &[], None, body)
    }

    #[test]
    fn an_attempts_own_field_replaces_the_heads() {
        let req = http::Request::get("/")
            .header("host", "h")
            .header("x-deadline-ms", "900")
            .header("x-other", "1")
            .body(())
            .unwrap();
        let field = (
            HeaderName::from_static("x-deadline-ms"),
            HeaderValue::from_static("250"),
        );
        assert_eq!(
            encoded_with(req, &[], Some(field), b""),
            "GET / HTTP/1.1\r\nhost: h\r\nx-other: 1\r\nx-deadline-ms: 250\r\n\r\n"
        );
    }

    #[test]
    fn added_fields_follow_the_heads_own_and_precede_the_attempts() {
        let req = http::Request::get("/")
            .header("host", "h")
            .header("x-other", "1")
            .body(())
            .unwrap();
        let field = (
            HeaderName::from_static("x-deadline-ms"),
            HeaderValue::from_static("250"),
        );
        assert_eq!(
            encoded_with(
                req,
                &[("x-forwarded-for", "10.1.2.3"), ("x-request-id", "abc")],
                Some(field),
                b""
            ),
            "GET / HTTP/1.1\r\nhost: h\r\nx-other: 1\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-request-id: abc\r\nx-deadline-ms: 250\r\n\r\n"
        );
    }

    #[test]
    fn a_request_without_host_gets_the_endpoints_first_and_its_own_is_kept() {
        let req = http::Request::get("/a?b=1")
            .header("x-one", "1")
            .header("x-two", "2")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, b""),
            "GET /a?b=1 HTTP/1.1\r\nhost: 10.0.0.7:8080\r\nx-one: 1\r\nx-two: 2\r\n\r\n"
        );

        let req = http::Request::get("/")
            .header("x-one", "1")
            .header("host", "shop.example")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, b""),
            "GET / HTTP/1.1\r\nx-one: 1\r\nhost: shop.example\r\n\r\n"
        );
    }

    #[test]
    fn the_length_is_ours_and_a_transfer_coding_is_dropped() {
        let req = http::Request::post("/p")
            .header("host", "h")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, b"abc"),
            "POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc"
        );
        // An empty GET that said `content-length: 0` still says it.
        let req = http::Request::get("/")
            .header("host", "h")
            .header("content-length", "0")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, b""),
            "GET / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
