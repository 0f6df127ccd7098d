//! Issue 6 end to end through the real `switchyard` binary: API keys and
//! JWTs, forged identity headers, authorization, path spellings that try to
//! skip a protected route, call limits a spoofed `X-Forwarded-For` can't
//! dodge, mutual TLS identities, and limits shared by two gateways through a
//! real Redis (those are `#[ignore = "needs redis"]`; `.ci/run` runs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use support::{Backend, Switchyard, client, get, raw_get, send_with, temp_dir};
use switchyard_gateway::tls::certs;
use switchyard_transport::tls::UpstreamTlsConfig;
use tokio::{
    net::TcpListener,
    task::{AbortHandle, JoinSet},
};
use tokio_rustls::TlsConnector;

const API_KEY: &str = "sk-test-0123456789abcdef0123456789abcdef";
const ADMIN_KEY: &str = "sk-admin-0123456789abcdef0123456789abcde";
const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const ISSUER: &str = "https://id.test";
const AUDIENCE: &str = "orders";
const IDENTITY: &str = "x-switchyard-identity";
const CERT_IDENTITY: &str = "x-switchyard-cert-identity";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with these claims merged over valid defaults.
fn token(secret: &str, extra: serde_json::Value) -> String {
    let mut claims = serde_json::json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "scope": "orders:read",
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `alg: none` with valid claims and no signature.
fn unsigned_token() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600})
            .to_string(),
    );
    format!("{header}.{claims}.")
}

/// `[auth]` with one API key (`ci-bot`, scope `orders:read`), one admin key
/// (`root`, scope `orders:admin`) and HS256 tokens.
fn auth_section() -> String {
    format!(
        r#"
[auth.jwt]
issuers = ["{ISSUER}"]
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
leeway = "1s"
[[auth.jwt.keys]]
algorithm = "HS256"
secret = "{SECRET}"

[[auth.api_keys]]
id = "ci"
sha256 = "{}"
identity = "ci-bot"
scopes = ["orders:read"]

[[auth.api_keys]]
id = "admin"
sha256 = "{}"
identity = "root"
scopes = ["orders:admin"]
"#,
        sha256_hex(API_KEY),
        sha256_hex(ADMIN_KEY)
    )
}

/// One listener, one service `app` on `backend`, then `rest` (routes,
/// `[auth]`, `[limits]`...).
fn gateway(backend: SocketAddr, listener_extra: &str, rest: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{listener_extra}

[services.app]
endpoints = ["{backend}"]
[services.app.policy]
retry = {{ max_attempts = 1 }}

{rest}
"#
    )
}

/// Protected `/api/{*rest}` (require), `/admin/{*rest}` (needs scope
/// `orders:admin`), `/reports/{*rest}` (only `alice` by JWT) and an open
/// catch-all.
fn auth_routes() -> String {
    format!(
        r#"{}
[[routes]]
name = "api"
path = "/api/{{*rest}}"
service = "app"
auth = {{ require = true }}

[[routes]]
name = "admin"
path = "/admin/{{*rest}}"
service = "app"
auth = {{ allow = [{{ scopes = ["orders:admin"] }}] }}

[[routes]]
name = "reports"
path = "/reports/{{*rest}}"
service = "app"
auth = {{ allow = [{{ identities = ["alice"], sources = ["jwt"] }}] }}

[[routes]]
name = "open"
path = "/{{*rest}}"
service = "app"
"#,
        auth_section()
    )
}

