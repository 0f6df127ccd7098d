//! Path normalization: one spelling per path, computed once before route
//! matching, so a protected route can't be reached by another spelling of
//! its path.
//!
//! # Rules, in order
//!
//! 1. The path must start with `/` (origin form); anything else, such as
//!    `*` of `OPTIONS *`, is [`PathError::NotOriginForm`].
//! 2. A literal `\` is refused ([`PathError::Backslash`]): some servers
//!    treat it as `/`, so `/admin\..\x` could mean two different paths.
//! 3. Percent-encodings are decoded when they encode an unreserved
//!    character (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`): `%61dmin` is
//!    `admin` and `%2e%2e` is `..`. Every other encoding stays encoded, with
//!    its hex in upper case (`%c3%a9` → `%C3%A9`), so the result is the same
//!    whatever case the client used. Bytes that are not UTF-8 (`%FF`) stay
//!    encoded and are fine.
//! 4. Some encodings are refused with 400 instead ([`PathError`]):
//!    - `%2F` (`/`) and `%5C` (`\`): a path like `/admin/..%2f` or
//!      `/public/..%2Fadmin` is one segment to the gateway but, once an
//!      upstream decodes it, climbs out into a route the gateway never
//!      matched and never authorized;
//!    - `%00` (NUL): C-based backends truncate at it;
//!    - a `%` not followed by two hex digits.
//! 5. Characters outside visible ASCII (spaces, controls, raw UTF-8) are
//!    percent-encoded, upper-case hex.
//! 6. Repeated slashes collapse: `//admin///x` is `/admin/x`.
//! 7. Dot segments are resolved (RFC 3986 §5.2.4): `/a/./b` is `/a/b`,
//!    `/a/../b` is `/b`, a trailing `/.` or `/..` leaves a trailing `/`.
//!    This runs after decoding, so `%2e%2e` counts as `..`. A path that
//!    would climb above the root (`/../etc`) is refused
//!    ([`PathError::AboveRoot`]) rather than clamped: no honest client
//!    sends one. A dot segment with a parameter (`..;x`, `.;x`) is
//!    refused too ([`PathError::DotSegmentParameter`]): servlet containers
//!    read `/..;/` as `/../`.
//! 8. Case is kept. Routes are case-sensitive, so `/Admin` does not match
//!    a route `/admin`: it can't reach that route's upstream through it
//!    (it matches only a route that spells it `/Admin`, or a catch-all).
//!    An upstream that ignores case must be protected by a catch-all rule
//!    too, or by listing each spelling.
//!
//! The query string is not touched: [`normalize_path_and_query`] splits at
//! the first `?` and keeps the rest as received.
//!
//! The proxy must send the normalized path upstream (and rewrite from it),
//! so the path the upstream serves is the one that was matched and
//! authorized.
//!
//! Limits of the rules, by design: reserved characters other than `/` and
//! `\` (`!$&'()*+,;=:@`) are different from their encoded forms (RFC 3986
//! §6.2.2.2), so a route path should spell protected segments with
//! unreserved characters only; and a trailing slash is significant
//! (`/admin/` is not `/admin`): protect both, e.g. `/admin` and
//! `/admin/{*rest}`.
//!
//! ```
//! use switchyard_gateway::paths::{normalize_path, PathError};
//!
//! assert_eq!(normalize_path("//a/./b/../%61dmin").unwrap(), "/a/admin");
//! assert_eq!(normalize_path("/admin/..%2fsecret"), Err(PathError::EncodedSlash));
//! assert_eq!(normalize_path("/%2e%2e/admin"), Err(PathError::AboveRoot));
//! ```

