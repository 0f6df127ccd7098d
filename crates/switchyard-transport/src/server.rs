//! Our own HTTP/1.1 server connection: reads requests off one inbound
//! connection, calls a handler for each, writes the answers.
//!
//! Why not hyper's server here (the same reasons as for [our client](crate)):
//! hyper parses every head into its own structures, runs a dispatcher with
//! read and write buffers of 8 KiB each for as long as a connection is open,
//! and cannot tell a proxy how a request was framed on the wire (two
//! `Content-Length` fields are folded into one, `Content-Length` beside
//! `Transfer-Encoding` is dropped), so the gateway had to scan every head a
//! second time to refuse smuggling attempts. Here a head is parsed once,
//! framing is checked where it is read, a body that arrived with its head is
//! handed over in memory (nothing to stream, nothing to buffer again for
//! retries), and an idle connection holds no buffer at all.
//!
//! What it does, per RFC 9112:
//! - requests are served one at a time, in order (pipelined requests wait
//!   in the read buffer); `Connection: close`, HTTP/1.0 without
//!   `keep-alive`, and a response without a length for an HTTP/1.0 client
//!   end the connection after the answer;
//! - request framing: one `Content-Length` of digits, or one
//!   `Transfer-Encoding: chunked` (HTTP/1.1 only); anything else — both
//!   fields, two of either, another coding, a bad number — is [refused](Refusal)
//!   before the handler sees the request, and the connection closes; in a
//!   chunked body a size line must end in CRLF with no control byte but tab
//!   before it (a bare LF is a smuggling vector), and chunk extensions may
//!   total 16 KiB (the body fails past either);
//! - `Expect: 100-continue` is answered when the handler first reads the
//!   body, so a request refused from its head never sends its body;
//! - response framing: the body's exact size when known, else a valid
//!   `Content-Length` from the handler (a body that ends short or runs long
//!   ends the connection), else chunked (with trailers) or, for HTTP/1.0,
//!   read-to-close; no body for HEAD, 1xx, 204 and 304; `Date` added when
//!   missing;
//! - limits ([`ServerConfig`]): head size and field count (refused: the
//!   caller answers 431), and the time to send a complete head, counted from
//!   the connection's start or the end of the previous answer (the
//!   connection is closed without an answer; this is also the keep-alive
//!   idle limit);
//! - a connection whose first bytes are the HTTP/2 preface is handed back
//!   ([`Served::Http2`]) with the bytes read so far.
//!
//! A request body still arriving when the answer is ready is read no
//! further: the connection closes after the answer.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use switchyard_transport::{Body, server::{self, Refusal, ServerConfig}};
//!
//! # async fn run(stream: tokio::net::TcpStream) -> std::io::Result<()> {
//! let handler = tower::service_fn(|req: http::Request<Body>| async move {
//!     Ok::<_, Infallible>(http::Response::new(Body::from(format!("you asked for {}\n", req.uri()))))
//! });
//! let refuse = |refusal: Refusal| {
//!     let mut res = http::Response::new(Body::from(refusal.to_string()));
//!     *res.status_mut() = refusal.status();
//!     res
//! };
//! server::serve_connection(stream, &ServerConfig::default(), handler, &refuse, std::future::pending())
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::{
    convert::Infallible,
    future::{Future, poll_fn},
    io,
    mem::MaybeUninit,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;
use switchyard_policy::{
    BoxError,
    deadline::{LentTimer, poll_reused},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::{Instant, Sleep},
};
use tower_service::Service;

use crate::{
    Body,
    h1::{Chunk, Framing, Step, decode, header_name, poll_read_some},
};

/// Default largest request head (request line and fields), in bytes.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Default most header fields in a request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Header slots parsed on the stack; a larger `max_headers` uses the heap.
const STACK_HEADERS: usize = 128;
/// The start of the HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Body frames up to this size are copied next to their framing and sent
/// in one write; larger ones are written from their own buffer.
const COPY_MAX: usize = 16 * 1024;
/// Bytes read at once while no request is under way: into a buffer on the
/// stack, so that an idle connection holds no buffer of its own.
const FIRST_READ: usize = 4096;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long, and how many bytes, a connection closed by us with a request
/// not fully read keeps reading (see [`linger`]).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Limits of one HTTP/1.1 server connection.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request head (request line and fields) in bytes; larger is
    /// refused with [`Refusal::HeadTooLarge`].
    pub max_head_bytes: usize,
    /// Most header fields; more is refused with [`Refusal::TooManyHeaders`].
    pub max_headers: usize,
    /// Time to send a complete head, from the connection's start or the end
    /// of the previous answer; past it the connection closes unanswered.
    pub header_read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// Why a request was refused before reaching the handler. The connection
/// closes after the answer the caller builds from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The head is larger than `max_head_bytes`.
    #[error("the request head is larger than {limit} bytes")]
    HeadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The head has more than `max_headers` fields.
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// The request is malformed or its framing is ambiguous.
    #[error("{0}")]
    BadRequest(String),
}

