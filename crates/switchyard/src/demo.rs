//! `switchyard demo`: the gateway in front of a small example world, under
//! steady load, with faults injected on a schedule, narrated live.
//!
//! One process starts four services of an online shop (catalog, pricing,
//! inventory, reviews; two instances each, with realistic latencies), a
//! gateway routing `/product/{id}` and `/catalog/{id}` to them with the
//! resilience policies on, and an open-loop load driver. Every second it
//! prints per route and per service the rate, p50/p99 latency, error and
//! degraded percentages, breaker state and ejected instances. On a schedule
//! (as fractions of the run) an instance dies, another slows down tenfold,
//! the reviews service starts failing, then everything recovers: the table
//! shows breakers opening and closing, traffic leaving the slow instance, and
//! fallbacks keeping the product page answering.

mod stats;
mod world;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rand::Rng;
use switchyard_gateway::{Gateway, config::Config};
use tokio::time::{Instant, MissedTickBehavior};

use self::{
    stats::Stats,
    world::{Fault, Instance, KINDS},
};

/// Options of `switchyard demo`.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    /// How long to run; `None` runs until Ctrl-C.
    pub(crate) duration: Option<Duration>,
    /// Requests per second sent to the gateway.
    pub(crate) rate: u32,
}

/// The faults, as (fraction of the run, what happens).
const SCHEDULE: [(f64, Step); 4] = [
    (0.15, Step::Kill("catalog-2")),
    (0.30, Step::Slow("pricing-1", 10)),
    (0.45, Step::Fail("reviews")),
    (0.65, Step::Recover),
];

