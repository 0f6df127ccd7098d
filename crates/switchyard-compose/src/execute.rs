//! Execution: one scheduler, in the caller's task, runs a plan's calls as
//! their dependencies finish, under the route's one deadline.
//!
//! The scheduler keeps the in-flight call futures in one
//! [`FuturesUnordered`] next to one deadline timer and reacts to whichever
//! finishes first. A call starts in the same poll in which its last
//! dependency finished, so no call waits longer than its critical path, and
//! nothing is spawned: dropping the future returned by
//! [`ComposePlan::execute`] (a client that disconnects, a gateway shutting
//! down) drops every call in flight with it.

use std::{future::Future, sync::Arc, task::Poll};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    plan::{CompiledFallback, CompiledResponse, ComposePlan},
    template::{Escape, Scope, percent_encode_into},
};

/// The response header the gateway sets to the degraded calls' names.
pub const DEGRADED_HEADER: &str = "x-switchyard-degraded";

/// Kind of the error when the route deadline passes before a call answers.
pub const KIND_DEADLINE_EXCEEDED: &str = "deadline-exceeded";
/// Kind of the error when a call answers with a status at or above its
/// `fail_on_status`.
pub const KIND_UPSTREAM_STATUS: &str = "upstream-status";
/// Kind of the error when a call reads data of a call that has no result
/// (it failed and was omitted).
pub const KIND_DEPENDENCY_OMITTED: &str = "dependency-omitted";
/// Kind of the error when a rendered template is not a valid URI or header
/// value.
pub const KIND_TEMPLATE: &str = "template";
/// Kind of the error when the pass-through call has no result.
pub const KIND_OMITTED: &str = "omitted";

