//! Active health checks: one task per endpoint, `GET <path>` on a timer.

use std::sync::{Arc, atomic::Ordering};

use switchyard_transport::{Body, Transport};
use tokio::time::{Instant, MissedTickBehavior};

use crate::{HealthCheckConfig, endpoint::EndpointState};

/// Checks `endpoint` forever (the driver aborts it when the endpoint leaves
/// the set or the client is dropped).
pub(crate) async fn check(
    service: Arc<str>,
    transport: Transport,
    endpoint: Arc<EndpointState>,
    config: HealthCheckConfig,
) {
    let scheme = if transport.is_tls() { "https" } else { "http" };
    let uri = format!("{scheme}://{}{}", endpoint.addr(), config.path);
    let mut ticker = tokio::time::interval_at(Instant::now(), config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        let passed = probe(&transport, &uri, &config).await;
        let healthy = endpoint.healthy.load(Ordering::Relaxed);
        if passed {
            passes += 1;
            failures = 0;
            if !healthy && passes >= config.healthy_threshold {
                endpoint.healthy.store(true, Ordering::Relaxed);
                endpoint.metrics.healthy.set(1.0);
                tracing::info!(service = %service, endpoint = %endpoint.label, "endpoint healthy");
            }
        } else {
            failures += 1;
            passes = 0;
            if healthy && failures >= config.unhealthy_threshold {
                endpoint.healthy.store(false, Ordering::Relaxed);
                endpoint.metrics.healthy.set(0.0);
                tracing::warn!(service = %service, endpoint = %endpoint.label, "endpoint unhealthy");
            }
        }
    }
}

/// One check: a `2xx` within the timeout passes.
async fn probe(transport: &Transport, uri: &str, config: &HealthCheckConfig) -> bool {
    let Ok(req) = http::Request::get(uri)
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .body(Body::empty())
    else {
        return false;
    };
    let attempt = async {
        let res = transport.send(req).await.ok()?;
        let ok = res.status().is_success();
        // Read the body to the end so the connection goes back to the pool.
        res.into_body().collect_bytes().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(config.timeout, attempt).await,
        Ok(Some(true))
    )
}