impl Refusal {
    /// The status that answers it: 431 or 400.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn bad(why: impl Into<String>) -> Self {
        Self::BadRequest(why.into())
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Served<I> {
    /// The connection was served and is closed (or given up on).
    Closed,
    /// The client opened with the HTTP/2 preface: here are the connection
    /// and the bytes read from it so far, for an HTTP/2 server.
    Http2 {
        /// The connection.
        io: I,
        /// What was read already (the start of the preface, or more).
        read: Bytes,
    },
}

/// Serves HTTP/1.x on `io` until the client closes, a limit ends the
/// connection, or `drain` completes (after which the answer in progress is
/// finished with `Connection: close`, and an idle connection closes at
/// once); see the [module docs](self). `refuse` builds the answer to a
/// request refused from its head. I/O errors end the connection and are
/// returned.
pub async fn serve_connection<I, H, D>(
    io: I,
    config: &ServerConfig,
    mut handler: H,
    refuse: &(dyn Fn(Refusal) -> http::Response<Body> + Sync),
    drain: D,
) -> io::Result<Served<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    D: Future<Output = ()>,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        config,
        draining: false,
        first: true,
        wait_start: switchyard_policy::clock::now(),
        timer_waker: None,
    };
    let mut drain = pin!(drain);
    // One timer for the connection's life: it is re-armed only when it
    // fires early, not per request (see `Conn::poll_head`).
    let mut timer = pin!(tokio::time::sleep_until(
        conn.wait_start + config.header_read_timeout
    ));
    let mut lent: Option<LentTimer> = None;
    loop {
        let head = poll_fn(|cx| conn.poll_head(cx, timer.as_mut(), drain.as_mut())).await;
        let head = match head {
            Waited::Head(head) => head,
            Waited::Closed => return Ok(Served::Closed),
            Waited::Http2 => {
                return Ok(Served::Http2 {
                    io: conn.io,
                    read: conn.buf.freeze(),
                });
            }
            Waited::Refused(refusal) => {
                let res = refuse(refusal);
                let mut out = Outgoing::new(res, &Method::GET, Version::HTTP_11, true);
                poll_fn(|cx| out.poll_send(&mut conn.io, cx)).await?;
                drop(out);
                Box::pin(linger(&mut conn.io)).await;
                return Ok(Served::Closed);
            }
        };
        let RequestHead {
            request,
            body,
            keep_alive,
            expect_continue,
        } = head;
        let method = request.method().clone();
        let version = request.version();
        let mut pump = body.map(|framing| Pump::new(framing, expect_continue));
        let request = match &pump {
            Some(p) => request.map(|_| Body::streaming(p.body())),
            None => request,
        };

        poll_fn(|cx| handler.poll_ready(cx))
            .await
            .unwrap_or_else(|never| match never {});
        let mut call = pin!(handler.call(request));
        let response = poll_fn(|cx| {
            if let Some(p) = pump.as_mut() {
                // The pump's result shows on the body the handler reads.
                let _ = p.poll(&mut conn.io, &mut conn.buf, cx);
            }
            // The connection's calls borrow one timer for their deadlines,
            // one request after another, instead of each setting up its own.
            let _lending = LentTimer::lend(&mut lent);
            call.as_mut().poll(cx)
        })
        .await
        .unwrap_or_else(|never| match never {});

        // A drain that began during the call closes the connection after
        // this answer (checked once, not at every wake-up of the call).
        if !conn.draining {
            conn.draining = poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx).is_ready())).await;
        }
        // No `100 Continue` once the final answer is on its way; a body
        // not read to its end by now is not read further.
        let mut body_unread = false;
        if let Some(p) = pump.as_mut() {
            p.expect_continue = false;
            body_unread = !(p.finished_cleanly() || p.skip_buffered(&mut conn.buf));
        }
        let close = conn.draining || !keep_alive || body_unread;
        let mut out = Outgoing::new(response, &method, version, close);
        if let Some(p) = pump.as_ref() {
            // A `100 Continue` cut short goes out whole before the answer.
            out.buf.splice(0..0, p.unsent_continue().iter().copied());
        }
        let sent = poll_fn(|cx| {
            if let Some(p) = pump.as_mut() {
                let _ = p.poll(&mut conn.io, &mut conn.buf, cx);
            }
            out.poll_send(&mut conn.io, cx)
        })
        .await;
        sent?;
        let close = out.close;
        // Call-limit slots and the like are released with the answer.
        drop(out);
        let body_read = match pump.as_mut() {
            None => true,
            Some(p) => p.finished_cleanly() || p.skip_buffered(&mut conn.buf),
        };
        drop(pump);
        // Blank lines between requests are allowed (RFC 9112 §2.2).
        let blank = conn
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        conn.buf.advance(blank);
        if !body_read || (close && !conn.buf.is_empty()) {
            Box::pin(linger(&mut conn.io)).await;
            return Ok(Served::Closed);
        }
        if close {
            let _ = conn.io.shutdown().await;
            return Ok(Served::Closed);
        }
        conn.first = false;
        conn.wait_start = switchyard_policy::clock::now();
        if conn.buf.is_empty() {
            // Let go of the buffer: an idle connection holds none.
            conn.buf = BytesMut::new();
        } else if conn.buf.len() <= FIRST_READ {
            // Nor a large one for a few bytes of the next request.
            conn.buf = BytesMut::from(&conn.buf[..]);
        }
    }
}

