//! JWKS parsing on arbitrary bytes: never panics, and every key it returns
//! is bound to an allowed algorithm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_gateway::auth::{JwtAlgorithm, jwks::parse_jwks};

fuzz_target!(|data: &[u8]| {
    let allowed = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
        JwtAlgorithm::HS256,
    ];
    if let Ok(keys) = parse_jwks(data, &allowed) {
        assert!(!keys.is_empty());
        assert!(keys.iter().all(|k| allowed.contains(&k.algorithm())));
    }
});
