use super::*;

/// Feeds `input` in pieces of `step` bytes and returns the records and the
/// stop reason.
fn scan(input: &[u8], step: usize) -> (Vec<RawFraming>, Option<Stop>) {
    let mut scanner = FramingScanner::new(8192);
    let mut records = Vec::new();
    for piece in input.chunks(step) {
        scanner.feed(piece);
        records.extend(scanner.take_records());
    }
    (records, scanner.stopped())
}

fn framing(content_lengths: u16, transfer_encodings: u16) -> RawFraming {
    RawFraming {
        content_lengths,
        transfer_encodings,
    }
}

#[test]
fn follows_pipelined_requests_with_every_body_kind() {
    // A GET, a POST with a length, a chunked POST with an extension and a
    // trailer, and another GET, back to back on one connection. Bodies
    // contain text that looks like heads, to prove they are skipped.
    let input = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
        POST /b HTTP/1.1\r\ncontent-length: 39\r\n\r\n\
        GET /x HTTP/1.1\r\ncontent-length: 1\r\n\r\n\
        POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n\
        1A\r\nGET /y HTTP/1.1\r\nte: x\r\n\r\n\r\n\
        0\r\nx-trailer: 1\r\n\r\n\
        GET /d HTTP/1.1\r\n\r\n";
    for step in [1, 3, 7, input.len()] {
        let (records, stop) = scan(input, step);
        assert_eq!(
            records,
            vec![framing(0, 0), framing(1, 0), framing(0, 1), framing(0, 0)],
            "step {step}"
        );
        assert_eq!(stop, None, "step {step}");
    }
}

#[test]
fn both_length_and_chunked_stop_the_scan() {
    // Either order of the two fields is ambiguous.
    for head in [
        &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
    ] {
        let (records, stop) = scan(head, 5);
        assert_eq!(records, vec![framing(1, 1)]);
        assert!(records[0].ambiguity().is_some());
        assert_eq!(stop, Some(Stop::Ambiguous));
    }
}

#[test]
fn duplicate_equal_lengths_are_counted() {
    let (records, stop) = scan(
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\nabc",
        4,
    );
    assert_eq!(records, vec![framing(2, 0)]);
    assert_eq!(
        records[0].ambiguity(),
        Some("the request has more than one content-length field")
    );
    assert_eq!(stop, Some(Stop::Ambiguous));
}

#[test]
fn http2_preface_and_garbage_stop_the_scan() {
    let (records, stop) = scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 100);
    assert!(records.is_empty());
    assert!(matches!(stop, Some(Stop::Http2 | Stop::Lost)));
    let (_, stop) = scan(b"\x00\x01 not http\r\n\r\n", 100);
    assert_eq!(stop, Some(Stop::Lost));
    // A chunk size that isn't hex loses the stream.
    let (records, stop) = scan(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        100,
    );
    assert_eq!(records.len(), 1);
    assert_eq!(stop, Some(Stop::Lost));
}

#[test]
fn oversized_head_stops_the_scan() {
    let mut scanner = FramingScanner::new(64);
    scanner.feed(b"GET / HTTP/1.1\r\n");
    scanner.feed(&[b'a'; 100]);
    assert_eq!(scanner.stopped(), Some(Stop::Lost));
}

#[test]
fn chunk_sizes() {
    assert_eq!(chunk_size(b"1a"), Some(26));
    assert_eq!(chunk_size(b"0;name=value"), Some(0));
    assert_eq!(chunk_size(b""), None);
    assert_eq!(chunk_size(b"fffffffffffffffff"), None, "overflow");
}

// Fuzz-style properties over arbitrary input: the scanner never panics, and
// how the bytes are split across reads never changes what it records.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_splits_do_not_matter(
        input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        step in 1usize..64,
    ) {
        let whole = scan(&input, input.len().max(1));
        let pieces = scan(&input, step);
        proptest::prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn well_formed_pipelines_are_followed_whatever_the_split(
        bodies in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 1..6),
        step in 1usize..32,
    ) {
        let mut input = Vec::new();
        for body in &bodies {
            input.extend_from_slice(format!("POST /p HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
            input.extend_from_slice(body);
        }
        let (records, stop) = scan(&input, step);
        proptest::prop_assert_eq!(records, vec![framing(1, 0); bodies.len()]);
        proptest::prop_assert_eq!(stop, None);
    }
}
