use super::*;

/// Parses `[[routes]]` tables the way the config file would hold them.
fn routes(toml_text: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        routes: Vec<RouteConfig>,
    }
    toml::from_str::<File>(toml_text).unwrap().routes
}

fn get<'a>(router: &'a Router, path: &'a str) -> Option<RouteMatch<'a>> {
    router.route("main", &Method::GET, None, path, &HeaderMap::new())
}

#[test]
fn literal_beats_param_beats_catch_all() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/{*rest}"
        service = "files"
        [[routes]]
        path = "/files/{id}"
        service = "one-file"
        [[routes]]
        path = "/files/latest"
        service = "latest"
        "#,
    ))
    .unwrap();
    // The most specific pattern wins whatever the config order.
    assert_eq!(get(&router, "/files/latest").unwrap().index(), 2);
    assert_eq!(get(&router, "/files/7").unwrap().index(), 1);
    let deep = get(&router, "/files/a/b/c").unwrap();
    assert_eq!(deep.index(), 0);
    assert_eq!(deep.param("rest"), Some("files/a/b/c"));
    assert_eq!(get(&router, "/other").unwrap().index(), 0);
}

#[test]
fn same_pattern_first_in_config_order_wins() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/users/{id}"
        methods = ["POST"]
        service = "writer"
        [[routes]]
        path = "/users/{id}"
        service = "reader-a"
        [[routes]]
        path = "/users/{id}"
        service = "reader-b"
        "#,
    ))
    .unwrap();
    let post = router.route("main", &Method::POST, None, "/users/1", &HeaderMap::new());
    assert_eq!(post.unwrap().index(), 0);
    // GET skips the POST-only route and takes the first of the two others.
    assert_eq!(get(&router, "/users/1").unwrap().index(), 1);
    assert_eq!(router.service(1), Some("reader-a"));
}

#[test]
fn less_specific_route_serves_a_method_the_specific_one_does_not() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/users/me"
        methods = ["GET"]
        service = "profile"
        [[routes]]
        path = "/users/{id}"
        service = "users"
        "#,
    ))
    .unwrap();
    assert_eq!(get(&router, "/users/me").unwrap().index(), 0);
    let delete = router.route(
        "main",
        &Method::DELETE,
        None,
        "/users/me",
        &HeaderMap::new(),
    );
    let delete = delete.unwrap();
    assert_eq!(delete.index(), 1);
    assert_eq!(delete.param("id"), Some("me"));
}

#[test]
fn params_and_rewrite_keep_the_query() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/api/{team}/items/{*rest}"
        service = "items"
        rewrite = "/v2/items/{rest}?team={team}"
        [[routes]]
        path = "/plain/{x}"
        service = "plain"
        "#,
    ))
    .unwrap();
    let m = get(&router, "/api/red/items/a/b%20c?sort=asc").unwrap();
    assert_eq!(m.params(), &[("team", "red"), ("rest", "a/b%20c")]);
    // The template's own `?` and the original query both survive.
    assert_eq!(m.upstream_path(), "/v2/items/a/b%20c?team=red?sort=asc");
    // Without rewrite the path goes as received, query included.
    let m = get(&router, "/plain/1?q=2").unwrap();
    assert_eq!(m.upstream_path(), "/plain/1?q=2");
}

#[test]
fn host_is_case_insensitive_and_ignores_the_port() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/"
        host = "API.example.com"
        service = "api"
        [[routes]]
        path = "/"
        service = "default"
        "#,
    ))
    .unwrap();
    let at = |host| {
        router
            .route("main", &Method::GET, host, "/", &HeaderMap::new())
            .unwrap()
            .index()
    };
    assert_eq!(at(Some("api.EXAMPLE.com:8443")), 0);
    assert_eq!(at(Some("api.example.com")), 0);
    assert_eq!(at(Some("www.example.com")), 1);
    assert_eq!(at(None), 1);
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("[::1]"), "[::1]");
    assert_eq!(strip_port("example.com:"), "example.com");
    assert_eq!(strip_port("example.com:http"), "example.com:http");
    assert_eq!(strip_port("a:1:2"), "a:1");
}

