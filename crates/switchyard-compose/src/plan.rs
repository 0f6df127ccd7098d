//! Compiling a [`ComposeConfig`] into a [`ComposePlan`]: every template
//! parsed, every name resolved to an index, dependencies derived and checked
//! for cycles, once at load.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::{HeaderName, Method, StatusCode, uri::PathAndQuery};

use crate::{
    config::{ComposeConfig, Fallback},
    execute::CallResult,
    template::{Expr, JsonTemplate, StrTemplate},
};

/// Names a call can't take: they mean something else in templates and errors.
const RESERVED: [&str; 2] = ["request", "response"];

/// A validated composition, ready to execute any number of times
/// concurrently (`&self`).
#[derive(Debug)]
pub struct ComposePlan {
    pub(crate) calls: Box<[CompiledCall]>,
    pub(crate) response: CompiledResponse,
    /// Calls without dependencies that run from the start.
    pub(crate) roots: Box<[usize]>,
    timeout: Duration,
    params: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CompiledCall {
    pub(crate) name: String,
    pub(crate) service: String,
    pub(crate) method: Method,
    pub(crate) path: StrTemplate,
    /// Names already percent-encoded.
    pub(crate) query: Box<[(String, StrTemplate)]>,
    pub(crate) headers: Box<[(HeaderName, StrTemplate)]>,
    pub(crate) body: Option<JsonTemplate>,
    /// Calls whose data this one reads.
    pub(crate) data_deps: Box<[usize]>,
    /// Number of dependencies (data and `after`), each counted once.
    pub(crate) pending_init: u32,
    /// Calls that depend on this one.
    pub(crate) dependents: Box<[usize]>,
    /// Calls whose fallback is this call.
    pub(crate) fallback_waiters: Box<[usize]>,
    pub(crate) required: bool,
    pub(crate) fallback: Option<CompiledFallback>,
    pub(crate) fail_on_status: u16,
    /// Serves only as a fallback: runs only when needed.
    pub(crate) lazy: bool,
    /// Some template reads the body: parse it as JSON.
    pub(crate) parse_body: bool,
}

#[derive(Debug)]
pub(crate) enum CompiledFallback {
    Value(Arc<CallResult>),
    Call(usize),
    Omit,
}

#[derive(Debug)]
pub(crate) enum CompiledResponse {
    Body {
        body: JsonTemplate,
        status: StatusCode,
        headers: Box<[(HeaderName, StrTemplate)]>,
    },
    PassThrough {
        call: usize,
        headers: Box<[(HeaderName, StrTemplate)]>,
    },
}

impl ComposePlan {
    /// Validates `config` and compiles it. `known_services` says whether a
    /// service name exists. Every problem is reported, each as
    /// `KEY: what is wrong and how to fix it` with `KEY` relative to the
    /// compose table (`calls.pricing.path: position 9: unknown root ...`).
    pub fn compile(
        config: &ComposeConfig,
        known_services: &dyn Fn(&str) -> bool,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        if config.timeout.is_zero() {
            errors.push("timeout: must be more than 0, e.g. \"5s\"".to_owned());
        }
        if config.calls.is_empty() {
            errors.push("calls: a composition needs at least one call; add a [calls.NAME] table with service and path".to_owned());
        }
        let names: Vec<&str> = config.calls.keys().map(String::as_str).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let resolve = |name: &str| index.get(name).copied();
        for name in &names {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errors.push(format!(
                    "calls.{name}: call names are letters, digits, `_` and `-`; rename it"
                ));
            } else if RESERVED.contains(name) {
                errors.push(format!(
                    "calls.{name}: `{name}` is reserved; give the call another name"
                ));
            }
        }