fn problem_type(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    v["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn api_keys_and_jwts_authenticate_and_forged_credentials_are_refused() {
    let backend = Backend::start("app").await;
    let sy = Switchyard::start(&gateway(backend.addr, "", &auth_routes()));
    let c = client();
    let url = sy.url("/api/orders");

    // No credential: 401 problem+json with a challenge for both schemes.
    let (status, headers, body) = get(&c, &url).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    assert!(problem_type(&body).ends_with("/unauthenticated"), "{body}");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("Bearer realm=\"switchyard\"") && challenge.contains("ApiKey"),
        "{challenge}"
    );

    // Forged or broken credentials: each 401, each with a challenge.
    let expired = token(SECRET, serde_json::json!({"exp": now() - 3600}));
    let wrong_key = token(
        "another-secret-0123456789abcdef0123456",
        serde_json::json!({}),
    );
    let wrong_aud = token(SECRET, serde_json::json!({"aud": "billing"}));
    let wrong_iss = token(SECRET, serde_json::json!({"iss": "https://evil.test"}));
    let future_nbf = token(SECRET, serde_json::json!({"nbf": now() + 3600}));
    let none = unsigned_token();
    let valid = token(SECRET, serde_json::json!({}));
    let (head, rest) = valid.split_once('.').unwrap();
    let (claims, sig) = rest.split_once('.').unwrap();
    // Valid signature, claims swapped for another subject: the signature no
    // longer matches.
    let forged_claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"sub": "root", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "scope": "orders:admin"})
            .to_string(),
    );
    assert_ne!(forged_claims, claims);
    let forged = format!("{head}.{forged_claims}.{sig}");
    let huge = format!("{head}.{}.{sig}", "A".repeat(9000));
    let bad: Vec<(&str, (&str, String))> = vec![
        ("wrong API key", ("x-api-key", "sk-guess".to_owned())),
        (
            "wrong API key (Authorization)",
            ("authorization", "ApiKey sk-guess".to_owned()),
        ),
        ("expired", ("authorization", format!("Bearer {expired}"))),
        (
            "wrong key",
            ("authorization", format!("Bearer {wrong_key}")),
        ),
        (
            "wrong aud",
            ("authorization", format!("Bearer {wrong_aud}")),
        ),
        (
            "wrong iss",
            ("authorization", format!("Bearer {wrong_iss}")),
        ),
        (
            "future nbf",
            ("authorization", format!("Bearer {future_nbf}")),
        ),
        ("alg none", ("authorization", format!("Bearer {none}"))),
        (
            "forged claims",
            ("authorization", format!("Bearer {forged}")),
        ),
        ("garbage", ("authorization", "Bearer not.a.jwt".to_owned())),
        ("huge", ("authorization", format!("Bearer {huge}"))),
    ];
    for (what, (name, value)) in &bad {
        let (status, headers, body) = send_with(&c, "GET", &url, &[(name, value)]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(problem_type(&body).ends_with("/unauthenticated"), "{what}");
        assert!(headers.contains_key("www-authenticate"), "{what}");
    }
    assert_eq!(backend.hits(), 0, "no refused request reached the backend");

    // A valid token: the backend sees the subject, not the token, and not
    // the identity the client tried to claim for itself.
    let bearer = format!("Bearer {valid}");
    let (status, _, body) = send_with(
        &c,
        "GET",
        &url,
        &[("authorization", &bearer), (IDENTITY, "admin")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = backend.last();
    assert_eq!(seen.headers[IDENTITY], "alice");
    assert_eq!(seen.headers.get_all(IDENTITY).iter().count(), 1);
    assert!(!seen.headers.contains_key("authorization"));

    // A valid API key, in either header: its identity, no key upstream.
    for (name, value) in [
        ("x-api-key", API_KEY.to_owned()),
        ("authorization", format!("ApiKey {API_KEY}")),
    ] {
        let (status, _, body) = send_with(
            &c,
            "GET",
            &url,
            &[
                (name, &value),
                (IDENTITY, "admin"),
                (CERT_IDENTITY, "spiffe://x/root"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        let seen = backend.last();
        assert_eq!(seen.headers[IDENTITY], "ci-bot");
        assert!(!seen.headers.contains_key("x-api-key"));
        assert!(!seen.headers.contains_key("authorization"));
        assert!(!seen.headers.contains_key(CERT_IDENTITY));
    }

    // Two credentials at once are ambiguous.
    let (status, _, _) = send_with(
        &c,
        "GET",
        &url,
        &[("authorization", &bearer), ("x-api-key", API_KEY)],
    )
    .await;
    assert_eq!(status, 401);

    // An open route: anonymous callers pass, and a forged identity header
    // is removed rather than forwarded.
    let (status, _, _) = send_with(
        &c,
        "GET",
        &sy.url("/public/page"),
        &[(IDENTITY, "admin"), (CERT_IDENTITY, "spiffe://x/root")],
    )
    .await;
    assert_eq!(status, 200);
    let seen = backend.last();
    assert_eq!(seen.path, "/public/page");
    assert!(!seen.headers.contains_key(IDENTITY), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key(CERT_IDENTITY));
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn authorization_answers_403_to_known_callers_and_401_to_unknown_ones() {
    let backend = Backend::start("app").await;
    let sy = Switchyard::start(&gateway(backend.addr, "", &auth_routes()));
    let c = client();
    let admin = sy.url("/admin/users");

    // Anonymous on an allow-listed route: 401 (authenticate first).
    let (status, headers, body) = get(&c, &admin).await;
    assert_eq!(status, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"));

    // Known callers without the scope: 403, a distinct problem type.
    let alice = format!("Bearer {}", token(SECRET, serde_json::json!({})));
    for (name, value) in [("x-api-key", API_KEY), ("authorization", alice.as_str())] {
        let (status, headers, body) = send_with(&c, "GET", &admin, &[(name, value)]).await;
        assert_eq!(status, 403, "{name}: {body}");
        assert!(problem_type(&body).ends_with("/forbidden"), "{body}");
        assert!(!headers.contains_key("www-authenticate"));
    }
    assert_eq!(backend.hits(), 0);

    // The scope, from an API key or from a token's `scope` claim: allowed.
    let (status, _, _) = send_with(&c, "GET", &admin, &[("x-api-key", ADMIN_KEY)]).await;
    assert_eq!(status, 200);
    assert_eq!(backend.last().headers[IDENTITY], "root");
    let scoped = format!(
        "Bearer {}",
        token(
            SECRET,
            serde_json::json!({"sub": "bob", "scope": "orders:read orders:admin"})
        )
    );
    let (status, _, _) = send_with(&c, "GET", &admin, &[("authorization", &scoped)]).await;
    assert_eq!(status, 200);
    assert_eq!(backend.last().headers[IDENTITY], "bob");

    // By identity and source: alice by token yes; an API key whose identity
    // is not alice, no.
    let reports = sy.url("/reports/q3");
    let (status, _, _) = send_with(&c, "GET", &reports, &[("authorization", &alice)]).await;
    assert_eq!(status, 200);
    let (status, _, _) = send_with(&c, "GET", &reports, &[("x-api-key", ADMIN_KEY)]).await;
    assert_eq!(status, 403);
    assert_eq!(backend.hits(), 3);
}

#[tokio::test]
async fn path_spellings_cannot_reach_a_protected_route_unauthenticated() {
    let backend = Backend::start("app").await;
    let sy = Switchyard::start(&gateway(backend.addr, "", &auth_routes()));

    // Each is refused (400) or lands on the protected route (401): never
    // the open catch-all, never the backend.
    let cases: &[(&str, u16)] = &[
        ("/admin/..%2fx", 400),
        ("/admin/..%2Fx", 400),
        ("/public/..%2fadmin/x", 400),
        ("/admin%5cx", 400),
        ("/admin\\x", 400),
        ("/admin/x%00", 400),
        ("/../admin/x", 400),
        ("/public/..;/admin/x", 400),
        ("/admin/x%zz", 400),
        ("//admin/x", 401),
        ("///admin//x", 401),
        ("/./admin/x", 401),
        ("/public/../admin/x", 401),
        ("/public/%2e%2e/admin/x", 401),
        ("/public/.%2E/admin/x", 401),
        ("/%61dmin/x", 401),
        ("/%61%64%6d%69%6e/x", 401),
        ("/admin/./x", 401),
        ("/admin/x?next=/public", 401),
    ];
    for (target, want) in cases {
        let status = raw_get(sy.listener, target, &[]).await;
        assert_eq!(status, *want, "{target}");
    }
    assert_eq!(backend.hits(), 0, "no spelling reached the backend");

    // With a credential the same spellings reach the route, normalized:
    // the upstream gets the one spelling that was authorized.
    let status = raw_get(
        sy.listener,
        "/public/%2e%2e/%61dmin//x",
        &[("x-api-key", ADMIN_KEY)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(backend.last().path, "/admin/x");

    // Case is significant (documented): `/Admin/x` is not the protected
    // route `/admin/{*rest}`; it matches the open catch-all and goes
    // upstream as `/Admin/x`, unchanged. An upstream that ignores case
    // needs the same `auth` on its catch-all.
    let status = raw_get(sy.listener, "/Admin/x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(backend.last().path, "/Admin/x");
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn a_client_ip_limit_cannot_be_dodged_with_spoofed_forwarded_for() {
    let backend = Backend::start("app").await;
    // Loopback is not a trusted proxy, so X-Forwarded-For from it is
    // ignored and every request counts against 127.0.0.1.
    let limits = r#"
[limits]
trusted_proxies = ["10.0.0.0/8"]

[[limits.rules]]
name = "per-ip"
key = "client_ip"
rate = { requests = 5, per = "1h", burst = 5 }

[[routes]]
name = "all"
path = "/{*rest}"
service = "app"
"#;
    let sy = Switchyard::start(&gateway(backend.addr, "", limits));
    let c = client();
    let mut statuses = Vec::new();
    let mut refused = None;
    for i in 0..12 {
        let xff = format!("203.0.113.{i}, 10.0.0.{i}");
        let (status, headers, body) = send_with(
            &c,
            "GET",
            &sy.url("/x"),
            &[
                ("x-forwarded-for", &xff),
                ("x-real-ip", &format!("198.51.100.{i}")),
            ],
        )
        .await;
        if status == 200 {
            assert_eq!(
                headers["ratelimit-policy"].to_str().unwrap(),
                "\"per-ip\";q=5;w=3600"
            );
            assert!(
                headers["ratelimit"]
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("\"per-ip\";r={};", 4 - i)),
                "{:?}",
                headers["ratelimit"]
            );
        }
        if status == 429 && refused.is_none() {
            refused = Some((headers, body));
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..5], [200; 5]);
    assert_eq!(statuses[5..], [429; 7]);
    assert_eq!(backend.hits(), 5);

    let (headers, body) = refused.unwrap();
    assert!(problem_type(&body).ends_with("/rate-limited"), "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(headers["ratelimit-policy"], "\"per-ip\";q=5;w=3600");
    assert_eq!(
        headers["ratelimit"].to_str().unwrap(),
        format!("\"per-ip\";r=0;t={retry_after}")
    );

    // The backend saw the real peer appended to the spoofed list: the
    // gateway never treated the client's own claim as its address.
    let xff = backend.last().headers["x-forwarded-for"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(xff.ends_with("127.0.0.1"), "{xff}");
}

#[tokio::test]
async fn anonymous_callers_are_limited_per_address_whatever_identity_they_claim() {
    let backend = Backend::start("app").await;
    let rest = format!(
        r#"{}
[[limits.rules]]
name = "per-caller"
key = "identity"
rate = {{ requests = 3, per = "1h", burst = 3 }}

[[routes]]
name = "all"
path = "/{{*rest}}"
service = "app"
"#,
        auth_section()
    );
    let sy = Switchyard::start(&gateway(backend.addr, "", &rest));
    let c = client();
    let mut ok = 0;
    for i in 0..6 {
        let who = format!("user-{i}");
        let (status, _, _) = send_with(&c, "GET", &sy.url("/x"), &[(IDENTITY, &who)]).await;
        ok += usize::from(status == 200);
    }
    assert_eq!(
        ok, 3,
        "forged identities share the anonymous caller's bucket"
    );
    // An authenticated caller has a bucket of its own.
    let (status, _, _) = send_with(&c, "GET", &sy.url("/x"), &[("x-api-key", API_KEY)]).await;
    assert_eq!(status, 200);
    assert_eq!(backend.hits(), 4);
}

// ---------------------------------------------------------------- mTLS

/// A dev CA, a server certificate, two client certificates from the CA and
/// one from an unrelated CA, written with the library `switchyard cert`
/// uses.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("pki");
        let ca = certs::new_ca("test CA").unwrap();
        certs::write(&dir, "ca", &ca, true).unwrap();
        let server = certs::issue(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        certs::write(&dir, "server", &server, true).unwrap();
        let client = certs::issue(&ca, &["spiffe://test/frontend".into()]).unwrap();
        certs::write(&dir, "frontend", &client, true).unwrap();
        let client = certs::issue(&ca, &["batch.test".into()]).unwrap();
        certs::write(&dir, "batch", &client, true).unwrap();
        let other = certs::new_ca("stranger CA").unwrap();
        let stranger = certs::issue(&other, &["spiffe://test/frontend".into()]).unwrap();
        certs::write(&dir, "stranger", &stranger, true).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn client(&self, name: Option<&str>) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            ca: self.path("ca.pem"),
            server_name: Some("localhost".into()),
            cert: name.map(|c| self.path(&format!("{c}.pem"))),
            key: name.map(|c| self.path(&format!("{c}-key.pem"))),
        }
    }
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

/// `GET path` over a new TLS connection; Err when the handshake or the
/// request fails.
async fn tls_get(
    addr: SocketAddr,
    config: &UpstreamTlsConfig,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<u16, String> {
    let tls = TlsConnector::from(config.client_config(&[b"http/1.1"])?);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "localhost");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = res.status().as_u16();
    res.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

#[tokio::test]
async fn mutual_tls_identities_reach_the_upstream_and_unknown_cas_are_refused() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let tls = format!(
        r#"[listeners.tls]
cert = "{}"
key = "{}"
client_ca = "{}"
"#,
        toml_path(&pki.path("server.pem")),
        toml_path(&pki.path("server-key.pem")),
        toml_path(&pki.path("ca.pem")),
    );
    let routes = format!(
        r#"{}
[[routes]]
name = "frontend-only"
path = "/internal/{{*rest}}"
service = "app"
auth = {{ allow = [{{ cert_identities = ["spiffe://test/frontend"] }}] }}

[[routes]]
name = "all"
path = "/{{*rest}}"
service = "app"
"#,
        auth_section()
    );
    let sy = Switchyard::start(&gateway(backend.addr, &tls, &routes));

    // The frontend's certificate is its identity, forwarded upstream in
    // both headers (forged copies removed first).
    let status = tls_get(
        sy.listener,
        &pki.client(Some("frontend")),
        "/internal/jobs",
        &[(CERT_IDENTITY, "spiffe://test/admin"), (IDENTITY, "root")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let seen = backend.last();
    assert_eq!(seen.headers[CERT_IDENTITY], "spiffe://test/frontend");
    assert_eq!(seen.headers[IDENTITY], "spiffe://test/frontend");

    // A DNS-SAN certificate from the same CA: authenticated, not allowed
    // on the frontend-only route, fine elsewhere.
    let batch = pki.client(Some("batch"));
    assert_eq!(
        tls_get(sy.listener, &batch, "/internal/jobs", &[]).await,
        Ok(403)
    );
    assert_eq!(tls_get(sy.listener, &batch, "/reports", &[]).await, Ok(200));
    assert_eq!(backend.last().headers[CERT_IDENTITY], "batch.test");

    // An API key over mTLS: the key's subject, the certificate identity
    // beside it.
    let status = tls_get(
        sy.listener,
        &pki.client(Some("batch")),
        "/x",
        &[("x-api-key", API_KEY)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let seen = backend.last();
    assert_eq!(seen.headers[IDENTITY], "ci-bot");
    assert_eq!(seen.headers[CERT_IDENTITY], "batch.test");
    let hits = backend.hits();
    assert_eq!(hits, 3);

    // Same name, unknown CA: refused at the handshake (or, with TLS 1.3's
    // late client-auth alert, on the first request). No certificate at
    // all: refused too (`require_client_cert` defaults to true).
    let stranger = tls_get(sy.listener, &pki.client(Some("stranger")), "/x", &[]).await;
    assert!(stranger.is_err(), "{stranger:?}");
    let anonymous = tls_get(sy.listener, &pki.client(None), "/x", &[]).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    // Plain HTTP to the TLS listener gets nothing served.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        client().request(
            http::Request::get(sy.url("/x"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert!(plain.is_err() || plain.unwrap().status() == 400);
    assert_eq!(backend.hits(), hits, "nothing unauthenticated was served");
}

// ---------------------------------------------------------------- Redis

const REDIS: &str = "127.0.0.1:6379";

fn unique_prefix(tag: &str) -> String {
    format!(
        "switchyard:test:{tag}:{}:{}:",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn shared_limit(backend: SocketAddr, redis_url: &str, prefix: &str, redis_extra: &str) -> String {
    gateway(
        backend,
        "",
        &format!(
            r#"
[limits.redis]
url = "{redis_url}"
key_prefix = "{prefix}"
timeout = "500ms"
{redis_extra}

[[limits.rules]]
name = "fleet"
key = "global"
rate = {{ requests = 10, per = "1h", burst = 10 }}
shared = true

[[routes]]
name = "all"
path = "/{{*rest}}"
service = "app"
"#
        ),
    )
}

#[tokio::test]
#[ignore = "needs redis"]
async fn two_gateways_share_one_redis_limit() {
    let backend = Backend::start("app").await;
    let prefix = unique_prefix("share");
    let url = format!("redis://{REDIS}");
    let a = Switchyard::start(&shared_limit(backend.addr, &url, &prefix, ""));
    let b = Switchyard::start(&shared_limit(backend.addr, &url, &prefix, ""));

    // Each gateway spends from the one bucket: 3 through A, 3 through B.
    let c = client();
    assert_eq!(burst(&a.url("/x"), 3).await, [200; 3]);
    assert_eq!(burst(&b.url("/x"), 3).await, [200; 3]);

    // Then 34 concurrent requests split across both: only the 4 left pass.
    let mut calls = JoinSet::new();
    for i in 0..34 {
        let url = if i % 2 == 0 { a.url("/x") } else { b.url("/x") };
        let c = c.clone();
        calls.spawn(async move { get(&c, &url).await.0 });
    }
    let mut statuses = Vec::new();
    while let Some(status) = calls.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(count(&statuses, 200), 4, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 30, "{statuses:?}");
    assert_eq!(backend.hits(), 10, "total admitted == the shared limit");
}

/// A TCP proxy in front of Redis that can be cut (open connections closed,
/// new ones accepted and closed at once) and restored.
struct RedisLink {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl RedisLink {
    async fn start() -> RedisLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(REDIS).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        RedisLink { addr, up, conns }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Sends `n` requests one after another; returns the statuses.
async fn burst(url: &str, n: usize) -> Vec<u16> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&c, url).await.0);
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
#[ignore = "needs redis"]
async fn redis_outage_fails_open_with_a_local_fallback_or_closed_as_configured() {
    let backend = Backend::start("app").await;
    let link = RedisLink::start().await;
    // Two fleets on one Redis, each with its own keys: one fails open with
    // a local fallback (limit 10 / 2 instances = 5 each), one fails closed.
    let open = Switchyard::start(&shared_limit(
        backend.addr,
        &link.url(),
        &unique_prefix("open"),
        "on_error = \"fail_open\"\nlocal_fallback = true\nexpected_instances = 2",
    ));
    let closed = Switchyard::start(&shared_limit(
        backend.addr,
        &link.url(),
        &unique_prefix("closed"),
        "on_error = \"fail_closed\"",
    ));

    // Redis up: both enforce the shared limit.
    assert_eq!(count(&burst(&closed.url("/x"), 3).await, 200), 3);

    link.cut();
    // Fail open + local fallback: admitted up to the local share, then 429
    // (protection remains while Redis is away).
    let statuses = burst(&open.url("/x"), 12).await;
    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 7, "{statuses:?}");
    // Fail closed: every call refused with 503 limits-unavailable.
    let c = client();
    for _ in 0..3 {
        let (status, headers, body) = get(&c, &closed.url("/x")).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            problem_type(&body).ends_with("/limits-unavailable"),
            "{body}"
        );
        assert!(headers.contains_key("x-switchyard-error"));
    }
    assert_eq!(backend.hits(), 3 + 5);

    // Redis back: the fail-closed fleet admits again once it retries Redis
    // (it skips Redis for about a second after a failure), and its shared
    // bucket still remembers the 3 calls spent before the cut.
    link.restore();
    let mut status = 0;
    for _ in 0..100 {
        status = get(&c, &closed.url("/x")).await.0;
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let statuses = burst(&closed.url("/x"), 10).await;
    assert_eq!(count(&statuses, 200), 10 - 3 - 1, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 4, "{statuses:?}");
}

// ---------------------------------------------------------------- admin

#[tokio::test]
async fn an_admin_listener_beyond_loopback_needs_a_token() {
    let backend = Backend::start("app").await;
    let open_admin = gateway(
        backend.addr,
        "",
        "[[routes]]\npath = \"/{*rest}\"\nservice = \"app\"\n",
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"0.0.0.0:0\"",
    );
    assert!(open_admin.contains("0.0.0.0:0"));
    let dir = temp_dir("admin");
    let path = dir.join("open.toml");
    std::fs::write(&path, &open_admin).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token_sha256"), "{stderr}");

    // With a token hash it starts, and every admin request needs the token.
    let token = "admin-token-0123456789";
    let with_token = open_admin.replace(
        "listen = \"0.0.0.0:0\"",
        &format!(
            "listen = \"0.0.0.0:0\"\ntoken_sha256 = \"{}\"",
            sha256_hex(token)
        ),
    );
    let sy = Switchyard::start(&with_token);
    let admin = format!("http://127.0.0.1:{}", sy.admin.port());
    let c = client();
    let (status, _, _) = get(&c, &format!("{admin}/admin/services")).await;
    assert_eq!(status, 401);
    let (status, _, _) = send_with(
        &c,
        "GET",
        &format!("{admin}/admin/services"),
        &[("authorization", "Bearer wrong-token")],
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    let (status, _, _) = send_with(
        &c,
        "GET",
        &format!("{admin}/admin/services"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
}