/// Makes one call to a named service: the seam between the engine and
/// whatever sends requests (the gateway's per-service clients and policies,
/// or an in-process fake).
pub trait CallService: Sync {
    /// Sends `request` (origin-form URI: path and query) to `service`. The
    /// call should give up at `deadline`; the engine also stops waiting then.
    fn call(
        &self,
        service: &str,
        request: Request<Bytes>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Response<Bytes>, CallError>> + Send;
}

/// The name of the call a request belongs to (a request extension), so a
/// [`CallService`] can treat calls to the same service differently (for
/// example with a call's own policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallName(pub String);

/// Why a call failed, as the [`CallService`] (or the engine) reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CallError {
    /// A stable, kebab-case cause for problem+json `type`s, e.g. the policy
    /// crate's `Error::kind()` (`breaker-open`, `deadline-exceeded`) or one
    /// of this crate's `KIND_*`.
    pub kind: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl CallError {
    /// A call error of `kind`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A required call failed without a usable fallback: the route's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call `{call}` failed ({kind}): {message}")]
pub struct ComposeError {
    /// The failed call's name (`response` when building the response failed).
    pub call: String,
    /// The cause, as in [`CallError::kind`].
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

/// The client request the templates read.
#[derive(Debug, Clone, Default)]
pub struct ComposeRequest {
    /// Path parameters of the matched route, decoded.
    pub params: Vec<(String, String)>,
    /// Query parameters, decoded, in order (the first of a name wins).
    pub query: Vec<(String, String)>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The request body, when it is JSON.
    pub body: Option<Value>,
}

impl ComposeRequest {
    /// Parses a raw query string (`a=1&b=x%20y`), percent-decoding names and
    /// values (`+` is a space); invalid escapes are kept as they are.
    pub fn parse_query(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect()
    }

    /// Decodes a percent-encoded path parameter as the router captured it.
    pub fn decode_param(raw: &str) -> String {
        percent_decode(raw, false)
    }
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |c: u8| char::from(c).to_digit(16);
        match b {
            b'%' if i + 2 < bytes.len() => {
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        // Both digits are < 16, so the byte fits.
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a composition answers.
#[derive(Debug, Clone)]
pub struct ComposeResponse {
    /// Response status.
    pub status: StatusCode,
    /// Response headers (`content-type: application/json` for a built body).
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// Calls that failed and were replaced by their fallback or omitted, in
    /// plan order. The gateway lists them in [`DEGRADED_HEADER`].
    pub degraded: Vec<String>,
}

impl ComposeResponse {
    /// An HTTP response, with [`DEGRADED_HEADER`] set when something degraded.
    pub fn into_http(self) -> Response<Bytes> {
        let mut res = Response::new(self.body);
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers;
        if !self.degraded.is_empty()
            && let Ok(v) = HeaderValue::try_from(self.degraded.join(", "))
        {
            res.headers_mut()
                .insert(HeaderName::from_static(DEGRADED_HEADER), v);
        }
        res
    }
}

/// A call's result as templates see it.
#[derive(Debug)]
pub(crate) struct CallResult {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) raw: Bytes,
    /// The body as JSON (a non-JSON UTF-8 body is one string); parsed only
    /// when a template reads it.
    pub(crate) body: Option<Value>,
}

impl CallResult {
    fn from_response(res: Response<Bytes>, parse_body: bool) -> Self {
        let (parts, raw) = res.into_parts();
        let body = if parse_body && !raw.is_empty() {
            serde_json::from_slice(&raw).ok().or_else(|| {
                std::str::from_utf8(&raw)
                    .ok()
                    .map(|s| Value::String(s.to_owned()))
            })
        } else {
            None
        };
        Self {
            status: parts.status,
            headers: parts.headers,
            raw,
            body,
        }
    }

    /// A fallback value standing in for a result: status 200, JSON body.
    pub(crate) fn from_value(value: Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, json_content_type());
        Self {
            status: StatusCode::OK,
            headers,
            raw: Bytes::from(value.to_string()),
            body: Some(value),
        }
    }
}

fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Running,
    /// Failed; waiting for its fallback call to finish.
    AwaitFallback,
    Done,
}

/// One execution's bookkeeping.
struct Run<'p> {
    plan: &'p ComposePlan,
    request: ComposeRequest,
    deadline: Instant,
    results: Vec<Option<Arc<CallResult>>>,
    state: Vec<State>,
    /// Dependencies not yet done, per call.
    pending: Vec<u32>,
    /// Whether the call is to run (fallback-only calls start unwanted).
    wanted: Vec<bool>,
    /// Why a call waiting for its fallback failed.
    errors: Vec<Option<CallError>>,
    /// Wanted calls not yet done.
    outstanding: usize,
    degraded: Vec<usize>,
    /// Calls whose dependencies are done, to start.
    ready: Vec<usize>,
}

enum Event {
    Finished(usize, Result<Response<Bytes>, CallError>),
    Deadline,
    Idle,
}

async fn call_one<C: CallService>(
    caller: &C,
    index: usize,
    service: &str,
    request: Request<Bytes>,
    deadline: Instant,
) -> (usize, Result<Response<Bytes>, CallError>) {
    (index, caller.call(service, request, deadline).await)
}

// === impl ComposePlan (execution) ===

impl ComposePlan {
    /// Runs the plan for one client request, with the route's deadline
    /// (`timeout` from now).
    pub async fn execute<C: CallService>(
        &self,
        request: ComposeRequest,
        caller: &C,
    ) -> Result<ComposeResponse, ComposeError> {
        let deadline = Instant::now() + self.timeout();
        self.execute_until(request, caller, deadline).await
    }

    /// Runs the plan with an explicit deadline, e.g. the earlier of the
    /// route's and one propagated by the client.
    pub async fn execute_until<C: CallService>(
        &self,
        request: ComposeRequest,
        caller: &C,
        deadline: Instant,
    ) -> Result<ComposeResponse, ComposeError> {
        let n = self.calls.len();
        let mut run = Run {
            plan: self,
            request,
            deadline,
            results: vec![None; n],
            state: vec![State::Idle; n],
            pending: self.calls.iter().map(|c| c.pending_init).collect(),
            wanted: self.calls.iter().map(|c| !c.lazy).collect(),
            errors: vec![None; n],
            outstanding: self.calls.iter().filter(|c| !c.lazy).count(),
            degraded: Vec::new(),
            ready: self.roots.to_vec(),
        };
        let mut in_flight = FuturesUnordered::new();
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            while let Some(i) = run.ready.pop() {
                match run.prepare(i) {
                    Ok(req) => {
                        run.state[i] = State::Running;
                        let service = self.calls[i].service.as_str();
                        in_flight.push(call_one(caller, i, service, req, deadline));
                    }
                    Err(e) => run.failure(i, e)?,
                }
            }
            if run.outstanding == 0 {
                break;
            }
            let event = std::future::poll_fn(|cx| {
                match in_flight.poll_next_unpin(cx) {
                    Poll::Ready(Some((i, res))) => return Poll::Ready(Event::Finished(i, res)),
                    Poll::Ready(None) => return Poll::Ready(Event::Idle),
                    Poll::Pending => {}
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Deadline);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Finished(i, res) => run.finish(i, res)?,
                Event::Deadline => {
                    // Drop every call in flight, then fail each one through
                    // the usual path so optional calls still get fallbacks.
                    in_flight = FuturesUnordered::new();
                    let running: Vec<usize> =
                        (0..n).filter(|i| run.state[*i] == State::Running).collect();
                    for i in running {
                        let err = deadline_error(self);
                        run.failure(i, err)?;
                    }
                }
                Event::Idle => {
                    // Unreachable for a validated (acyclic) plan: every
                    // outstanding call waits on one that is running.
                    return Err(ComposeError {
                        call: "response".into(),
                        kind: "internal",
                        message: "no call in flight while calls are outstanding".into(),
                    });
                }
            }
        }
        drop(in_flight);
        run.respond()
    }
}

fn deadline_error(plan: &ComposePlan) -> CallError {
    CallError::new(
        KIND_DEADLINE_EXCEEDED,
        format!(
            "no answer within the route deadline ({}ms)",
            plan.timeout().as_millis()
        ),
    )
}

// === impl Run ===

impl Run<'_> {
    fn scope(&self) -> Scope<'_> {
        Scope {
            request: &self.request,
            results: &self.results,
        }
    }

