//! Path normalization on arbitrary input: never panics, is idempotent, and
//! leaves no `//`, dot segment, or encoded unreserved character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_gateway::paths::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(once) = normalize_path(raw) else {
        return;
    };
    assert_eq!(normalize_path(&once).as_deref(), Ok(once.as_str()));
    assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"));
    assert!(!once.ends_with("/.") && !once.ends_with("/.."));
    for (i, _) in once.match_indices('%') {
        let byte = u8::from_str_radix(&once[i + 1..i + 3], 16).expect("two hex digits");
        assert!(!(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)));
    }
});