        let mut calls = Vec::with_capacity(names.len());
        // Dependencies (data + after) and fallback edges, for the cycle check.
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(names.len());
        for (i, (name, c)) in config.calls.iter().enumerate() {
            let key = format!("calls.{name}");
            if !known_services(&c.service) {
                errors.push(format!(
                    "{key}.service: unknown service {:?}; define it under [services] or fix the name",
                    c.service
                ));
            }
            let method = Method::from_bytes(c.method.as_bytes()).unwrap_or_else(|_| {
                errors.push(format!(
                    "{key}.method: {:?} is not an HTTP method, e.g. \"GET\"",
                    c.method
                ));
                Method::GET
            });
            let path = str_template(&c.path, &format!("{key}.path"), &resolve, &mut errors);
            if let Some(path) = &path {
                let shape = path.with_placeholders();
                if !shape.starts_with('/') {
                    errors.push(format!("{key}.path: must start with `/`"));
                } else if shape.contains(['?', '#']) || PathAndQuery::try_from(shape).is_err() {
                    errors.push(format!(
                        "{key}.path: not a valid URI path; percent-encode special characters and put query parameters under `query`"
                    ));
                }
            }
            let mut query = Vec::new();
            for (qname, value) in &c.query {
                if qname.is_empty() {
                    errors.push(format!("{key}.query: a parameter name is empty"));
                }
                if let Some(t) = str_template(
                    value,
                    &format!("{key}.query.{qname}"),
                    &resolve,
                    &mut errors,
                ) {
                    let mut encoded = String::new();
                    crate::template::percent_encode_into(&mut encoded, qname);
                    query.push((encoded, t));
                }
            }
            let headers =
                header_templates(&c.headers, &format!("{key}.headers"), &resolve, &mut errors);
            let body = c
                .body
                .as_ref()
                .map(|b| JsonTemplate::parse(b, &format!("{key}.body"), &resolve, &mut errors));

            let mut data_deps: Vec<usize> = Vec::new();
            let mut note = |e: &Expr| {
                if let Some(d) = e.call() {
                    data_deps.push(d);
                }
            };
            if let Some(p) = &path {
                p.exprs().for_each(&mut note);
            }
            query
                .iter()
                .for_each(|(_, t)| t.exprs().for_each(&mut note));
            headers
                .iter()
                .for_each(|(_, t)| t.exprs().for_each(&mut note));
            if let Some(b) = &body {
                b.visit(&mut note);
            }
            data_deps.sort_unstable();
            data_deps.dedup();
            let mut all = data_deps.clone();
            for a in &c.after {
                match resolve(a) {
                    Some(d) => all.push(d),
                    None => errors.push(format!(
                        "{key}.after: unknown call {a:?}; expected one of {}",
                        names.join(", ")
                    )),
                }
            }
            all.sort_unstable();
            all.dedup();

            let fallback = match &c.fallback {
                None => None,
                Some(Fallback::Omit) => Some(CompiledFallback::Omit),
                Some(Fallback::Value(v)) => Some(CompiledFallback::Value(Arc::new(
                    CallResult::from_value(v.clone()),
                ))),
                Some(Fallback::Call(other)) => match resolve(other) {
                    Some(x) if x == i => {
                        errors.push(format!("{key}.fallback: a call can't be its own fallback"));
                        None
                    }
                    Some(x) => Some(CompiledFallback::Call(x)),
                    None => {
                        errors.push(format!(
                            "{key}.fallback: unknown call {other:?}; expected one of {}",
                            names.join(", ")
                        ));
                        None
                    }
                },
            };
            if !(100..=600).contains(&c.fail_on_status) {
                errors.push(format!(
                    "{key}.fail_on_status: {} is not a status; use 100..=600 (600: never fail on status)",
                    c.fail_on_status
                ));
            }
            let mut edges = all.clone();
            if let Some(CompiledFallback::Call(x)) = &fallback {
                edges.push(*x);
            }
            deps.push(edges);
            calls.push(CompiledCall {
                name: name.clone(),
                service: c.service.clone(),
                method,
                path: path.unwrap_or_else(|| StrTemplate::literal("/")),
                query: query.into(),
                headers: headers.into(),
                body,
                data_deps: data_deps.into(),
                pending_init: u32::try_from(all.len()).unwrap_or(u32::MAX),
                dependents: Box::new([]),
                fallback_waiters: Box::new([]),
                required: c.required,
                fallback,
                fail_on_status: c.fail_on_status,
                lazy: false,
                parse_body: false,
            });
        }