/// Closes our sending side, then reads and drops what the client still
/// sends for a short while: closing a socket with unread bytes makes the
/// kernel send a reset, which can destroy the answer before the client has
/// read it.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// One connection's reading side.
struct Conn<'a, I> {
    io: I,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    config: &'a ServerConfig,
    draining: bool,
    /// No request has been read yet (the HTTP/2 preface may come).
    first: bool,
    /// When the wait for the current head began.
    wait_start: Instant,
    /// The waker the head-read timer was last polled with.
    timer_waker: Option<Waker>,
}

/// What waiting for a head gave.
// Returned by value and matched at once: boxing the head would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Waited {
    Head(RequestHead),
    Closed,
    Http2,
    Refused(Refusal),
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<'_, I> {
    /// Reads until a complete head is buffered, the connection closes, the
    /// head-read time passes, or (while nothing is buffered) `drain` fires.
    ///
    /// The timer is armed at connection start and, when it fires, re-armed
    /// at `wait_start + header_read_timeout` if that is later: per request
    /// this costs one clock read and no timer-wheel update (`poll_reused`).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        timer: Pin<&mut Sleep>,
        drain: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<Waited> {
        loop {
            if !self.buf.is_empty() {
                if self.first && self.buf.len() <= H2_PREFACE.len() {
                    if H2_PREFACE.starts_with(&self.buf) {
                        if self.buf.len() == H2_PREFACE.len() {
                            return Poll::Ready(Waited::Http2);
                        }
                    } else if let Some(waited) = self.try_parse() {
                        return Poll::Ready(waited);
                    }
                } else if self.first && self.buf.starts_with(H2_PREFACE) {
                    return Poll::Ready(Waited::Http2);
                } else if let Some(waited) = self.try_parse() {
                    return Poll::Ready(waited);
                }
            }
            let read = if self.buf.is_empty() {
                self.poll_first_read(cx)
            } else {
                poll_read_some(Pin::new(&mut self.io), cx, &mut self.buf)
            };
            match read {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Waited::Closed),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            // About to wait: only now can the drain or the head-read time
            // end the wait, so only now are they polled (a request that
            // arrives with the wake-up costs neither).
            if !self.draining && drain.poll(cx).is_ready() {
                self.draining = true;
            }
            if self.draining && self.buf.is_empty() {
                return Poll::Ready(Waited::Closed);
            }
            let deadline = self.wait_start + self.config.header_read_timeout;
            if poll_reused(timer, &mut self.timer_waker, deadline, cx).is_ready() {
                return Poll::Ready(Waited::Closed);
            }
            return Poll::Pending;
        }
    }

    /// Reads into a buffer on the stack and keeps what came: the connection
    /// holds a buffer only while a request is arriving.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let got = read.filled();
        self.buf.reserve(got.len().max(1024));
        self.buf.extend_from_slice(got);
        Poll::Ready(Ok(got.len()))
    }

    /// Parses the buffered bytes: `None` when the head is not complete yet.
    fn try_parse(&mut self) -> Option<Waited> {
        match parse_request(&mut self.buf, self.config) {
            Ok(Some(head)) => Some(Waited::Head(head)),
            Ok(None) => None,
            Err(refusal) => Some(Waited::Refused(refusal)),
        }
    }
}