use std::borrow::Cow;

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the request path must start with /")]
    NotOriginForm,
    /// `%2F`: an encoded slash would let an upstream see segments the gateway didn't.
    #[error("encoded slash (%2F) in the path")]
    EncodedSlash,
    /// `%5C`: an encoded backslash.
    #[error("encoded backslash (%5C) in the path")]
    EncodedBackslash,
    /// `%00`, or a raw NUL byte.
    #[error("NUL (%00) in the path")]
    EncodedNul,
    /// A literal backslash.
    #[error("backslash in the path")]
    Backslash,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    MalformedPercent,
    /// More `..` segments than there are segments to remove.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// `.;x` or `..;x`.
    #[error("a dot segment with a parameter in the path")]
    DotSegmentParameter,
}

/// The normalized form of a request path (without query); see the
/// [module docs](self) for the rules. Borrowed when `raw` is already normal.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    rebuild(raw).map(Cow::Owned)
}

/// True when `raw` is already its own normal form: visible ASCII without
/// `%` or a backslash, no empty segment but a trailing one, no dot segment. Most
/// paths are, and skip decoding and rebuilding (two allocations).
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    // One pass over the bytes, each segment checked at its end.
    let rest = rest.as_bytes();
    let mut start = 0;
    for (i, &b) in rest.iter().enumerate() {
        if !b.is_ascii_graphic() || b == b'%' || b == b'\\' {
            return false;
        }
        if b == b'/' {
            if !is_normal_segment(&rest[start..i], false) {
                return false;
            }
            start = i + 1;
        }
    }
    is_normal_segment(&rest[start..], true)
}

/// A segment that normalizing leaves as it is: not a dot segment (nor one
/// with path parameters, `.;x`), and empty only when it is the last.
fn is_normal_segment(seg: &[u8], last: bool) -> bool {
    !((seg.is_empty() && !last)
        || seg == b"."
        || seg == b".."
        || seg.starts_with(b".;")
        || seg.starts_with(b"..;"))
}

/// Decodes and rebuilds `raw` segment by segment.
fn rebuild(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode_unreserved(raw.as_bytes())?;
    let trailing_slash = decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let mut segments = decoded.split('/').filter(|s| !s.is_empty()).peekable();
    // Whether the last segment processed was a dot segment: `/a/..` and
    // `/a/.` end with a slash (RFC 3986 §5.2.4).
    let mut ends_in_dir = trailing_slash;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::DotSegmentParameter);
            }
            s => out.push(s),
        }
        if last {
            ends_in_dir = trailing_slash || seg == "." || seg == "..";
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || ends_in_dir {
        path.push('/');
    }
    Ok(path)
}

/// [`normalize_path`] on the part before the first `?`; the query is kept
/// exactly as received.
///
/// ```
/// use switchyard_gateway::paths::normalize_path_and_query;
/// assert_eq!(normalize_path_and_query("/a//b?x=%2f..").unwrap(), "/a/b?x=%2f..");
/// ```
pub fn normalize_path_and_query(raw: &str) -> Result<Cow<'_, str>, PathError> {
    match split_query(raw) {
        (path, Some(_)) if is_normal(path) => Ok(Cow::Borrowed(raw)),
        (path, Some(query)) => Ok(Cow::Owned(format!("{}?{query}", normalize_path(path)?))),
        (_, None) => normalize_path(raw),
    }
}

/// The path of a request target and its query, if it has one (the text
/// after the first `?`).
///
/// A byte scan: `split_once('?')` goes through the generic char searcher,
/// whose setup costs more than the scan of a typical path.
pub(crate) fn split_query(target: &str) -> (&str, Option<&str>) {
    match target.bytes().position(|b| b == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes unreserved encodings, upper-cases the others, encodes what is
/// not visible ASCII, and refuses the dangerous ones.
fn decode_unreserved(raw: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::MalformedPercent);
                };
                let byte = hi * 16 + lo;
                match byte {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::EncodedNul),
                    b if is_unreserved(b) => out.push(b as char),
                    b => {
                        out.push('%');
                        out.push(HEX[usize::from(b >> 4)] as char);
                        out.push(HEX[usize::from(b & 0xf)] as char);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::EncodedNul),
            b if b.is_ascii_graphic() => {
                out.push(b as char);
                i += 1;
            }
            b => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
