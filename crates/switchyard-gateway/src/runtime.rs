//! Building the serving state from a config: one client and one policy per
//! service, one upstream per route, and the route table the proxies serve.
//!
//! A reload builds a new [`Runtime`] next to the running one and swaps it in
//! atomically; requests in flight keep the state they started with. Services
//! whose settings did not change keep their client and policy (so balancer
//! latencies, ejections and breaker state survive a reload); only their
//! endpoint list is updated.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::Serialize;
use switchyard_client::ServiceClient;
use switchyard_discovery::{Discovery, StaticDiscovery, registry::RegistryDiscovery};
use switchyard_policy::{Events, HttpClassifier, Observer, Policy, PolicyConfig};
use tower::Layer;

use crate::{
    auth::{Authenticator, Authorizer},
    compose::ComposeRoute,
    config::{Config, ServiceConfig},
    limits::CallLimits,
    proxy::{Handler, RouteTable, Security, SharedHead, Target, Upstream},
    routes::Router,
};
use switchyard_compose::ComposePlan;

/// Where services' endpoints come from: the config's static lists, and the
/// registry when one is configured.
pub(crate) struct Sources {
    pub(crate) statics: StaticDiscovery,
    pub(crate) registry: Option<Arc<RegistryDiscovery>>,
}

impl Sources {
    /// The endpoint set of `name`: its static list, or its registry instances.
    fn watch(
        &self,
        name: &str,
        service: &ServiceConfig,
    ) -> Result<tokio::sync::watch::Receiver<switchyard_discovery::Endpoints>, String> {
        if service.endpoints.is_empty() {
            let registry = self
                .registry
                .as_ref()
                .ok_or_else(|| format!("services.{name}: no endpoints and no registry"))?;
            registry
                .watch_filtered(name, service.select.clone())
                .map_err(|e| e.to_string())
        } else {
            self.statics.set(
                name,
                service.endpoints.iter().map(|e| e.endpoint()).collect(),
            );
            self.statics.watch(name).map_err(|e| e.to_string())
        }
    }
}

/// A policy as the gateway builds it: HTTP responses classified by status.
pub(crate) type HttpPolicy = Policy<HttpClassifier>;

/// One service's shared state.
#[derive(Clone)]
pub(crate) struct ServiceEntry {
    config: ServiceConfig,
    client: ServiceClient,
    policy: HttpPolicy,
}

/// Everything one config version serves with.
pub(crate) struct Runtime {
    pub(crate) config: Config,
    services: BTreeMap<String, ServiceEntry>,
    route_policies: Vec<Option<HttpPolicy>>,
    security: Security,
}

fn security_for(config: &Config) -> Result<Security, String> {
    let authenticator = config
        .auth
        .as_ref()
        .map(|auth| Authenticator::new(auth).map(Arc::new))
        .transpose()
        .map_err(|e| format!("auth: {e}"))?;
    let limits = if config.limits.rules.is_empty() {
        None
    } else {
        Some(CallLimits::new(&config.limits)?)
    };
    Ok(Security {
        authenticator,
        forward: config
            .auth
            .as_ref()
            .map(|a| a.forward.clone())
            .unwrap_or_default(),
        limits,
    })
}

/// Services' state for `/admin/services`.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceState {
    client: switchyard_client::ServiceSnapshot,
    breaker: switchyard_policy::breaker::BreakerSnapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    bulkhead: Option<BulkheadState>,
}

#[derive(Debug, Serialize)]
struct BulkheadState {
    in_flight: usize,
    queued: usize,
    max_concurrent: usize,
}

fn policy_for(
    service: &str,
    config: &PolicyConfig,
    observer: &Arc<dyn Observer>,
) -> Result<HttpPolicy, String> {
    Policy::with_classifier(
        config.clone(),
        HttpClassifier::default(),
        Events::new(service, observer.clone()),
    )
    .map_err(|e| e.to_string())
}

