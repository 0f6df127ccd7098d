//! Cost per request of call-limit checks: no rules, then local rate + quota +
//! concurrency rules, then the same rules shared through Redis (skipped with
//! a message when nothing answers on 127.0.0.1:6379).
//!
//! `cargo bench -p switchyard-gateway --bench limits`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// A bench that cannot set itself up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{hint::black_box, net::IpAddr};

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_gateway::limits::{CallLimits, LimitContext, LimitsConfig};

const LOCAL_RULES: &str = r#"
[[rules]]
name = "rate"
key = "identity"
rate = { requests = 1000000000, per = "1s" }
[[rules]]
name = "quota"
key = "client_ip"
quota = { requests = 1000000000000, window = "day" }
[[rules]]
name = "inflight"
key = "service"
concurrency = 1000
"#;

fn limits(src: &str) -> CallLimits {
    let config: LimitsConfig = toml::from_str(src).expect("bench config");
    CallLimits::new(&config).expect("bench limits")
}

fn ctx() -> LimitContext<'static> {
    LimitContext {
        route: "orders",
        service: "orders",
        identity: Some("tenant-42"),
        client_ip: IpAddr::from([192, 0, 2, 7]),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("limits");
    let none = limits("");
    group.bench_function("no rules", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(none.check(&ctx()).await.is_ok()) })
    });
    let local = limits(LOCAL_RULES);
    group.bench_function("local rate+quota+concurrency", |b| {
        b.to_async(&rt).iter(|| async {
            let permit = local.check(&ctx()).await.unwrap();
            black_box(permit.headers());
        })
    });
    let reachable = std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
    if reachable {
        let prefix = format!("switchyard:bench:{}:", std::process::id());
        let shared = LOCAL_RULES.replace(
            "[[rules]]\nname = \"rate\"",
            "[[rules]]\nname = \"rate\"\nshared = true",
        );
        let shared = shared.replace(
            "[[rules]]\nname = \"quota\"",
            "[[rules]]\nname = \"quota\"\nshared = true",
        );
        let src = format!(
            "[redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\ntimeout = \"1s\"\n{shared}"
        );
        let redis = rt.block_on(async { limits(&src) });
        group.bench_function("redis rate+quota (shared) + local concurrency", |b| {
            b.to_async(&rt).iter(|| async {
                let permit = redis.check(&ctx()).await.unwrap();
                black_box(permit.headers());
            })
        });
    } else {
        eprintln!("limits bench: no Redis on 127.0.0.1:6379, skipping the shared case");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
