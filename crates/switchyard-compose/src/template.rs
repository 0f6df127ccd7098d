//! Templates: `{...}` expressions over the client request and call results,
//! parsed once at load into an AST and rendered per request without parsing.
//!
//! # Syntax
//!
//! A string template is text with expressions in braces; `{{` and `}}` are
//! literal braces. An expression is a dot-separated path (spaces around it
//! are ignored; segments are letters, digits, `_` and `-`):
//!
//! | expression | value |
//! | --- | --- |
//! | `request.params.NAME` | a path parameter of the matched route |
//! | `request.query.NAME` | a query parameter (the first, when repeated) |
//! | `request.headers.NAME` | a request header (case-insensitive) |
//! | `request.body` / `request.body.PATH` | the JSON request body, or a field of it |
//! | `CALL.status` | a call's response status |
//! | `CALL.headers.NAME` | a call's response header |
//! | `CALL.body` / `CALL.body.PATH` | a call's JSON response body, or a field of it |
//!
//! A `PATH` is dot-separated object keys and array indices:
//! `reviews.body.items.0.stars`. A body that is not JSON is seen as one
//! string (when it is UTF-8).
//!
//! # Rendering
//!
//! In a string, a JSON string is inserted as is, a number or boolean as its
//! text, an array or object as compact JSON, and `null` or a value that is
//! not there as nothing. In a JSON template, a string that is exactly one
//! expression becomes the referenced value with its JSON type; when the value
//! is not there, the object member (or array element) is left out.

use std::{fmt, sync::Arc};

use http::HeaderName;
use serde_json::{Map, Value};

use crate::execute::{CallResult, ComposeRequest};

/// A template that failed to parse: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    /// Character offset in the template, counted from 0.
    pub(crate) position: usize,
    pub(crate) message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "position {}: {}", self.position, self.message)
    }
}

/// One step of a JSON path: an object key, or (when numeric) an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seg {
    key: Box<str>,
    index: Option<usize>,
}

/// A parsed `{...}` expression, with call names resolved to indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Param(Box<str>),
    Query(Box<str>),
    Header(HeaderName),
    RequestBody(Box<[Seg]>),
    Status(usize),
    CallHeader(usize, HeaderName),
    CallBody(usize, Box<[Seg]>),
}

/// A parsed string template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrTemplate {
    parts: Box<[Part]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Box<str>),
    Expr(Expr),
}

/// A parsed JSON template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonTemplate {
    /// A subtree without expressions, cloned as is.
    Literal(Value),
    /// A string that is exactly one expression: the value keeps its type.
    Expr(Expr),
    Str(StrTemplate),
    Array(Box<[JsonTemplate]>),
    Object(Box<[(String, JsonTemplate)]>),
}

/// What templates render against: the client request and the results so far.
pub(crate) struct Scope<'a> {
    pub(crate) request: &'a ComposeRequest,
    pub(crate) results: &'a [Option<Arc<CallResult>>],
}

/// A value an expression found.
enum Found<'a> {
    Str(&'a str),
    Json(&'a Value),
    Status(u16),
}

/// How expression values are escaped when inserted into a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    None,
    /// Everything but RFC 3986 unreserved characters is percent-encoded, so
    /// a value can't add path segments or a query.
    PathSegment,
}

// === impl Expr ===

impl Expr {
    /// The call this expression reads, if any.
    pub(crate) fn call(&self) -> Option<usize> {
        match self {
            Expr::Status(i) | Expr::CallHeader(i, _) | Expr::CallBody(i, _) => Some(*i),
            _ => None,
        }
    }

    /// Whether it reads a call's body (so that body must be parsed as JSON).
    pub(crate) fn body_of(&self) -> Option<usize> {
        match self {
            Expr::CallBody(i, _) => Some(*i),
            _ => None,
        }
    }

    /// The path parameter it reads, if any.
    pub(crate) fn param(&self) -> Option<&str> {
        match self {
            Expr::Param(p) => Some(p),
            _ => None,
        }
    }