impl Runtime {
    /// Builds the state for `config`, reusing what `previous` had for services
    /// whose settings (other than endpoints) are unchanged, and the route
    /// table the proxies serve it with.
    pub(crate) fn build(
        config: Config,
        previous: Option<&Runtime>,
        sources: &Sources,
        observer: &Arc<dyn Observer>,
    ) -> Result<(Runtime, RouteTable), String> {
        let mut services = BTreeMap::new();
        for (name, service) in &config.services {
            if !service.endpoints.is_empty() {
                sources.statics.set(
                    name,
                    service.endpoints.iter().map(|e| e.endpoint()).collect(),
                );
            }
            let reusable = previous.and_then(|p| p.services.get(name)).filter(|old| {
                same_but_endpoints(&old.config, service)
                    && old.policy.config() == effective_policy(&config, service)
            });
            let entry = match reusable {
                Some(old) => ServiceEntry {
                    config: service.clone(),
                    ..old.clone()
                },
                None => {
                    let endpoints = sources.watch(name, service)?;
                    let client = ServiceClient::new(
                        name,
                        service.transport(),
                        service.balancer.clone(),
                        service.outlier.clone(),
                        service.health_check.clone(),
                        endpoints,
                    )?;
                    let policy = policy_for(name, effective_policy(&config, service), observer)?;
                    ServiceEntry {
                        config: service.clone(),
                        client,
                        policy,
                    }
                }
            };
            services.insert(name.clone(), entry);
        }
        for old in previous.map(|p| p.services.keys()).into_iter().flatten() {
            if !services.contains_key(old) {
                sources.statics.remove(old);
            }
        }

        let router = Router::new(&config.routes)?;
        let max_body = config
            .listeners
            .iter()
            .map(|l| l.max_body_bytes)
            .max()
            .unwrap_or(crate::config::DEFAULT_MAX_BODY_BYTES);
        let mut route_policies = Vec::with_capacity(config.routes.len());
        let mut targets = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let handler = match &route.compose {
                Some(compose) => {
                    let plan = ComposePlan::compile(compose, &|s: &str| services.contains_key(s))
                        .map_err(|errors| {
                        format!("routes[{i}].compose: {}", errors.join("; "))
                    })?;
                    let mut called = HashMap::new();
                    for name in plan.services() {
                        let entry = services
                            .get(name)
                            .ok_or_else(|| format!("unknown service {name:?}"))?;
                        called.insert(name.to_owned(), upstream(name, entry, &entry.policy));
                    }
                    // Calls with their own policy get their own stack (and
                    // breaker and budget) in front of the service's client.
                    let mut calls = HashMap::new();
                    for (name, call) in &compose.calls {
                        if let (Some(pc), Some(entry)) = (&call.policy, services.get(&call.service))
                        {
                            let policy = policy_for(&call.service, pc, observer)?;
                            calls.insert(name.clone(), upstream(&call.service, entry, &policy));
                        }
                    }
                    route_policies.push(None);
                    Handler::Compose(Arc::new(ComposeRoute {
                        plan,
                        services: called,
                        calls,
                        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
                    }))
                }
                None => {
                    let entry = services
                        .get(&route.service)
                        .ok_or_else(|| format!("unknown service {:?}", route.service))?;
                    let route_policy = match &route.policy {
                        Some(pc) => Some(policy_for(&route.service, pc, observer)?),
                        None => None,
                    };
                    let policy = route_policy.as_ref().unwrap_or(&entry.policy);
                    let target = upstream(&route.service, entry, policy);
                    route_policies.push(route_policy);
                    Handler::Proxy(target)
                }
            };
            let authorizer = match &route.auth {
                Some(auth) => {
                    Authorizer::new(auth).map_err(|e| format!("routes[{i}].auth: {e}"))?
                }
                None => Authorizer::default(),
            };
            targets.push(Target {
                handler,
                authorizer,
            });
        }
        let sidecar = services
            .iter()
            .map(|(name, entry)| (name.clone(), upstream(name, entry, &entry.policy)))
            .collect();
        let security = match previous
            .filter(|p| p.config.auth == config.auth && p.config.limits == config.limits)
        {
            // Unchanged: keep the limit counters and the JWKS cache.
            Some(p) => p.security.clone(),
            None => security_for(&config)?,
        };
        let table = RouteTable::with_targets(router, targets, sidecar, security.clone())?;
        Ok((
            Runtime {
                config,
                services,
                route_policies,
                security,
            },
            table,
        ))
    }

    /// State of every service, for the admin API.
    pub(crate) fn service_states(&self) -> BTreeMap<&str, ServiceState> {
        self.services
            .iter()
            .map(|(name, entry)| {
                let bulkhead = entry.policy.bulkhead().map(|b| {
                    let state = b.state();
                    BulkheadState {
                        in_flight: state.in_flight(),
                        queued: state.queued(),
                        max_concurrent: state.max_concurrent(),
                    }
                });
                (
                    name.as_str(),
                    ServiceState {
                        client: entry.client.snapshot(),
                        breaker: entry.policy.breaker().snapshot(),
                        bulkhead,
                    },
                )
            })
            .collect()
    }

    /// Breakers of routes with their own policy, by route index.
    pub(crate) fn route_breakers(
        &self,
    ) -> Vec<(usize, switchyard_policy::breaker::BreakerSnapshot)> {
        self.route_policies
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.breaker().snapshot())))
            .collect()
    }
}

fn effective_policy<'a>(config: &'a Config, service: &'a ServiceConfig) -> &'a PolicyConfig {
    service.policy.as_ref().unwrap_or(&config.defaults.policy)
}

fn same_but_endpoints(a: &ServiceConfig, b: &ServiceConfig) -> bool {
    // A service moving between static endpoints and the registry needs a
    // client watching the other source.
    a.endpoints.is_empty() == b.endpoints.is_empty()
        && ServiceConfig {
            endpoints: Vec::new(),
            ..a.clone()
        } == ServiceConfig {
            endpoints: Vec::new(),
            ..b.clone()
        }
}

fn upstream(service: &str, entry: &ServiceEntry, policy: &HttpPolicy) -> Upstream {
    let retries_enabled = policy.config().retry.max_attempts > 1 || policy.config().hedge.is_some();
    let svc = SharedHead::new(policy.layer(entry.client.clone()), retries_enabled);
    Upstream {
        service: service.to_owned(),
        retry_body_limit: entry.config.retry_body_limit,
        retries_enabled,
        svc: tower::util::Either::Left(svc),
    }
}
