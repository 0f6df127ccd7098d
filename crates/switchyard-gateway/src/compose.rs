//! Composition routes in the gateway: a route answered by a plan of calls
//! (see `switchyard-compose`), each call made through the called service's
//! policy stack and balancer, exactly like a proxied request.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use switchyard_compose::{
    CallError, CallName, CallService, ComposeError, ComposePlan, ComposeRequest,
};
use switchyard_policy::PolicyRequest;
use switchyard_transport::Body;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::{
    problem::Problem,
    proxy::{REQUEST_ID_HEADER, Upstream},
};

/// Headers a composed call carries over from the client request.
const CARRIED: [&str; 3] = ["traceparent", "tracestate", "x-switchyard-identity"];

/// One composition route: its compiled plan and the upstream of every
/// service it calls.
pub struct ComposeRoute {
    /// The compiled plan.
    pub plan: ComposePlan,
    /// The upstream (policy stack and client) of each service the plan calls.
    pub services: HashMap<String, Upstream>,
    /// The upstreams of calls with their own `policy`, by call name.
    pub calls: HashMap<String, Upstream>,
    /// Largest response body read from one call.
    pub max_body: usize,
}

impl std::fmt::Debug for ComposeRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComposeRoute")
            .field("services", &self.services.keys())
            .finish_non_exhaustive()
    }
}

impl ComposeRoute {
    /// Runs the plan for one client request; `deadline` is the client's
    /// propagated deadline, if any (the earlier of it and the plan's
    /// timeout applies).
    pub async fn answer(
        &self,
        request: ComposeRequest,
        client_headers: &HeaderMap,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, Problem> {
        let caller = Caller {
            route: self,
            carried: carried(client_headers),
        };
        let deadline = match deadline {
            Some(d) => d.min(Instant::now() + self.plan.timeout()),
            None => Instant::now() + self.plan.timeout(),
        };
        let response = self
            .plan
            .execute_until(request, &caller, deadline)
            .await
            .map_err(|err| problem(&err))?;
        Ok(response.into_http().map(Body::full))
    }
}

fn carried(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in CARRIED.iter().chain([&REQUEST_ID_HEADER]) {
        if let Some(value) = headers.get(*name) {
            out.insert(*name, value.clone());
        }
    }
    out
}

/// The problem answer for a failed composition: the failed call's cause
/// decides the status, and `x-switchyard-call` names the call.
pub fn problem(err: &ComposeError) -> Problem {
    let status = match err.kind {
        "deadline-exceeded" => StatusCode::GATEWAY_TIMEOUT,
        "breaker-open" | "bulkhead-full" | "no-healthy-endpoint" => StatusCode::SERVICE_UNAVAILABLE,
        "rate-limited" => StatusCode::TOO_MANY_REQUESTS,
        "template" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    Problem::new(
        status,
        err.kind,
        "A required call of the composition failed",
    )
    .detail(format!("call `{}` failed: {}", err.call, err.message))
}

struct Caller<'a> {
    route: &'a ComposeRoute,
    carried: HeaderMap,
}

impl CallService for Caller<'_> {
    async fn call(
        &self,
        service: &str,
        request: Request<Bytes>,
        deadline: Instant,
    ) -> Result<Response<Bytes>, CallError> {
        let own = request
            .extensions()
            .get::<CallName>()
            .and_then(|c| self.route.calls.get(&c.0));
        let upstream = own
            .or_else(|| self.route.services.get(service))
            .ok_or_else(|| {
                CallError::new("upstream", format!("no upstream for service {service:?}"))
            })?;
        let (mut parts, body) = request.into_parts();
        for (name, value) in &self.carried {
            parts.headers.entry(name).or_insert_with(|| value.clone());
        }
        let mut request = Request::from_parts(parts, Body::full(body));
        request.set_deadline(deadline);
        // The call's retries go to endpoints not tried yet.
        request
            .extensions_mut()
            .insert(switchyard_client::Attempted::default());
        let response = upstream.svc.clone().oneshot(request).await.map_err(|err| {
            let kind =
                if switchyard_policy::is_caused_by::<switchyard_client::NoHealthyEndpoint>(&err) {
                    "no-healthy-endpoint"
                } else {
                    err.kind()
                };
            CallError::new(kind, err.to_string())
        })?;
        let (parts, body) = response.into_parts();
        let bytes = http_body_util::Limited::new(body, self.route.max_body);
        let bytes = http_body_util::BodyExt::collect(bytes)
            .await
            .map_err(|err| {
                CallError::new(
                    "upstream",
                    format!("reading the response of {service}: {err}"),
                )
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, bytes))
    }
}

/// Builds the engine's view of the client request.
pub fn compose_request(
    params: Vec<(String, String)>,
    query: Option<&str>,
    headers: HeaderMap,
    body: Option<serde_json::Value>,
) -> ComposeRequest {
    ComposeRequest {
        params: params
            .into_iter()
            .map(|(k, v)| (k, ComposeRequest::decode_param(&v)))
            .collect(),
        query: query.map(ComposeRequest::parse_query).unwrap_or_default(),
        headers,
        body,
    }
}