    /// Builds call `i`'s request, or says why it can't run.
    fn prepare(&self, i: usize) -> Result<Request<Bytes>, CallError> {
        let call = &self.plan.calls[i];
        if let Some(dep) = call.data_deps.iter().find(|d| self.results[**d].is_none()) {
            return Err(CallError::new(
                KIND_DEPENDENCY_OMITTED,
                format!(
                    "reads call `{}`, which failed and has no result",
                    self.plan.calls[*dep].name
                ),
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(deadline_error(self.plan));
        }
        let scope = self.scope();
        let mut uri = String::with_capacity(64);
        call.path.render_into(&scope, Escape::PathSegment, &mut uri);
        for (n, (name, value)) in call.query.iter().enumerate() {
            uri.push(if n == 0 { '?' } else { '&' });
            uri.push_str(name);
            uri.push('=');
            percent_encode_into(&mut uri, &value.render(&scope));
        }
        let uri = Uri::try_from(uri)
            .map_err(|e| CallError::new(KIND_TEMPLATE, format!("rendered path: {e}")))?;
        let body =
            match &call.body {
                Some(t) => {
                    let value = t.render(&scope).unwrap_or(Value::Null);
                    Bytes::from(serde_json::to_vec(&value).map_err(|e| {
                        CallError::new(KIND_TEMPLATE, format!("rendered body: {e}"))
                    })?)
                }
                None => Bytes::new(),
            };
        let mut req = Request::new(body);
        req.extensions_mut().insert(CallName(call.name.clone()));
        *req.method_mut() = call.method.clone();
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        if call.body.is_some() {
            headers.insert(header::CONTENT_TYPE, json_content_type());
        }
        for (name, value) in call.headers.iter() {
            let v = HeaderValue::try_from(value.render(&scope)).map_err(|_| {
                CallError::new(
                    KIND_TEMPLATE,
                    format!("rendered header {name} is not a valid header value"),
                )
            })?;
            headers.insert(name.clone(), v);
        }
        Ok(req)
    }

    /// A call answered or failed.
    fn finish(
        &mut self,
        i: usize,
        res: Result<Response<Bytes>, CallError>,
    ) -> Result<(), ComposeError> {
        let call = &self.plan.calls[i];
        match res {
            Ok(res) if res.status().as_u16() < call.fail_on_status => {
                let result = CallResult::from_response(res, call.parse_body);
                self.results[i] = Some(Arc::new(result));
                self.done(i)
            }
            Ok(res) => {
                let err = CallError::new(
                    KIND_UPSTREAM_STATUS,
                    format!("`{}` answered {}", call.service, res.status()),
                );
                self.failure(i, err)
            }
            Err(err) => self.failure(i, err),
        }
    }

    /// Call `i` failed: its fallback, or the route's end.
    fn failure(&mut self, i: usize, err: CallError) -> Result<(), ComposeError> {
        match &self.plan.calls[i].fallback {
            Some(CompiledFallback::Value(result)) => {
                self.results[i] = Some(result.clone());
                self.degraded.push(i);
                self.done(i)
            }
            Some(CompiledFallback::Omit) => {
                self.degraded.push(i);
                self.done(i)
            }
            Some(CompiledFallback::Call(x)) => {
                let x = *x;
                if self.state[x] == State::Done {
                    return self.take_fallback(i, x, err);
                }
                self.state[i] = State::AwaitFallback;
                self.errors[i] = Some(err);
                if !self.wanted[x] {
                    self.wanted[x] = true;
                    self.outstanding += 1;
                    if self.pending[x] == 0 {
                        self.ready.push(x);
                    }
                }
                Ok(())
            }
            None => self.no_fallback(i, err),
        }
    }

    fn take_fallback(&mut self, i: usize, x: usize, err: CallError) -> Result<(), ComposeError> {
        match self.results[x].clone() {
            Some(result) => {
                self.results[i] = Some(result);
                self.degraded.push(i);
                self.done(i)
            }
            None => self.no_fallback(i, err),
        }
    }

    fn no_fallback(&mut self, i: usize, err: CallError) -> Result<(), ComposeError> {
        let call = &self.plan.calls[i];
        if call.lazy {
            // A fallback-only call is judged by the call it stands in for.
            return self.done(i);
        }
        if call.required {
            return Err(ComposeError {
                call: call.name.clone(),
                kind: err.kind,
                message: err.message,
            });
        }
        self.degraded.push(i);
        self.done(i)
    }

    /// Call `i` has its outcome: release its dependents and fallback waiters.
    fn done(&mut self, i: usize) -> Result<(), ComposeError> {
        self.state[i] = State::Done;
        self.outstanding -= 1;
        let call = &self.plan.calls[i];
        for d in call.dependents.iter() {
            self.pending[*d] -= 1;
            if self.pending[*d] == 0 && self.wanted[*d] && self.state[*d] == State::Idle {
                self.ready.push(*d);
            }
        }
        for w in call.fallback_waiters.iter() {
            if self.state[*w] == State::AwaitFallback {
                let err = self.errors[*w]
                    .take()
                    .unwrap_or_else(|| CallError::new("internal", "fallback without a cause"));
                self.take_fallback(*w, i, err)?;
            }
        }
        Ok(())
    }

    fn respond(mut self) -> Result<ComposeResponse, ComposeError> {
        self.degraded.sort_unstable();
        let degraded = self
            .degraded
            .iter()
            .map(|i| self.plan.calls[*i].name.clone())
            .collect();
        let scope = self.scope();
        let (status, mut headers, body, extra) = match &self.plan.response {
            CompiledResponse::Body {
                body,
                status,
                headers: extra,
            } => {
                let value = body.render(&scope).unwrap_or(Value::Null);
                let mut headers = HeaderMap::new();
                headers.insert(header::CONTENT_TYPE, json_content_type());
                (*status, headers, Bytes::from(value.to_string()), extra)
            }
            CompiledResponse::PassThrough {
                call,
                headers: extra,
            } => {
                let Some(result) = &self.results[*call] else {
                    return Err(ComposeError {
                        call: self.plan.calls[*call].name.clone(),
                        kind: KIND_OMITTED,
                        message: "the pass-through call failed and has no result".into(),
                    });
                };
                let mut headers = result.headers.clone();
                remove_hop_by_hop(&mut headers);
                (result.status, headers, result.raw.clone(), extra)
            }
        };
        for (name, value) in extra.iter() {
            let v = HeaderValue::try_from(value.render(&scope)).map_err(|_| ComposeError {
                call: "response".into(),
                kind: KIND_TEMPLATE,
                message: format!("rendered header {name} is not a valid header value"),
            })?;
            headers.insert(name.clone(), v);
        }
        Ok(ComposeResponse {
            status,
            headers,
            body,
            degraded,
        })
    }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1) and `content-length` (the
/// body is re-framed by whoever sends it).
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        assert_eq!(
            ComposeRequest::parse_query("a=1&b=x%20y+z&&c&d=%zz"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
            ]
        );
        assert_eq!(ComposeRequest::decode_param("a%2Fb+c%"), "a/b+c%");
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("content-length", HeaderValue::from_static("5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
