//! JWKS over HTTP against a real loopback server: first fetch, key
//! rotation picked up by the background refresher, the last good keys kept
//! when the server fails, and a fetch bounded by its timeout and size cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp, jwk};
use switchyard_gateway::auth::{AuthConfig, AuthError, Authenticator, JwtAlgorithm, JwtConfig};

const RSA_PRIVATE: &str = include_str!("data/rsa_private.pem");
const RSA2_PRIVATE: &str = include_str!("data/rsa2_private.pem");

/// What the JWKS server answers: a status and a body, changeable mid-test.
#[derive(Clone)]
struct Jwks(Arc<Mutex<(StatusCode, String)>>);

impl Jwks {
    fn set(&self, status: StatusCode, body: String) {
        *self.0.lock().unwrap() = (status, body);
    }
}

async fn serve_jwks(initial: String) -> (SocketAddr, Jwks) {
    let state = Jwks(Arc::new(Mutex::new((StatusCode::OK, initial))));
    let app = Router::new()
        .route(
            "/jwks",
            get(|State(s): State<Jwks>| async move { s.0.lock().unwrap().clone() }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

fn jwk_set(keys: &[(&str, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(private, kid)| {
            let mut k = jwk::Jwk::from_encoding_key(
                &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
                Algorithm::RS256,
            )
            .unwrap();
            k.common.key_id = Some((*kid).to_owned());
            k
        })
        .collect();
    serde_json::to_string(&jwk::JwkSet { keys }).unwrap()
}

fn config(url: String, refresh: Duration, timeout: Duration) -> AuthConfig {
    AuthConfig {
        jwt: Some(JwtConfig {
            issuers: vec!["iss".into()],
            audiences: vec!["aud".into()],
            leeway: Duration::from_secs(30),
            algorithms: vec![JwtAlgorithm::RS256],
            keys: vec![],
            jwks_file: None,
            jwks_url: Some(url),
            jwks_ca: None,
            jwks_refresh: refresh,
            jwks_fetch_timeout: timeout,
            max_token_bytes: 8192,
        }),
        ..Default::default()
    }
}

fn token(private: &str, kid: &str) -> HeaderMap {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = serde_json::json!({ "sub": "alice", "iss": "iss", "aud": "aud", "exp": get_current_timestamp() + 600 });
    let t = encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    h
}

/// Polls (bounded) until `f` holds; the refresher runs on its own schedule.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_and_the_old_one_dropped() {
    let (addr, jwks) = serve_jwks(jwk_set(&[(RSA_PRIVATE, "one")])).await;
    let authn = Authenticator::new(&config(
        format!("http://{addr}/jwks"),
        Duration::from_secs(1),
        Duration::from_millis(500),
    ))
    .unwrap();
    assert_eq!(authn.refresh_jwks().await.unwrap(), 1);
    assert!(
        authn
            .authenticate(&token(RSA_PRIVATE, "one"), None)
            .unwrap()
            .is_some()
    );
    assert!(
        authn
            .authenticate(&token(RSA2_PRIVATE, "two"), None)
            .is_err()
    );

    tracing::info!("rotating the issuer's key");
    jwks.set(StatusCode::OK, jwk_set(&[(RSA2_PRIVATE, "two")]));
    eventually("the refresher picking up key two", || {
        authn
            .authenticate(&token(RSA2_PRIVATE, "two"), None)
            .is_ok()
    })
    .await;
    assert!(matches!(
        authn.authenticate(&token(RSA_PRIVATE, "one"), None),
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn the_last_good_keys_stay_when_the_server_fails() {
    let (addr, jwks) = serve_jwks(jwk_set(&[(RSA_PRIVATE, "one")])).await;
    let authn = Authenticator::new(&config(
        format!("http://{addr}/jwks"),
        Duration::from_secs(300),
        Duration::from_secs(2),
    ))
    .unwrap();
    authn.refresh_jwks().await.unwrap();
    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        (StatusCode::OK, "not json".to_owned()),
        (StatusCode::OK, r#"{"keys":[]}"#.to_owned()),
        (StatusCode::OK, " ".repeat(300 * 1024)),
    ] {
        jwks.set(status, body);
        let err = authn.refresh_jwks().await.unwrap_err();
        tracing::info!(%err, "fetch failed as it should");
        assert!(
            authn
                .authenticate(&token(RSA_PRIVATE, "one"), None)
                .unwrap()
                .is_some(),
            "keys kept after: {err}"
        );
    }
}

#[tokio::test]
async fn a_fetch_from_a_server_that_never_answers_is_bounded() {
    // Accepts connections and never writes a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let authn = Authenticator::new(&config(
        format!("http://{addr}/jwks"),
        Duration::from_secs(300),
        Duration::from_millis(300),
    ))
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), authn.refresh_jwks())
        .await
        .expect("the fetch timeout bounds the fetch");
    assert!(result.unwrap_err().contains("took longer"));
    assert!(matches!(
        authn.authenticate(&token(RSA_PRIVATE, "one"), None),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn a_jwks_url_needs_a_runtime() {
    let err = Authenticator::new(&config(
        "http://127.0.0.1:1/jwks".into(),
        Duration::from_secs(300),
        Duration::from_secs(2),
    ))
    .unwrap_err();
    assert!(err.contains("runtime"), "{err}");
}

/// Serves `body` at `/jwks` over TLS with a certificate from a fresh dev CA;
/// returns the address and the CA file.
async fn serve_jwks_tls(
    body: String,
) -> (
    SocketAddr,
    std::path::PathBuf,
    tokio::sync::oneshot::Sender<()>,
) {
    use switchyard_gateway::{config::ListenerConfig, server::serve, tls::certs};
    use switchyard_transport::Body;
    let dir = std::env::temp_dir().join(format!("switchyard-jwks-tls-{}", std::process::id()));
    let ca = certs::new_ca("jwks test CA").unwrap();
    certs::write(&dir, "ca", &ca, true).unwrap();
    let server = certs::issue(&ca, &["localhost".into()]).unwrap();
    certs::write(&dir, "server", &server, true).unwrap();
    let limits: ListenerConfig = toml::from_str(&format!(
        "name = \"jwks\"\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.join("server.pem"),
        dir.join("server-key.pem")
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = tower::service_fn(move |_req: http::Request<switchyard_transport::Body>| {
        let body = body.clone();
        async move { Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(body))) }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(
            listener,
            &limits,
            handler,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        )
        .await
    });
    (addr, dir.join("ca.pem"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_checks_the_server_certificate() {
    let (addr, ca, _stop) = serve_jwks_tls(jwk_set(&[(RSA_PRIVATE, "one")])).await;
    let url = format!("https://localhost:{}/jwks", addr.port());

    // Without a CA bundle an https URL is a config error naming the key.
    let mut cfg = config(
        url.clone(),
        Duration::from_secs(300),
        Duration::from_secs(2),
    );
    let problems = cfg.problems();
    assert!(
        problems.iter().any(|(key, _)| key.ends_with("jwks_ca")),
        "{problems:?}"
    );

    // With the CA that signed the server's certificate, keys are fetched.
    cfg.jwt.as_mut().unwrap().jwks_ca = Some(ca);
    let authn = Authenticator::new(&cfg).unwrap();
    assert_eq!(authn.refresh_jwks().await.unwrap(), 1);
    assert!(
        authn
            .authenticate(&token(RSA_PRIVATE, "one"), None)
            .unwrap()
            .is_some()
    );

    // A CA that did not sign it: the fetch fails and no key is trusted.
    let other = switchyard_gateway::tls::certs::new_ca("someone else").unwrap();
    let other_dir =
        std::env::temp_dir().join(format!("switchyard-jwks-other-{}", std::process::id()));
    switchyard_gateway::tls::certs::write(&other_dir, "ca", &other, true).unwrap();
    cfg.jwt.as_mut().unwrap().jwks_ca = Some(other_dir.join("ca.pem"));
    let untrusting = Authenticator::new(&cfg).unwrap();
    assert!(untrusting.refresh_jwks().await.is_err());
    assert!(
        untrusting
            .authenticate(&token(RSA_PRIVATE, "one"), None)
            .is_err()
    );
}