/// A parsed request head and how to read its body.
struct RequestHead {
    /// The request; its body is in place when it came with the head.
    request: http::Request<Body>,
    /// How the rest of the body arrives, when it did not come with the head.
    body: Option<Framing>,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses one request head off the front of `buf`. `Ok(None)`: more bytes
/// are needed.
fn parse_request(
    buf: &mut BytesMut,
    config: &ServerConfig,
) -> Result<Option<RequestHead>, Refusal> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if config.max_headers <= STACK_HEADERS {
        &mut stack[..config.max_headers]
    } else {
        heap.resize_with(config.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= config.max_head_bytes => len,
        Ok(httparse::Status::Complete(_)) => {
            return Err(Refusal::HeadTooLarge {
                limit: config.max_head_bytes,
            });
        }
        Ok(httparse::Status::Partial) if buf.len() > config.max_head_bytes => {
            return Err(Refusal::HeadTooLarge {
                limit: config.max_head_bytes,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::TooManyHeaders {
                limit: config.max_headers,
            });
        }
        Err(e) => return Err(Refusal::bad(format!("malformed request head: {e}"))),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| Refusal::bad("invalid request method"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let base = buf.as_ptr() as usize;
    let target = parsed.path.unwrap_or("");
    let target_at = target.as_ptr() as usize - base;
    let target = target_at..target_at + target.len();
    let mut fields = Fields::default();
    let mut spans = crate::h1::Spans::new();
    for h in parsed.headers.iter() {
        let name = header_name(h.name.as_bytes())
            .map_err(|_| Refusal::bad(format!("invalid header name {:?}", h.name)))?;
        fields.note(&name, h.value);
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start..start + h.value.len()));
    }
    let framing = fields.framing(version)?;

    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target))
        .map_err(|_| Refusal::bad("invalid request target"))?;
    // Room for a field or two a handler may add (a proxy sends its own
    // fields beside the map, but inserts the identity it forwards) without
    // growing the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    for (name, range) in spans.drain(..) {
        headers.append(name, crate::h1::parsed_value(&head, range));
    }

    // A body that arrived whole with its head is handed over in memory.
    let (body, rest) = match framing {
        Framing::Length(0) => (Body::empty(), None),
        Framing::Length(n) if buf.len() as u64 >= n => {
            (Body::full(buf.split_to(n as usize).freeze()), None)
        }
        framing => (Body::empty(), Some(framing)),
    };
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let keep_alive = !fields.close && (version == Version::HTTP_11 || fields.keep_alive);
    Ok(Some(RequestHead {
        request,
        expect_continue: fields.expect_continue && rest.is_some() && version == Version::HTTP_11,
        body: rest,
        keep_alive,
    }))
}

/// What a request's fields say about its framing and persistence, counted
/// as they came on the wire.
#[derive(Default)]
struct Fields {
    lengths: u16,
    /// The value of the last `Content-Length`, if it was one number.
    length: Option<u64>,
    codings: u16,
    /// The last `Transfer-Encoding` is exactly `chunked`.
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            self.lengths = self.lengths.saturating_add(1);
            self.length = crate::h1::decimal(value.trim_ascii());
        } else if name == header::TRANSFER_ENCODING {
            self.codings = self.codings.saturating_add(1);
            self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            self.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// The body's framing, or why it can't be trusted: a request two hops
    /// could read differently is refused, never guessed at (RFC 9112 §6.3,
    /// and request smuggling).
    fn framing(&self, version: Version) -> Result<Framing, Refusal> {
        if self.lengths > 0 && self.codings > 0 {
            return Err(Refusal::bad(
                "the request has both content-length and transfer-encoding",
            ));
        }
        if self.lengths > 1 {
            return Err(Refusal::bad(
                "the request has more than one content-length field",
            ));
        }
        if self.codings > 1 {
            return Err(Refusal::bad(
                "the request has more than one transfer-encoding field",
            ));
        }
        if self.codings == 1 {
            if version == Version::HTTP_10 {
                return Err(Refusal::bad("an HTTP/1.0 request with transfer-encoding"));
            }
            if !self.chunked {
                return Err(Refusal::bad(
                    "the only transfer-encoding accepted is `chunked`",
                ));
            }
            return Ok(Framing::Chunked(Chunk::Size, 0));
        }
        if self.lengths == 1 {
            return self
                .length
                .map(Framing::Length)
                .ok_or_else(|| Refusal::bad("the request's content-length is not one number"));
        }
        Ok(Framing::Length(0))
    }
}