    fn eval<'a>(&self, scope: &Scope<'a>) -> Option<Found<'a>> {
        let req = scope.request;
        let result = |i: &usize| scope.results.get(*i).and_then(Option::as_ref);
        match self {
            Expr::Param(name) => req
                .params
                .iter()
                .find(|(k, _)| k == &**name)
                .map(|(_, v)| Found::Str(v.as_str())),
            Expr::Query(name) => req
                .query
                .iter()
                .find(|(k, _)| k == &**name)
                .map(|(_, v)| Found::Str(v.as_str())),
            Expr::Header(name) => req
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(Found::Str),
            Expr::RequestBody(path) => walk(req.body.as_ref()?, path).map(Found::Json),
            Expr::Status(i) => result(i).map(|r| Found::Status(r.status.as_u16())),
            Expr::CallHeader(i, name) => result(i)?
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(Found::Str),
            Expr::CallBody(i, path) => walk(result(i)?.body.as_ref()?, path).map(Found::Json),
        }
    }
}

fn walk<'a>(mut value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    for seg in path {
        value = match value {
            Value::Object(map) => map.get(&*seg.key)?,
            Value::Array(items) => items.get(seg.index?)?,
            _ => return None,
        };
    }
    Some(value)
}

// === impl StrTemplate ===

impl StrTemplate {
    /// Parses a string template; `resolve` maps a call name to its index.
    pub(crate) fn parse(
        src: &str,
        resolve: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Self, TemplateError> {
        let chars: Vec<char> = src.chars().collect();
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '{' if chars.get(i + 1) == Some(&'{') => {
                    lit.push('{');
                    i += 2;
                }
                '}' if chars.get(i + 1) == Some(&'}') => {
                    lit.push('}');
                    i += 2;
                }
                '{' => {
                    let Some(len) = chars[i + 1..].iter().position(|c| *c == '}') else {
                        return Err(TemplateError {
                            position: i,
                            message: "unclosed `{`; write `{{` for a literal brace".into(),
                        });
                    };
                    let expr = parse_expr(&chars[i + 1..i + 1 + len], i + 1, resolve)?;
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit).into()));
                    }
                    parts.push(Part::Expr(expr));
                    i += len + 2;
                }
                '}' => {
                    return Err(TemplateError {
                        position: i,
                        message: "unmatched `}`; write `}}` for a literal brace".into(),
                    });
                }
                c => {
                    lit.push(c);
                    i += 1;
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        Ok(Self {
            parts: parts.into(),
        })
    }

    /// A template of fixed text.
    pub(crate) fn literal(text: &str) -> Self {
        Self {
            parts: Box::new([Part::Lit(text.into())]),
        }
    }

    /// The template's expressions.
    pub(crate) fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Lit(_) => None,
        })
    }

    /// The text when the template has no expressions.
    pub(crate) fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in self.parts.iter() {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Expr(_) => return None,
            }
        }
        Some(out)
    }

    /// The template with every expression replaced by `x`: what the literal
    /// text must look like for any value (used to check a path's characters).
    pub(crate) fn with_placeholders(&self) -> String {
        let mut out = String::new();
        for part in self.parts.iter() {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Expr(_) => out.push('x'),
            }
        }
        out
    }

    /// Renders into `out`, escaping expression values as asked.
    pub(crate) fn render_into(&self, scope: &Scope<'_>, escape: Escape, out: &mut String) {
        for part in self.parts.iter() {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Expr(e) => {
                    let Some(found) = e.eval(scope) else { continue };
                    match escape {
                        Escape::None => push_found(out, &found),
                        Escape::PathSegment => {
                            let mut raw = String::new();
                            push_found(&mut raw, &found);
                            percent_encode_into(out, &raw);
                        }
                    }
                }
            }
        }
    }

    /// Renders to a new string.
    pub(crate) fn render(&self, scope: &Scope<'_>) -> String {
        let mut out = String::new();
        self.render_into(scope, Escape::None, &mut out);
        out
    }
}

