use super::*;

const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[services.catalog]
endpoints = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]

[services.catalog.policy]
timeout = "2s"

[[routes]]
path = "/catalog/{id}"
methods = ["GET"]
service = "catalog"
rewrite = "/items/{id}"
"#;

fn err(text: &str) -> ConfigError {
    Config::parse(text, "gw.toml").unwrap_err()
}

#[test]
fn a_good_config_parses() {
    let config = Config::parse(GOOD, "gw.toml").unwrap();
    assert_eq!(
        config.listeners[0].max_header_bytes,
        crate::config::DEFAULT_MAX_HEADER_BYTES
    );
    assert_eq!(config.services["catalog"].endpoints[1].endpoint().weight, 2);
}

#[test]
fn unknown_keys_name_the_key_file_and_line() {
    let text = GOOD.replace("methods = [\"GET\"]", "methods = [\"GET\"]\nretires = 3");
    let e = err(&text);
    assert_eq!(
        (e.file.as_str(), e.line, e.key.as_str()),
        ("gw.toml", 18, "retires"),
        "{e}"
    );
    assert!(e.message.contains("unknown field `retires`"), "{e}");
    assert!(e.to_string().starts_with("gw.toml:18: retires: "), "{e}");
}

#[test]
fn a_route_to_an_unknown_service_points_at_its_line() {
    let e = err(&GOOD.replace("service = \"catalog\"", "service = \"catalgo\""));
    assert_eq!((e.line, e.key.as_str()), (18, "routes[0].service"), "{e}");
    assert!(
        e.message
            .contains("define [services.catalgo] or use one of: catalog"),
        "{e}"
    );
}

#[test]
fn bad_values_are_refused_with_a_fix() {
    let e = err(&GOOD.replace("timeout = \"2s\"", "timeout = \"2 parsecs\""));
    assert_eq!(e.line, 13, "{e}");

    let e = err(&GOOD.replace("rewrite = \"/items/{id}\"", "rewrite = \"/items/{sku}\""));
    assert_eq!(e.key, "routes[0].rewrite", "{e}");
    assert!(e.message.contains("{sku} is not a parameter"), "{e}");

    let e = err(&GOOD.replace("methods = [\"GET\"]", "methods = [\"get\"]"));
    assert_eq!(e.key, "routes[0].methods", "{e}");

    let e = err(&format!(
        "{GOOD}\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8081\"\n"
    ));
    assert_eq!((e.key.as_str(), e.line), ("listeners[1].name", 22), "{e}");

    let e = err(&GOOD.replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nattempt_timeout = \"5s\"",
    ));
    assert_eq!(e.key, "services.catalog.policy", "{e}");
    assert!(e.message.contains("attempt_timeout"), "{e}");
}

#[test]
fn missing_pieces_are_explained() {
    let e = err("");
    assert_eq!(e.key, "listeners", "{e}");
    let e = err(&GOOD.replace(
        "endpoints = [\"127.0.0.1:9001\", { addr = \"127.0.0.1:9002\", weight = 2 }]",
        "endpoints = []",
    ));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("services.catalog.endpoints", 10),
        "{e}"
    );
}

#[test]
fn unreadable_files_say_so() {
    let e = Config::load(std::path::Path::new("/nonexistent/switchyard.toml")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.message.contains("cannot read"), "{e}");
}

#[test]
fn a_service_without_endpoints_is_found_in_the_registry() {
    let registry = "\n[registry]\nurl = \"http://127.0.0.1:9901\"\n";
    let text = GOOD.replace(
        "endpoints = [\"127.0.0.1:9001\", { addr = \"127.0.0.1:9002\", weight = 2 }]",
        "select = { version = \"v2\" }",
    );
    let config = Config::parse(&format!("{text}{registry}"), "gw.toml").unwrap();
    assert!(config.services["catalog"].endpoints.is_empty());
    assert_eq!(config.services["catalog"].select["version"], "v2");

    // Without a registry there is nowhere to find them.
    let e = err(&text);
    assert_eq!(e.key, "services.catalog.endpoints", "{e}");
    assert!(e.message.contains("[registry]"), "{e}");

    // `select` next to static endpoints would be ignored: refused.
    let e = err(&format!(
        "{}{registry}",
        GOOD.replace(
            "[services.catalog.policy]",
            "select = { version = \"v2\" }\n\n[services.catalog.policy]"
        )
    ));
    assert_eq!(e.key, "services.catalog.select", "{e}");
}

#[test]
fn a_registration_the_registry_would_refuse_is_refused_at_load() {
    let base = format!(
        "{GOOD}\n[registry]\nembedded = true\n\n[[register]]\nservice = \"users\"\naddr = \"127.0.0.1:9201\"\n"
    );
    Config::parse(&base, "gw.toml").unwrap();
    for (extra, key) in [
        ("weight = 0", "register[0].weight"),
        ("weight = 20000", "register[0].weight"),
        ("id = \"a b\"", "register[0].id"),
        ("ttl = \"2h\"", "register[0].ttl"),
        ("metadata = { \"bad key\" = \"v\" }", "register[0].metadata"),
        ("check = { http = \"healthz\" }", "register[0].check.http"),
        (
            "check = { http = \"/healthz\", tcp = true }",
            "register[0].check",
        ),
    ] {
        let e = err(&format!("{base}{extra}\n"));
        assert_eq!(e.key, key, "{extra}: {e}");
    }
    let e = err(&base.replace("[registry]\nembedded = true\n", ""));
    assert_eq!(e.key, "register[0].service", "{e}");
}
