use std::net::Ipv4Addr;

use http::HeaderMap;
use tokio::time;

use super::*;

const MINUTE_PLUS_30S: Duration = Duration::from_secs(1_700_000_010); // 30s into a UTC minute

fn limits(toml_src: &str) -> CallLimits {
    let config: LimitsConfig = toml::from_str(toml_src).unwrap();
    CallLimits::with_clock(&config, WallClock::starting_at(MINUTE_PLUS_30S)).unwrap()
}

fn ctx<'a>(identity: Option<&'a str>, ip: [u8; 4]) -> LimitContext<'a> {
    LimitContext {
        route: "orders",
        service: "orders-svc",
        identity,
        client_ip: IpAddr::from(ip),
    }
}

async fn admitted(limits: &CallLimits, ctx: &LimitContext<'_>, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if limits.check(ctx).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

fn header<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

/// Checks one structured-field list member `"id";k=int;k=int` and returns
/// the id and the parameters.
fn parse_member(value: &str) -> (String, Vec<(String, u64)>) {
    let mut parts = value.split(';');
    let id = parts.next().unwrap();
    assert!(
        id.len() >= 2 && id.starts_with('"') && id.ends_with('"'),
        "{value}: the policy is an sf-string"
    );
    let id = &id[1..id.len() - 1];
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    );
    let params = parts
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("{value}: bad param {p}"));
            assert!(
                k.bytes().all(|b| b.is_ascii_lowercase()),
                "{value}: key {k}"
            );
            (
                k.to_owned(),
                v.parse::<u64>().unwrap_or_else(|_| panic!("{value}: {v}")),
            )
        })
        .collect();
    (id.to_owned(), params)
}

#[tokio::test(start_paused = true)]
async fn rate_per_identity_never_shared() {
    let limits = limits(
        r#"
        [[rules]]
        name = "per-caller"
        key = "identity"
        rate = { requests = 3, per = "1s" }
        "#,
    );
    assert_eq!(
        admitted(&limits, &ctx(Some("alice"), [1, 1, 1, 1]), 10).await,
        3
    );
    assert_eq!(
        admitted(&limits, &ctx(Some("bob"), [1, 1, 1, 1]), 10).await,
        3,
        "bob has his own bucket, even from alice's address"
    );
    let refused = limits
        .check(&ctx(Some("alice"), [9, 9, 9, 9]))
        .await
        .unwrap_err();
    assert_eq!(refused.reason, LimitReason::Rate);
    assert_eq!(refused.rule, "per-caller");
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(334)
    );
    time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        admitted(&limits, &ctx(Some("alice"), [1, 1, 1, 1]), 10).await,
        3,
        "refilled"
    );
}

#[tokio::test(start_paused = true)]
async fn anonymous_callers_of_an_identity_rule_are_counted_per_ip() {
    let limits = limits(
        r#"
        [[rules]]
        name = "per-caller"
        key = "identity"
        rate = { requests = 2, per = "1m" }
        "#,
    );
    assert_eq!(admitted(&limits, &ctx(None, [1, 1, 1, 1]), 5).await, 2);
    assert_eq!(admitted(&limits, &ctx(None, [2, 2, 2, 2]), 5).await, 2);
}

#[tokio::test(start_paused = true)]
async fn rate_per_client_ip_and_route_filters() {
    let limits = limits(
        r#"
        [[rules]]
        name = "per-ip"
        key = "client_ip"
        routes = ["orders"]
        rate = { requests = 2, per = "1m" }
        "#,
    );
    assert_eq!(admitted(&limits, &ctx(Some("a"), [1, 1, 1, 1]), 5).await, 2);
    assert_eq!(
        admitted(&limits, &ctx(Some("b"), [1, 1, 1, 1]), 5).await,
        0,
        "same IP"
    );
    assert_eq!(
        admitted(&limits, &ctx(None, [1, 1, 1, 2]), 5).await,
        2,
        "other IP"
    );
    let other_route = LimitContext {
        route: "users",
        ..ctx(None, [1, 1, 1, 1])
    };
    assert_eq!(
        admitted(&limits, &other_route, 5).await,
        5,
        "rule is for orders only"
    );
}