fn push_found(out: &mut String, found: &Found<'_>) {
    use std::fmt::Write;
    match found {
        Found::Str(s) => out.push_str(s),
        Found::Status(s) => {
            let _ = write!(out, "{s}");
        }
        Found::Json(Value::String(s)) => out.push_str(s),
        Found::Json(Value::Null) => {}
        Found::Json(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        Found::Json(Value::Number(n)) => {
            let _ = write!(out, "{n}");
        }
        Found::Json(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode_into(out: &mut String, raw: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn parse_expr(
    chars: &[char],
    offset: usize,
    resolve: &dyn Fn(&str) -> Option<usize>,
) -> Result<Expr, TemplateError> {
    let err = |position: usize, message: String| TemplateError { position, message };
    // Spaces around the expression are allowed: `{ request.params.id }`.
    let start = chars.iter().position(|c| !c.is_whitespace());
    let Some(start) = start else {
        return Err(err(
            offset.saturating_sub(1),
            "empty expression; write `{{` for a literal brace".into(),
        ));
    };
    let end = chars.len() - chars.iter().rev().take_while(|c| c.is_whitespace()).count();
    // Segments with their positions.
    let mut segs: Vec<(usize, String)> = Vec::new();
    let mut cur = String::new();
    let mut cur_pos = offset + start;
    for (i, c) in chars[start..end].iter().enumerate() {
        let pos = offset + start + i;
        if *c == '.' {
            if cur.is_empty() {
                return Err(err(pos, "empty name before `.`".into()));
            }
            segs.push((cur_pos, std::mem::take(&mut cur)));
            cur_pos = pos + 1;
        } else if c.is_ascii_alphanumeric() || *c == '_' || *c == '-' {
            cur.push(*c);
        } else {
            return Err(err(
                pos,
                format!("unexpected character {c:?}; names are letters, digits, `_` and `-`"),
            ));
        }
    }
    if cur.is_empty() {
        return Err(err(offset + end, "expression ends with `.`".into()));
    }
    segs.push((cur_pos, cur));

    let (root_pos, root) = &segs[0];
    let end_pos = offset + end;
    let field = segs.get(1);
    // `name` takes exactly one segment after `what`.
    let one_name = |what: &str| -> Result<String, TemplateError> {
        match (segs.get(2), segs.get(3)) {
            (Some((_, name)), None) => Ok(name.clone()),
            (None, _) => Err(err(end_pos, format!("expected a name after `{what}.`"))),
            (Some(_), Some((pos, _))) => Err(err(
                *pos,
                format!("`{what}.NAME` takes one name; remove what follows it"),
            )),
        }
    };
    let header = |name: String| -> Result<HeaderName, TemplateError> {
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
            err(
                segs.get(2).map_or(end_pos, |s| s.0),
                format!("invalid header name {name:?}"),
            )
        })
    };
    let path = || -> Box<[Seg]> {
        segs[2..]
            .iter()
            .map(|(_, key)| Seg {
                index: key.parse().ok(),
                key: key.as_str().into(),
            })
            .collect()
    };
    if root == "request" {
        let Some((pos, field)) = field else {
            return Err(err(
                end_pos,
                "expected params, query, headers or body after `request.`".into(),
            ));
        };
        return match field.as_str() {
            "params" => Ok(Expr::Param(one_name("request.params")?.into())),
            "query" => Ok(Expr::Query(one_name("request.query")?.into())),
            "headers" => Ok(Expr::Header(header(one_name("request.headers")?)?)),
            "body" => Ok(Expr::RequestBody(path())),
            other => Err(err(
                *pos,
                format!(
                    "unknown field {other:?} of request; expected params, query, headers or body"
                ),
            )),
        };
    }
    let Some(call) = resolve(root) else {
        return Err(err(
            *root_pos,
            format!("unknown root {root:?}; expected request or a call name"),
        ));
    };
    let Some((pos, field)) = field else {
        return Err(err(
            end_pos,
            format!("expected status, headers or body after `{root}.`"),
        ));
    };
    match field.as_str() {
        "status" => match segs.get(2) {
            None => Ok(Expr::Status(call)),
            Some((pos, _)) => Err(err(
                *pos,
                format!("`{root}.status` has no fields; remove what follows it"),
            )),
        },
        "headers" => Ok(Expr::CallHeader(
            call,
            header(one_name(&format!("{root}.headers"))?)?,
        )),
        "body" => Ok(Expr::CallBody(call, path())),
        other => Err(err(
            *pos,
            format!("unknown field {other:?} of call {root:?}; expected status, headers or body"),
        )),
    }
}

// === impl JsonTemplate ===

impl JsonTemplate {
    /// Parses a JSON template; errors are pushed as `KEY: position N: why`,
    /// with `key` the location of `value` (`calls.a.body`).
    pub(crate) fn parse(
        value: &Value,
        key: &str,
        resolve: &dyn Fn(&str) -> Option<usize>,
        errors: &mut Vec<String>,
    ) -> Self {
        match value {
            Value::String(s) => match StrTemplate::parse(s, resolve) {
                Err(e) => {
                    errors.push(format!("{key}: {e}"));
                    JsonTemplate::Literal(Value::Null)
                }
                Ok(t) => {
                    if let Some(lit) = t.as_literal() {
                        return JsonTemplate::Literal(Value::String(lit));
                    }
                    if let [Part::Expr(e)] = &*t.parts {
                        return JsonTemplate::Expr(e.clone());
                    }
                    JsonTemplate::Str(t)
                }
            },
            Value::Array(items) => {
                let items: Box<[JsonTemplate]> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| JsonTemplate::parse(v, &format!("{key}.{i}"), resolve, errors))
                    .collect();
                if items.iter().all(|t| matches!(t, JsonTemplate::Literal(_))) {
                    return JsonTemplate::Literal(value.clone());
                }
                JsonTemplate::Array(items)
            }
            Value::Object(map) => {
                let members: Box<[(String, JsonTemplate)]> = map
                    .iter()
                    .map(|(k, v)| {
                        let t = JsonTemplate::parse(v, &format!("{key}.{k}"), resolve, errors);
                        (k.clone(), t)
                    })
                    .collect();
                if members
                    .iter()
                    .all(|(_, t)| matches!(t, JsonTemplate::Literal(_)))
                {
                    return JsonTemplate::Literal(value.clone());
                }
                JsonTemplate::Object(members)
            }
            other => JsonTemplate::Literal(other.clone()),
        }
    }

    /// `{CALL.body}`: the whole body of call `i`.
    pub(crate) fn call_body(i: usize) -> Self {
        JsonTemplate::Expr(Expr::CallBody(i, Box::new([])))
    }

    /// Calls every expression in the template.
    pub(crate) fn visit(&self, f: &mut dyn FnMut(&Expr)) {
        match self {
            JsonTemplate::Literal(_) => {}
            JsonTemplate::Expr(e) => f(e),
            JsonTemplate::Str(t) => t.exprs().for_each(&mut *f),
            JsonTemplate::Array(items) => items.iter().for_each(|t| t.visit(f)),
            JsonTemplate::Object(members) => members.iter().for_each(|(_, t)| t.visit(f)),
        }
    }

    /// Renders; `None` when the template is one expression whose value is
    /// not there.
    pub(crate) fn render(&self, scope: &Scope<'_>) -> Option<Value> {
        match self {
            JsonTemplate::Literal(v) => Some(v.clone()),
            JsonTemplate::Expr(e) => e.eval(scope).map(|found| match found {
                Found::Str(s) => Value::String(s.to_owned()),
                Found::Json(v) => v.clone(),
                Found::Status(s) => Value::from(s),
            }),
            JsonTemplate::Str(t) => Some(Value::String(t.render(scope))),
            JsonTemplate::Array(items) => Some(Value::Array(
                items.iter().filter_map(|t| t.render(scope)).collect(),
            )),
            JsonTemplate::Object(members) => {
                let mut map = Map::new();
                for (k, t) in members.iter() {
                    if let Some(v) = t.render(scope) {
                        map.insert(k.clone(), v);
                    }
                }
                Some(Value::Object(map))
            }
        }
    }
}

#[cfg(test)]
mod tests;
