use std::time::Duration;

use super::*;

fn no_healthy_endpoint() -> NoHealthyEndpoint {
    NoHealthyEndpoint {
        service: "users".into(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Refused;

/// Reads the problem body of a response.
async fn body_of(res: http::Response<Body>) -> serde_json::Value {
    let bytes = res.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Checks one error's status, kind (header and `type`) and retry-after.
async fn check(err: Error, status: u16, kind: &str, retry_after: Option<&str>) {
    let res = Problem::from_error(&err).instance("req-7").into_response();
    assert_eq!(res.status(), status, "{kind}");
    assert_eq!(res.headers()["content-type"], CONTENT_TYPE);
    assert_eq!(res.headers()[ERROR_HEADER], kind);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        retry_after,
        "{kind}"
    );
    let body = body_of(res).await;
    assert_eq!(
        body["type"],
        format!("https://switchyard.dev/problems/{kind}")
    );
    assert_eq!(body["status"], status);
    assert_eq!(body["instance"], "req-7");
    assert_eq!(body["detail"], err.to_string());
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test]
async fn each_policy_error_has_its_status_kind_and_retry_after() {
    // Breaker open: 503 with the time until the next probe, rounded up.
    check(
        Error::BreakerOpen {
            retry_after: Duration::from_millis(2500),
        },
        503,
        "breaker-open",
        Some("3"),
    )
    .await;
    check(
        Error::BulkheadFull { max_concurrent: 4 },
        503,
        "bulkhead-full",
        None,
    )
    .await;
    // Rate limited: 429; a sub-second wait still says 1, never 0.
    check(
        Error::RateLimited {
            retry_after: Duration::from_millis(10),
        },
        429,
        "rate-limited",
        Some("1"),
    )
    .await;
    check(
        Error::RateLimited {
            retry_after: Duration::ZERO,
        },
        429,
        "rate-limited",
        Some("1"),
    )
    .await;
    check(Error::DeadlineExceeded, 504, "deadline-exceeded", None).await;
    check(Error::from_inner(Refused), 502, "upstream", None).await;
    // Retry errors answer with the status of the last attempt's cause.
    check(
        Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(Error::from_inner(Refused)),
        },
        502,
        "retries-exhausted",
        None,
    )
    .await;
    check(
        Error::BudgetExhausted {
            attempts: 2,
            last: Box::new(Error::DeadlineExceeded),
        },
        504,
        "budget-exhausted",
        None,
    )
    .await;
}

#[tokio::test]
async fn no_healthy_endpoint_is_found_deep_in_the_chain() {
    // Boxed as an upstream error inside a retry error.
    let err = Error::RetriesExhausted {
        attempts: 2,
        last: Box::new(Error::from_inner(no_healthy_endpoint())),
    };
    check(err, 503, "no-healthy-endpoint", None).await;
    check(
        Error::from_inner(no_healthy_endpoint()),
        503,
        "no-healthy-endpoint",
        None,
    )
    .await;
    // Any other upstream error is a plain 502.
    assert_eq!(
        Problem::from_error(&Error::from_inner(Refused)).status(),
        502
    );
}

#[tokio::test]
async fn input_problems() {
    let res = Problem::route_not_found(&NoRoute {
        method: http::Method::GET,
        path: "/nope".into(),
    })
    .into_response();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()[ERROR_HEADER], "route-not-found");
    assert!(res.headers().get("connection").is_none());
    assert_eq!(body_of(res).await["detail"], "no route for GET /nope");

    // Framing problems close the connection.
    let res = Problem::bad_request("both content-length and transfer-encoding").into_response();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["connection"], "close");
    let res = Problem::payload_too_large(10).into_response();
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()[ERROR_HEADER], "payload-too-large");
    let res = Problem::header_too_large(100).into_response();
    assert_eq!(res.status(), 431);
    // No instance set: the member is null, not missing data.
    assert!(body_of(res).await["instance"].is_null());
}