/// The length of one narrated cycle when running until Ctrl-C.
const CYCLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Step {
    Kill(&'static str),
    Slow(&'static str, u32),
    Fail(&'static str),
    Recover,
}

pub(crate) async fn run(options: DemoOptions) -> Result<(), String> {
    let mut instances = Vec::new();
    for kind in KINDS {
        for n in 1..=2 {
            instances.push(
                Instance::start(kind, n)
                    .await
                    .map_err(|e| format!("starting the example world: {e}"))?,
            );
        }
    }
    let started = Instant::now();
    let stats = Stats::new(started);
    let config = Config::parse(&config_text(&instances), "(demo)").map_err(|e| e.to_string())?;
    let gateway = Gateway::start_with(config, None, Some(stats.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let listener = gateway
        .listener_addr("public")
        .ok_or("the demo listener did not start")?;
    println!(
        "switchyard demo: gateway on http://{listener}, admin on http://{}",
        gateway.admin_addr()
    );
    println!(
        "  routes: /product/{{id}} (catalog + pricing + inventory + reviews), /catalog/{{id}}"
    );
    println!(
        "  world: {}",
        instances
            .iter()
            .map(|i| format!("{} {}", i.label, i.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match options.duration {
        Some(d) => println!(
            "  running for {}s; faults at 15%, 30%, 45%, recovery at 65%; Ctrl-C stops",
            d.as_secs()
        ),
        None => println!(
            "  running until Ctrl-C; a fault cycle every {}s",
            CYCLE.as_secs()
        ),
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(listener, options.rate, stats.clone(), stop_rx));
    let cycle = options.duration.unwrap_or(CYCLE);
    let mut next_step = 0;
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                println!("  stopping (Ctrl-C)");
                break;
            }
        }
        let elapsed = started.elapsed();
        if options.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let in_cycle = elapsed.as_secs_f64() % cycle.as_secs_f64();
        if in_cycle < 1.0 {
            next_step = 0;
        }
        while next_step < SCHEDULE.len() && in_cycle >= SCHEDULE[next_step].0 * cycle.as_secs_f64()
        {
            apply(SCHEDULE[next_step].1, &instances, elapsed);
            next_step += 1;
        }
        print_table(elapsed, &stats, &gateway, &instances);
    }
    let _ = stop_tx.send(true);
    let _ = driver.await;
    let transitions = stats.transitions.lock().clone();
    let opened = transitions.iter().filter(|t| t.2 == "open").count();
    let closed = transitions.iter().filter(|t| t.2 == "closed").count();
    println!("summary: breakers opened {opened} time(s) and closed {closed} time(s)");
    gateway.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

fn apply(step: Step, instances: &[Instance], elapsed: Duration) {
    let at = elapsed.as_secs_f64();
    match step {
        Step::Kill(label) => {
            for i in instances.iter().filter(|i| i.label == label) {
                i.set(Fault::Dead);
            }
            println!("  {at:>5.1}s  ▶ fault: {label} dies");
        }
        Step::Slow(label, factor) => {
            for i in instances.iter().filter(|i| i.label == label) {
                i.set(Fault::Slow(factor));
            }
            println!("  {at:>5.1}s  ▶ fault: {label} slows down {factor}x");
        }
        Step::Fail(service) => {
            for i in instances.iter().filter(|i| i.service == service) {
                i.set(Fault::Failing);
            }
            println!("  {at:>5.1}s  ▶ fault: every {service} instance answers 503");
        }
        Step::Recover => {
            for i in instances {
                i.set(Fault::Healthy);
            }
            println!("  {at:>5.1}s  ▶ recovery: every instance is healthy again");
        }
    }
}

/// Open-loop load: `rate` requests a second whatever the answers, 80% to
/// the product page and 20% to the catalog route.
async fn drive(
    listener: std::net::SocketAddr,
    rate: u32,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (route, path) = {
            let mut rng = rand::rng();
            let id: u32 = rng.random_range(1..1000);
            if rng.random_bool(0.8) {
                ("/product/{id}", format!("/product/{id}"))
            } else {
                ("/catalog/{id}", format!("/catalog/{id}"))
            }
        };
        let client = client.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let uri = format!("http://{listener}{path}");
            let (error, degraded) = match client.get(uri.parse().unwrap_or_default()).await {
                Ok(res) => {
                    let degraded = res.headers().contains_key("x-switchyard-degraded");
                    let ok = res.status().is_success();
                    let _ = res.into_body().collect().await;
                    (!ok, degraded)
                }
                Err(_) => (true, false),
            };
            stats.record_route(route, start.elapsed(), error, degraded);
        });
    }
}

fn print_table(elapsed: Duration, stats: &Stats, gateway: &Gateway, instances: &[Instance]) {
    let (mut routes, mut services) = stats.take();
    let states = gateway.service_states();
    println!(
        "{:>5}s  {:<16} {:>5} {:>7} {:>7} {:>6} {:>9}",
        elapsed.as_secs(),
        "route",
        "rps",
        "p50 ms",
        "p99 ms",
        "err %",
        "degraded"
    );
    for route in ["/product/{id}", "/catalog/{id}"] {
        let w = routes.entry(route).or_default();
        let (p50, p99) = w.p50_p99_ms();
        println!(
            "        {:<16} {:>5} {:>7} {:>7} {:>6.1} {:>8.1}%",
            route,
            w.count,
            fmt_ms(p50),
            fmt_ms(p99),
            w.error_pct(),
            w.degraded_pct()
        );
    }
    println!(
        "        {:<16} {:>5} {:>7} {:>7} {:>6} {:>9}  instances (requests served this second)",
        "service", "rps", "p50 ms", "p99 ms", "err %", "breaker",
    );
    for kind in KINDS {
        let w = services.entry(kind.name.to_owned()).or_default();
        let (p50, p99) = w.p50_p99_ms();
        let endpoints = states[kind.name]["client"]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let detail: Vec<String> = instances
            .iter()
            .filter(|i| i.service == kind.name)
            .map(|i| {
                let ep = endpoints.iter().find(|e| e["addr"] == i.addr.to_string());
                let ejected = ep.is_some_and(|e| e["ejected"] == true);
                let unhealthy = ep.is_some_and(|e| e["healthy"] == false);
                let mark = if ep.is_none() {
                    " (deregistered)"
                } else if ejected {
                    " ejected"
                } else if unhealthy {
                    " unhealthy"
                } else {
                    ""
                };
                format!("{} {}{}", i.label, i.served_since_last(), mark)
            })
            .collect();
        println!(
            "        {:<16} {:>5} {:>7} {:>7} {:>6.1} {:>9}  {}",
            kind.name,
            w.count,
            fmt_ms(p50),
            fmt_ms(p99),
            w.error_pct(),
            stats.breaker(kind.name),
            detail.join(", ")
        );
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// The gateway config for the world: the embedded registry the instances
/// register with, one service per kind, the product page composed from all
/// four, the catalog proxied.
fn config_text(instances: &[Instance]) -> String {
    let mut text = String::from(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[shutdown]
drain_timeout = "2s"
"#,
    );
    // The instances register themselves with the embedded registry through
    // sidecar registrations (checked by TCP connect), so an instance that
    // dies is deregistered and one that comes back is registered again.
    text.push_str("\n[registry]\nembedded = true\n");
    for i in instances {
        text.push_str(&format!(
            r#"
[[register]]
service = "{service}"
id = "{label}"
addr = "{addr}"
ttl = "3s"
check = {{ tcp = true, interval = "500ms", timeout = "200ms", unhealthy_threshold = 2 }}
"#,
            service = i.service,
            label = i.label,
            addr = i.addr
        ));
    }
    for kind in KINDS {
        text.push_str(&format!(
            r#"
[services.{name}]
connect_timeout = "100ms"
balancer = {{ decay = "1s" }}
[services.{name}.outlier]
consecutive_failures = 3
base_ejection_time = "3s"
[services.{name}.policy]
timeout = "400ms"
attempt_timeout = "200ms"
[services.{name}.policy.retry]
max_attempts = 2
base_delay = "5ms"
[services.{name}.policy.breaker]
window = {{ kind = "count", size = 20 }}
minimum_calls = 10
failure_rate_threshold = 50.0
open_duration = "2s"
half_open_permits = 3
"#,
            name = kind.name,
        ));
    }
    text.push_str(
        r#"
[[routes]]
name = "catalog"
path = "/catalog/{id}"
methods = ["GET"]
service = "catalog"
rewrite = "/items/{id}"

# The product page: catalog first; pricing and inventory beside it;
# reviews after catalog (it reads the item's id); inventory and reviews
# are optional, so their failures degrade the page instead of failing it.
[[routes]]
name = "product"
path = "/product/{id}"
methods = ["GET"]
[routes.compose]
timeout = "800ms"
[routes.compose.calls.catalog]
service = "catalog"
path = "/items/{request.params.id}"
[routes.compose.calls.pricing]
service = "pricing"
path = "/prices/{request.params.id}"
[routes.compose.calls.inventory]
service = "inventory"
path = "/stock/{request.params.id}"
required = false
fallback = { value = { available = "unknown" } }
[routes.compose.calls.reviews]
service = "reviews"
path = "/reviews/{catalog.body.id}"
required = false
fallback = "omit"
[routes.compose.response]
body = { id = "{catalog.body.id}", name = "{catalog.body.name}", price = "{pricing.body}", stock = "{inventory.body.available}", reviews = "{reviews.body}" }
"#,
    );
    text
}
