//! Added cost of the composition engine: a plan of 4 parallel calls and 1
//! dependent call against a zero-latency in-process `CallService`, against
//! hand-written code making the same 5 calls (`tokio::join!` + manual JSON)
//! through the same service, in the same run.
//!
//! `cargo bench -p switchyard-compose --bench compose`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// A bench that cannot set itself up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, Uri, header};
use serde_json::{Value, json};
use switchyard_compose::{CallError, CallService, ComposeConfig, ComposePlan, ComposeRequest};
use tokio::time::Instant;

/// Answers at once with a fixed JSON body per service.
struct Zero {
    user: Bytes,
    price: Bytes,
    stock: Bytes,
    reviews: Bytes,
    recs: Bytes,
}

impl Zero {
    fn new() -> Self {
        let b = |v: Value| Bytes::from(v.to_string());
        Self {
            user: b(json!({ "id": 7, "name": "Ann", "segment": "lamps" })),
            price: b(json!({ "amount": 30, "currency": "EUR" })),
            stock: b(json!({ "n": 3 })),
            reviews: b(json!({ "items": [{ "stars": 5 }, { "stars": 4 }] })),
            recs: b(json!({ "items": ["a", "b"] })),
        }
    }
}

impl CallService for Zero {
    async fn call(
        &self,
        service: &str,
        req: Request<Bytes>,
        _deadline: Instant,
    ) -> Result<Response<Bytes>, CallError> {
        black_box(req.uri());
        let body = match service {
            "users" => &self.user,
            "pricing" => &self.price,
            "inventory" => &self.stock,
            "reviews" => &self.reviews,
            _ => &self.recs,
        };
        let mut res = Response::new(body.clone());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(res)
    }
}

const PLAN: &str = r#"
    [calls.user]
    service = "users"
    path = "/users/{request.params.id}"
    [calls.price]
    service = "pricing"
    path = "/prices/{request.params.id}"
    [calls.stock]
    service = "inventory"
    path = "/stock/{request.params.id}"
    [calls.reviews]
    service = "reviews"
    path = "/reviews/{request.params.id}"
    [calls.recs]
    service = "recs"
    path = "/recs/{user.body.segment}"
    [response]
    body = { name = "{user.body.name}", price = "{price.body.amount}", stock = "{stock.body.n}", reviews = "{reviews.body.items}", recs = "{recs.body.items}" }
"#;

fn get(path: String) -> Request<Bytes> {
    let mut req = Request::new(Bytes::new());
    *req.uri_mut() = Uri::try_from(path).expect("valid path");
    req
}

/// What a developer would write by hand for the same page.
async fn hand_written(svc: &Zero, id: &str) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (user, price, stock, reviews) = tokio::join!(
        svc.call("users", get(format!("/users/{id}")), deadline),
        svc.call("pricing", get(format!("/prices/{id}")), deadline),
        svc.call("inventory", get(format!("/stock/{id}")), deadline),
        svc.call("reviews", get(format!("/reviews/{id}")), deadline),
    );
    let json = |r: Result<Response<Bytes>, CallError>| -> Value {
        serde_json::from_slice(r.expect("answers").body()).expect("json")
    };
    let (user, price, stock, reviews) = (json(user), json(price), json(stock), json(reviews));
    let segment = user["segment"].as_str().unwrap_or_default();
    let recs = json(
        svc.call("recs", get(format!("/recs/{segment}")), deadline)
            .await,
    );
    let page = json!({
        "name": user["name"],
        "price": price["amount"],
        "stock": stock["n"],
        "reviews": reviews["items"],
        "recs": recs["items"],
    });
    Bytes::from(page.to_string())
}

fn compose(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config: ComposeConfig = toml::from_str(PLAN).expect("plan parses");
    let plan = ComposePlan::compile(&config, &|_: &str| true).expect("plan is valid");
    let svc = Zero::new();

    // Both produce the same page.
    let (a, b) = rt.block_on(async {
        let req = ComposeRequest {
            params: vec![("id".into(), "7".into())],
            ..Default::default()
        };
        let a = plan.execute(req, &svc).await.expect("composes").body;
        (a, hand_written(&svc, "7").await)
    });
    let parse = |b: &Bytes| serde_json::from_slice::<Value>(b).expect("json");
    assert_eq!(parse(&a), parse(&b));

    let mut group = c.benchmark_group("page of 4 parallel + 1 dependent calls");
    group.bench_function("hand-written", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(hand_written(&svc, black_box("7")).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("compose plan", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    let req = ComposeRequest {
                        params: vec![("id".into(), black_box("7").into())],
                        ..Default::default()
                    };
                    black_box(plan.execute(req, &svc).await.expect("composes"));
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, compose);
criterion_main!(benches);
