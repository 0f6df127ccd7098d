//! The TCP connector, counting the connections it opens.

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
use switchyard_policy::BoxError;
use tokio::net::TcpStream;

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

/// [`HttpConnector`] whose connections decrement a counter when dropped.
#[derive(Debug, Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    open: Arc<OpenConnections>,
}

impl CountingConnector {
    pub(crate) fn new(config: &TransportConfig, open: Arc<OpenConnections>) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(config.connect_timeout));
        inner.set_keepalive(Some(config.tcp_keepalive));
        Self { inner, open }
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<CountedStream, BoxError>> + Send + 'static>>;

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
        let connecting = self.inner.call(uri);
        let open = self.open.clone();
        Box::pin(async move {
            let io = connecting.await?;
            open.count.fetch_add(1, Ordering::Relaxed);
            open.gauge.increment(1.0);
            Ok(CountedStream { io, open })
        })
    }
}

pin_project! {
    /// A TCP stream counted in its transport's open connections until dropped.
    pub(crate) struct CountedStream {
        #[pin]
        io: TokioIo<TcpStream>,
        open: Arc<OpenConnections>,
    }

    impl PinnedDrop for CountedStream {
        fn drop(this: Pin<&mut Self>) {
            let open = this.project().open;
            open.count.fetch_sub(1, Ordering::Relaxed);
            open.gauge.decrement(1.0);
        }
    }
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        self.io.connected()
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
