//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/services`,
//! `POST /admin/reload`, and `/v1/registry` when this process hosts the
//! registry.
//!
//! It listens on its own port (loopback by default) so operators' traffic
//! never competes with clients' and can't be reached through a route.

use std::sync::{Arc, OnceLock, atomic::Ordering};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{
    Shared,
    histograms::{MetricsHandle, Recorder},
};

/// Latency buckets (seconds) for every `*_duration_seconds` histogram.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process-wide recorder (Prometheus, with the latency histograms in
/// fixed buckets: see [`histograms`](crate::histograms)), installed on
/// first use.
pub(crate) fn metrics_handle() -> MetricsHandle {
    static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = Recorder::new(&LATENCY_BUCKETS);
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only what this one sees");
            }
            handle
        })
        .clone()
}

/// The admin API, with `extra` routes (the hosted registry's API) merged in
/// before the token check so that a token guards them too: the registry API
/// can redirect traffic, so it is no less sensitive than `/admin/reload`.
pub(crate) fn router(
    shared: Arc<Shared>,
    token_sha256: Option<&str>,
    extra: Option<axum::Router>,
) -> axum::Router {
    let mut router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/admin/services", get(services))
        .route("/admin/reload", post(reload))
        .with_state(shared);
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    match token_sha256.and_then(crate::auth::config::parse_sha256_hex) {
        Some(expected) => router.layer(axum::middleware::from_fn(move |req, next| {
            check_token(expected, req, next)
        })),
        None => router,
    }
}

/// Lets a request through when its bearer token hashes to `expected`;
/// compared in constant time so the answer time leaks nothing.
async fn check_token(
    expected: [u8; 32],
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| -> [u8; 32] { Sha256::digest(token.trim().as_bytes()).into() });
    match presented {
        Some(hash) if bool::from(hash.ct_eq(&expected)) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"switchyard-admin\"",
                ),
                (header::CONTENT_TYPE, "application/problem+json"),
            ],
            Json(json!({
                "type": "https://switchyard.dev/problems/unauthenticated",
                "title": "the admin API needs a valid bearer token",
                "status": 401,
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn services(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let runtime = shared.runtime.load();
    let routes: Vec<_> = runtime
        .route_breakers()
        .into_iter()
        .map(|(i, breaker)| json!({ "route": i, "path": runtime.config.routes[i].path, "breaker": breaker }))
        .collect();
    Json(json!({ "services": runtime.service_states(), "route_policies": routes }))
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match shared.reload().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "reloaded": true }))).into_response(),
        Err(err) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(json!({
                "type": "https://switchyard.dev/problems/invalid-config",
                "title": "the new config was rejected; the running config keeps serving",
                "status": 400,
                "detail": err.to_string(),
            })),
        )
            .into_response(),
    }
}