#[tokio::test(start_paused = true)]
async fn quota_per_minute_rolls_over_at_the_utc_minute() {
    let limits = limits(
        r#"
        [[rules]]
        name = "partner"
        key = "identity"
        services = ["orders-svc"]
        quota = { requests = 3, window = "minute" }
        "#,
    );
    let alice = ctx(Some("alice"), [1, 1, 1, 1]);
    let permit = limits.check(&alice).await.unwrap();
    let headers = permit.headers();
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        r#""partner/minute";q=3;w=60"#
    );
    assert_eq!(
        header(&headers, "ratelimit"),
        r#""partner/minute";r=2;t=30"#
    );
    assert_eq!(admitted(&limits, &alice, 5).await, 2);
    let refused = limits.check(&alice).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Quota);
    assert_eq!(
        refused.retry_after,
        Duration::from_secs(30),
        "until the minute ends"
    );
    time::advance(Duration::from_secs(29)).await;
    assert!(limits.check(&alice).await.is_err(), "same window");
    time::advance(Duration::from_secs(1)).await;
    assert_eq!(admitted(&limits, &alice, 5).await, 3, "a new minute");
    assert_eq!(limits.sweep(), 1, "only this window's counter is kept");
}

#[tokio::test(start_paused = true)]
async fn concurrency_slots_are_held_by_the_permit() {
    let limits = limits(
        r#"
        [[rules]]
        name = "inflight"
        key = "service"
        concurrency = 2
        "#,
    );
    let c = ctx(None, [1, 1, 1, 1]);
    let a = limits.check(&c).await.unwrap();
    let b = limits.check(&c).await.unwrap();
    assert!(a.headers().is_empty(), "concurrency is not advertised");
    let refused = limits.check(&c).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Concurrency);
    assert_eq!(refused.retry_after, RETRY_AFTER_UNKNOWN);
    drop(a);
    let c2 = limits.check(&c).await.unwrap();
    assert!(limits.check(&c).await.is_err());
    drop((b, c2));
    let conc = limits.inner.rules[0].local.concurrency.as_ref().unwrap();
    assert_eq!(conc.in_flight(&Key::Name("orders-svc".into())), 0);
    assert_eq!(limits.sweep(), 0, "idle counters are forgotten");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_by_a_later_rule_releases_earlier_slots() {
    let limits = limits(
        r#"
        [[rules]]
        name = "inflight"
        key = "global"
        concurrency = 1
        [[rules]]
        name = "rate"
        key = "global"
        rate = { requests = 1, per = "1m" }
        "#,
    );
    let c = ctx(None, [1, 1, 1, 1]);
    drop(limits.check(&c).await.unwrap());
    assert_eq!(limits.check(&c).await.unwrap_err().rule, "rate");
    let conc = limits.inner.rules[0].local.concurrency.as_ref().unwrap();
    assert_eq!(
        conc.in_flight(&Key::Global),
        0,
        "the refused call's slot came back"
    );
}

