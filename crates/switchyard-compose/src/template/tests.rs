use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::json;

use super::*;

fn resolve(name: &str) -> Option<usize> {
    ["a", "pricing"].iter().position(|n| *n == name)
}

fn parse(src: &str) -> Result<StrTemplate, TemplateError> {
    StrTemplate::parse(src, &resolve)
}

fn err(src: &str) -> String {
    parse(src).unwrap_err().to_string()
}

fn result(status: u16, body: serde_json::Value) -> Option<Arc<CallResult>> {
    let mut headers = HeaderMap::new();
    headers.insert("etag", HeaderValue::from_static("\"v1\""));
    let mut res = Response::new(bytes::Bytes::from(body.to_string()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    *res.headers_mut() = headers;
    let mut r = CallResult::from_value(body);
    r.status = res.status();
    r.headers = res.headers().clone();
    Some(Arc::new(r))
}

#[test]
fn errors_name_the_position() {
    assert_eq!(
        err("/prices/{requst.params.id}"),
        "position 9: unknown root \"requst\"; expected request or a call name"
    );
    assert_eq!(
        err("/x/{request.parms.id}"),
        "position 12: unknown field \"parms\" of request; expected params, query, headers or body"
    );
    assert_eq!(
        err("/x/{pricing.stauts}"),
        "position 12: unknown field \"stauts\" of call \"pricing\"; expected status, headers or body"
    );
    assert!(err("/x/{a.body").starts_with("position 3: unclosed `{`"));
    assert!(err("/x/}").starts_with("position 3: unmatched `}`"));
    assert!(err("{}").starts_with("position 0: empty expression"));
    assert!(err("{a..b}").starts_with("position 3: empty name"));
    assert!(err("{a.body.x y}").starts_with("position 9: unexpected character ' '"));
    assert!(err("{request.params}").contains("expected a name after `request.params.`"));
    assert!(
        err("{request.params.a.b}")
            .starts_with("position 18: `request.params.NAME` takes one name")
    );
    assert!(err("{a.status.x}").starts_with("position 10: `a.status` has no fields"));
    assert!(err("{a}").contains("expected status, headers or body after `a.`"));
}

#[test]
fn braces_escape_and_spaces_are_allowed() {
    let t = parse("{{literal}} { request.params.id }").unwrap();
    let request = ComposeRequest {
        params: vec![("id".into(), "7".into())],
        ..Default::default()
    };
    let scope = Scope {
        request: &request,
        results: &[],
    };
    assert_eq!(t.render(&scope), "{literal} 7");
}

#[test]
fn renders_request_and_results() {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("ann"));
    let request = ComposeRequest {
        params: vec![("id".into(), "a b/c".into())],
        query: vec![("page".into(), "2".into())],
        headers,
        body: Some(json!({ "items": [{ "sku": "X" }], "n": 3 })),
    };
    let results = vec![
        None,
        result(
            201,
            json!({ "price": 9.5, "tags": ["a"], "ok": true, "none": null }),
        ),
    ];
    let scope = Scope {
        request: &request,
        results: &results,
    };
    let render = |s: &str| parse(s).unwrap().render(&scope);
    assert_eq!(
        render("{request.query.page}/{request.headers.X-User}"),
        "2/ann"
    );
    assert_eq!(render("{request.body.items.0.sku}:{request.body.n}"), "X:3");
    assert_eq!(
        render("{pricing.status} {pricing.headers.etag}"),
        "201 \"v1\""
    );
    assert_eq!(
        render("{pricing.body.price}|{pricing.body.tags}|{pricing.body.ok}|{pricing.body.none}"),
        "9.5|[\"a\"]|true|"
    );
    // Missing values (an unknown field, a call without a result) render as nothing.
    assert_eq!(
        render("[{request.body.nope}{a.body}{request.query.x}]"),
        "[]"
    );

    let mut path = String::new();
    parse("/items/{request.params.id}").unwrap().render_into(
        &scope,
        Escape::PathSegment,
        &mut path,
    );
    assert_eq!(path, "/items/a%20b%2Fc", "values can't add path segments");
}

#[test]
fn json_templates_keep_types_and_drop_missing_members() {
    let request = ComposeRequest {
        params: vec![("id".into(), "7".into())],
        ..Default::default()
    };
    let results = vec![None, result(200, json!({ "price": 9.5, "tags": ["a"] }))];
    let scope = Scope {
        request: &request,
        results: &results,
    };
    let template = json!({
        "id": "{request.params.id}",
        "price": "{pricing.body.price}",
        "status": "{pricing.status}",
        "label": "#{request.params.id} costs {pricing.body.price}",
        "tags": ["{pricing.body.tags.0}", "{a.body}", "lit"],
        "gone": "{a.body.x}",
        "fixed": { "k": [1, 2] },
    });
    let mut errors = Vec::new();
    let t = JsonTemplate::parse(&template, "body", &resolve, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        t.render(&scope).unwrap(),
        json!({
            "id": "7",
            "price": 9.5,
            "status": 200,
            "label": "#7 costs 9.5",
            "tags": ["a", "lit"],
            "fixed": { "k": [1, 2] },
        })
    );
    let mut errors = Vec::new();
    JsonTemplate::parse(
        &json!({ "a": [1, "{nope.body}"] }),
        "calls.x.body",
        &resolve,
        &mut errors,
    );
    assert_eq!(
        errors,
        ["calls.x.body.a.1: position 1: unknown root \"nope\"; expected request or a call name"]
    );
}
