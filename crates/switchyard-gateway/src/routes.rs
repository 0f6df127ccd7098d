//! Route matching: which configured route a request takes, its path
//! parameters, and the path it is sent upstream with.
//!
//! A [`Router`] is compiled once from the `[[routes]]` of a config
//! ([`RouteConfig`]) and then only read, so it can be shared by every
//! connection and swapped whole on reload.
//!
//! # How a route is chosen
//!
//! A route matches when all of these hold:
//! - the listener is one of the route's `listeners` (or the route lists none);
//! - the path matches the route's `path` pattern: literal segments,
//!   `{name}` for one segment, `{*name}` for the rest of the path
//!   (the [`matchit`] syntax; `/api/{*rest}` also matches `/api/`, with
//!   `rest` empty); the query string is not part of the match;
//! - the method is one of `methods` (or the route lists none);
//! - the host equals `host`, compared case-insensitively and without the
//!   port (or the route sets none);
//! - every header in `headers` is present with exactly that value.
//!
//! Precedence: the most specific pattern that matches the path wins
//! (literal segments before `{name}` before `{*name}`, as in [`matchit`]);
//! among routes sharing that pattern, the first in config order whose
//! method, host and headers match. When none of them does, the other routes
//! whose patterns match the path are tried in config order, so a less
//! specific route still serves a method the more specific one doesn't.
//!
//! Two patterns [`matchit`] can't order (for example `/users/{id}` and
//! `/users/{name}`, or `/files/{id}` and `/files/{*rest}`) are a config
//! error naming both routes.
//!
//! # Rewrite
//!
//! `rewrite` is a path template; each `{name}` (or `{*name}`) is replaced by
//! the matched parameter's value, exactly as received (still
//! percent-encoded). The query string is kept. Without `rewrite`, the path
//! is sent as received.
//!
//! ```
//! use switchyard_gateway::{config::RouteConfig, routes::Router};
//! use http::{HeaderMap, Method};
//!
//! let routes: Vec<RouteConfig> = vec![toml::from_str(r#"
//!     path = "/api/users/{id}/{*rest}"
//!     service = "users"
//!     rewrite = "/v2/{id}/{rest}"
//! "#).unwrap()];
//! let router = Router::new(&routes).unwrap();
//! let m = router
//!     .route("public", &Method::GET, Some("example.com"), "/api/users/7/orders/3?full=1", &HeaderMap::new())
//!     .unwrap();
//! assert_eq!(m.index(), 0);
//! assert_eq!(m.param("id"), Some("7"));
//! assert_eq!(m.upstream_path(), "/v2/7/orders/3?full=1");
//! ```

use std::{borrow::Cow, collections::HashMap};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use smallvec::SmallVec;

use crate::{config::RouteConfig, paths::split_query};

/// The compiled routes of one config.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Pattern → index into `groups`.
    tree: matchit::Router<usize>,
    /// Route indices sharing one pattern, in config order.
    groups: Vec<Vec<usize>>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    service: String,
    listeners: Vec<String>,
    methods: Vec<Method>,
    host: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    rewrite: Option<Vec<Segment>>,
    retry_non_idempotent: bool,
    group: usize,
    /// This route's pattern alone, for the fallback scan.
    tree: matchit::Router<()>,
    /// For a pattern ending in `/{*name}`: the path before the catch-all
    /// and the parameter's name, so `/api/` matches `/api/{*rest}` too.
    bare_prefix: Option<(String, String)>,
}

/// A piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// The route a request matched, borrowing the router and the request's
/// path: matching copies nothing, and a route without `rewrite` sends the
/// path it was given (most routes, most requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    index: usize,
    params: SmallVec<[(&'a str, &'a str); 4]>,
    upstream_path: Cow<'a, str>,
}

impl<'a> RouteMatch<'a> {
    /// Index of the matched route in the config's route list.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The path parameters (name, value as received), in pattern order.
    pub fn params(&self) -> &[(&'a str, &'a str)] {
        &self.params
    }

    /// One path parameter by name.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|&(_, v)| v)
    }

    /// The path and query to send upstream (after `rewrite`).
    pub fn upstream_path(&self) -> &str {
        &self.upstream_path
    }

    /// The path and query to send upstream: the one given to
    /// [`Router::route`] itself when the route has no `rewrite`.
    pub fn into_upstream_path(self) -> Cow<'a, str> {
        self.upstream_path
    }
}

