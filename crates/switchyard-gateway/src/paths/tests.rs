use proptest::prelude::*;

use super::*;

#[track_caller]
fn ok(raw: &str, want: &str) {
    assert_eq!(
        normalize_path(raw).as_deref(),
        Ok(want),
        "normalizing {raw:?}"
    );
}

#[track_caller]
fn err(raw: &str, want: PathError) {
    assert_eq!(normalize_path(raw), Err(want), "normalizing {raw:?}");
}

#[test]
fn plain_paths_are_unchanged() {
    ok("/", "/");
    ok("/admin", "/admin");
    ok("/admin/", "/admin/");
    ok("/a/b-c_d.e~f/g", "/a/b-c_d.e~f/g");
    ok("/a/...", "/a/...");
    ok("/a/{x}:y@z!$&'()*+,;=", "/a/{x}:y@z!$&'()*+,;=");
}

#[test]
fn spellings_of_admin_all_become_admin() {
    ok("//admin", "/admin");
    ok("///admin//", "/admin/");
    ok("/./admin", "/admin");
    ok("/a/../admin", "/admin");
    ok("/a/b/../../admin", "/admin");
    ok("/%61dmin", "/admin");
    ok("/%61%64%6D%69%6e", "/admin");
    ok("/public/%2e%2e/admin", "/admin");
    ok("/public/%2E./admin", "/admin");
    ok("/public/.%2e/admin", "/admin");
    ok("/x/%2e/admin", "/x/admin");
    ok("/public//..//admin", "/admin");
}

#[test]
fn case_is_kept_so_admin_in_capitals_is_another_path() {
    ok("/Admin", "/Admin");
    ok("/ADMIN/x", "/ADMIN/x");
    // Only the hex digits of kept encodings change case.
    ok("/%41dmin", "/Admin");
}

#[test]
fn encoded_slash_backslash_and_nul_are_refused() {
    err("/admin/..%2f", PathError::EncodedSlash);
    err("/admin/..%2F", PathError::EncodedSlash);
    err("/public/..%2Fadmin", PathError::EncodedSlash);
    err("/a%5cb", PathError::EncodedBackslash);
    err("/a%5C..%5Cadmin", PathError::EncodedBackslash);
    err("/admin%00.html", PathError::EncodedNul);
    err("/a\\b", PathError::Backslash);
    err("/a\0b", PathError::EncodedNul);
}

#[test]
fn climbing_above_the_root_is_refused() {
    err("/..", PathError::AboveRoot);
    err("/../admin", PathError::AboveRoot);
    err("/a/../../admin", PathError::AboveRoot);
    err("/%2e%2e/etc/passwd", PathError::AboveRoot);
    err("//..//admin", PathError::AboveRoot);
}

#[test]
fn dot_segments_with_parameters_are_refused() {
    err("/public/..;/admin", PathError::DotSegmentParameter);
    err("/public/.;x/admin", PathError::DotSegmentParameter);
    err("/public/%2e%2e;/admin", PathError::DotSegmentParameter);
    ok("/a;b/c", "/a;b/c");
}

#[test]
fn trailing_dot_segments_leave_a_directory() {
    ok("/a/.", "/a/");
    ok("/a/b/..", "/a/");
    ok("/a/..", "/");
    ok("/.", "/");
    ok("/./", "/");
}

#[test]
fn other_encodings_are_kept_with_upper_case_hex() {
    ok("/caf%c3%a9", "/caf%C3%A9");
    ok("/a%20b", "/a%20b");
    ok("/a%3fb", "/a%3Fb");
    ok("/%ff%FE", "/%FF%FE");
    ok("/mixed/%7e%7E%41%2a", "/mixed/~~A%2A");
}

#[test]
fn non_utf8_percent_sequences_are_fine() {
    ok("/%C0%AF", "/%C0%AF");
    ok("/%80%81/../x", "/x");
}

#[test]
fn malformed_percent_encoding_is_refused() {
    err("/a%", PathError::MalformedPercent);
    err("/a%4", PathError::MalformedPercent);
    err("/a%zz", PathError::MalformedPercent);
    err("/a%%41", PathError::MalformedPercent);
}

#[test]
fn raw_non_ascii_and_spaces_are_encoded() {
    ok("/café", "/caf%C3%A9");
    ok("/a b", "/a%20b");
}

#[test]
fn non_origin_forms_are_refused() {
    err("*", PathError::NotOriginForm);
    err("", PathError::NotOriginForm);
    err("admin", PathError::NotOriginForm);
}

#[test]
fn the_query_is_not_touched() {
    assert_eq!(
        normalize_path_and_query("//x/../a?b=%2f/../..&c=%61").as_deref(),
        Ok("/a?b=%2f/../..&c=%61")
    );
    assert_eq!(normalize_path_and_query("/a/").as_deref(), Ok("/a/"));
    assert_eq!(
        normalize_path_and_query("/a%2f?x"),
        Err(PathError::EncodedSlash)
    );
}

#[test]
fn the_query_starts_at_the_first_question_mark() {
    assert_eq!(split_query("/a?b?c"), ("/a", Some("b?c")));
    assert_eq!(split_query("/a?"), ("/a", Some("")));
    assert_eq!(split_query("/a"), ("/a", None));
    assert_eq!(split_query(""), ("", None));
}

fn path_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%41".to_owned()),
        Just("%7e".to_owned()),
        Just("%c3%A9".to_owned()),
        Just("%25".to_owned()),
        Just(";".to_owned()),
        "[a-zA-Z0-9_~-]{1,4}",
        any::<char>().prop_map(|c| c.to_string()),
        (any::<u8>()).prop_map(|b| format!("%{b:02x}")),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #[test]
    fn normalizing_is_idempotent_and_canonical(raw in path_strategy()) {
        if let Ok(once) = normalize_path(&raw) {
            let again = normalize_path(&once);
            prop_assert_eq!(again, Ok(once.clone()));
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"), "{once}");
            prop_assert!(!once.contains("/./"), "{once}");
            prop_assert!(!once.contains("/../"), "{once}");
            prop_assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{once}");
            prop_assert!(once.is_ascii());
            // No encoded unreserved character, no lower-case hex, and no
            // encoded slash, backslash or NUL.
            let bytes = once.as_bytes();
            for (i, _) in once.match_indices('%') {
                let h = &once[i + 1..i + 3];
                prop_assert!(h.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()), "{once}");
                let byte = u8::from_str_radix(h, 16).unwrap();
                prop_assert!(!is_unreserved(byte) && byte != b'/' && byte != b'\\' && byte != 0, "{once}");
                prop_assert!(bytes.len() >= i + 3);
            }
        }
    }

    #[test]
    fn the_shortcut_for_normal_paths_agrees_with_the_rebuild(raw in path_strategy()) {
        prop_assert_eq!(normalize_path(&raw).map(Cow::into_owned), rebuild(&raw));
        if is_normal(&raw) {
            prop_assert_eq!(rebuild(&raw), Ok(raw.clone()));
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(raw in ".*") {
        let _ = normalize_path(&raw);
        let _ = normalize_path_and_query(&raw);
    }
}
