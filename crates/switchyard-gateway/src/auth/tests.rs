use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp, jwk};
use proptest::prelude::*;
use serde_json::json;

use super::*;

const RSA_PRIVATE: &str = include_str!("../../tests/data/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/data/rsa_public.pem");
const RSA2_PRIVATE: &str = include_str!("../../tests/data/rsa2_private.pem");
const EC_PRIVATE: &str = include_str!("../../tests/data/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../tests/data/ec_public.pem");
const ED_PRIVATE: &str = include_str!("../../tests/data/ed_private.pem");
const ED_PUBLIC: &str = include_str!("../../tests/data/ed_public.pem");
const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";
const ISS: &str = "https://id.example.com";
const AUD: &str = "orders";

fn key(
    alg: JwtAlgorithm,
    kid: Option<&str>,
    secret: Option<&str>,
    pem: Option<&str>,
) -> JwtKeyConfig {
    JwtKeyConfig {
        algorithm: alg,
        kid: kid.map(str::to_owned),
        secret: secret.map(str::to_owned),
        pem: pem.map(str::to_owned),
        key_file: None,
    }
}

fn jwt_config(algorithms: Vec<JwtAlgorithm>, keys: Vec<JwtKeyConfig>) -> JwtConfig {
    JwtConfig {
        issuers: vec![ISS.to_owned()],
        audiences: vec![AUD.to_owned()],
        leeway: Duration::from_secs(30),
        algorithms,
        keys,
        jwks_file: None,
        jwks_url: None,
        jwks_ca: None,
        jwks_refresh: config::DEFAULT_JWKS_REFRESH,
        jwks_fetch_timeout: config::DEFAULT_JWKS_FETCH_TIMEOUT,
        max_token_bytes: config::DEFAULT_MAX_TOKEN_BYTES,
    }
}

/// Every algorithm, one key each.
fn all_algorithms() -> Authenticator {
    use JwtAlgorithm::*;
    let jwt = jwt_config(
        vec![HS256, RS256, ES256, EdDSA],
        vec![
            key(HS256, None, Some(HS_SECRET), None),
            key(RS256, None, None, Some(RSA_PUBLIC)),
            key(ES256, None, None, Some(EC_PUBLIC)),
            key(EdDSA, None, None, Some(ED_PUBLIC)),
        ],
    );
    Authenticator::new(&AuthConfig {
        jwt: Some(jwt),
        ..Default::default()
    })
    .unwrap()
}