impl Router {
    /// Compiles `routes`; the error names the route and what to fix.
    pub fn new(routes: &[RouteConfig]) -> Result<Self, String> {
        let mut tree = matchit::Router::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_pattern: HashMap<&str, usize> = HashMap::new();
        let mut compiled = Vec::with_capacity(routes.len());
        for (index, route) in routes.iter().enumerate() {
            let name = route_name(route);
            let mut own = matchit::Router::new();
            own.insert(route.path.as_str(), ()).map_err(|e| {
                format!(
                    "routes[{index}] ({name}): path `{}` is not a valid pattern: {e}; \
                     use literal segments, `{{name}}` for one segment and `{{*name}}` for the rest",
                    route.path
                )
            })?;
            let group = match by_pattern.get(route.path.as_str()) {
                Some(&group) => {
                    groups[group].push(index);
                    group
                }
                None => {
                    let group = groups.len();
                    if let Err(e) = tree.insert(route.path.as_str(), group) {
                        return Err(conflict_error(routes, index, &name, &e));
                    }
                    groups.push(vec![index]);
                    by_pattern.insert(route.path.as_str(), group);
                    group
                }
            };
            compiled.push(CompiledRoute {
                service: route.service.clone(),
                listeners: route.listeners.clone(),
                methods: parse_methods(route, index, &name)?,
                host: route.host.as_ref().map(|h| h.to_ascii_lowercase()),
                headers: parse_headers(route, index, &name)?,
                rewrite: route
                    .rewrite
                    .as_deref()
                    .map(|t| parse_rewrite(t, &route.path, index, &name))
                    .transpose()?,
                retry_non_idempotent: route.retry_non_idempotent,
                group,
                tree: own,
                bare_prefix: bare_prefix(&route.path),
                name,
            });
        }
        Ok(Self {
            routes: compiled,
            tree,
            groups,
        })
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The name of route `index` (its `name`, or `METHODS path`), for
    /// metrics and logs.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.routes.get(index).map(|r| r.name.as_str())
    }

    /// The service route `index` sends to.
    pub fn service(&self, index: usize) -> Option<&str> {
        self.routes.get(index).map(|r| r.service.as_str())
    }

    /// Whether route `index` retries non-idempotent methods.
    pub fn retry_non_idempotent(&self, index: usize) -> bool {
        self.routes
            .get(index)
            .is_some_and(|r| r.retry_non_idempotent)
    }

    /// The route for a request, see the [module docs](self) for precedence.
    ///
    /// `path` may carry a query string (`/a?b=c`); it is kept in the
    /// upstream path. `host` may carry a port; it is ignored.
    pub fn route<'a>(
        &'a self,
        listener: &str,
        method: &Method,
        host: Option<&str>,
        path: &'a str,
        headers: &HeaderMap,
    ) -> Option<RouteMatch<'a>> {
        let (path_only, _) = split_query(path);
        let host = host.map(strip_port);
        let accepts =
            |route: &CompiledRoute| route.serves(listener) && route.accepts(method, host, headers);

        let matched = self.tree.at(path_only).ok();
        // A catch-all's bare prefix equal to the whole path (`/api/` for
        // `/api/{*rest}`) is more specific than any catch-all that matched.
        let caught_all = matched
            .as_ref()
            .is_some_and(|m| self.routes[self.groups[*m.value][0]].bare_prefix.is_some());
        if (matched.is_none() || caught_all) && path_only.ends_with('/') {
            let bare = self.routes.iter().enumerate().find(|(_, route)| {
                route
                    .bare_prefix
                    .as_ref()
                    .is_some_and(|(prefix, _)| prefix == path_only)
                    && accepts(route)
            });
            if let Some((index, route)) = bare {
                let params = route
                    .bare_prefix
                    .iter()
                    .map(|(_, name)| (name.as_str(), ""))
                    .collect();
                return Some(self.finish(index, params, path));
            }
        }
        if let Some(m) = &matched {
            let group = *m.value;
            for &index in &self.groups[group] {
                if accepts(&self.routes[index]) {
                    return Some(self.finish(index, m.params.iter().collect(), path));
                }
            }
        }
        let skip = matched.map(|m| *m.value);
        for (index, route) in self.routes.iter().enumerate() {
            if Some(route.group) == skip || !accepts(route) {
                continue;
            }
            if let Ok(m) = route.tree.at(path_only) {
                return Some(self.finish(index, m.params.iter().collect(), path));
            }
        }
        None
    }

    /// The match of route `index` for `path` (query included).
    fn finish<'a>(
        &'a self,
        index: usize,
        params: SmallVec<[(&'a str, &'a str); 4]>,
        path: &'a str,
    ) -> RouteMatch<'a> {
        let upstream_path = match &self.routes[index].rewrite {
            // The path and query as given.
            None => Cow::Borrowed(path),
            Some(template) => {
                let mut out = String::with_capacity(path.len());
                for segment in template {
                    match segment {
                        Segment::Literal(s) => out.push_str(s),
                        Segment::Param(name) => {
                            if let Some((_, v)) = params.iter().find(|(k, _)| k == name) {
                                out.push_str(v);
                            }
                        }
                    }
                }
                if let (_, Some(q)) = split_query(path) {
                    out.push('?');
                    out.push_str(q);
                }
                Cow::Owned(out)
            }
        };
        RouteMatch {
            index,
            params,
            upstream_path,
        }
    }
}

