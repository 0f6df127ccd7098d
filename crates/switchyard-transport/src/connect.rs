//! The TCP (and TLS) connector, counting the connections it opens.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use pin_project_lite::pin_project;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use switchyard_policy::BoxError;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::TransportConfig;

/// The count of open connections, shared by a connector and its streams.
#[derive(Debug)]
pub(crate) struct OpenConnections {
    count: AtomicUsize,
    gauge: metrics::Gauge,
}

impl OpenConnections {
    pub(crate) fn new(gauge: metrics::Gauge) -> Self {
        Self {
            count: AtomicUsize::new(0),
            gauge,
        }
    }

    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Counts one open connection in its [`OpenConnections`] until dropped.
#[derive(Debug)]
pub(crate) struct OpenGuard(Arc<OpenConnections>);

impl OpenGuard {
    fn new(open: Arc<OpenConnections>) -> Self {
        open.count.fetch_add(1, Ordering::Relaxed);
        open.gauge.increment(1.0);
        Self(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}

/// [`HttpConnector`], plus TLS when configured, whose connections decrement
/// a counter when dropped.
#[derive(Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    tls: Option<Tls>,
    open: Arc<OpenConnections>,
}

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for CountingConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingConnector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl CountingConnector {
    pub(crate) fn new(
        config: &TransportConfig,
        tls: Option<Arc<ClientConfig>>,
        open: Arc<OpenConnections>,
    ) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(config.connect_timeout));
        inner.set_keepalive(Some(config.tcp_keepalive));
        // With TLS the request URIs say https; the TCP part is the same.
        inner.enforce_http(tls.is_none());
        let tls = tls.map(|client_config| Tls {
            connector: TlsConnector::from(client_config),
            server_name: config
                .tls
                .as_ref()
                .and_then(|t| t.server_name.as_deref())
                .and_then(|n| ServerName::try_from(n.to_owned()).ok()),
        });
        Self { inner, tls, open }
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<CountedStream, BoxError>> + Send + 'static>>;

impl CountingConnector {
    /// Opens a connection to `uri`'s authority (TCP, then TLS when
    /// configured), counted in the open connections until the guard drops.
    pub(crate) fn open(
        &self,
        uri: http::Uri,
    ) -> impl Future<Output = Result<(Stream, OpenGuard), BoxError>> + Send + 'static {
        let host = uri.host().map(|h| h.trim_matches(['[', ']']).to_owned());
        let connecting = tower_service::Service::call(&mut self.inner.clone(), uri);
        let open = self.open.clone();
        let tls = self.tls.clone();
        async move {
            let tcp = connecting.await?.into_inner();
            let stream = match tls {
                None => Stream::Plain { io: tcp },
                Some(tls) => {
                    let name = match tls.server_name {
                        Some(name) => name,
                        None => ServerName::try_from(host.unwrap_or_default())
                            .map_err(|e| format!("no TLS server name for this endpoint: {e}"))?,
                    };
                    let io = tls.connector.connect(name, tcp).await?;
                    Stream::Tls { io: Box::new(io) }
                }
            };
            Ok((stream, OpenGuard::new(open)))
        }
    }
}

// A boxed future: connecting happens once per connection, not per request,
// and `HttpConnecting` is not nameable from outside hyper-util.
impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = CountedStream;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let opening = self.open(uri);
        Box::pin(async move {
            let (stream, guard) = opening.await?;
            Ok(CountedStream {
                io: TokioIo::new(stream),
                _guard: guard,
            })
        })
    }
}

pin_project! {
    /// A TCP stream counted in its transport's open connections until dropped.
    pub(crate) struct CountedStream {
        #[pin]
        io: TokioIo<Stream>,
        _guard: OpenGuard,
    }
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        match self.io.inner() {
            Stream::Plain { io } => io.connected(),
            Stream::Tls { io } => {
                let (tcp, session) = io.get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

pin_project! {
    /// A connection to an endpoint: plain TCP or TLS over TCP.
    #[project = StreamProj]
    pub(crate) enum Stream {
        Plain { #[pin] io: TcpStream },
        Tls { #[pin] io: Box<TlsStream<TcpStream>> },
    }
}

impl Stream {
    /// False when TLS holds plaintext nobody read or the peer's
    /// `close_notify`: such a connection can't carry another request.
    pub(crate) fn is_clean(&mut self) -> bool {
        match self {
            Stream::Plain { .. } => true,
            Stream::Tls { io } => match io.get_mut().1.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed(),
                Err(_) => false,
            },
        }
    }

    /// The TCP connection under the stream.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain { io } => io,
            Stream::Tls { io } => io.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_read(cx, buf),
            StreamProj::Tls { io } => io.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_write(cx, buf),
            StreamProj::Tls { io } => io.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_flush(cx),
            StreamProj::Tls { io } => io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_shutdown(cx),
            StreamProj::Tls { io } => io.poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_write_vectored(cx, bufs),
            StreamProj::Tls { io } => io.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain { io } => io.is_write_vectored(),
            Stream::Tls { io } => io.is_write_vectored(),
        }
    }
}

impl Read for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl Write for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