fn claims() -> serde_json::Value {
    let now = get_current_timestamp();
    json!({ "sub": "alice", "iss": ISS, "aud": AUD, "exp": now + 600, "iat": now, "scope": "orders:read orders:write", "tenant": "acme", "groups": ["admins", "dev"] })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        other => panic!("{other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with any header, signed with HMAC-SHA256 under `secret`.
fn forge_hs256(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    use sha2::Sha256;
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    // HMAC by hand (RFC 2104), so the forgery does not depend on the library under test.
    let mut k = [0u8; 64];
    if secret.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        k[..secret.len()].copy_from_slice(secret);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg.as_bytes())
        .finalize();
    let mac = Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    format!("{msg}.{}", b64(&mac))
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn check(authn: &Authenticator, token: &str) -> Result<Option<Identity>, AuthError> {
    authn.authenticate(&bearer(token), None)
}

#[test]
fn valid_tokens_of_each_algorithm_are_accepted() {
    let authn = all_algorithms();
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let id = check(&authn, &sign(alg, None, &claims()))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"))
            .unwrap();
        tracing::info!(?alg, subject = %id.subject, "accepted");
        assert_eq!(id.subject, "alice");
        assert_eq!(id.source, Source::Jwt);
        assert_eq!(id.scopes, ["orders:read", "orders:write"]);
        assert_eq!(id.claims["tenant"], "acme");
    }
}

#[test]
fn alg_none_is_refused_in_any_spelling() {
    let authn = all_algorithms();
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
        let body = b64(claims().to_string().as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}.c2ln")] {
            let err = check(&authn, &token).unwrap_err();
            assert_eq!(
                err,
                AuthError::Invalid("alg none is not accepted".into()),
                "{alg}"
            );
        }
    }
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    use JwtAlgorithm::*;
    let forged = forge_hs256(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims(),
        RSA_PUBLIC.as_bytes(),
    );
    // Both algorithms allowed, an HMAC secret configured too: the forged
    // token is checked against the HMAC secret only, never the RSA key.
    let both = Authenticator::new(&AuthConfig {
        jwt: Some(jwt_config(
            vec![HS256, RS256],
            vec![
                key(HS256, None, Some(HS_SECRET), None),
                key(RS256, None, None, Some(RSA_PUBLIC)),
            ],
        )),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        check(&both, &forged).unwrap_err(),
        AuthError::Invalid("signature does not verify".into())
    );
    // Only the RSA key: no HS256 key at all.
    let rsa_only = Authenticator::new(&AuthConfig {
        jwt: Some(jwt_config(
            vec![HS256, RS256],
            vec![key(RS256, None, None, Some(RSA_PUBLIC))],
        )),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        check(&rsa_only, &forged).unwrap_err(),
        AuthError::Invalid("no HS256 key".into())
    );
    // And the forgery does verify with the right secret, so the test can fail.
    let honest = forge_hs256(&json!({ "alg": "HS256" }), &claims(), HS_SECRET.as_bytes());
    assert!(check(&both, &honest).unwrap().is_some());
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let other = encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        check(&all_algorithms(), &other).unwrap_err(),
        AuthError::Invalid("signature does not verify".into())
    );
    let wrong_secret = forge_hs256(
        &json!({ "alg": "HS256" }),
        &claims(),
        b"another-secret-of-at-least-32-bytes!!",
    );
    assert!(matches!(
        check(&all_algorithms(), &wrong_secret),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn time_and_audience_and_issuer_are_checked() {
    let authn = all_algorithms();
    let now = get_current_timestamp();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        check(&authn, &sign(Algorithm::ES256, None, &c))
    };
    assert_eq!(
        with(&|c| c["exp"] = json!(now - 120)).unwrap_err(),
        AuthError::Expired
    );
    assert!(
        with(&|c| c["exp"] = json!(now - 5)).is_ok(),
        "within the 30s leeway"
    );
    assert_eq!(
        with(&|c| c["nbf"] = json!(now + 120)).unwrap_err(),
        AuthError::NotYetValid
    );
    assert!(
        with(&|c| c["nbf"] = json!(now + 5)).is_ok(),
        "within the 30s leeway"
    );
    assert_eq!(
        with(&|c| c["aud"] = json!("billing")).unwrap_err(),
        AuthError::WrongAudience
    );
    assert!(with(&|c| c["aud"] = json!(["billing", AUD])).is_ok());
    assert_eq!(
        with(&|c| c["iss"] = json!("https://evil.example")).unwrap_err(),
        AuthError::WrongIssuer
    );
    for missing in ["exp", "aud", "iss", "sub"] {
        let err = with(&|c| {
            c.as_object_mut().unwrap().remove(missing);
        })
        .unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(ref m) if m.contains(missing)),
            "{missing}: {err}"
        );
    }
    assert!(matches!(
        with(&|c| c["sub"] = json!(7)),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn garbage_is_malformed() {
    let authn = all_algorithms();
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d.e",
        "....",
        "!!.!!.!!",
        "e30.e30.c2ln",
        "bm90IGpzb24.e30.c2ln",
    ] {
        let err = check(&authn, token).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{token:?}: {err}");
    }
    // A good header over a payload that is not JSON.
    let header = b64(br#"{"alg":"HS256"}"#);
    let token = forge_hs256(
        &json!({ "alg": "HS256" }),
        &json!("x"),
        HS_SECRET.as_bytes(),
    );
    assert!(check(&authn, &token).is_err());
    assert!(check(&authn, &format!("{header}.%%%.c2ln")).is_err());
}

#[test]
fn an_oversized_token_is_refused_before_parsing() {
    let authn = all_algorithms();
    // Valid shape and a valid signature would not matter: size comes first.
    let mut c = claims();
    c["pad"] = json!("x".repeat(config::DEFAULT_MAX_TOKEN_BYTES));
    let big = sign(Algorithm::HS256, None, &c);
    assert_eq!(
        check(&authn, &big).unwrap_err(),
        AuthError::TooLarge { limit: 8192 }
    );
    // Garbage of the same size is refused the same way, not as malformed.
    let junk = "%".repeat(config::DEFAULT_MAX_TOKEN_BYTES + 1);
    assert_eq!(
        check(&authn, &junk).unwrap_err(),
        AuthError::TooLarge { limit: 8192 }
    );
}

#[test]
fn header_pre_checks() {
    use JwtAlgorithm::*;
    let only_es = [ES256];
    let t = |h: serde_json::Value| format!("{}.e30.c2ln", b64(h.to_string().as_bytes()));
    assert!(parse_header_ok(&t(json!({ "alg": "ES256" })), &only_es));
    assert!(matches!(
        jwt::parse_header(&t(json!({ "alg": "RS256" })), &only_es),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        jwt::parse_header(&t(json!({ "alg": "es256" })), &only_es),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        jwt::parse_header(&t(json!({ "alg": "ES256", "crit": ["b64"] })), &only_es),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        jwt::parse_header(&t(json!({ "alg": 1 })), &only_es),
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        jwt::parse_header(&t(json!(["ES256"])), &only_es),
        Err(AuthError::Malformed(_))
    ));
    let dup = format!("{}.e30.c2ln", b64(br#"{"alg":"ES256","alg":"none"}"#));
    assert!(matches!(
        jwt::parse_header(&dup, &only_es),
        Err(AuthError::Malformed(_))
    ));
    let padded = format!("{}=.e30.c2ln", b64(br#"{"alg":"ES256"}"#));
    assert!(matches!(
        jwt::parse_header(&padded, &only_es),
        Err(AuthError::Malformed(_))
    ));
    let long_header = t(json!({ "alg": "ES256", "x": "y".repeat(jwt::MAX_HEADER_SEGMENT_BYTES) }));
    assert!(matches!(
        jwt::parse_header(&long_header, &only_es),
        Err(AuthError::Malformed(_))
    ));
}

fn parse_header_ok(token: &str, allowed: &[JwtAlgorithm]) -> bool {
    jwt::parse_header(token, allowed).is_ok()
}

fn rsa_jwk(private: &str, kid: &str) -> jwk::Jwk {
    let mut k = jwk::Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    k.common.key_id = Some(kid.to_owned());
    k
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn a_jwks_file_selects_the_key_by_kid() {
    let set = jwk::JwkSet {
        keys: vec![rsa_jwk(RSA_PRIVATE, "one"), rsa_jwk(RSA2_PRIVATE, "two")],
    };
    let path = temp_file("kid.jwks", serde_json::to_string(&set).unwrap().as_bytes());
    let mut jwt = jwt_config(vec![JwtAlgorithm::RS256], vec![]);
    jwt.jwks_file = Some(path);
    let authn = Authenticator::new(&AuthConfig {
        jwt: Some(jwt),
        ..Default::default()
    })
    .unwrap();
    let by = |private: &str, kid: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_owned());
        encode(
            &h,
            &claims(),
            &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    assert!(check(&authn, &by(RSA_PRIVATE, "one")).unwrap().is_some());
    assert!(check(&authn, &by(RSA2_PRIVATE, "two")).unwrap().is_some());
    // The kid picks the key: the other key's signature does not pass under it.
    assert_eq!(
        check(&authn, &by(RSA2_PRIVATE, "one")).unwrap_err(),
        AuthError::Invalid("signature does not verify".into())
    );
    assert!(
        matches!(check(&authn, &by(RSA_PRIVATE, "three")), Err(AuthError::Invalid(m)) if m.contains("kid"))
    );
    // Without a kid, the keys of the algorithm are tried.
    assert!(
        check(&authn, &sign(Algorithm::RS256, None, &claims()))
            .unwrap()
            .is_some()
    );
}

#[test]
fn jwks_parsing_skips_unusable_keys_and_binds_algorithms() {
    use JwtAlgorithm::*;
    let rsa = serde_json::to_value(rsa_jwk(RSA_PRIVATE, "r")).unwrap();
    let mut enc = rsa.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc");
    let mut ps = rsa.clone();
    ps["alg"] = json!("PS256");
    ps["kid"] = json!("ps");
    let mut mislabelled = rsa.clone();
    mislabelled["alg"] = json!("HS256");
    mislabelled["kid"] = json!("confused");
    let short_oct = json!({ "kty": "oct", "alg": "HS256", "kid": "short", "k": b64(b"short") });
    let oct_without_alg = json!({ "kty": "oct", "kid": "noalg", "k": b64(HS_SECRET.as_bytes()) });
    let oct = json!({ "kty": "oct", "alg": "HS256", "kid": "hs", "k": b64(HS_SECRET.as_bytes()) });
    let doc = json!({ "keys": [rsa, enc, ps, mislabelled, short_oct, oct_without_alg, oct, {"kty": "weird"}, 7] });
    let keys = jwks::parse_jwks(doc.to_string().as_bytes(), &[RS256, HS256]).unwrap();
    let got: Vec<_> = keys
        .iter()
        .map(|k| (k.kid().unwrap().to_owned(), k.algorithm()))
        .collect();
    assert_eq!(got, [("r".to_owned(), RS256), ("hs".to_owned(), HS256)]);
    // An RSA key never becomes an HMAC secret, even when the set says HS256.
    assert!(
        jwks::parse_jwks(doc.to_string().as_bytes(), &[HS256])
            .unwrap()
            .iter()
            .all(|k| k.kid() == Some("hs"))
    );
    assert!(jwks::parse_jwks(b"[]", &[RS256]).is_err());
    assert!(jwks::parse_jwks(&vec![b' '; jwks::MAX_JWKS_BYTES + 1], &[RS256]).is_err());
    let many = json!({ "keys": vec![json!({"kty":"weird"}); jwks::MAX_JWKS_KEYS + 1] });
    assert!(
        jwks::parse_jwks(many.to_string().as_bytes(), &[RS256])
            .unwrap_err()
            .contains("more than")
    );
}

fn api_keys() -> Authenticator {
    // sha256("key-one") in lower case, sha256("key-two") in upper case.
    let hash = |k: &str| {
        Sha256::digest(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let cfg = AuthConfig {
        api_keys: vec![
            ApiKeyConfig {
                id: "one".into(),
                sha256: hash("key-one"),
                identity: "svc-one".into(),
                scopes: vec!["read".into()],
            },
            ApiKeyConfig {
                id: "two".into(),
                sha256: hash("key-two").to_uppercase(),
                identity: "svc-two".into(),
                scopes: vec![],
            },
        ],
        ..Default::default()
    };
    Authenticator::new(&cfg).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn api_keys_are_checked_by_hash() {
    let authn = api_keys();
    let id = authn
        .authenticate(&headers(&[("x-api-key", "key-one")]), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        (id.subject.as_str(), id.source, id.scopes.as_slice()),
        ("svc-one", Source::ApiKey, &["read".to_owned()][..])
    );
    let id = authn
        .authenticate(&headers(&[("authorization", "ApiKey key-two")]), None)
        .unwrap()
        .unwrap();
    assert_eq!(id.subject, "svc-two");
    let id = authn
        .authenticate(&headers(&[("authorization", "apikey   key-two")]), None)
        .unwrap()
        .unwrap();
    assert_eq!(id.subject, "svc-two");
    for bad in ["key-three", "KEY-ONE", "key-one ", "", "key-on"] {
        assert_eq!(
            authn
                .authenticate(&headers(&[("x-api-key", bad)]), None)
                .unwrap_err(),
            AuthError::InvalidApiKey,
            "{bad:?}"
        );
    }
    assert!(
        AuthError::InvalidApiKey
            .www_authenticate()
            .starts_with("ApiKey realm=")
    );
}

#[test]
fn ambiguous_credentials_are_refused() {
    let authn = api_keys();
    for h in [
        headers(&[("x-api-key", "key-one"), ("x-api-key", "key-two")]),
        headers(&[
            ("x-api-key", "key-one"),
            ("authorization", "ApiKey key-one"),
        ]),
        headers(&[
            ("authorization", "ApiKey key-one"),
            ("authorization", "ApiKey key-two"),
        ]),
    ] {
        assert!(
            matches!(authn.authenticate(&h, None), Err(AuthError::Malformed(_))),
            "{h:?}"
        );
    }
    let both = Authenticator::new(&AuthConfig {
        api_keys: api_keys_config(),
        jwt: Some(jwt_config(
            vec![JwtAlgorithm::HS256],
            vec![key(JwtAlgorithm::HS256, None, Some(HS_SECRET), None)],
        )),
        ..Default::default()
    })
    .unwrap();
    let mut h = bearer(&sign(Algorithm::HS256, None, &claims()));
    h.insert("x-api-key", HeaderValue::from_static("key-one"));
    assert!(matches!(
        both.authenticate(&h, None),
        Err(AuthError::Malformed(_))
    ));
}

fn api_keys_config() -> Vec<ApiKeyConfig> {
    vec![ApiKeyConfig {
        id: "one".into(),
        sha256: Sha256::digest(b"key-one")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        identity: "svc-one".into(),
        scopes: vec![],
    }]
}

#[test]
fn credentials_of_kinds_not_enabled_are_not_ours() {
    let authn = api_keys();
    // No [auth.jwt]: a bearer token is the upstream's business.
    assert_eq!(authn.authenticate(&bearer("opaque"), None).unwrap(), None);
    assert_eq!(
        authn
            .authenticate(&headers(&[("authorization", "Basic dTpw")]), None)
            .unwrap(),
        None
    );
}

#[test]
fn a_client_certificate_is_an_identity_or_joins_one() {
    let authn = api_keys();
    let spiffe = "spiffe://example.org/ns/prod/sa/web";
    let id = authn
        .authenticate(&HeaderMap::new(), Some(spiffe))
        .unwrap()
        .unwrap();
    assert_eq!(
        (id.subject.as_str(), id.source, id.cert_identity.as_deref()),
        (spiffe, Source::Certificate, Some(spiffe))
    );
    let id = authn
        .authenticate(&headers(&[("x-api-key", "key-one")]), Some(spiffe))
        .unwrap()
        .unwrap();
    assert_eq!(
        (id.subject.as_str(), id.source, id.cert_identity.as_deref()),
        ("svc-one", Source::ApiKey, Some(spiffe))
    );
}

fn identity(
    subject: &str,
    source: Source,
    scopes: &[&str],
    claims: serde_json::Value,
    cert: Option<&str>,
) -> Identity {
    Identity {
        subject: subject.into(),
        source,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        cert_identity: cert.map(str::to_owned),
    }
}

fn authorizer(toml_text: &str) -> Authorizer {
    Authorizer::new(&toml::from_str(toml_text).unwrap()).unwrap()
}

#[test]
fn authorization_decision_table() {
    let alice = identity(
        "alice",
        Source::Jwt,
        &["orders:read"],
        json!({ "tenant": "acme", "groups": ["admins"], "level": 3 }),
        None,
    );
    let bob = identity("bob", Source::ApiKey, &[], json!({}), None);
    let web = identity(
        "spiffe://x/web",
        Source::Certificate,
        &[],
        json!({}),
        Some("spiffe://x/web"),
    );

    let open = authorizer("");
    assert!(open.is_open());
    assert_eq!(open.authorize(None), Decision::Allow);
    assert_eq!(open.authorize(Some(&bob)), Decision::Allow);

    let required = authorizer("require = true");
    assert_eq!(required.authorize(None), Decision::Unauthenticated);
    assert_eq!(required.authorize(Some(&bob)), Decision::Allow);

    let rules = authorizer(
        r#"
        allow = [{ scopes = ["orders:read"], claims = { tenant = "acme" } }, { cert_identities = ["spiffe://x/web"] }]
        deny = [{ identities = ["mallory"] }]
    "#,
    );
    assert_eq!(rules.authorize(None), Decision::Unauthenticated);
    assert_eq!(rules.authorize(Some(&alice)), Decision::Allow);
    assert_eq!(rules.authorize(Some(&web)), Decision::Allow);
    assert_eq!(rules.authorize(Some(&bob)), Decision::Forbidden);
    let mut mallory = alice.clone();
    mallory.subject = "mallory".into();
    assert_eq!(
        rules.authorize(Some(&mallory)),
        Decision::Forbidden,
        "deny wins over allow"
    );
    let mut other_tenant = alice.clone();
    other_tenant.claims.insert("tenant".into(), json!("globex"));
    assert_eq!(rules.authorize(Some(&other_tenant)), Decision::Forbidden);

    let claims = authorizer(r#"allow = [{ claims = { groups = "admins", level = "3" } }]"#);
    assert_eq!(claims.authorize(Some(&alice)), Decision::Allow);
    let all_scopes = authorizer(r#"allow = [{ scopes = ["orders:read", "orders:write"] }]"#);
    assert_eq!(
        all_scopes.authorize(Some(&alice)),
        Decision::Forbidden,
        "every scope is required"
    );
    let by_source = authorizer(r#"allow = [{ identities = ["alice"], sources = ["api_key"] }]"#);
    assert_eq!(
        by_source.authorize(Some(&alice)),
        Decision::Forbidden,
        "alice came with a JWT"
    );
    let deny_only = authorizer(r#"deny = [{ sources = ["certificate"] }]"#);
    assert_eq!(deny_only.authorize(None), Decision::Allow);
    assert_eq!(deny_only.authorize(Some(&web)), Decision::Forbidden);

    let empty_rule: RouteAuthConfig = toml::from_str("allow = [{}]").unwrap();
    assert!(
        Authorizer::new(&empty_rule)
            .unwrap_err()
            .contains("allow[0]")
    );
}

#[test]
fn forged_identity_headers_are_stripped_and_real_ones_set() {
    let mut forward = ForwardConfig::default();
    forward
        .claims_headers
        .insert("tenant".into(), "x-tenant".into());
    forward
        .claims_headers
        .insert("groups".into(), "x-groups".into());
    let mut h = headers(&[
        ("x-switchyard-identity", "admin"),
        ("x-switchyard-identity", "root"),
        ("x-switchyard-cert-identity", "spiffe://x/admin"),
        ("x-tenant", "everyone"),
        ("x-other", "kept"),
        ("authorization", "Bearer t"),
    ]);
    strip_identity_headers(&forward, &mut h);
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(h.get("x-switchyard-identity").is_none() && h.get("x-tenant").is_none());

    let alice = identity(
        "alice",
        Source::Jwt,
        &[],
        json!({ "tenant": "acme", "groups": ["a", "b"] }),
        Some("spiffe://x/web"),
    );
    forward_identity(&forward, &alice, &mut h);
    assert_eq!(h["x-switchyard-identity"], "alice");
    assert_eq!(h["x-switchyard-cert-identity"], "spiffe://x/web");
    assert_eq!(h["x-tenant"], "acme");
    assert_eq!(h["x-groups"], r#"["a","b"]"#);
    assert!(
        h.get("authorization").is_none(),
        "the token is not forwarded by default"
    );
    assert_eq!(h["x-other"], "kept");

    forward.credentials = true;
    let mut h = headers(&[("authorization", "Bearer t")]);
    forward_identity(&forward, &alice, &mut h);
    assert_eq!(h["authorization"], "Bearer t");

    let mut bad = alice.clone();
    bad.claims.insert("tenant".into(), json!("a\nb"));
    let mut h = HeaderMap::new();
    forward_identity(&forward, &bad, &mut h);
    assert!(
        h.get("x-tenant").is_none(),
        "a value with a newline is not forwarded"
    );
}

#[test]
fn admit_answers_401_and_403_problems() {
    let authn = api_keys();
    let required = authorizer(r#"allow = [{ identities = ["svc-one"] }]"#);
    let p = admit(&authn, &required, &HeaderMap::new(), None).unwrap_err();
    let res = p.into_response();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        "ApiKey realm=\"switchyard\""
    );
    assert_eq!(res.headers()["x-switchyard-error"], "unauthenticated");

    let p = admit(
        &authn,
        &required,
        &headers(&[("x-api-key", "key-two")]),
        None,
    )
    .unwrap_err();
    assert_eq!(p.status(), 403);
    assert_eq!(p.kind(), "forbidden");

    let p = admit(&authn, &required, &headers(&[("x-api-key", "nope")]), None).unwrap_err();
    assert_eq!(p.status(), 401);

    let id = admit(
        &authn,
        &required,
        &headers(&[("x-api-key", "key-one")]),
        None,
    )
    .unwrap();
    assert_eq!(id.unwrap().subject, "svc-one");

    // An open route ignores a credential that fails.
    let open = authorizer("");
    assert_eq!(
        admit(&authn, &open, &headers(&[("x-api-key", "nope")]), None).unwrap(),
        None
    );
}

#[test]
fn www_authenticate_follows_rfc_6750() {
    let err = AuthError::Invalid("alg \"x\\y\" is not accepted".into());
    assert_eq!(
        err.www_authenticate(),
        "Bearer realm=\"switchyard\", error=\"invalid_token\", error_description=\"invalid token: alg xy is not accepted\""
    );
    let res = err.to_problem().into_response();
    assert_eq!(res.status(), 401);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(all_algorithms().challenge(), "Bearer realm=\"switchyard\"");
}

#[test]
fn config_problems_name_the_key() {
    use JwtAlgorithm::*;
    let bad = |jwt: JwtConfig| {
        AuthConfig {
            jwt: Some(jwt),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
    };
    assert!(
        bad(jwt_config(
            vec![],
            vec![key(HS256, None, Some(HS_SECRET), None)]
        ))
        .starts_with("jwt.algorithms")
    );
    assert!(
        bad(jwt_config(
            vec![HS256],
            vec![key(HS256, None, Some("short"), None)]
        ))
        .starts_with("jwt.keys[0].secret")
    );
    assert!(
        bad(jwt_config(
            vec![HS256],
            vec![key(HS256, None, None, Some(RSA_PUBLIC))]
        ))
        .starts_with("jwt.keys[0].pem")
    );
    assert!(
        bad(jwt_config(
            vec![HS256],
            vec![key(RS256, None, None, Some(RSA_PUBLIC))]
        ))
        .starts_with("jwt.keys[0].algorithm")
    );
    assert!(bad(jwt_config(vec![RS256], vec![])).starts_with("jwt.keys"));
    let mut https = jwt_config(vec![RS256], vec![]);
    https.jwks_url = Some("https://id.example.com/jwks".into());
    assert!(bad(https).starts_with("jwt.jwks_ca"));
    let mut ftp = jwt_config(vec![RS256], vec![]);
    ftp.jwks_url = Some("ftp://id.example.com/jwks".into());
    assert!(bad(ftp).starts_with("jwt.jwks_url"));
    let mut no_aud = jwt_config(vec![RS256], vec![key(RS256, None, None, Some(RSA_PUBLIC))]);
    no_aud.audiences.clear();
    assert!(bad(no_aud).starts_with("jwt.audiences"));
    // A private key is refused at load, not used.
    let private = Authenticator::new(&AuthConfig {
        jwt: Some(jwt_config(
            vec![RS256],
            vec![key(RS256, None, None, Some(RSA_PRIVATE))],
        )),
        ..Default::default()
    });
    assert!(private.unwrap_err().contains("private key"));
    let not_hex = AuthConfig {
        api_keys: vec![ApiKeyConfig {
            id: "a".into(),
            sha256: "zz".into(),
            identity: "a".into(),
            scopes: vec![],
        }],
        ..Default::default()
    };
    assert!(
        not_hex
            .validate()
            .unwrap_err()
            .starts_with("api_keys[0].sha256")
    );
    let mut fwd = AuthConfig::default();
    fwd.forward.identity_header = "authorization".into();
    assert!(
        fwd.validate()
            .unwrap_err()
            .starts_with("forward.identity_header")
    );
    let unknown: Result<AuthConfig, _> =
        toml::from_str("[jwt]\nissuers=[\"a\"]\naudiences=[\"b\"]\nalgorithms=[\"none\"]\nkeys=[]");
    assert!(unknown.is_err(), "alg none can't even be configured");
}

#[test]
fn the_documented_toml_shape_parses() {
    let cfg: AuthConfig = toml::from_str(&format!(
        r#"
        [[api_keys]]
        id = "ci"
        sha256 = "a3ee786b5707c27d42570785081ec17f5c7db9262a01366af362a1aa61a420b9"
        identity = "ci-bot"
        scopes = ["deploy"]

        [jwt]
        issuers = ["{ISS}"]
        audiences = ["{AUD}"]
        algorithms = ["RS256", "EdDSA"]
        leeway = "10s"
        keys = [{{ algorithm = "EdDSA", kid = "ed1", pem = """{ED_PUBLIC}""" }}]

        [forward]
        claims_headers = {{ tenant = "x-tenant" }}
    "#
    ))
    .unwrap();
    let jwt = cfg.jwt.as_ref().unwrap();
    assert_eq!(jwt.leeway, Duration::from_secs(10));
    assert_eq!(jwt.jwks_refresh, Duration::from_secs(300));
    assert_eq!(jwt.max_token_bytes, 8192);
    assert_eq!(cfg.forward.identity_header, "x-switchyard-identity");
    let authn = Authenticator::new(&cfg).unwrap();
    let id = authn
        .authenticate(&headers(&[("x-api-key", "let-me-in")]), None)
        .unwrap()
        .unwrap();
    assert_eq!(id.subject, "ci-bot");
    assert!(
        check(&authn, &sign(Algorithm::EdDSA, Some("ed1"), &claims()))
            .unwrap()
            .is_some()
    );
}

proptest! {
    #[test]
    fn the_header_parser_never_panics(token in ".{0,300}") {
        let _ = jwt::parse_header(&token, &[JwtAlgorithm::HS256, JwtAlgorithm::EdDSA]);
    }

    #[test]
    fn the_header_parser_never_panics_on_base64_of_anything(header in prop::collection::vec(any::<u8>(), 0..200), body in "[A-Za-z0-9_-]{0,20}") {
        let token = format!("{}.{body}.c2ln", b64(&header));
        let _ = jwt::parse_header(&token, &[JwtAlgorithm::HS256]);
    }

    #[test]
    fn the_jwks_parser_never_panics(doc in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = jwks::parse_jwks(&doc, &[JwtAlgorithm::RS256, JwtAlgorithm::HS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]);
    }

    #[test]
    fn the_jwks_parser_never_panics_on_key_shaped_json(
        kty in prop_oneof![Just("RSA"), Just("EC"), Just("OKP"), Just("oct"), Just("x")],
        crv in prop_oneof![Just("P-256"), Just("P-384"), Just("Ed25519"), Just("X25519")],
        alg in prop_oneof![Just("RS256"), Just("HS256"), Just("ES256"), Just("EdDSA"), Just("none")],
        a in "[A-Za-z0-9_-]{0,60}",
        b in "[A-Za-z0-9_-]{0,60}",
    ) {
        let doc = json!({ "keys": [{ "kty": kty, "crv": crv, "alg": alg, "n": a, "e": b, "x": a, "y": b, "k": a }] });
        let _ = jwks::parse_jwks(doc.to_string().as_bytes(), &[JwtAlgorithm::RS256, JwtAlgorithm::HS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]);
    }

    #[test]
    fn any_bearer_value_is_refused_cleanly(token in "[ -~]{0,200}") {
        // Arbitrary visible text as a bearer token: an error, never a panic, never an identity.
        let authn = all_algorithms();
        prop_assert!(!matches!(check(&authn, &token), Ok(Some(_))));
    }
}