        // Response.
        let r = &config.response;
        let resp_headers = header_templates(&r.headers, "response.headers", &resolve, &mut errors);
        let mut resp_refs: Vec<usize> = Vec::new();
        resp_headers
            .iter()
            .for_each(|(_, t)| t.exprs().for_each(|e| resp_refs.extend(e.call())));
        let explicit_body = r
            .body
            .as_ref()
            .map(|b| JsonTemplate::parse(b, "response.body", &resolve, &mut errors));
        if let Some(b) = &explicit_body {
            b.visit(&mut |e| resp_refs.extend(e.call()));
        }
        let mut pass_through = None;
        if let Some(p) = &r.pass_through {
            if r.body.is_some() || r.status.is_some() {
                errors.push(
                    "response.pass_through: can't be combined with body or status; remove one"
                        .to_owned(),
                );
            }
            match resolve(p) {
                Some(x) => {
                    let c = &config.calls[p];
                    let stands_in =
                        matches!(c.fallback, Some(Fallback::Value(_) | Fallback::Call(_)));
                    if !c.required && !stands_in {
                        errors.push(format!(
                            "response.pass_through: call {p:?} may have no result (required = false without a value or call fallback); make it required or give it a fallback"
                        ));
                    }
                    resp_refs.push(x);
                    pass_through = Some(x);
                }
                None => errors.push(format!(
                    "response.pass_through: unknown call {p:?}; expected one of {}",
                    names.join(", ")
                )),
            }
        }
        let status = match r.status {
            None => StatusCode::OK,
            Some(s) => StatusCode::from_u16(s).unwrap_or_else(|_| {
                errors.push(format!(
                    "response.status: {s} is not a status; use 100..=999"
                ));
                StatusCode::OK
            }),
        };

        if let Some(cycle) = find_cycle(&deps) {
            let path: Vec<&str> = cycle.iter().map(|i| names[*i]).collect();
            errors.push(format!(
                "calls: cycle: {} (`a -> b` means a waits for b through a reference, `after` or `fallback`); break the cycle",
                path.join(" -> ")
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Fallback-only calls run on demand.
        let n = calls.len();
        let mut referenced = vec![false; n];
        let mut fallback_target = vec![false; n];
        for (i, c) in calls.iter().enumerate() {
            for d in run_deps(&deps[i], c) {
                referenced[d] = true;
            }
            if let Some(CompiledFallback::Call(x)) = c.fallback {
                fallback_target[x] = true;
            }
        }
        for x in &resp_refs {
            referenced[*x] = true;
        }
        for i in 0..n {
            calls[i].lazy = fallback_target[i] && !referenced[i];
        }
        let body = explicit_body.unwrap_or_else(|| {
            JsonTemplate::Object(
                calls
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !c.lazy)
                    .map(|(i, c)| (c.name.clone(), JsonTemplate::call_body(i)))
                    .collect(),
            )
        });
        let response = match pass_through {
            Some(call) => CompiledResponse::PassThrough {
                call,
                headers: resp_headers.into(),
            },
            None => CompiledResponse::Body {
                body,
                status,
                headers: resp_headers.into(),
            },
        };

        // Which bodies are read, which params are used, who waits for whom.
        let mut body_read = vec![false; n];
        let mut params = Vec::new();
        let mut see = |e: &Expr| {
            if let Some(b) = e.body_of() {
                body_read[b] = true;
            }
            if let Some(p) = e.param()
                && !params.iter().any(|q: &String| q == p)
            {
                params.push(p.to_owned());
            }
        };
        for c in &calls {
            c.path.exprs().for_each(&mut see);
            c.query
                .iter()
                .for_each(|(_, t)| t.exprs().for_each(&mut see));
            c.headers
                .iter()
                .for_each(|(_, t)| t.exprs().for_each(&mut see));
            if let Some(b) = &c.body {
                b.visit(&mut see);
            }
        }
        match &response {
            CompiledResponse::Body { body, headers, .. } => {
                body.visit(&mut see);
                headers
                    .iter()
                    .for_each(|(_, t)| t.exprs().for_each(&mut see));
            }
            CompiledResponse::PassThrough { headers, .. } => {
                headers
                    .iter()
                    .for_each(|(_, t)| t.exprs().for_each(&mut see));
            }
        }
        let mut dependents = vec![Vec::new(); n];
        let mut waiters = vec![Vec::new(); n];
        for (i, c) in calls.iter().enumerate() {
            for d in run_deps(&deps[i], c) {
                dependents[d].push(i);
            }
            if let Some(CompiledFallback::Call(x)) = c.fallback {
                waiters[x].push(i);
            }
        }
        for (i, c) in calls.iter_mut().enumerate() {
            // A stand-in's result becomes the failed call's: parse it when
            // that call's body may be read.
            c.parse_body = body_read[i] || fallback_target[i];
            c.dependents = std::mem::take(&mut dependents[i]).into();
            c.fallback_waiters = std::mem::take(&mut waiters[i]).into();
        }
        let roots = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pending_init == 0 && !c.lazy)
            .map(|(i, _)| i)
            .rev()
            .collect();
        Ok(Self {
            calls: calls.into(),
            response,
            roots,
            timeout: config.timeout,
            params,
        })
    }