#[tokio::test(start_paused = true)]
async fn headers_name_the_most_restrictive_policy_and_are_well_formed() {
    let limits = limits(
        r#"
        [[rules]]
        name = "burst"
        key = "identity"
        rate = { requests = 10, per = "1s", burst = 5 }
        [[rules]]
        name = "daily"
        key = "identity"
        quota = { requests = 1000, window = "day" }
        [[rules]]
        name = "fast"
        key = "global"
        rate = { requests = 50, per = "100ms" }
        "#,
    );
    let c = ctx(Some("alice"), [1, 1, 1, 1]);
    let permit = limits.check(&c).await.unwrap();
    let headers = permit.headers();
    let (policy_id, policy) = parse_member(header(&headers, "ratelimit-policy"));
    let (limit_id, limit) = parse_member(header(&headers, "ratelimit"));
    assert_eq!(policy_id, "burst", "4 left of the burst beats 999 and 49");
    assert_eq!(limit_id, policy_id);
    assert_eq!(policy, [("q".to_owned(), 10), ("w".to_owned(), 1)]);
    assert_eq!(limit, [("r".to_owned(), 4), ("t".to_owned(), 1)]);
    for _ in 0..4 {
        limits.check(&c).await.unwrap();
    }
    let refused = limits.check(&c).await.unwrap_err();
    let headers = refused.headers();
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(header(&headers, "ratelimit"), r#""burst";r=0;t=1"#);
    let res = refused.into_response(Some("req-7"));
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-switchyard-error"], "rate-limited");
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["ratelimit-policy"], r#""burst";q=10;w=1"#);
    assert_eq!(res.headers().get_all("retry-after").iter().count(), 1);
    // The sub-second rate is advertised per whole second.
    assert_eq!(
        limits.inner.rules[2]
            .rate_policy
            .as_ref()
            .unwrap()
            .policy_value(),
        r#""fast";q=500;w=1"#
    );
}

#[tokio::test(start_paused = true)]
async fn spoofed_xff_cannot_dodge_a_per_ip_limit() {
    let limits = limits(
        r#"
        trusted_proxies = ["10.0.0.0/8"]
        [[rules]]
        name = "per-ip"
        key = "client_ip"
        rate = { requests = 3, per = "1m" }
        "#,
    );
    let attacker = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 9), 5000));
    let mut admitted = 0;
    for n in 0..50u8 {
        // A direct client forging XFF: ignored, its own address counts.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            format!("198.51.100.{n}").parse().unwrap(),
        );
        let ip = limits.client_ip(attacker, &headers);
        if limits.check(&ctx(None, ip.octets4())).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    // Behind the trusted proxy, forged entries left of the proxy's own are ignored.
    let proxy = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 5000));
    let mut admitted = 0;
    for n in 0..50u8 {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            format!("198.51.100.{n}, 192.0.2.1").parse().unwrap(),
        );
        let ip = limits.client_ip(proxy, &headers);
        assert_eq!(ip, IpAddr::from([192, 0, 2, 1]));
        if limits.check(&ctx(None, ip.octets4())).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
}

trait Octets4 {
    fn octets4(&self) -> [u8; 4];
}

