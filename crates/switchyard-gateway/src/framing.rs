//! Raw HTTP/1.1 framing checks, done on the bytes as they arrive.
//!
//! hyper normalises a request's framing headers before a handler sees them:
//! with both `Content-Length` and `Transfer-Encoding: chunked` it drops the
//! `Content-Length` header (and closes the connection after the response),
//! and repeated equal `Content-Length` headers are folded into one. A proxy
//! that must *refuse* such requests (request smuggling relies on two hops
//! disagreeing about where a request ends) therefore can't decide from the
//! [`http::Request`] alone.
//!
//! [`FramingScanner`] follows an HTTP/1.x connection's inbound byte stream
//! message by message (head, then a `Content-Length` or chunked body) and
//! records, for every request head, how many `Content-Length` and
//! `Transfer-Encoding` fields it carried ([`RawFraming`]). The server
//! ([`crate::server`]) runs one per HTTP/1 connection and attaches the
//! record to each request's extensions, in order; the proxy refuses a
//! request with `400` when the record shows an ambiguity, or when the record
//! is missing (the scanner lost track of the stream, so the framing can't be
//! vouched for). Once a request is refused the connection is closed, so the
//! scanner stops at the first ambiguous head.
//!
//! The scanner only reads; hyper remains the parser that decides what is
//! served. HTTP/2 connections (the prior-knowledge preface) are not
//! scanned: HTTP/2 frames carry their own lengths and the `h2` crate
//! refuses `Transfer-Encoding` itself.

use std::{
    collections::VecDeque,
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The framing header fields one HTTP/1.x request head carried, counted on
/// the wire before hyper normalised them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawFraming {
    /// `Content-Length` fields (each line counts, equal values included).
    pub content_lengths: u16,
    /// `Transfer-Encoding` fields.
    pub transfer_encodings: u16,
}

impl RawFraming {
    /// Why this request's framing is ambiguous, or `None` when it is sound.
    pub fn ambiguity(&self) -> Option<&'static str> {
        if self.content_lengths > 0 && self.transfer_encodings > 0 {
            Some("the request has both content-length and transfer-encoding")
        } else if self.content_lengths > 1 {
            Some("the request has more than one content-length field")
        } else if self.transfer_encodings > 1 {
            Some("the request has more than one transfer-encoding field")
        } else {
            None
        }
    }
}

/// A request's framing as scanned, attached to HTTP/1.x requests'
/// extensions by the server. `None` inside means the scanner lost track of
/// the stream (the request must then be refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedFraming(pub Option<RawFraming>);

/// The records of heads scanned on one connection, oldest first.
pub(crate) type Records = Arc<Mutex<VecDeque<RawFraming>>>;

/// Follows one HTTP/1.x inbound stream; see the [module docs](self).
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    max_head: usize,
    records: VecDeque<RawFraming>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data.
    ChunkData(u64),
    /// Reading the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines; the buffer holds the current line.
    Trailers(Vec<u8>),
    /// Stopped: an ambiguous head was seen (the connection will close), or
    /// the stream is HTTP/2, or it can't be followed.
    Stopped(Stop),
}

/// Why the scanner stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It saw an ambiguous head; nothing after it will be served.
    Ambiguous,
    /// The stream is HTTP/2 (prior knowledge).
    Http2,
    /// It could not follow the stream (hyper will refuse it or the scanner
    /// and hyper disagree); later requests must be refused.
    Lost,
}

/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Most header fields in a head followed (more stops the scanner).
const MAX_HEADERS: usize = 256;