impl CompiledRoute {
    fn serves(&self, listener: &str) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener)
    }

    fn accepts(&self, method: &Method, host: Option<&str>, headers: &HeaderMap) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if let Some(want) = &self.host {
            match host {
                Some(h) if h.eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// `/api/` and `rest` for `/api/{*rest}`.
fn bare_prefix(pattern: &str) -> Option<(String, String)> {
    let (prefix, last) = pattern.rsplit_once("/{*")?;
    let name = last.strip_suffix('}')?;
    Some((format!("{prefix}/"), name.to_owned()))
}

/// `host` without its port; IPv6 literals keep their brackets.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    // A byte scan: `rsplit_once(':')` costs several times more on a short
    // host (most of it the generic char searcher's setup).
    match host.bytes().rposition(|b| b == b':') {
        Some(colon) if host.as_bytes()[colon + 1..].iter().all(u8::is_ascii_digit) => {
            &host[..colon]
        }
        _ => host,
    }
}

fn route_name(route: &RouteConfig) -> String {
    match &route.name {
        Some(name) => name.clone(),
        None if route.methods.is_empty() => format!("* {}", route.path),
        None => format!("{} {}", route.methods.join(","), route.path),
    }
}

fn conflict_error(
    routes: &[RouteConfig],
    index: usize,
    name: &str,
    err: &matchit::InsertError,
) -> String {
    let path = &routes[index].path;
    // matchit names the conflicting pattern only in its internal form, so
    // find the earlier route it clashes with by inserting the two alone.
    let other = routes[..index].iter().enumerate().find(|(_, earlier)| {
        let mut pair = matchit::Router::new();
        pair.insert(earlier.path.as_str(), ()).is_ok() && pair.insert(path.as_str(), ()).is_err()
    });
    match other {
        Some((j, earlier)) => format!(
            "routes[{index}] ({name}): path `{path}` conflicts with routes[{j}] ({}) path `{}`: \
             a request path could match both and neither is more specific; \
             write both as one pattern (routes sharing a pattern are tried in config order) \
             or give them different literal segments",
            route_name(earlier),
            earlier.path
        ),
        None => format!("routes[{index}] ({name}): path `{path}` can't be added: {err}"),
    }
}

fn parse_methods(route: &RouteConfig, index: usize, name: &str) -> Result<Vec<Method>, String> {
    route
        .methods
        .iter()
        .map(|m| {
            if m.is_empty() || m.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(format!(
                    "routes[{index}] ({name}): methods: `{m}` is not an upper-case method name such as \"GET\""
                ));
            }
            Method::from_bytes(m.as_bytes()).map_err(|_| {
                format!("routes[{index}] ({name}): methods: `{m}` is not a valid method name")
            })
        })
        .collect()
}

fn parse_headers(
    route: &RouteConfig,
    index: usize,
    name: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    route
        .headers
        .iter()
        .map(|(k, v)| {
            let key = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                format!("routes[{index}] ({name}): headers: `{k}` is not a valid header name")
            })?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                format!(
                    "routes[{index}] ({name}): headers.{k}: the value is not a valid header value"
                )
            })?;
            Ok((key, value))
        })
        .collect()
}

/// Splits a rewrite template into literals and parameters, checking that
/// each parameter is one the path pattern captures.
fn parse_rewrite(
    template: &str,
    pattern: &str,
    index: usize,
    name: &str,
) -> Result<Vec<Segment>, String> {
    if !template.starts_with('/') {
        return Err(format!(
            "routes[{index}] ({name}): rewrite `{template}` must start with `/`"
        ));
    }
    let captured = param_names(pattern);
    let mut segments = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            segments.push(Segment::Literal(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!(
                "routes[{index}] ({name}): rewrite `{template}` has a `{{` without a closing `}}`"
            ));
        };
        let param = rest[open + 1..open + close].trim_start_matches('*');
        if !captured.iter().any(|c| c == param) {
            return Err(format!(
                "routes[{index}] ({name}): rewrite `{template}` uses `{{{param}}}`, which the path \
                 `{pattern}` doesn't capture; use one of: {}",
                if captured.is_empty() {
                    "(none)".to_owned()
                } else {
                    captured.join(", ")
                }
            ));
        }
        segments.push(Segment::Param(param.to_owned()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.to_owned()));
    }
    Ok(segments)
}

/// Names captured by a matchit pattern (`{id}`, `{*rest}`; `{{`/`}}` are
/// escaped braces, not parameters).
fn param_names(pattern: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            if bytes.get(i + 1) == Some(&b'{') {
                i += 2;
                continue;
            }
            if let Some(len) = pattern[i..].find('}') {
                names.push(pattern[i + 1..i + len].trim_start_matches('*').to_owned());
                i += len + 1;
                continue;
            }
        }
        i += 1;
    }
    names
}

#[cfg(test)]
mod tests;