// === the request body ===

/// The connection's side of a request body still arriving: it reads from
/// the connection only when the handler wants more (one frame at a time),
/// the way hyper's server does.
struct Pump {
    framing: Framing,
    slot: Arc<Mutex<Slot>>,
    /// `100 Continue` is owed before the first read.
    expect_continue: bool,
    /// Bytes of `100 Continue` written.
    continue_sent: usize,
    state: PumpState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PumpState {
    Running,
    /// The whole body was read.
    Done,
    /// It stopped before the end (client error, or the handler let go).
    Stopped,
}

/// What the pump and the body share.
#[derive(Default)]
struct Slot {
    frame: Option<Frame<Bytes>>,
    end: bool,
    error: Option<BoxError>,
    /// The body was polled and found nothing.
    wants: bool,
    /// The body was dropped.
    gone: bool,
    body_waker: Option<Waker>,
    pump_waker: Option<Waker>,
}

impl Pump {
    fn new(framing: Framing, expect_continue: bool) -> Self {
        Self {
            framing,
            slot: Arc::default(),
            expect_continue,
            continue_sent: 0,
            state: PumpState::Running,
        }
    }

    fn body(&self) -> IncomingBody {
        IncomingBody {
            slot: self.slot.clone(),
            hint: match self.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::new(),
            },
        }
    }

    fn finished_cleanly(&self) -> bool {
        self.state == PumpState::Done
    }