impl FramingScanner {
    /// A scanner for a new connection; heads longer than `max_head` bytes
    /// stop it (hyper refuses those with 431 anyway).
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head(Vec::new()),
            max_head,
            records: VecDeque::new(),
        }
    }

    /// Why the scanner stopped, if it did.
    pub fn stopped(&self) -> Option<Stop> {
        match self.state {
            State::Stopped(stop) => Some(stop),
            _ => None,
        }
    }

    /// Takes the records of the heads completed so far, oldest first.
    pub fn take_records(&mut self) -> impl Iterator<Item = RawFraming> + '_ {
        self.records.drain(..)
    }

    /// Feeds bytes read from the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Stopped(_) => return,
                State::Head(_) => self.feed_head(bytes),
                State::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    n as usize
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::ChunkEnd;
                    }
                    n as usize
                }
                State::ChunkEnd => {
                    match bytes[0] {
                        b'\r' => {}
                        b'\n' => self.state = State::ChunkSize(Vec::new()),
                        _ => self.state = State::Stopped(Stop::Lost),
                    }
                    1
                }
                State::ChunkSize(line) | State::Trailers(line) => {
                    match bytes.iter().position(|&b| b == b'\n') {
                        None => {
                            line.extend_from_slice(bytes);
                            if line.len() > MAX_LINE {
                                self.state = State::Stopped(Stop::Lost);
                            }
                            bytes.len()
                        }
                        Some(at) => {
                            line.extend_from_slice(&bytes[..at]);
                            let line = std::mem::take(line);
                            self.line_done(&line);
                            at + 1
                        }
                    }
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Handles a complete chunk-size or trailer line (without its `\n`).
    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.state = match self.state {
            State::ChunkSize(_) => match chunk_size(line) {
                Some(0) => State::Trailers(Vec::new()),
                Some(n) => State::ChunkData(n),
                None => State::Stopped(Stop::Lost),
            },
            // An empty line ends the trailers and the message.
            _ if line.is_empty() => State::Head(Vec::new()),
            _ => State::Trailers(Vec::new()),
        };
    }

    /// Feeds bytes while a head is being read; returns how many belong to it.
    fn feed_head(&mut self, bytes: &[u8]) -> usize {
        let State::Head(buf) = &mut self.state else {
            return bytes.len();
        };
        if buf.is_empty() {
            // Most heads arrive whole in one read: parse them where they lie
            // and copy only the ones that don't.
            let take = bytes.len().min(self.max_head + 1);
            return match self.head_done(&bytes[..take]) {
                Some(head_len) => head_len,
                None => {
                    if let State::Head(buf) = &mut self.state {
                        buf.extend_from_slice(&bytes[..take]);
                    }
                    take
                }
            };
        }
        let before = buf.len();
        let take = bytes.len().min(self.max_head + 1 - before);
        buf.extend_from_slice(&bytes[..take]);
        let head = std::mem::take(buf);
        match self.head_done(&head) {
            // Bytes past the head belong to the body.
            Some(head_len) => head_len - before,
            None => {
                if let State::Head(buf) = &mut self.state {
                    *buf = head;
                }
                take
            }
        }
    }

    /// Tries to parse `buf` as a head; on success records it, moves to
    /// the body state and returns the head's length.
    fn head_done(&mut self, buf: &[u8]) -> Option<usize> {
        if buf.starts_with(H2_PREFACE) {
            self.state = State::Stopped(Stop::Http2);
            return None;
        }
        // Uninitialised slots: zeroing 256 headers per request would cost
        // more than parsing a typical head.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() <= self.max_head => return None,
            _ => {
                self.state = State::Stopped(Stop::Lost);
                return None;
            }
        };
        let mut record = RawFraming::default();
        let mut length = None;
        let mut chunked = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                record.content_lengths = record.content_lengths.saturating_add(1);
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                record.transfer_encodings = record.transfer_encodings.saturating_add(1);
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        self.records.push_back(record);
        self.state = if record.ambiguity().is_some() {
            State::Stopped(Stop::Ambiguous)
        } else if record.transfer_encodings > 0 {
            if chunked {
                State::ChunkSize(Vec::new())
            } else {
                // hyper refuses a request whose last coding isn't chunked.
                State::Stopped(Stop::Lost)
            }
        } else if record.content_lengths > 0 {
            match length {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
                None => State::Stopped(Stop::Lost),
            }
        } else {
            State::Head(Vec::new())
        };
        Some(head_len)
    }
}

/// The size of a chunk-size line (hex digits, optional `;extensions`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .map(<[u8]>::trim_ascii)
        .filter(|d| !d.is_empty())?;
    let mut size: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16)?;
        size = size.checked_mul(16)?.checked_add(u64::from(v))?;
    }
    Some(size)
}

pin_project! {
    /// An inbound connection whose read side is scanned by a
    /// [`FramingScanner`]; the records go to a queue the connection's
    /// service takes them from.
    #[derive(Debug)]
    pub(crate) struct ScannedIo<T> {
        #[pin]
        io: T,
        scanner: Option<FramingScanner>,
        records: Records,
    }
}

impl<T> ScannedIo<T> {
    pub(crate) fn new(io: T, max_head: usize) -> (Self, Records) {
        let records = Records::default();
        let io = Self {
            io,
            scanner: Some(FramingScanner::new(max_head)),
            records: records.clone(),
        };
        (io, records)
    }
}

impl<T: AsyncRead> AsyncRead for ScannedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if let Some(scanner) = this.scanner {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                scanner.feed(new);
                this.records.lock().extend(scanner.take_records());
                // HTTP/2 and stopped streams need no more scanning.
                if scanner.stopped().is_some() {
                    *this.scanner = None;
                }
            }
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for ScannedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