impl Octets4 for IpAddr {
    fn octets4(&self) -> [u8; 4] {
        match self {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => panic!("expected IPv4, got {self}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn key_flood_folds_into_bounded_overflow_buckets() {
    let limits = limits(
        r#"
        [[rules]]
        name = "per-ip"
        key = "client_ip"
        max_keys = 10
        rate = { requests = 1, per = "1m" }
        "#,
    );
    let mut admitted = 0;
    for n in 0..5000u32 {
        if limits.check(&ctx(None, n.to_be_bytes())).await.is_ok() {
            admitted += 1;
        }
    }
    let tracked = limits.sweep();
    let bound = 10 + local::CAP_CHECK_EVERY as usize + local::FOLD_BUCKETS as usize;
    assert!(tracked <= bound, "{tracked} keys tracked, bound {bound}");
    assert!(limits.inner.rules[0].local.is_folded());
    assert!(
        admitted < 5000,
        "folded keys share buckets, so the flood is limited"
    );
    // governor forgets a bucket one interval after it is full again.
    time::advance(Duration::from_secs(121)).await;
    assert_eq!(limits.sweep(), 0, "full buckets are forgotten");
    assert!(!limits.inner.rules[0].local.is_folded());
}

#[tokio::test]
async fn no_rules_admit_everything() {
    let limits = CallLimits::new(&LimitsConfig::default()).unwrap();
    assert!(limits.is_empty());
    let permit = limits.check(&ctx(None, [1, 1, 1, 1])).await.unwrap();
    assert!(permit.headers().is_empty());
}

#[test]
fn validation_names_the_key() {
    let cases = [
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nrate = { requests = 1 }\n[[rules]]\nname = \"a\"\nkey = \"global\"\nconcurrency = 1",
            "limits.rules[1].name: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"",
            "limits.rules[0]: ",
        ),
        (
            "[[rules]]\nname = \"a b\"\nkey = \"global\"\nconcurrency = 1",
            "limits.rules[0].name: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nrate = { requests = 0 }",
            "limits.rules[0].rate.requests: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nrate = { requests = 1, per = \"0s\" }",
            "limits.rules[0].rate.per: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nrate = { requests = 1, burst = 0 }",
            "limits.rules[0].rate.burst: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nrate = { requests = 2000000000, per = \"1s\" }",
            "limits.rules[0].rate.requests: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nconcurrency = 0",
            "limits.rules[0].concurrency: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nquota = { requests = 0, window = \"day\" }",
            "limits.rules[0].quota.requests: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nshared = true\nconcurrency = 1",
            "limits.rules[0].shared: ",
        ),
        (
            "[[rules]]\nname = \"a\"\nkey = \"global\"\nshared = true\nrate = { requests = 1 }",
            "limits.rules[0].shared: ",
        ),
        (
            "trusted_proxies = [\"10.0.0.0/40\"]",
            "limits.trusted_proxies[0]: ",
        ),
        ("[redis]\nurl = \"http://x\"", "limits.redis.url: "),
        (
            "[redis]\nurl = \"redis://127.0.0.1\"\ntimeout = \"0s\"",
            "limits.redis.timeout: ",
        ),
        (
            "[redis]\nurl = \"redis://127.0.0.1\"\nexpected_instances = 0",
            "limits.redis.expected_instances: ",
        ),
    ];
    for (src, want) in cases {
        let config: LimitsConfig = toml::from_str(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let err = config.validate().unwrap_err();
        assert!(err.starts_with(want), "{src}\n=> {err}\nwanted {want}");
        assert!(CallLimits::new(&config).is_err());
    }
    for bad in [
        "[[rules]]\nname = \"a\"\nkey = \"tenant\"\nconcurrency = 1",
        "[[rules]]\nname = \"a\"\nkey = \"global\"\nconcurency = 1",
        "[[rules]]\nname = \"a\"\nkey = \"global\"\nquota = { requests = 1, window = \"week\" }",
        "[redis]\nurl = \"redis://x\"\non_error = \"maybe\"",
    ] {
        assert!(toml::from_str::<LimitsConfig>(bad).is_err(), "{bad}");
    }
}

#[test]
fn defaults() {
    let config: LimitsConfig = toml::from_str(
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\n[[rules]]\nname = \"a\"\nkey = \"global\"\nrate = { requests = 5 }",
    )
    .unwrap();
    let redis = config.redis.as_ref().unwrap();
    assert_eq!(redis.key_prefix, config::DEFAULT_KEY_PREFIX);
    assert_eq!(redis.timeout, Duration::from_millis(50));
    assert_eq!(redis.on_error, OnRedisError::FailOpen);
    assert!(redis.local_fallback);
    assert_eq!(redis.expected_instances, 1);
    let rule = &config.rules[0];
    assert!(!rule.shared && rule.routes.is_empty() && rule.services.is_empty());
    assert_eq!(rule.max_keys, config::DEFAULT_MAX_KEYS);
    assert_eq!(rule.rate.as_ref().unwrap().per, Duration::from_secs(1));
    assert_eq!(rule.rate.as_ref().unwrap().effective_burst(), 5);
    assert!(config.trusted_proxies.is_empty());
    config.validate().unwrap();
}
