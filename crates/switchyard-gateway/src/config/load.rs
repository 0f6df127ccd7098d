//! Reading a config file: parse, validate, and point at the line of any problem.

use std::{collections::HashSet, fmt, net::SocketAddr, path::Path};

use toml::de::{DeTable, DeValue};

use super::Config;

/// A config problem, located in its file: `file:line: key: what is wrong and
/// how to fix it`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    /// The file (as given).
    pub file: String,
    /// 1-based line of the offending key (0 when the file can't be read).
    pub line: usize,
    /// Dotted path of the key, e.g. `routes[2].service`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A problem found by [`Config::validate`], before it is located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is.
    pub path: Vec<Seg>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    /// A problem at `path` (dotted, `[n]` for indices), e.g. `routes[1].service`.
    pub fn at(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: parse_path(path),
            message: message.into(),
        }
    }
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segs.push(Seg::Key(rest[..open].to_owned()));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    segs.push(Seg::Index(i));
                }
                rest = &rest[close + 1..];
            }
        } else {
            segs.push(Seg::Key(rest.to_owned()));
        }
    }
    segs
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) => f.write_str(k),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        if matches!(seg, Seg::Key(_)) && !out.is_empty() {
            out.push('.');
        }
        out.push_str(&seg.to_string());
    }
    out
}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: file.clone(),
            line: 0,
            key: "(file)".to_owned(),
            message: format!("cannot read the config file: {err}; check the path given with -c"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| {
            let span = err.span();
            let line = span.as_ref().map_or(1, |s| line_of(text, s.start));
            let key = span
                .map(|s| text[s].trim().trim_matches('"').to_owned())
                .filter(|k| !k.is_empty() && k.len() < 80 && !k.contains('\n'))
                .unwrap_or_else(|| "(document)".to_owned());
            ConfigError {
                file: file.to_owned(),
                line,
                key,
                message: err.message().trim().to_owned(),
            }
        })?;
        if let Some(problem) = config.validate().into_iter().next() {
            let line = locate(text, &problem.path).unwrap_or(1);
            return Err(ConfigError {
                file: file.to_owned(),
                line,
                key: dotted(&problem.path),
                message: problem.message,
            });
        }
        Ok(config)
    }

    /// Every problem that would stop this config from working, in file order
    /// as far as possible. Empty when the config is good.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut p = |path: String, message: String| problems.push(Problem::at(&path, message));

        if self.listeners.is_empty() {
            p(
                "listeners".into(),
                "no listener configured; add one: [[listeners]] name = \"public\" listen = \"127.0.0.1:8080\"".into(),
            );
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(l.name.as_str()) {
                p(
                    format!("listeners[{i}].name"),
                    format!(
                        "listener name {:?} is used twice; names must be unique",
                        l.name
                    ),
                );
            }
            // Port 0 asks the OS for a free port: never a clash.
            if l.listen.port() != 0 && !addrs.insert(l.listen) {
                p(
                    format!("listeners[{i}].listen"),
                    format!(
                        "{} is used by another listener; give each its own address",
                        l.listen
                    ),
                );
            }
            if l.listen.port() != 0 && l.listen == self.admin.listen {
                p(
                    format!("listeners[{i}].listen"),
                    format!(
                        "{} is the admin listener's address; pick another port",
                        l.listen
                    ),
                );
            }
            if l.max_header_bytes < 1024 {
                p(
                    format!("listeners[{i}].max_header_bytes"),
                    format!(
                        "{} is too small for real clients; use at least 1024 (default 16384)",
                        l.max_header_bytes
                    ),
                );
            }
            if l.max_headers == 0 {
                p(
                    format!("listeners[{i}].max_headers"),
                    "must be at least 1 (default 100)".into(),
                );
            }
            if l.max_connections == 0 {
                p(
                    format!("listeners[{i}].max_connections"),
                    "must be at least 1 (default 10000)".into(),
                );
            }
            if let Some(Err(message)) = l.tls.as_ref().map(|t| t.validate()) {
                p(format!("listeners[{i}].tls"), message);
            }
            if l.header_read_timeout.is_zero() || l.idle_timeout.is_zero() {
                p(
                    format!("listeners[{i}].header_read_timeout"),
                    "timeouts must be more than 0, e.g. \"10s\"".into(),
                );
            }
        }

        match &self.admin.token_sha256 {
            Some(hash) if crate::auth::config::parse_sha256_hex(hash).is_none() => p(
                "admin.token_sha256".into(),
                "must be 64 hex digits: the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`".into(),
            ),
            None if !self.admin.listen.ip().is_loopback() => p(
                "admin.listen".into(),
                format!(
                    "{} is reachable beyond this machine, so the admin API needs a token: set admin.token_sha256 \
                     (or listen on 127.0.0.1)",
                    self.admin.listen
                ),
            ),
            _ => {}
        }
        if let Err(message) = self.defaults.policy.validate() {
            p("defaults.policy".into(), message.to_string());
        }
        for (name, service) in &self.services {
            let at = |key: &str| format!("services.{name}.{key}");
            // Without static endpoints a service's instances come from the
            // registry, so it needs one; `select` filters registry instances
            // only and would be silently ignored next to a static list.
            if service.endpoints.is_empty() && self.registry.is_none() {
                p(
                    at("endpoints"),
                    "no endpoints; list at least one, e.g. endpoints = [\"127.0.0.1:9001\"], \
                     or find the instances in a registry with [registry] embedded = true or url = \"http://...\""
                        .into(),
                );
            }
            if service.endpoints.is_empty()
                && self.registry.is_some()
                && let Err(err) = switchyard_discovery::registry::validate_service_name(name)
            {
                p(
                    at("endpoints"),
                    format!(
                        "without endpoints the service is found in the registry by its name, and {}",
                        err.detail()
                    ),
                );
            }
            if !service.endpoints.is_empty() && !service.select.is_empty() {
                p(
                    at("select"),
                    "select filters registry instances; remove it, or remove endpoints to find the instances in the registry"
                        .into(),
                );
            }
            let mut seen = HashSet::new();
            for (j, e) in service.endpoints.iter().enumerate() {
                if !seen.insert(e.endpoint().addr) {
                    p(
                        format!("services.{name}.endpoints[{j}]"),
                        format!("{} is listed twice", e.endpoint().addr),
                    );
                }
            }
            if let Err(message) = service.transport().validate() {
                p(at("protocol"), message);
            }
            if let Err(message) = service.balancer.validate() {
                p(at("balancer"), message);
            }
            if let Err(message) = service.outlier.validate() {
                p(at("outlier"), message);
            }
            if let Some(Err(message)) = service.health_check.as_ref().map(|h| h.validate()) {
                p(at("health_check"), message);
            }
            if let Some(Err(message)) = service.policy.as_ref().map(|pc| pc.validate()) {
                p(at("policy"), message.to_string());
            }
        }

        if let Some(registry) = &self.registry {
            match (registry.embedded, &registry.url) {
                (true, Some(_)) => p(
                    "registry.url".into(),
                    "choose one: embedded = true hosts the registry here, url uses another process's".into(),
                ),
                (false, None) => p(
                    "registry".into(),
                    "set embedded = true to host the registry here, or url = \"http://127.0.0.1:9901\" to use another's"
                        .into(),
                ),
                (false, Some(url)) => {
                    if let Err(err) = switchyard_discovery::registry::RemoteRegistry::new(url) {
                        p("registry.url".into(), err.to_string());
                    }
                }
                (true, None) => {}
            }
            if registry.data.is_some() && !registry.embedded {
                p(
                    "registry.data".into(),
                    "data is the embedded registry's file; set embedded = true or remove it".into(),
                );
            }
        }
        for (i, reg) in self.register.iter().enumerate() {
            let at = |key: &str| format!("register[{i}].{key}");
            if self.registry.is_none() {
                p(
                    at("service"),
                    "registering needs a [registry] (embedded = true, or url = ...)".into(),
                );
            }
            if let Err(err) = switchyard_discovery::registry::validate_service_name(&reg.service) {
                p(at("service"), err.detail().to_owned());
            }
            if let Err(err) = switchyard_discovery::registry::validate_ttl(reg.ttl) {
                p(at("ttl"), err.detail().to_owned());
            }
            // What the registry would refuse at run time (so the sidecar
            // would retry forever) is refused here, at load.
            let id = reg.id.clone().unwrap_or_else(|| reg.addr.to_string());
            if let Err(err) =
                switchyard_discovery::registry::validate_instance_id(&id).and_then(|()| {
                    switchyard_discovery::registry::validate_owner(&format!("switchyard:{id}"))
                })
            {
                p(at("id"), err.detail().to_owned());
            }
            if reg.weight == 0 || reg.weight > switchyard_discovery::registry::MAX_WEIGHT {
                p(
                    at("weight"),
                    format!(
                        "{} is outside 1 to {}",
                        reg.weight,
                        switchyard_discovery::registry::MAX_WEIGHT
                    ),
                );
            }
            let mut labels = switchyard_discovery::registry::Registration::new(
                "labels",
                "labels",
                SocketAddr::from(([127, 0, 0, 1], 1)),
                "labels",
            );
            labels.metadata = reg.metadata.clone();
            if let Err(err) = labels.validate() {
                p(at("metadata"), err.detail().to_owned());
            }
            if reg.addr.port() == 0 || reg.addr.ip().is_unspecified() {
                p(
                    at("addr"),
                    format!(
                        "{} is not an address others can reach; give the instance's real ip:port",
                        reg.addr
                    ),
                );
            }
            let c = &reg.check;
            let kinds = usize::from(c.http.is_some())
                + usize::from(c.tcp)
                + usize::from(c.command.is_some());
            if kinds > 1 {
                p(at("check"), "choose one of http, tcp or command".into());
            }
            if c.command.as_ref().is_some_and(Vec::is_empty) {
                p(
                    at("check.command"),
                    "give the program and its arguments, e.g. [\"/usr/bin/check\", \"--quick\"]"
                        .into(),
                );
            }
            if c.http.as_ref().is_some_and(|path| !path.starts_with('/')) {
                p(at("check.http"), "the path must start with '/'".into());
            }
            if c.interval.is_zero()
                || c.timeout.is_zero()
                || c.healthy_threshold == 0
                || c.unhealthy_threshold == 0
            {
                p(
                    at("check"),
                    "interval, timeout and thresholds must be more than 0".into(),
                );
            }
        }

        for (i, route) in self.routes.iter().enumerate() {
            let at = |key: &str| format!("routes[{i}].{key}");
            match (&route.compose, route.service.is_empty()) {
                (Some(_), false) => p(
                    at("service"),
                    "a route either proxies to `service` or answers with `compose`; remove one"
                        .into(),
                ),
                (None, true) => p(
                    at("service"),
                    "missing; name the service requests go to, or add a `compose` table".into(),
                ),
                (None, false) if !self.services.contains_key(&route.service) => {
                    let known: Vec<&str> = self.services.keys().map(String::as_str).collect();
                    p(
                        at("service"),
                        format!(
                            "unknown service {:?}; define [services.{}] or use one of: {}",
                            route.service,
                            route.service,
                            if known.is_empty() {
                                "(none defined)".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                _ => {}
            }
            if let Some(compose) = &route.compose {
                for (name, call) in &compose.calls {
                    if let Some(Err(message)) = call.policy.as_ref().map(|pc| pc.validate()) {
                        p(
                            at(&format!("compose.calls.{name}.policy")),
                            message.to_string(),
                        );
                    }
                }
                match switchyard_compose::ComposePlan::compile(compose, &|s: &str| {
                    self.services.contains_key(s)
                }) {
                    Ok(plan) => {
                        let defined = template_params(&route.path);
                        for used in plan.params_used() {
                            if !defined.contains(&used) {
                                p(
                                    at("compose"),
                                    format!(
                                        "request.params.{used} is used but path {:?} has no {{{used}}}",
                                        route.path
                                    ),
                                );
                            }
                        }
                    }
                    Err(errors) => {
                        for error in errors {
                            let (key, message) =
                                error.split_once(": ").unwrap_or(("", error.as_str()));
                            p(at(&format!("compose.{key}")), message.to_owned());
                        }
                    }
                }
            }
            if let Some(auth) = &route.auth {
                if self.auth.is_none() {
                    p(
                        at("auth"),
                        "route auth rules need an [auth] section saying how callers authenticate"
                            .into(),
                    );
                }
                if let Err(message) = crate::auth::Authorizer::new(auth) {
                    p(at("auth"), message);
                }
            }
            for name in &route.listeners {
                if !self.listeners.iter().any(|l| &l.name == name) {
                    p(
                        at("listeners"),
                        format!("unknown listener {name:?}; name one defined under [[listeners]]"),
                    );
                }
            }
            if !route.path.starts_with('/') {
                p(at("path"), format!("{:?} must start with '/'", route.path));
            }
            for method in &route.methods {
                if http::Method::from_bytes(method.as_bytes()).is_err()
                    || method.to_ascii_uppercase() != *method
                {
                    p(
                        at("methods"),
                        format!(
                            "{method:?} is not an HTTP method; write it in upper case, e.g. \"GET\""
                        ),
                    );
                }
            }
            for header in route.headers.keys() {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    p(
                        at("headers"),
                        format!("{header:?} is not a valid header name"),
                    );
                }
            }
            if let Some(rewrite) = &route.rewrite {
                for param in template_params(rewrite) {
                    if !template_params(&route.path).contains(&param) {
                        p(
                            at("rewrite"),
                            format!(
                                "{{{param}}} is not a parameter of path {:?}; use one it defines",
                                route.path
                            ),
                        );
                    }
                }
            }
            if let Some(Err(message)) = route.policy.as_ref().map(|pc| pc.validate()) {
                p(at("policy"), message.to_string());
            }
        }
        if let Some(auth) = &self.auth {
            for (key, message) in auth.problems() {
                p(format!("auth.{key}"), message);
            }
        }
        if let Err(message) = self.limits.validate() {
            let (key, message) = message
                .split_once(": ")
                .unwrap_or(("limits", message.as_str()));
            p(key.to_owned(), message.to_owned());
        }
        if let Err(message) = crate::routes::Router::new(&self.routes) {
            p("routes".into(), message);
        }
        problems
    }
}

/// The `{name}` / `{*name}` parameters in a path pattern or template.
fn template_params(pattern: &str) -> Vec<&str> {
    pattern
        .split('{')
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('}')
                .map(|(name, _)| name.trim_start_matches('*'))
        })
        .collect()
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// The line where `path` is written in `text`: the deepest part of the path
/// that exists (so a missing key points at its table).
fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut table = Some(doc.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for seg in path {
        match seg {
            Seg::Key(key) => {
                let t = match value {
                    Some(DeValue::Table(t)) => t,
                    Some(_) => break,
                    None => table?,
                };
                let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key.as_str())
                else {
                    break;
                };
                best = Some(line_of(text, k.span().start));
                value = Some(v.get_ref());
                table = None;
            }
            Seg::Index(i) => {
                let Some(DeValue::Array(items)) = value else {
                    break;
                };
                let Some(item) = items.get(*i) else { break };
                best = Some(line_of(text, item.span().start));
                value = Some(item.get_ref());
            }
        }
    }
    best
}

#[cfg(test)]
mod tests;
