//! TLS on listeners (ALPN, mutual TLS identities, certificate reload) and
//! TLS to upstreams, over real loopback sockets with certificates from the
//! development CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, time::Duration};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use switchyard_gateway::{
    server::serve,
    tls::{ListenerTlsConfig, PeerIdentity, certs},
};
use switchyard_transport::{Body, Transport, TransportConfig, tls::UpstreamTlsConfig};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_rustls::TlsConnector;

/// A temp dir with a CA, a server certificate for localhost, a client
/// certificate with a SPIFFE identity, and a second, unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-tls-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let ca = certs::new_ca("test CA").unwrap();
        certs::write(&dir, "ca", &ca, true).unwrap();
        let server = certs::issue(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        certs::write(&dir, "server", &server, true).unwrap();
        let client = certs::issue(&ca, &["spiffe://test/frontend".into()]).unwrap();
        certs::write(&dir, "client", &client, true).unwrap();
        let other = certs::new_ca("stranger CA").unwrap();
        certs::write(&dir, "other-ca", &other, true).unwrap();
        let stranger = certs::issue(&other, &["spiffe://test/intruder".into()]).unwrap();
        certs::write(&dir, "stranger", &stranger, true).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn client_config(&self, client: Option<&str>) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            ca: self.path("ca.pem"),
            server_name: Some("localhost".into()),
            cert: client.map(|c| self.path(&format!("{c}.pem"))),
            key: client.map(|c| self.path(&format!("{c}-key.pem"))),
        }
    }

    fn listener_tls(&self, mutual: bool) -> ListenerTlsConfig {
        ListenerTlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_ca: mutual.then(|| self.path("ca.pem")),
            require_client_cert: true,
            reload_interval: Duration::from_millis(100),
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Serves a handler that answers with the caller's mTLS identity (or "-").
async fn identity_server(tls: ListenerTlsConfig) -> (SocketAddr, oneshot::Sender<()>) {
    let mut limits = support::limits();
    limits.tls = Some(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = tower::service_fn(|req: Request<Body>| async move {
        let who = req
            .extensions()
            .get::<PeerIdentity>()
            .map_or("-".to_owned(), |p| p.0.clone());
        Ok::<_, Infallible>(Response::new(Body::from(who)))
    });
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(
            listener,
            &limits,
            handler,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        )
        .await
    });
    (addr, tx)
}

/// One TLS connection: returns a sender for requests on it and the
/// negotiated HTTP version.
async fn connect(
    addr: SocketAddr,
    config: &UpstreamTlsConfig,
    h2: bool,
) -> Result<(Sender, Vec<u8>), String> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = TlsConnector::from(config.client_config(alpn)?);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let io = TokioIo::new(stream);
    if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok((Sender::H2(send), der))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok((Sender::H1(send), der))
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn get(&mut self) -> Result<(Version, String), String> {
        let req = Request::get("https://localhost/")
            .body(Empty::new())
            .unwrap();
        let res = match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| e.to_string())?;
        let version = res.version();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((version, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[tokio::test]
async fn tls_listener_serves_http1_and_h2_by_alpn() {
    let pki = Pki::new();
    let (addr, _stop) = identity_server(pki.listener_tls(false)).await;
    let (mut h1, _) = connect(addr, &pki.client_config(None), false)
        .await
        .unwrap();
    assert_eq!(h1.get().await.unwrap(), (Version::HTTP_11, "-".to_owned()));
    let (mut h2, _) = connect(addr, &pki.client_config(None), true).await.unwrap();
    assert_eq!(h2.get().await.unwrap(), (Version::HTTP_2, "-".to_owned()));
}

#[tokio::test]
async fn mutual_tls_turns_the_client_certificate_into_the_identity() {
    let pki = Pki::new();
    let (addr, _stop) = identity_server(pki.listener_tls(true)).await;
    let (mut conn, _) = connect(addr, &pki.client_config(Some("client")), false)
        .await
        .unwrap();
    assert_eq!(conn.get().await.unwrap().1, "spiffe://test/frontend");
}

#[tokio::test]
async fn mutual_tls_refuses_unknown_cas_and_missing_certificates() {
    let pki = Pki::new();
    let (addr, _stop) = identity_server(pki.listener_tls(true)).await;
    // A certificate from another CA: the handshake (or the first request,
    // with TLS 1.3's late client-auth alert) fails; nothing is served.
    let outcome = match connect(addr, &pki.client_config(Some("stranger")), false).await {
        Ok((mut conn, _)) => conn.get().await,
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "{outcome:?}");
    let outcome = match connect(addr, &pki.client_config(None), false).await {
        Ok((mut conn, _)) => conn.get().await,
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let pki = Pki::new();
    let (addr, _stop) = identity_server(pki.listener_tls(false)).await;
    let (mut old_conn, old_cert) = connect(addr, &pki.client_config(None), false)
        .await
        .unwrap();
    assert!(old_conn.get().await.is_ok());

    // Issue a new server certificate from the same CA and put it in place.
    let ca = certs::read(&pki.dir, "ca").unwrap();
    let renewed = certs::issue(&ca, &["localhost".into()]).unwrap();
    certs::write(&pki.dir, "server", &renewed, true).unwrap();

    // New handshakes pick it up within a few reload intervals (bounded wait).
    let mut new_cert = old_cert.clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, cert) = connect(addr, &pki.client_config(None), false)
            .await
            .unwrap();
        if cert != old_cert {
            new_cert = cert;
            break;
        }
    }
    assert_ne!(
        new_cert, old_cert,
        "the renewed certificate was never served"
    );
    // The connection opened before the reload still works.
    assert_eq!(old_conn.get().await.unwrap().0, Version::HTTP_11);
}

#[tokio::test]
async fn bad_tls_files_are_refused_with_the_file_named() {
    let pki = Pki::new();
    let mut tls = pki.listener_tls(false);
    tls.key = pki.path("client-key.pem");
    let err = tls.validate().unwrap_err();
    assert!(err.contains("tls.key"), "{err}");
    tls.cert = pki.path("missing.pem");
    let err = tls.validate().unwrap_err();
    assert!(
        err.contains("tls.cert") && err.contains("missing.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn transport_speaks_tls_to_upstreams_and_checks_their_certificate() {
    let pki = Pki::new();
    let (addr, _stop) = identity_server(pki.listener_tls(true)).await;
    let config = TransportConfig {
        tls: Some(pki.client_config(Some("client"))),
        ..TransportConfig::default()
    };
    let transport = Transport::new(&config).unwrap();
    assert!(transport.is_tls());
    let req = Request::get(format!("https://{addr}/"))
        .body(Body::empty())
        .unwrap();
    let res = transport.send(req).await.unwrap();
    assert_eq!(
        res.into_body().collect_bytes().await.unwrap(),
        "spiffe://test/frontend"
    );

    // An upstream whose certificate does not chain to the configured CA is refused.
    let mut wrong = pki.client_config(Some("client"));
    wrong.ca = pki.path("other-ca.pem");
    let transport = Transport::new(&TransportConfig {
        tls: Some(wrong),
        ..TransportConfig::default()
    })
    .unwrap();
    let req = Request::get(format!("https://{addr}/"))
        .body(Body::empty())
        .unwrap();
    assert!(transport.send(req).await.is_err());
}
