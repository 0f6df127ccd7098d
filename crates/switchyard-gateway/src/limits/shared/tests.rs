//! Against the real Redis on 127.0.0.1:6379 (`#[ignore = "needs redis"]`),
//! each test under its own key prefix.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::limits::{CallLimits, LimitContext, LimitReason, LimitsConfig};

const REDIS: &str = "127.0.0.1:6379";

fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "switchyard:test:{test}:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(url: &str, prefix: &str, redis_extra: &str, rule: &str) -> LimitsConfig {
    let src = format!(
        "[redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\ntimeout = \"500ms\"\n{redis_extra}\n\
         [[rules]]\nname = \"shared\"\nkey = \"identity\"\nshared = true\n{rule}\n"
    );
    toml::from_str(&src).unwrap()
}

fn ctx(identity: &str) -> LimitContext<'_> {
    LimitContext {
        route: "r",
        service: "s",
        identity: Some(identity),
        client_ip: IpAddr::from([127, 0, 0, 1]),
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A TCP proxy in front of the real Redis that the test can cut (close every
/// connection and refuse new ones) and restore.
struct CuttableProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl CuttableProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue; // dropped: the connection closes at once
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(REDIS).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

async fn count_admitted(limits: &[&CallLimits], who: &str, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        if limits[i % limits.len()].check(&ctx(who)).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
#[ignore = "needs redis"]
async fn two_gateways_share_one_rate_limit() {
    let prefix = prefix("share-rate");
    // One permit per 12s: no refill during the test.
    let config = config(
        &format!("redis://{REDIS}"),
        &prefix,
        "",
        "rate = { requests = 5, per = \"60s\" }",
    );
    let a = CallLimits::new(&config).unwrap();
    let b = CallLimits::new(&config).unwrap();
    let admitted = count_admitted(&[&a, &b], "alice", 40).await;
    assert_eq!(admitted, 5, "the burst is shared by both instances");
    assert_eq!(
        count_admitted(&[&b, &a], "bob", 40).await,
        5,
        "per identity"
    );
    let refused = a.check(&ctx("alice")).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Rate);
    assert!(refused.retry_after > Duration::from_secs(10), "{refused:?}");
    let headers = refused.headers();
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "ratelimit" && v.to_str().unwrap().starts_with("\"shared\";r=0;t="))
    );
}

#[tokio::test]
#[ignore = "needs redis"]
async fn concurrent_checks_from_two_gateways_stay_within_the_burst() {
    let prefix = prefix("share-concurrent");
    let config = config(
        &format!("redis://{REDIS}"),
        &prefix,
        "",
        "rate = { requests = 20, per = \"600s\" }",
    );
    let a = CallLimits::new(&config).unwrap();
    let b = CallLimits::new(&config).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let limits = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { limits.check(&ctx("carol")).await.is_ok() });
    }
    let admitted = tasks.join_all().await.into_iter().filter(|ok| *ok).count();
    assert_eq!(admitted, 20);
}

#[tokio::test]
#[ignore = "needs redis"]
async fn two_gateways_share_one_quota_and_report_it() {
    let prefix = prefix("share-quota");
    let config = config(
        &format!("redis://{REDIS}"),
        &prefix,
        "",
        "quota = { requests = 3, window = \"day\" }",
    );
    let a = CallLimits::new(&config).unwrap();
    let b = CallLimits::new(&config).unwrap();
    let permit = a.check(&ctx("dave")).await.unwrap();
    let headers = permit.headers();
    assert_eq!(headers[0].1, "\"shared/day\";q=3;w=86400");
    assert!(
        headers[1]
            .1
            .to_str()
            .unwrap()
            .starts_with("\"shared/day\";r=2;t="),
        "{headers:?}"
    );
    assert_eq!(count_admitted(&[&b, &a], "dave", 10).await, 2);
    let refused = b.check(&ctx("dave")).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Quota);
}

#[tokio::test]
#[ignore = "needs redis"]
async fn unreachable_redis_fail_open_admits_and_fail_closed_refuses() {
    let url = format!("redis://{}", closed_port().await);
    let prefix = prefix("unreachable");
    let rule = "rate = { requests = 3, per = \"60s\" }";

    let open = CallLimits::new(&config(&url, &prefix, "local_fallback = false", rule)).unwrap();
    assert_eq!(
        count_admitted(&[&open], "erin", 20).await,
        20,
        "fail_open, no fallback"
    );

    let closed = CallLimits::new(&config(
        &url,
        &prefix,
        "on_error = \"fail_closed\"\nlocal_fallback = false",
        rule,
    ))
    .unwrap();
    let refused = closed.check(&ctx("erin")).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Unavailable);
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.into_response(None).headers()["x-switchyard-error"],
        "limits-unavailable"
    );

    let fallback = CallLimits::new(&config(&url, &prefix, "expected_instances = 1", rule)).unwrap();
    assert_eq!(
        count_admitted(&[&fallback], "erin", 20).await,
        3,
        "the local fallback limits"
    );
    let halved = CallLimits::new(&config(&url, &prefix, "expected_instances = 3", rule)).unwrap();
    assert_eq!(
        count_admitted(&[&halved], "erin", 20).await,
        1,
        "a third of the limit each"
    );
}

#[tokio::test]
#[ignore = "needs redis"]
async fn redis_cut_mid_test_then_restored() {
    let proxy = CuttableProxy::start().await;
    let prefix = prefix("cut");
    let rule = "rate = { requests = 5, per = \"60s\" }";
    let open = CallLimits::new(&config(&proxy.url(), &prefix, "", rule)).unwrap();
    let closed = CallLimits::new(&config(
        &proxy.url(),
        &prefix,
        "on_error = \"fail_closed\"",
        rule,
    ))
    .unwrap();

    // Through Redis: both instances draw from one bucket of 5.
    assert_eq!(count_admitted(&[&open, &closed], "frank", 2).await, 2);

    proxy.set_cut(true);
    // fail_open with the local fallback: a fresh local bucket of 5, then 429.
    assert_eq!(count_admitted(&[&open], "frank", 20).await, 5);
    let refused = open.check(&ctx("frank")).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Rate);
    // fail_closed: refused with 503 while Redis is away.
    let refused = closed.check(&ctx("frank")).await.unwrap_err();
    assert_eq!(refused.reason, LimitReason::Unavailable);

    proxy.set_cut(false);
    // After the retry interval the connection manager reconnects; the shared
    // bucket still holds 3 of the 5 permits (the fallback spent none of it).
    tokio::time::sleep(super::RETRY_INTERVAL + Duration::from_millis(200)).await;
    let mut admitted = 0;
    let mut unavailable = 0;
    for _ in 0..20 {
        match closed.check(&ctx("frank")).await {
            Ok(_) => admitted += 1,
            Err(r) if r.reason == LimitReason::Unavailable => {
                // The reconnect may take one more retry interval.
                unavailable += 1;
                tokio::time::sleep(super::RETRY_INTERVAL).await;
            }
            Err(_) => {}
        }
        if unavailable > 5 {
            break;
        }
    }
    assert_eq!(
        admitted, 3,
        "back on the shared bucket ({unavailable} unavailable)"
    );
}
