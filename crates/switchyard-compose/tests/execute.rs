//! The engine against an in-process fake, under tokio's paused clock: every
//! duration asserted is virtual time, so the assertions are exact and the
//! tests don't depend on the machine's speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Behaviour, Fake, Seen};
use switchyard_compose::{ComposeConfig, ComposePlan, ComposeRequest, DEGRADED_HEADER};
use tokio::time::Instant;

fn plan(src: &str) -> ComposePlan {
    let config: ComposeConfig = toml::from_str(src).unwrap();
    ComposePlan::compile(&config, &|_: &str| true).unwrap()
}

fn request() -> ComposeRequest {
    ComposeRequest {
        params: vec![("id".into(), "7".into())],
        ..Default::default()
    }
}

fn body(res: &switchyard_compose::ComposeResponse) -> Value {
    serde_json::from_slice(&res.body).unwrap()
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn independent_calls_run_concurrently() {
    let plan = plan(
        r#"
        [calls.a]
        service = "a"
        path = "/a"
        [calls.b]
        service = "b"
        path = "/b"
        [calls.c]
        service = "c"
        path = "/c"
        "#,
    );
    let fake = Fake::new([
        ("a", Behaviour::ok(100, json!(1))),
        ("b", Behaviour::ok(100, json!(2))),
        ("c", Behaviour::ok(100, json!(3))),
    ]);
    let start = Instant::now();
    let res = plan.execute(request(), &fake).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        MS(100),
        "three 100ms calls, not 300ms"
    );
    assert_eq!(body(&res), json!({ "a": 1, "b": 2, "c": 3 }));
    assert!(res.degraded.is_empty());
    for s in ["a", "b", "c"] {
        assert!(matches!(fake.start_of(s), Some(Seen::Start { at, .. }) if at.is_zero()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_chain_runs_in_order_with_requests_built_from_results() {
    let plan = plan(
        r#"
        [calls.a]
        service = "a"
        path = "/users/{request.params.id}"
        [calls.b]
        service = "b"
        method = "POST"
        path = "/orders/{a.body.user.id}"
        query = { tier = "{a.body.user.tier}" }
        headers = { x-user = "{a.body.user.name}" }
        body = { user = "{a.body.user.id}", tags = "{a.body.tags}", note = "for {a.body.user.name}" }
        [calls.c]
        service = "c"
        path = "/ship/{b.body.order}"
        [response]
        status = 201
        headers = { x-order = "{b.body.order}" }
        body = { order = "{b.body.order}", shipped = "{c.body.ok}", user_status = "{a.status}" }
        "#,
    );
    let fake = Fake::new([
        (
            "a",
            Behaviour::ok(
                10,
                json!({ "user": { "id": 42, "name": "Ann Lee", "tier": "gold" }, "tags": ["x"] }),
            ),
        ),
        (
            "b",
            Behaviour::with(20, |req| {
                assert_eq!(req.method(), "POST");
                assert_eq!(req.headers()["x-user"], "Ann Lee");
                assert_eq!(req.headers()["content-type"], "application/json");
                json!({ "order": "o-9" })
            }),
        ),
        ("c", Behaviour::ok(30, json!({ "ok": true }))),
    ]);
    let start = Instant::now();
    let res = plan.execute(request(), &fake).await.unwrap();
    assert_eq!(Instant::now() - start, MS(60));

    let Some(Seen::Start {
        at,
        uri,
        body: b_body,
        ..
    }) = fake.start_of("b")
    else {
        panic!()
    };
    assert_eq!(at, MS(10), "b starts the moment a is done");
    assert_eq!(uri, "/orders/42?tier=gold");
    assert_eq!(
        b_body,
        Some(json!({ "user": 42, "tags": ["x"], "note": "for Ann Lee" }))
    );
    let Some(Seen::Start { at, uri, .. }) = fake.start_of("c") else {
        panic!()
    };
    assert_eq!((at, uri.as_str()), (MS(30), "/ship/o-9"));
    assert_eq!(
        fake.start_of("a")
            .map(|s| matches!(s, Seen::Start { uri, .. } if uri == "/users/7")),
        Some(true)
    );

    assert_eq!(res.status, 201);
    assert_eq!(res.headers["x-order"], "o-9");
    assert_eq!(res.headers["content-type"], "application/json");
    assert_eq!(
        body(&res),
        json!({ "order": "o-9", "shipped": true, "user_status": 200 })
    );
}

#[tokio::test(start_paused = true)]
async fn a_required_failure_ends_the_route_and_cancels_the_rest() {
    let plan = plan(
        r#"
        [calls.a]
        service = "a"
        path = "/a"
        [calls.b]
        service = "b"
        path = "/b"
        [calls.c]
        service = "c"
        path = "/c"
        [calls.d]
        service = "d"
        path = "/d/{b.body}"
        "#,
    );
    let fake = Fake::new([
        ("a", Behaviour::error(10, "breaker-open")),
        ("b", Behaviour::ok(100, json!(1))),
        ("c", Behaviour::ok(100, json!(1))),
    ]);
    let start = Instant::now();
    let err = plan.execute(request(), &fake).await.unwrap_err();
    assert_eq!(Instant::now() - start, MS(10), "ends at once");
    assert_eq!((err.call.as_str(), err.kind), ("a", "breaker-open"));
    assert_eq!(err.message, "a failed");
    let mut cancelled = fake.cancelled();
    cancelled.sort();
    assert_eq!(cancelled, [("b".into(), MS(10)), ("c".into(), MS(10))]);
    assert_eq!(
        fake.calls_to("d"),
        0,
        "a dependent of a cancelled call is never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_5xx_status_is_a_failure_and_a_4xx_is_a_result() {
    let src = r#"
        [calls.a]
        service = "a"
        path = "/a"
        [calls.b]
        service = "b"
        path = "/b"
        [response]
        body = { b = "{b.status}" }
        "#;
    let fake = Fake::new([
        ("a", Behaviour::status(5, 503)),
        ("b", Behaviour::status(5, 404)),
    ]);
    let err = plan(src).execute(request(), &fake).await.unwrap_err();
    assert_eq!((err.call.as_str(), err.kind), ("a", "upstream-status"));
    assert_eq!(err.message, "`a` answered 503 Service Unavailable");

    let fake = Fake::new([("b", Behaviour::status(5, 404))]);
    let res = plan(src).execute(request(), &fake).await.unwrap();
    assert_eq!(body(&res), json!({ "b": 404 }));

    let strict = src.replace("path = \"/b\"", "path = \"/b\"\nfail_on_status = 400");
    let err = plan(&strict).execute(request(), &fake).await.unwrap_err();
    assert_eq!((err.call.as_str(), err.kind), ("b", "upstream-status"));
}

#[tokio::test(start_paused = true)]
async fn an_optional_failure_degrades() {
    let plan = plan(
        r#"
        [calls.product]
        service = "catalog"
        path = "/p"
        [calls.reviews]
        service = "reviews"
        path = "/r"
        required = false
        [response]
        body = { name = "{product.body.name}", reviews = "{reviews.body}" }
        "#,
    );
    let fake = Fake::new([
        ("catalog", Behaviour::ok(50, json!({ "name": "Lamp" }))),
        ("reviews", Behaviour::error(10, "upstream")),
    ]);
    let start = Instant::now();
    let res = plan.execute(request(), &fake).await.unwrap();
    assert_eq!(Instant::now() - start, MS(50));
    assert_eq!(res.degraded, ["reviews"]);
    assert_eq!(
        body(&res),
        json!({ "name": "Lamp" }),
        "the omitted member is left out"
    );
    let http = res.into_http();
    assert_eq!(http.headers()[DEGRADED_HEADER], "reviews");
    assert_eq!(http.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn fallbacks_stand_in_for_failed_calls() {
    let plan = plan(
        r#"
        [calls.price]
        service = "pricing"
        path = "/price"
        fallback = { value = { amount = 0, currency = "EUR" } }
        [calls.stock]
        service = "inventory"
        path = "/stock"
        fallback = { call = "stock_cache" }
        [calls.stock_cache]
        service = "cache"
        path = "/stock/{request.params.id}"
        [calls.reviews]
        service = "reviews"
        path = "/r"
        fallback = "omit"
        [calls.ads]
        service = "ads"
        path = "/ads"
        fallback = { call = "ads_cache" }
        [calls.ads_cache]
        service = "ads-cache"
        path = "/ads"
        [response]
        body = { price = "{price.body.amount}", stock = "{stock.body.n}", reviews = "{reviews.body}", ads = "{ads.body}" }
        "#,
    );
    let fake = Fake::new([
        ("pricing", Behaviour::error(10, "breaker-open")),
        ("inventory", Behaviour::status(20, 500)),
        ("cache", Behaviour::ok(5, json!({ "n": 3 }))),
        ("reviews", Behaviour::error(10, "deadline-exceeded")),
        ("ads", Behaviour::ok(10, json!(["ad"]))),
    ]);
    let start = Instant::now();
    let res = plan.execute(request(), &fake).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        MS(25),
        "the stand-in starts when stock fails"
    );
    assert_eq!(body(&res), json!({ "price": 0, "stock": 3, "ads": ["ad"] }));
    assert_eq!(res.degraded, ["price", "reviews", "stock"]);
    assert!(
        matches!(fake.start_of("cache"), Some(Seen::Start { at, uri, .. }) if at == MS(20) && uri == "/stock/7")
    );
    assert_eq!(
        fake.calls_to("ads-cache"),
        0,
        "a fallback-only call runs only when needed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_stand_in_counts_as_no_fallback() {
    let src = r#"
        [calls.stock]
        service = "inventory"
        path = "/stock"
        fallback = { call = "cache" }
        [calls.cache]
        service = "cache"
        path = "/c"
        "#;
    let fake = Fake::new([
        ("inventory", Behaviour::error(10, "upstream")),
        ("cache", Behaviour::error(10, "bulkhead-full")),
    ]);
    let err = plan(src).execute(request(), &fake).await.unwrap_err();
    assert_eq!(
        (err.call.as_str(), err.kind),
        ("stock", "upstream"),
        "the call it stood in for is named"
    );

    let optional = src.replace("fallback =", "required = false\nfallback =");
    let res = plan(&optional).execute(request(), &fake).await.unwrap();
    assert_eq!(res.degraded, ["stock"]);
    assert_eq!(body(&res), json!({}));
}

#[tokio::test(start_paused = true)]
async fn a_call_reading_an_omitted_call_is_not_sent() {
    let plan = plan(
        r#"
        [calls.profile]
        service = "profile"
        path = "/p"
        required = false
        [calls.recs]
        service = "recs"
        path = "/recs/{profile.body.segment}"
        [calls.log]
        service = "log"
        path = "/log"
        after = ["profile"]
        required = false
        "#,
    );
    let fake = Fake::new([("profile", Behaviour::error(10, "upstream"))]);
    let err = plan.execute(request(), &fake).await.unwrap_err();
    assert_eq!(
        (err.call.as_str(), err.kind),
        ("recs", "dependency-omitted")
    );
    assert_eq!(
        err.message,
        "reads call `profile`, which failed and has no result"
    );
    assert_eq!(fake.calls_to("recs"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_route_deadline_is_shared_along_a_chain() {
    let src = r#"
        timeout = "100ms"
        [calls.a]
        service = "a"
        path = "/a"
        [calls.b]
        service = "b"
        path = "/b"
        after = ["a"]
        [calls.c]
        service = "c"
        path = "/c"
        after = ["b"]
        "#;
    let fake = || {
        Fake::new([
            ("a", Behaviour::ok(40, json!(1))),
            ("b", Behaviour::ok(40, json!(2))),
            ("c", Behaviour::ok(40, json!(3))),
        ])
    };
    let f = fake();
    let start = Instant::now();
    let err = plan(src).execute(request(), &f).await.unwrap_err();
    assert_eq!(Instant::now() - start, MS(100));
    assert_eq!((err.call.as_str(), err.kind), ("c", "deadline-exceeded"));
    let left = |s| match f.start_of(s) {
        Some(Seen::Start { left, .. }) => left,
        _ => panic!("{s} not called"),
    };
    assert_eq!((left("a"), left("b"), left("c")), (MS(100), MS(60), MS(20)));

    // A service that ignores the deadline is cut off by the engine, and an
    // optional call still gets its fallback.
    let lenient = src.replace(
        "after = [\"b\"]",
        "after = [\"b\"]\nfallback = { value = \"late\" }",
    );
    let f = Fake::new([
        ("a", Behaviour::ok(40, json!(1))),
        ("b", Behaviour::ok(40, json!(2))),
        (
            "c",
            Behaviour {
                honor_deadline: false,
                ..Behaviour::ok(40, json!(3))
            },
        ),
    ]);
    let start = Instant::now();
    let res = plan(&lenient).execute(request(), &f).await.unwrap();
    assert_eq!(Instant::now() - start, MS(100));
    assert_eq!(res.degraded, ["c"]);
    assert_eq!(body(&res), json!({ "a": 1, "b": 2, "c": "late" }));
    assert_eq!(f.cancelled(), [("c".into(), MS(100))]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_execution_cancels_every_call_in_flight() {
    let plan = plan(
        r#"
        [calls.a]
        service = "a"
        path = "/a"
        [calls.b]
        service = "b"
        path = "/b"
        "#,
    );
    let fake = Fake::new([
        ("a", Behaviour::ok(100, json!(1))),
        ("b", Behaviour::ok(100, json!(1))),
    ]);
    // The client goes away after 30ms: the gateway drops the future.
    let out = tokio::time::timeout(MS(30), plan.execute(request(), &fake)).await;
    assert!(out.is_err());
    let mut cancelled = fake.cancelled();
    cancelled.sort();
    assert_eq!(cancelled, [("a".into(), MS(30)), ("b".into(), MS(30))]);
}

#[tokio::test(start_paused = true)]
async fn pass_through_answers_with_one_calls_response() {
    let plan = plan(
        r#"
        [calls.auth]
        service = "auth"
        path = "/check"
        [calls.page]
        service = "pages"
        path = "/p/{request.params.id}"
        after = ["auth"]
        [response]
        pass_through = "page"
        headers = { x-auth = "{auth.status}" }
        "#,
    );
    let fake = Fake::new([
        ("auth", Behaviour::ok(1, json!({}))),
        ("pages", Behaviour::status(2, 404)),
    ]);
    let res = plan.execute(request(), &fake).await.unwrap();
    assert_eq!(res.status, 404);
    assert_eq!(res.headers["x-auth"], "200");
    assert_eq!(res.headers["content-type"], "application/json");
    assert_eq!(&res.body[..], b"null");
}

#[tokio::test]
async fn compile_errors_are_public_and_precise() {
    let config: ComposeConfig = toml::from_str(
        r#"
        [calls.pricing]
        service = "pricing"
        path = "/prices/{requst.params.id}"
        "#,
    )
    .unwrap();
    let errs = ComposePlan::compile(&config, &|s: &str| s == "pricing").unwrap_err();
    assert_eq!(
        errs,
        [
            "calls.pricing.path: position 9: unknown root \"requst\"; expected request or a call name"
        ]
    );
}

#[test]
fn an_execution_can_move_between_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let plan = plan("[calls.a]\nservice = \"a\"\npath = \"/a\"\n");
    let fake = Fake::new([("a", Behaviour::ok(1, json!(1)))]);
    // The gateway runs it inside a hyper service future, which must be Send.
    let execution = plan.execute(request(), &fake);
    assert_send(&execution);
}