#[test]
fn headers_must_all_match() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/"
        service = "canary"
        headers = { x-canary = "1", x-team = "red" }
        [[routes]]
        path = "/"
        service = "stable"
        "#,
    ))
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", HeaderValue::from_static("1"));
    let at = |h: &HeaderMap| {
        router
            .route("main", &Method::GET, None, "/", h)
            .unwrap()
            .index()
    };
    assert_eq!(at(&headers), 1, "one header of two is not enough");
    headers.insert("x-team", HeaderValue::from_static("red"));
    assert_eq!(at(&headers), 0);
    headers.insert("x-team", HeaderValue::from_static("Red"));
    assert_eq!(at(&headers), 1, "values compare exactly");
}

#[test]
fn listeners_restrict_routes() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/"
        listeners = ["internal"]
        service = "admin"
        "#,
    ))
    .unwrap();
    let h = HeaderMap::new();
    assert!(
        router
            .route("internal", &Method::GET, None, "/", &h)
            .is_some()
    );
    assert!(
        router
            .route("public", &Method::GET, None, "/", &h)
            .is_none()
    );
}

#[test]
fn conflicting_patterns_name_both_routes() {
    let err = Router::new(&routes(
        r#"
        [[routes]]
        name = "by-id"
        path = "/users/{id}"
        service = "users"
        [[routes]]
        name = "by-name"
        path = "/users/{name}"
        service = "users"
        "#,
    ))
    .unwrap_err();
    assert!(err.contains("routes[1] (by-name)"), "{err}");
    assert!(err.contains("routes[0] (by-id)"), "{err}");
    assert!(err.contains("/users/{id}"), "{err}");
    // A parameter and a catch-all at the same place can't be ordered either.
    let err = Router::new(&routes(
        r#"
        [[routes]]
        path = "/files/{*rest}"
        service = "files"
        [[routes]]
        path = "/files/{id}"
        service = "files"
        "#,
    ))
    .unwrap_err();
    assert!(
        err.contains("routes[0]") && err.contains("routes[1]"),
        "{err}"
    );
}

#[test]
fn bad_config_is_explained() {
    let err = Router::new(&routes(
        r#"
        [[routes]]
        path = "/a/{id}"
        service = "a"
        rewrite = "/b/{nope}"
        "#,
    ))
    .unwrap_err();
    assert!(
        err.contains("doesn't capture") && err.contains("id"),
        "{err}"
    );
    let err = Router::new(&routes(
        r#"
        [[routes]]
        path = "/a"
        methods = ["get"]
        service = "a"
        "#,
    ))
    .unwrap_err();
    assert!(err.contains("upper-case"), "{err}");
    let err = Router::new(&routes(
        r#"
        [[routes]]
        path = "/a/{*rest}/b"
        service = "a"
        "#,
    ))
    .unwrap_err();
    assert!(err.contains("not a valid pattern"), "{err}");
}

#[test]
fn default_names_for_metrics() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/a"
        methods = ["GET", "HEAD"]
        service = "a"
        [[routes]]
        path = "/b"
        service = "b"
        retry_non_idempotent = true
        "#,
    ))
    .unwrap();
    assert_eq!(router.name(0), Some("GET,HEAD /a"));
    assert_eq!(router.name(1), Some("* /b"));
    assert!(router.retry_non_idempotent(1));
    assert!(!router.retry_non_idempotent(0));
}

#[test]
fn catch_all_also_matches_its_bare_prefix() {
    let router = Router::new(&routes(
        r#"
        [[routes]]
        path = "/{*rest}"
        service = "all"
        rewrite = "/v1/{rest}"
        [[routes]]
        path = "/api/{*rest}"
        service = "api"
        "#,
    ))
    .unwrap();
    let root = get(&router, "/?q=1").unwrap();
    assert_eq!(root.index(), 0);
    assert_eq!(root.param("rest"), Some(""));
    assert_eq!(root.upstream_path(), "/v1/?q=1");
    assert_eq!(get(&router, "/api/").unwrap().index(), 1);
    assert_eq!(
        get(&router, "/api").unwrap().index(),
        0,
        "no slash: the root catch-all"
    );
}
