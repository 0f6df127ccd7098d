use super::*;

fn compile(src: &str) -> Result<ComposePlan, Vec<String>> {
    let config: ComposeConfig = toml::from_str(src).unwrap();
    ComposePlan::compile(&config, &|s: &str| s != "ghost")
}

fn errors(src: &str) -> Vec<String> {
    compile(src).unwrap_err()
}

#[test]
fn a_cycle_is_printed() {
    let errs = errors(
        r#"
        [calls.a]
        service = "s"
        path = "/{b.body.x}"
        [calls.b]
        service = "s"
        path = "/"
        after = ["c"]
        [calls.c]
        service = "s"
        path = "/"
        body = { x = "{a.status}" }
        [calls.d]
        service = "s"
        path = "/"
        "#,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("calls: cycle: a -> b -> c -> a "),
        "{errs:?}"
    );
}

#[test]
fn self_reference_and_fallback_loops_are_cycles() {
    let errs = errors("[calls.a]\nservice = \"s\"\npath = \"/{a.body.id}\"\n");
    assert!(errs[0].starts_with("calls: cycle: a -> a "), "{errs:?}");
    let errs = errors(
        r#"
        [calls.a]
        service = "s"
        path = "/"
        fallback = { call = "b" }
        [calls.b]
        service = "s"
        path = "/{a.body.id}"
        "#,
    );
    assert!(
        errs[0].starts_with("calls: cycle: a -> b -> a "),
        "{errs:?}"
    );
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let errs = errors(
        r#"
        timeout = "0s"
        [calls.a]
        service = "ghost"
        method = "GE T"
        path = "/prices/{requst.params.id}"
        after = ["zz"]
        fallback = { call = "yy" }
        fail_on_status = 42
        headers = { "bad header" = "x" }
        [calls.b]
        service = "s"
        path = "prices"
        query = { q = "{a.bdy}" }
        [calls.request]
        service = "s"
        path = "/"
        [response]
        pass_through = "nope"
        status = 200
        "#,
    );
    let expected = [
        "timeout: must be more than 0",
        "calls.request: `request` is reserved",
        "calls.a.service: unknown service \"ghost\"",
        "calls.a.method: \"GE T\" is not an HTTP method",
        "calls.a.path: position 9: unknown root \"requst\"; expected request or a call name",
        "calls.a.headers: \"bad header\" is not a valid header name",
        "calls.a.after: unknown call \"zz\"; expected one of a, b, request",
        "calls.a.fallback: unknown call \"yy\"",
        "calls.a.fail_on_status: 42 is not a status",
        "calls.b.path: must start with `/`",
        "calls.b.query.q: position 3: unknown field \"bdy\" of call \"a\"",
        "response.pass_through: can't be combined with body or status",
        "response.pass_through: unknown call \"nope\"",
    ];
    for e in expected {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
}

#[test]
fn pass_through_of_a_call_that_may_have_no_result_is_refused() {
    let errs = errors(
        r#"
        [calls.a]
        service = "s"
        path = "/"
        required = false
        [response]
        pass_through = "a"
        "#,
    );
    assert!(
        errs[0].contains("make it required or give it a fallback"),
        "{errs:?}"
    );
}

#[test]
fn dependencies_roots_and_fallback_only_calls() {
    let plan = compile(
        r#"
        [calls.user]
        service = "s"
        path = "/users/{request.params.id}"
        [calls.orders]
        service = "s"
        path = "/orders"
        query = { user = "{user.body.id}" }
        fallback = { call = "cache" }
        [calls.cache]
        service = "s"
        path = "/cache/{request.params.id}"
        [calls.audit]
        service = "s"
        path = "/audit"
        after = ["orders", "user"]
        "#,
    )
    .unwrap();
    let names: Vec<&str> = plan.call_names().collect();
    assert_eq!(names, ["audit", "cache", "orders", "user"]);
    let idx = |n: &str| names.iter().position(|x| *x == n).unwrap();
    let call = |n: &str| &plan.calls[idx(n)];
    assert!(call("cache").lazy, "only a fallback: runs on demand");
    assert!(!call("user").lazy);
    assert_eq!(&*plan.roots, [idx("user")]);
    assert_eq!(call("audit").pending_init, 2);
    assert_eq!(&*call("orders").data_deps, [idx("user")]);
    assert_eq!(&*call("user").dependents, [idx("audit"), idx("orders")]);
    assert_eq!(&*call("cache").fallback_waiters, [idx("orders")]);
    assert!(call("user").parse_body && call("cache").parse_body);
    assert_eq!(plan.params_used().collect::<Vec<_>>(), ["id"]);
}
