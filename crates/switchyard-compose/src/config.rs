//! The composition config: named calls, the response, the route deadline.
//!
//! In the gateway's TOML this is a route's `[routes.compose]` table; every
//! key is documented in `docs/config.md` ("Composition routes"). The config
//! is only data: [`ComposePlan::compile`](crate::ComposePlan::compile)
//! validates it and turns it into an executable plan.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// Default deadline of a composition route, shared by all its calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default method of a call.
pub const DEFAULT_METHOD: &str = "GET";
/// Default lowest status that counts as a failed call (5xx fail, 4xx don't).
pub const DEFAULT_FAIL_ON_STATUS: u16 = 500;
/// Default status of a response built from a `body` template.
pub const DEFAULT_STATUS: u16 = 200;

/// One composition: the calls it makes and how it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeConfig {
    /// The calls, by name (`[routes.compose.calls.NAME]`). At least one.
    /// Names are letters, digits, `_` and `-`; `request` is reserved.
    pub calls: BTreeMap<String, CallConfig>,
    /// How the route answers. Default: a JSON object with each call's body
    /// under its name.
    #[serde(default)]
    pub response: ResponseConfig,
    /// The one deadline of the whole route; each call gets what remains.
    /// Default `"5s"`.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// One named call of a composition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// The service called (a name the gateway knows). Required.
    pub service: String,
    /// HTTP method. Default `"GET"`.
    #[serde(default = "defaults::method")]
    pub method: String,
    /// Path template, e.g. `"/prices/{request.params.id}"`; must start with
    /// `/`. Values of expressions are percent-encoded. Required.
    pub path: String,
    /// Query parameters: name to value template. Default: none.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers: name to value template. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template: strings in it may hold templates, and a string
    /// that is exactly one `{...}` expression becomes the referenced JSON
    /// value with its type. Sent with `content-type: application/json`
    /// unless `headers` sets one. Default: no body.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Calls this one waits for without using their data. Default: none.
    #[serde(default)]
    pub after: Vec<String>,
    /// Whether the route fails when this call fails (and it has no usable
    /// fallback). Default `true`. Ignored for a call that serves only as
    /// another call's fallback: that one is judged by the call it stands in for.
    #[serde(default = "defaults::required")]
    pub required: bool,
    /// What stands in for the result when the call fails. Default: none.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// Lowest response status that counts as a failure. Default `500`
    /// (5xx fail; 4xx are results). `400` makes 4xx fail too; `600` never
    /// fails on status.
    #[serde(default = "defaults::fail_on_status")]
    pub fail_on_status: u16,
    /// Policies for this call, replacing its service's (the call then has
    /// its own breaker and retry budget). The engine doesn't read it: the
    /// caller (the gateway) picks the policy stack by [`CallName`](crate::CallName).
    /// Default: the service's policies.
    #[serde(default)]
    pub policy: Option<switchyard_policy::PolicyConfig>,
}

/// What stands in for a failed call's result.
///
/// In TOML: `fallback = { value = <json> }`, `fallback = { call = "NAME" }`
/// or `fallback = "omit"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// A static JSON value becomes the call's body (status 200, no headers).
    Value(serde_json::Value),
    /// Another call's result becomes this call's result. A call named only
    /// as a fallback runs only when it is needed.
    Call(String),
    /// The call's result is omitted: references to it resolve to nothing.
    Omit,
}

/// How a composition answers.
///
/// Either a `body` template over the results (with `status` and `headers`),
/// or `pass_through = "NAME"`: that call's status, headers (minus hop-by-hop
/// fields) and body, plus `headers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// JSON template of the response body. Default (without
    /// `pass_through`): an object with each call's body under its name.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Status of a built response. Default `200`.
    #[serde(default)]
    pub status: Option<u16>,
    /// Response headers: name to value template. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Answer with this call's response instead of a built body. Default: none.
    #[serde(default)]
    pub pass_through: Option<String>,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            service: String::new(),
            method: defaults::method(),
            path: "/".to_owned(),
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            body: None,
            after: Vec::new(),
            required: defaults::required(),
            fallback: None,
            fail_on_status: DEFAULT_FAIL_ON_STATUS,
            policy: None,
        }
    }
}

mod defaults {
    use super::*;

    pub(super) fn timeout() -> Duration {
        DEFAULT_TIMEOUT
    }
    pub(super) fn method() -> String {
        DEFAULT_METHOD.to_owned()
    }
    pub(super) fn required() -> bool {
        true
    }
    pub(super) fn fail_on_status() -> u16 {
        DEFAULT_FAIL_ON_STATUS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes() {
        let config: ComposeConfig = toml::from_str(
            r#"
            timeout = "250ms"
            [calls.product]
            service = "catalog"
            path = "/products/{request.params.id}"
            [calls.pricing]
            service = "pricing"
            method = "POST"
            path = "/quote"
            body = { sku = "{product.body.sku}", qty = 1 }
            required = false
            fallback = { value = { price = 0 } }
            [calls.reviews]
            service = "reviews"
            path = "/r"
            fallback = "omit"
            [calls.stock]
            service = "inventory"
            path = "/s"
            fallback = { call = "reviews" }
            [response]
            body = { product = "{product.body}" }
            "#,
        )
        .unwrap();
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.calls["product"].method, "GET");
        assert!(config.calls["product"].required);
        assert_eq!(config.calls["product"].fail_on_status, 500);
        assert!(!config.calls["pricing"].required);
        assert_eq!(
            config.calls["pricing"].fallback,
            Some(Fallback::Value(serde_json::json!({ "price": 0 })))
        );
        assert_eq!(config.calls["reviews"].fallback, Some(Fallback::Omit));
        assert_eq!(
            config.calls["stock"].fallback,
            Some(Fallback::Call("reviews".into()))
        );
    }

    #[test]
    fn unknown_keys_and_fallbacks_are_refused() {
        let err = toml::from_str::<ComposeConfig>(
            "[calls.a]\nservice = \"s\"\npath = \"/\"\nservice_name = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("service_name"), "{err}");
        let err = toml::from_str::<ComposeConfig>(
            "[calls.a]\nservice = \"s\"\npath = \"/\"\nfallback = \"skip\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("skip"), "{err}");
    }
}