    /// The route's deadline, from the start of an execution.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The path parameters the templates read (`request.params.NAME`), so
    /// the gateway can check them against the route's pattern.
    pub fn params_used(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(String::as_str)
    }

    /// The call names, in plan order.
    pub fn call_names(&self) -> impl Iterator<Item = &str> {
        self.calls.iter().map(|c| c.name.as_str())
    }

    /// The services the calls go to, in plan order (with repeats).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.calls.iter().map(|c| c.service.as_str())
    }
}

/// The run-time dependencies of call `c`: its edges minus a fallback edge
/// (a fallback doesn't delay the call's start).
fn run_deps<'a>(edges: &'a [usize], c: &CompiledCall) -> impl Iterator<Item = usize> + 'a {
    // `edges` is data + after deps (sorted, deduplicated) followed by the
    // fallback edge, if any; `pending_init` counts the former.
    let n = usize::try_from(c.pending_init).unwrap_or(usize::MAX);
    edges.iter().take(n).copied()
}

fn str_template(
    src: &str,
    key: &str,
    resolve: &dyn Fn(&str) -> Option<usize>,
    errors: &mut Vec<String>,
) -> Option<StrTemplate> {
    StrTemplate::parse(src, resolve)
        .map_err(|e| errors.push(format!("{key}: {e}")))
        .ok()
}

fn header_templates(
    headers: &std::collections::BTreeMap<String, String>,
    key: &str,
    resolve: &dyn Fn(&str) -> Option<usize>,
    errors: &mut Vec<String>,
) -> Vec<(HeaderName, StrTemplate)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let Ok(header) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
            errors.push(format!("{key}: {name:?} is not a valid header name"));
            continue;
        };
        if let Some(t) = str_template(value, &format!("{key}.{name}"), resolve, errors) {
            out.push((header, t));
        }
    }
    out
}

/// The first cycle found, as a path that ends where it starts.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let n = edges.len();
    let mut mark = vec![Mark::New; n];
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to look at).
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnStack;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match mark.get(to).copied() {
                    Some(Mark::New) => {
                        mark[to] = Mark::OnStack;
                        stack.push((to, 0));
                    }
                    Some(Mark::OnStack) => {
                        let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|(n, _)| *n).collect();
                        cycle.push(to);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
