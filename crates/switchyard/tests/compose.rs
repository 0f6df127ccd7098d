//! Composition routes through the real binary: calls in parallel and in
//! sequence, a degraded optional call, a required failure answered with a
//! problem naming the call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Backend, Mode, Switchyard, client, get};

fn config(user: &Backend, orders: &Backend, recs: &Backend) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[services.users]
endpoints = ["{}"]
[services.orders]
endpoints = ["{}"]
[services.recs]
endpoints = ["{}"]
[services.recs.policy.retry]
max_attempts = 1

[[routes]]
path = "/page/{{id}}"
[routes.compose]
timeout = "2s"
[routes.compose.calls.user]
service = "users"
path = "/users/{{request.params.id}}"
[routes.compose.calls.orders]
service = "orders"
method = "POST"
path = "/orders/of/{{user.body.service}}"
body = {{ owner = "{{request.params.id}}", via = "{{user.body.uri}}" }}
[routes.compose.calls.recs]
service = "recs"
path = "/recs"
required = false
fallback = {{ value = {{ items = [] }} }}
# This call's own policy: recommendations are not worth waiting for.
policy = {{ timeout = "100ms", retry = {{ max_attempts = 1 }} }}
[routes.compose.response]
body = {{ user = "{{user.body.uri}}", orders = "{{orders.body}}", recs = "{{recs.body}}" }}
"#,
        user.addr, orders.addr, recs.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composes_in_parallel_and_in_sequence_and_degrades_optional_calls() {
    let users = Backend::start("users").await;
    let orders = Backend::start("orders").await;
    let recs = Backend::start("recs").await;
    for b in [&users, &orders, &recs] {
        b.set(Mode::Echo);
    }
    let gw = Switchyard::start(&config(&users, &orders, &recs));
    let http = client();

    let (status, headers, body) = get(&http, &gw.url("/page/42")).await;
    assert_eq!(status, 200, "{body}");
    assert!(!headers.contains_key("x-switchyard-degraded"));
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["user"], "/users/42");
    // orders was built from the user call's answer: path and JSON body.
    assert_eq!(page["orders"]["uri"], "/orders/of/users");
    assert_eq!(
        page["orders"]["body"],
        serde_json::json!({ "owner": "42", "via": "/users/42" })
    );
    assert_eq!(page["recs"]["service"], "recs");

    // An optional call that fails is replaced by its fallback; the page
    // still comes, and says what was degraded.
    recs.set(Mode::Status(503));
    let (status, headers, body) = get(&http, &gw.url("/page/42")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-degraded"], "recs");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["recs"], serde_json::json!({ "items": [] }));

    // The call's own policy (100ms) cuts a slow answer the service's
    // default (10s) would have waited for.
    recs.set(Mode::Delay(std::time::Duration::from_millis(1500)));
    let (status, headers, body) = get(&http, &gw.url("/page/42")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-degraded"], "recs");

    // A required call that fails ends the route with a problem naming it,
    // and the call that depends on it is never sent.
    users.set(Mode::Status(500));
    let before = orders.hits();
    let (status, headers, body) = get(&http, &gw.url("/page/42")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("call `user` failed"), "{body}");
    assert_eq!(orders.hits(), before);
}

#[test]
fn a_composition_with_a_cycle_is_refused_with_the_cycle_named() {
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[services.a]
endpoints = ["127.0.0.1:9"]
[[routes]]
path = "/x"
[routes.compose.calls.one]
service = "a"
path = "/{two.body.id}"
[routes.compose.calls.two]
service = "a"
path = "/{one.body.id}"
"#;
    let file = std::env::temp_dir().join(format!("switchyard-cycle-{}.toml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cycle: one -> two -> one") || stderr.contains("cycle: two -> one -> two"),
        "{stderr}"
    );
    assert!(stderr.contains("routes[0].compose"), "{stderr}");
}
