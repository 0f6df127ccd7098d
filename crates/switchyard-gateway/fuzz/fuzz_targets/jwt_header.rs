//! The JWT header pre-check on arbitrary input: never panics, and never
//! accepts `alg: none` or an algorithm outside the allow-list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_gateway::auth::{JwtAlgorithm, jwt::parse_header};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let allowed = [JwtAlgorithm::RS256, JwtAlgorithm::EdDSA];
    if let Ok(header) = parse_header(token, &allowed) {
        assert!(allowed.contains(&header.alg));
    }
});