    /// The part of `100 Continue` owed but not written yet (none, or all of
    /// it, unless a write was cut short).
    fn unsent_continue(&self) -> &'static [u8] {
        if self.continue_sent > 0 && self.continue_sent < CONTINUE.len() {
            &CONTINUE[self.continue_sent..]
        } else {
            &[]
        }
    }

    /// After the answer: when the handler let go of a body whose rest is
    /// already buffered, skips it so the connection can stay open. True when
    /// the body's end was reached.
    fn skip_buffered(&mut self, buf: &mut BytesMut) -> bool {
        if !self.slot.lock().gone {
            return false;
        }
        loop {
            match decode(&mut self.framing, buf) {
                Ok(Step::Frame(_)) if !matches!(self.framing, Framing::Length(0)) => {}
                Ok(Step::Frame(_) | Step::End) => {
                    self.state = PumpState::Done;
                    return true;
                }
                Ok(Step::More) | Err(_) => return false,
            }
        }
    }

    /// Moves body bytes from the connection to the handler while it wants
    /// them; ready once the body ended or stopped.
    fn poll<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        while self.state == PumpState::Running {
            {
                let mut slot = self.slot.lock();
                if slot.gone {
                    self.state = PumpState::Stopped;
                    break;
                }
                if !slot.wants || slot.frame.is_some() {
                    slot.pump_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            if self.expect_continue {
                while self.continue_sent < CONTINUE.len() {
                    match ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[self.continue_sent..]))
                    {
                        Ok(n) if n > 0 => self.continue_sent += n,
                        _ => {
                            self.stop(Some("the connection failed before the body".into()));
                            return Poll::Ready(());
                        }
                    }
                }
                self.expect_continue = false;
            }
            let step = decode(&mut self.framing, buf);
            let mut slot = self.slot.lock();
            match step {
                Ok(Step::Frame(frame)) => {
                    slot.frame = Some(frame);
                    slot.wants = false;
                    if matches!(self.framing, Framing::Length(0)) {
                        slot.end = true;
                        self.state = PumpState::Done;
                    }
                    wake(&mut slot.body_waker);
                }
                Ok(Step::End) => {
                    slot.end = true;
                    self.state = PumpState::Done;
                    wake(&mut slot.body_waker);
                }
                Err(e) => {
                    drop(slot);
                    self.stop(Some(format!("invalid request body: {e}").into()));
                }
                Ok(Step::More) => {
                    drop(slot);
                    match ready!(poll_read_some(Pin::new(&mut *io), cx, buf)) {
                        Ok(0) => self.stop(Some(
                            "the client closed the connection before the end of the body".into(),
                        )),
                        Ok(_) => {}
                        Err(e) => self.stop(Some(Box::new(e))),
                    }
                }
            }
        }
        Poll::Ready(())
    }

    fn stop(&mut self, error: Option<BoxError>) {
        self.state = PumpState::Stopped;
        let mut slot = self.slot.lock();
        slot.error = error;
        wake(&mut slot.body_waker);
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if self.state == PumpState::Running {
            self.stop(Some(
                "the connection stopped reading the request body".into(),
            ));
        }
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// A request body arriving on a server connection (see [`Pump`]).
struct IncomingBody {
    slot: Arc<Mutex<Slot>>,
    hint: SizeHint,
}

impl http_body::Body for IncomingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut slot = this.slot.lock();
        if let Some(frame) = slot.frame.take() {
            if let Some(data) = frame.data_ref() {
                let left = this.hint.lower().saturating_sub(data.len() as u64);
                if this.hint.exact().is_some() {
                    this.hint.set_exact(left);
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = slot.error.take() {
            slot.end = true;
            return Poll::Ready(Some(Err(error)));
        }
        if slot.end {
            return Poll::Ready(None);
        }
        slot.wants = true;
        slot.body_waker = Some(cx.waker().clone());
        wake(&mut slot.pump_waker);
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.slot.lock();
        slot.end && slot.frame.is_none() && slot.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for IncomingBody {
    fn drop(&mut self) {
        let mut slot = self.slot.lock();
        slot.gone = true;
        wake(&mut slot.pump_waker);
    }
}

// === the answer ===

/// An answer being written: its head and framing, then its body.
struct Outgoing {
    /// Bytes to write before anything else.
    buf: Vec<u8>,
    written: usize,
    /// A large body frame, written after `buf`.
    big: Option<Bytes>,
    /// `\r\n` is owed after `big` (it was chunk data).
    crlf_after_big: bool,
    body: Option<Body>,
    framing: OutFraming,
    /// The connection closes after this answer.
    close: bool,
    /// Kept until the answer is sent (call-limit slots and the like live in
    /// the response's extensions).
    _extensions: http::Extensions,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFraming {
    /// This many bytes remain.
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

impl Outgoing {
    fn new(res: http::Response<Body>, method: &Method, version: Version, mut close: bool) -> Self {
        let (mut parts, body) = res.into_parts();
        let status = parts.status;
        let bodyless = *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // What a HEAD answer's length says, when the handler didn't: the
        // size of the body a GET would have had.
        let head_length = (*method == Method::HEAD
            && !parts.headers.contains_key(header::CONTENT_LENGTH))
        .then(|| body.size_hint().exact())
        .flatten()
        .filter(|&n| n > 0);
        // A length the handler set is kept only where no body follows and
        // the length describes one (HEAD, 304).
        let keep_length =
            bodyless && status != StatusCode::NO_CONTENT && !status.is_informational();
        let (framing, body) = if bodyless {
            (OutFraming::Length(0), None)
        } else if let Some(n) = body.size_hint().exact() {
            (OutFraming::Length(n), (n > 0).then_some(body))
        } else if let Some(n) = content_length(&parts.headers) {
            (OutFraming::Length(n), Some(body))
        } else if version == Version::HTTP_11 {
            (OutFraming::Chunked, Some(body))
        } else {
            close = true;
            (OutFraming::Close, Some(body))
        };

        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"HTTP/1.1 ");
        buf.extend_from_slice(status.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        buf.extend_from_slice(b"\r\n");
        // `Connection` and `Date` are noted on this pass rather than looked
        // up: a proxied answer has had `Connection` removed, and a lookup of
        // a field that isn't there costs a hash and a probe all the same.
        let (mut has_connection, mut has_date) = (false, false);
        for (name, value) in &parts.headers {
            has_connection |= *name == header::CONNECTION;
            has_date |= *name == header::DATE;
            let framing_field = *name == header::TRANSFER_ENCODING
                || (*name == header::CONTENT_LENGTH && !keep_length)
                || *name == header::CONNECTION;
            if framing_field {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        // A proxied answer's own fields, as the endpoint wrote them.
        // Taken out, not borrowed: the head it lies in is let go now rather
        // than when the body has been sent.
        if let Some(raw) = parts.extensions.remove::<crate::RawFields>() {
            has_date |= raw.write(&mut buf, &parts.headers, keep_length);
        }
        if !has_date {
            buf.extend_from_slice(b"date: ");
            date::append(&mut buf);
            buf.extend_from_slice(b"\r\n");
        }
        let length = match framing {
            _ if bodyless => head_length,
            OutFraming::Length(n) => Some(n),
            OutFraming::Chunked => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                None
            }
            OutFraming::Close => None,
        };
        if let Some(n) = length {
            buf.extend_from_slice(b"content-length: ");
            buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        close = close || (has_connection && asks_to_close(&parts.headers));
        // The handler's own `Connection` field, minus what is decided here.
        let connection = has_connection.then(|| parts.headers.get_all(header::CONNECTION));
        for value in connection.into_iter().flatten() {
            let named: Vec<&[u8]> = value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case(b"close")
                        && !t.eq_ignore_ascii_case(b"keep-alive")
                })
                .collect();
            if !named.is_empty() {
                buf.extend_from_slice(b"connection: ");
                buf.extend_from_slice(&named.join(&b", "[..]));
                buf.extend_from_slice(b"\r\n");
            }
        }
        if close {
            buf.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        Self {
            buf,
            written: 0,
            big: None,
            crlf_after_big: false,
            body,
            framing,
            close,
            _extensions: parts.extensions,
        }
    }

    /// Writes the head and the body; ready when all of it is written.
    fn poll_send<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            // Frames already there go out with what precedes them in one
            // write (a body in memory goes with the head). Only when nothing
            // is half written, and only up to `COPY_MAX`: a slow client must
            // slow the body's source down, not make us buffer it.
            let body_pending =
                self.written == 0 && self.big.is_none() && self.take_ready_frames(cx)?.is_pending();
            while self.written < self.buf.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            self.buf.clear();
            self.written = 0;
            if let Some(big) = self.big.as_mut() {
                while !big.is_empty() {
                    let n = ready!(Pin::new(&mut *io).poll_write(cx, big))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    big.advance(n);
                }
                self.big = None;
                if std::mem::take(&mut self.crlf_after_big) {
                    self.buf.extend_from_slice(b"\r\n");
                    continue;
                }
            }
            if self.body.is_none() {
                return Pin::new(&mut *io).poll_flush(cx);
            }
            if body_pending {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                return Poll::Pending;
            }
        }
    }

    /// Encodes body frames that are ready into `buf` (or `big`) until the
    /// body is pending, ends, or a large frame is queued.
    fn take_ready_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(body) = self.body.as_mut() {
            if self.big.is_some() || self.buf.len() >= COPY_MAX {
                return Poll::Ready(Ok(()));
            }
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                None => {
                    self.body = None;
                    match self.framing {
                        OutFraming::Chunked => self.buf.extend_from_slice(b"0\r\n\r\n"),
                        OutFraming::Length(left) if left > 0 => {
                            return Poll::Ready(Err(io::Error::other(
                                "the response body ended before its content-length",
                            )));
                        }
                        _ => {}
                    }
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push_data(data)?,
                    Err(frame) => {
                        if let (Ok(trailers), OutFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            self.buf.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                self.buf.extend_from_slice(name.as_str().as_bytes());
                                self.buf.extend_from_slice(b": ");
                                self.buf.extend_from_slice(value.as_bytes());
                                self.buf.extend_from_slice(b"\r\n");
                            }
                            self.buf.extend_from_slice(b"\r\n");
                            self.body = None;
                        }
                    }
                },
            }
        }
        Poll::Ready(Ok(()))
    }

    fn push_data(&mut self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            OutFraming::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(io::Error::other(
                        "the response body is longer than its content-length",
                    ));
                }
                *left -= data.len() as u64;
            }
            OutFraming::Chunked => {
                let mut size = [0u8; 16];
                let len = hex(data.len(), &mut size);
                self.buf.extend_from_slice(len);
                self.buf.extend_from_slice(b"\r\n");
            }
            OutFraming::Close => {}
        }
        let chunked = self.framing == OutFraming::Chunked;
        if data.len() <= COPY_MAX {
            self.buf.extend_from_slice(&data);
            if chunked {
                self.buf.extend_from_slice(b"\r\n");
            }
        } else {
            self.big = Some(data);
            self.crlf_after_big = chunked;
        }
        Ok(())
    }
}

