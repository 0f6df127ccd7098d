use http::HeaderValue;
use proptest::prelude::*;

use super::*;

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40_000)
}

fn xff(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
    }
    headers
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn trusted(nets: &[&str]) -> TrustedProxies {
    TrustedProxies::parse(nets).unwrap()
}

#[test]
fn without_trusted_proxies_xff_is_ignored() {
    let got = client_ip(
        peer("203.0.113.9"),
        &xff(&["1.2.3.4"]),
        &TrustedProxies::none(),
    );
    assert_eq!(got, ip("203.0.113.9"));
}

#[test]
fn spoofed_xff_from_an_untrusted_peer_is_ignored() {
    let t = trusted(&["10.0.0.0/8"]);
    let got = client_ip(peer("203.0.113.9"), &xff(&["10.0.0.1, 1.2.3.4"]), &t);
    assert_eq!(got, ip("203.0.113.9"), "the peer is not a proxy we trust");
}

#[test]
fn rightmost_untrusted_entry_wins() {
    let t = trusted(&["10.0.0.0/8", "192.168.1.1"]);
    // The client forged "6.6.6.6"; the first proxy appended the real peer
    // 198.51.100.7, then a second trusted proxy 192.168.1.1 appended itself.
    let headers = xff(&["6.6.6.6, 198.51.100.7", "192.168.1.1"]);
    let got = client_ip(peer("10.1.2.3"), &headers, &t);
    assert_eq!(got, ip("198.51.100.7"));
}

#[test]
fn entries_with_ports_brackets_and_ipv6_parse() {
    let t = trusted(&["::1"]);
    for (value, want) in [
        ("198.51.100.7:5555", "198.51.100.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::2]", "2001:db8::2"),
        (" 2001:db8::3 ", "2001:db8::3"),
        ("::ffff:198.51.100.8", "198.51.100.8"),
    ] {
        assert_eq!(
            client_ip(peer("::1"), &xff(&[value]), &t),
            ip(want),
            "{value}"
        );
    }
}

#[test]
fn garbage_stops_the_walk_at_the_last_trusted_hop() {
    let t = trusted(&["10.0.0.0/8"]);
    let headers = xff(&["198.51.100.7, not-an-ip, 10.0.0.2"]);
    let got = client_ip(peer("10.0.0.1"), &headers, &t);
    assert_eq!(
        got,
        ip("10.0.0.2"),
        "never skips past garbage to a client-written entry"
    );
}

#[test]
fn all_trusted_gives_the_leftmost_entry() {
    let t = trusted(&["10.0.0.0/8"]);
    let got = client_ip(peer("10.0.0.1"), &xff(&["10.0.0.3, 10.0.0.2"]), &t);
    assert_eq!(got, ip("10.0.0.3"));
}

#[test]
fn no_xff_from_a_trusted_peer_is_the_peer() {
    let t = trusted(&["10.0.0.0/8"]);
    assert_eq!(
        client_ip(peer("10.0.0.1"), &HeaderMap::new(), &t),
        ip("10.0.0.1")
    );
}

#[test]
fn ipv4_mapped_peer_is_matched_as_ipv4() {
    let t = trusted(&["10.0.0.0/8"]);
    let got = client_ip(peer("::ffff:10.0.0.1"), &xff(&["198.51.100.7"]), &t);
    assert_eq!(got, ip("198.51.100.7"));
}

#[test]
fn bad_trusted_entries_are_refused_with_the_key() {
    for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x", ""] {
        let err = TrustedProxies::parse(&[bad]).unwrap_err();
        assert!(err.starts_with("limits.trusted_proxies[0]: "), "{err}");
    }
    assert!(trusted(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
    assert!(!trusted(&["0.0.0.0/0"]).contains(ip("::1")));
    assert!(trusted(&["::/0"]).contains(ip("::1")));
    assert!(trusted(&["fd00::/8"]).contains(ip("fd12::1")));
    assert!(!trusted(&["fd00::/8"]).contains(ip("fe80::1")));
}

proptest! {
    #[test]
    fn garbage_never_panics_and_untrusted_peer_always_wins(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..5),
    ) {
        let mut headers = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append("x-forwarded-for", v);
            }
        }
        let t = trusted(&["10.0.0.0/8", "::1"]);
        let _ = client_ip(peer("10.0.0.1"), &headers, &t);
        prop_assert_eq!(client_ip(peer("203.0.113.9"), &headers, &t), ip("203.0.113.9"));
    }

    #[test]
    fn a_client_cannot_choose_its_address(forged in any::<[u8; 4]>(), real in any::<[u8; 4]>()) {
        // Whatever the client writes, the trusted proxy's appended entry wins
        // (unless the real address is itself trusted).
        let real = IpAddr::from(real);
        let t = trusted(&["10.0.0.0/8"]);
        prop_assume!(!t.contains(real));
        let headers = xff(&[&format!("{}, {real}", IpAddr::from(forged))]);
        prop_assert_eq!(client_ip(peer("10.9.9.9"), &headers, &t), real);
    }
}
