//! The HTTP transport: HTTP/1.1 over a pool of keep-alive connections (one
//! per slot, so a slot is a connection and the slot count caps connections),
//! or h2c with prior knowledge, multiplexing every slot's stream over a few
//! shared connections.
//!
//! hyper's connection-level client (`hyper::client::conn`) is used rather
//! than the pooled legacy client: the scheduler already owns the pool (its
//! idle slots), so a second pool would only add a lookup and a lock per
//! request and hide which connection a request went out on.

use std::{error::Error as StdError, net::SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::Mutex};

use super::schedule::{Outcome, Transport};

/// Connections an h2c run multiplexes over (fewer if fewer slots): enough to
/// spread the load over both directions of a few sockets, few enough that
/// streams, not connections, carry the concurrency.
pub(crate) const H2_CONNECTIONS: usize = 4;

type H2Sender = http2::SendRequest<Full<Bytes>>;

/// Which HTTP the transport speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1, one request at a time per keep-alive connection.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (no upgrade).
    H2c,
}

/// The one request a run sends, over and over.
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    /// Request method.
    pub(crate) method: Method,
    /// The full URL (`http://host:port/path?query`).
    pub(crate) uri: Uri,
    /// Headers sent with every request (user-given, plus `host` for HTTP/1.1).
    pub(crate) headers: HeaderMap,
    /// Request body, possibly empty.
    pub(crate) body: Bytes,
}

/// Sends the run's request over HTTP/1.1 or h2c to one resolved address.
#[derive(Debug)]
pub(crate) struct Http {
    addr: SocketAddr,
    protocol: Protocol,
    template: RequestTemplate,
    /// The URI as HTTP/1.1 writes it on the wire: path and query only.
    origin_form: Uri,
    h2: Box<[Mutex<Option<H2Sender>>]>,
}

/// A slot: its own keep-alive connection (HTTP/1.1), or the index of the
/// shared h2c connection its streams go over.
#[derive(Debug)]
pub(crate) enum HttpSlot {
    /// HTTP/1.1: this slot's connection, opened on first use and reopened
    /// when it closes.
    H1(Option<http1::SendRequest<Full<Bytes>>>),
    /// h2c: index into the shared connections.
    H2(usize),
}

impl Http {
    /// A transport for `template`, connecting to `addr`, for `slots` slots.
    pub(crate) fn new(
        addr: SocketAddr,
        protocol: Protocol,
        template: RequestTemplate,
        slots: usize,
    ) -> Http {
        let origin_form = template
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        let h2_connections = match protocol {
            Protocol::Http1 => 0,
            Protocol::H2c => slots.clamp(1, H2_CONNECTIONS),
        };
        Http {
            addr,
            protocol,
            template,
            origin_form,
            h2: (0..h2_connections).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.template.body.clone()));
        *request.method_mut() = self.template.method.clone();
        *request.headers_mut() = self.template.headers.clone();
        *request.uri_mut() = match self.protocol {
            Protocol::Http1 => self.origin_form.clone(),
            // h2 sends scheme and authority as pseudo-headers from the URI.
            Protocol::H2c => self.template.uri.clone(),
        };
        if self.protocol == Protocol::H2c {
            request.headers_mut().remove(header::HOST);
        }
        request
    }

    async fn tcp(&self) -> Result<TcpStream, String> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        // Requests are small and latency is the measurement: no Nagle delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Full<Bytes>>, String> {
        let stream = self.tcp().await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {}: {}", self.addr, chain(&e)))?;
        // The connection task ends when the sender is dropped or the peer
        // closes; its error shows up on the sender.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<Full<Bytes>>, String> {
        let stream = self.tcp().await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2c handshake with {}: {}", self.addr, chain(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn send_h1(&self, conn: &mut Option<http1::SendRequest<Full<Bytes>>>) -> Outcome {
        let reused = matches!(conn, Some(sender) if !sender.is_closed());
        if !reused {
            *conn = None;
        }
        // A reused connection may have been closed by the server while idle
        // (keep-alive timeout): then one fresh connection is tried.
        for attempt in 0..2 {
            let sender = match conn {
                Some(sender) => sender,
                None => match self.connect_h1().await {
                    Ok(sender) => conn.insert(sender),
                    Err(message) => return Outcome::Connect(message),
                },
            };
            if let Err(e) = sender.ready().await {
                *conn = None;
                if attempt == 0 && reused {
                    continue;
                }
                return Outcome::Failed(format!("connection to {}: {}", self.addr, chain(&e)));
            }
            let outcome = exchange(sender.send_request(self.request()).await).await;
            if !matches!(outcome, Outcome::Status(_)) {
                *conn = None;
            }
            return outcome;
        }
        Outcome::Failed(format!("connection to {} closed", self.addr))
    }

    async fn send_h2(&self, index: usize) -> Outcome {
        let Some(shared) = self.h2.get(index % self.h2.len().max(1)) else {
            return Outcome::Failed("no h2c connection configured".to_owned());
        };
        let mut sender = {
            // Held across the connect so only one slot opens the connection
            // and the others reuse it.
            let mut guard = shared.lock().await;
            match guard.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => match self.connect_h2().await {
                    Ok(sender) => guard.insert(sender).clone(),
                    Err(message) => {
                        *guard = None;
                        return Outcome::Connect(message);
                    }
                },
            }
        };
        if let Err(e) = sender.ready().await {
            return Outcome::Failed(format!("h2c connection to {}: {}", self.addr, chain(&e)));
        }
        exchange(sender.send_request(self.request()).await).await
    }
}

/// Reads the whole response: latency ends with the last body byte.
async fn exchange(result: Result<http::Response<hyper::body::Incoming>, hyper::Error>) -> Outcome {
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(_) => Outcome::Status(status),
                Err(e) => Outcome::Failed(format!("reading the response body: {}", chain(&e))),
            }
        }
        Err(e) => Outcome::Failed(chain(&e)),
    }
}

/// An error and its sources on one line: hyper's own messages are terse
/// ("connection error") and the cause is further down the chain.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

impl Transport for Http {
    type Slot = HttpSlot;

    fn slot(&self, index: usize) -> HttpSlot {
        match self.protocol {
            Protocol::Http1 => HttpSlot::H1(None),
            Protocol::H2c => HttpSlot::H2(index),
        }
    }

    async fn send<'a>(&'a self, slot: &'a mut HttpSlot) -> Outcome {
        match slot {
            HttpSlot::H1(conn) => self.send_h1(conn).await,
            HttpSlot::H2(index) => self.send_h2(*index).await,
        }
    }

    fn reset(&self, slot: &mut HttpSlot) {
        // A cut-off HTTP/1.1 exchange leaves the connection mid-response;
        // an h2 stream is reset by dropping it and the connection stays.
        if let HttpSlot::H1(conn) = slot {
            *conn = None;
        }
    }
}