/// The handler asked for the connection to close after this answer.
fn asks_to_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The length a request's `Content-Length` declares (`None` when it has
/// none: no body, or a chunked one), or why its framing fields can't be
/// trusted: the rules this server refuses a head by, for requests that
/// reach a handler some other way (HTTP/2, an embedder).
///
/// One pass over the fields, where the gateway made two lookups and a third
/// for the length (314 instructions less per proxied request of a few
/// fields, `bench/instructions.sh`).
pub fn request_framing(headers: &HeaderMap, version: Version) -> Result<Option<u64>, String> {
    let mut fields = Fields::default();
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            fields.note(name, value.as_bytes());
        }
    }
    match fields.framing(version) {
        Ok(Framing::Length(n)) if fields.lengths == 1 => Ok(Some(n)),
        Ok(_) => Ok(None),
        Err(refusal) => Err(refusal.to_string()),
    }
}

/// The value of the one `Content-Length` field, when there is exactly one
/// and it is a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    crate::h1::decimal(value.as_bytes().trim_ascii())
}

/// `n` in lower-case hex, without leading zeros.
fn hex(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &out[at..];
        }
    }
}

/// The `Date` field, formatted once per second per thread.
mod date {
    use std::{cell::RefCell, time::SystemTime};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    /// Appends the current date in IMF-fixdate form.
    pub(super) fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let formatted = httpdate::fmt_http_date(now);
                if formatted.len() == text.len() {
                    text.copy_from_slice(formatted.as_bytes());
                    *at = secs;
                } else {
                    out.extend_from_slice(formatted.as_bytes());
                    return;
                }
            }
            out.extend_from_slice(text);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hex_sizes() {
        let mut b = [0u8; 16];
        assert_eq!(hex(0, &mut b), b"0");
        assert_eq!(hex(255, &mut b), b"ff");
        assert_eq!(hex(0x1000, &mut b), b"1000");
    }

    #[test]
    fn framing_refusals() {
        let cfg = ServerConfig::default();
        for (head, why) in [
            (
                "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                "both",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
                "more than one content-length",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 1x\r\n\r\n",
                "not one number",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n",
                "not one number",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                "only transfer-encoding",
            ),
            (
                "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                "HTTP/1.0",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                "more than one transfer-encoding",
            ),
        ] {
            let mut buf = BytesMut::from(head);
            match parse_request(&mut buf, &cfg) {
                Err(Refusal::BadRequest(msg)) => assert!(msg.contains(why), "{head:?}: {msg}"),
                other => panic!("{head:?}: {:?}", other.map(|h| h.map(|h| h.request))),
            }
        }
    }

    #[test]
    fn parsed_fields_are_judged_by_the_same_rules() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(request_framing(&headers, Version::HTTP_2), Ok(None));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let why = request_framing(&headers, Version::HTTP_2).unwrap_err();
        assert!(
            why.contains("both content-length and transfer-encoding"),
            "{why}"
        );
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(request_framing(&headers, Version::HTTP_11), Ok(Some(3)));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let why = request_framing(&headers, Version::HTTP_11).unwrap_err();
        assert!(why.contains("more than one content-length"), "{why}");
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("1,1"));
        let why = request_framing(&headers, Version::HTTP_11).unwrap_err();
        assert!(why.contains("not one number"), "{why}");
        assert_eq!(
            request_framing(&HeaderMap::new(), Version::HTTP_2),
            Ok(None)
        );
    }

    #[test]
    fn a_body_that_came_with_its_head_is_in_memory() {
        let cfg = ServerConfig::default();
        let mut buf =
            BytesMut::from("POST /a?b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET");
        let head = parse_request(&mut buf, &cfg).unwrap().unwrap();
        assert!(head.body.is_none());
        assert!(head.keep_alive);
        assert_eq!(head.request.uri(), "/a?b");
        assert_eq!(head.request.headers()["host"], "x");
        assert_eq!(head.request.body().size_hint().exact(), Some(5));
        assert_eq!(&buf[..], b"GET");
        let mut buf = BytesMut::from("POST / HTTP/1.1\r\ncontent-length: 9\r\n\r\nhello");
        let head = parse_request(&mut buf, &cfg).unwrap().unwrap();
        assert!(matches!(head.body, Some(Framing::Length(9))));
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn limits_are_refusals() {
        let cfg = ServerConfig {
            max_head_bytes: 64,
            max_headers: 2,
            ..ServerConfig::default()
        };
        let mut buf =
            BytesMut::from(format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(80)).as_str());
        assert_eq!(
            parse_request(&mut buf, &cfg).err(),
            Some(Refusal::HeadTooLarge { limit: 64 })
        );
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n");
        assert_eq!(
            parse_request(&mut buf, &cfg).err(),
            Some(Refusal::TooManyHeaders { limit: 2 })
        );
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\na: 1\r\n");
        assert!(parse_request(&mut buf, &cfg).unwrap().is_none());
    }
}
