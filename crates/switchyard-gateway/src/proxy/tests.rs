use super::*;

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        headers.append(*k, HeaderValue::from_static(v));
    }
    headers
}

#[test]
fn hop_by_hop_names_are_exactly_the_listed_ones() {
    for name in HOP_BY_HOP {
        assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
    }
    // Same lengths, one byte off; and common fields.
    for name in [
        "tf",
        "trailex",
        "upgradx",
        "connectiox",
        "keep-alivx",
        "proxy-connectiox",
        "transfer-encodinx",
        "proxy-authenticatx",
        "proxy-authorizatiox",
        "trailers",
        "host",
        "content-length",
        "x-forwarded-for",
    ] {
        assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
    }
}

#[test]
fn hop_by_hop_fields_go_and_te_trailers_stays() {
    let mut headers = map(&[
        ("connection", "keep-alive, X-Secret"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip, trailers"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic x"),
        ("proxy-authenticate", "Basic"),
        ("traceparent", "00-abc-def-01"),
        ("x-end-to-end", "kept"),
    ]);
    remove_hop_by_hop(&mut headers);
    let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["te", "traceparent", "x-end-to-end"]);
    assert_eq!(headers["te"], "trailers");
}

#[test]
fn a_plain_keep_alive_connection_field_is_all_that_goes() {
    let left = |pairs| {
        let mut headers = map(pairs);
        remove_hop_by_hop(&mut headers);
        headers
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        left(&[
            ("connection", "Keep-Alive"),
            ("connection", " keep-alive "),
            ("content-type", "text/plain"),
        ]),
        ["content-type"]
    );
    // Any other option names a field to remove, even one called `close`.
    assert_eq!(
        left(&[
            ("connection", "keep-alive, close"),
            ("close", "1"),
            ("x", "2"),
        ]),
        ["x"]
    );
}

#[test]
fn content_length_must_be_one_number() {
    let framing =
        |fields: &[(&'static str, &'static str)]| request_framing(&map(fields), Version::HTTP_11);
    assert_eq!(framing(&[("content-length", "12")]), Ok(Some(12)));
    assert_eq!(framing(&[("content-length", " 12 ")]), Ok(Some(12)));
    assert!(framing(&[("content-length", "1,1")]).is_err());
    assert!(framing(&[("content-length", "-1")]).is_err());
    assert!(framing(&[("content-length", "1"), ("content-length", "1")]).is_err());
    assert!(framing(&[("content-length", "1"), ("transfer-encoding", "chunked")]).is_err());
    assert_eq!(framing(&[("transfer-encoding", "chunked")]), Ok(None));
    assert_eq!(framing(&[("host", "a")]), Ok(None));
}

#[test]
fn request_ids_are_kept_when_usable_and_created_otherwise() {
    let kept = request_id(&map(&[("x-request-id", "abc-123")]));
    assert_eq!(kept, "abc-123");
    let created = request_id(&map(&[("x-request-id", "has space")]));
    assert_eq!(created.len(), 32);
    assert!(created.as_bytes().iter().all(u8::is_ascii_hexdigit));
    // Two created ids differ.
    assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    // Lower-case hex, every digit in use (at each end of the id too).
    let ids: Vec<HeaderValue> = (0..200).map(|_| request_id(&HeaderMap::new())).collect();
    for at in [None, Some(0), Some(31)] {
        let mut seen: Vec<u8> = ids
            .iter()
            .flat_map(|id| match at {
                None => id.as_bytes().to_vec(),
                Some(i) => vec![id.as_bytes()[i]],
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, b"0123456789abcdef", "digits at {at:?}");
    }
    // The two digits of a byte are its two halves, not one of them twice.
    assert!(ids.iter().any(|id| id.as_bytes()[30] != id.as_bytes()[31]));
}

#[test]
fn sidecar_service_prefers_the_header() {
    let headers = map(&[("x-switchyard-service", "billing")]);
    assert_eq!(
        sidecar_service(&headers, Some("users:8080")),
        Some("billing")
    );
    assert_eq!(
        sidecar_service(&HeaderMap::new(), Some("users:8080")),
        Some("users")
    );
    assert_eq!(sidecar_service(&HeaderMap::new(), None), None);
}

#[tokio::test(start_paused = true)]
async fn deadline_header_carries_the_time_left_when_the_request_leaves() {
    use tower::service_fn;

    // An incoming budget of 800ms becomes the request's deadline.
    let mut headers = map(&[(DEADLINE_HEADER, "800")]);
    let deadline = take_deadline(&mut headers).unwrap();
    assert!(
        !headers.contains_key(DEADLINE_HEADER),
        "the stale value is removed"
    );

    let svc = DeadlineHeaderLayer.layer(service_fn(|req: Request<Body>| async move {
        Ok::<_, Infallible>(req.headers().get(DEADLINE_HEADER).cloned())
    }));
    let mut req = Request::new(Body::empty());
    req.set_deadline(deadline);
    // 300ms pass in the policy stack before the request is sent.
    tokio::time::advance(Duration::from_millis(300)).await;
    let sent = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(sent.unwrap(), "500");

    // Without a deadline, no header (even if one was copied in).
    let mut req = Request::new(Body::empty());
    req.headers_mut()
        .insert(DEADLINE_HEADER, HeaderValue::from_static("9"));
    assert_eq!(svc.oneshot(req).await.unwrap(), None);

    // Garbage and absurd values are ignored rather than trusted.
    assert_eq!(take_deadline(&mut map(&[(DEADLINE_HEADER, "soon")])), None);
    assert_eq!(
        take_deadline(&mut map(&[(DEADLINE_HEADER, "18446744073709551615")])),
        None
    );
}

#[test]
fn client_addresses_are_written_as_display_writes_them() {
    for ip in [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "10.20.3.4",
        "::1",
        "2001:db8::7",
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        assert_eq!(ip_text(ip), ip.to_string());
    }
}

/// A service that is not ready on its first poll (it wakes the task and is
/// ready on the next), or whose readiness fails.
#[derive(Clone)]
struct SlowToReady {
    polls: Arc<std::sync::atomic::AtomicUsize>,
    fail: bool,
}

impl Service<Request<Body>> for SlowToReady {
    type Response = Response<Body>;
    type Error = Error;
    type Future = std::future::Ready<Result<Response<Body>, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.fail {
            return Poll::Ready(Err(Error::Upstream("not ready, ever".into())));
        }
        if self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        std::future::ready(Ok(Response::new(Body::from("called"))))
    }
}

#[tokio::test]
async fn an_upstream_not_ready_at_once_is_waited_for_and_a_failing_one_fails_the_call() {
    for fail in [false, true] {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let svc: UpstreamService =
            tower::util::Either::Right(BoxCloneSyncService::new(SlowToReady {
                polls: polls.clone(),
                fail,
            }));
        let head = Arc::new(Head::from(Request::new(()).into_parts().0));
        let result = start_call(&svc, head, None, Body::empty()).await;
        if fail {
            assert!(result.is_err(), "the readiness error is the call's result");
        } else {
            let body = result.unwrap().into_body().collect_bytes().await.unwrap();
            assert_eq!(body, "called");
            assert_eq!(
                polls.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "polled once without waiting, then again by the wait"
            );
        }
    }
}

/// The one address kept per thread never answers for another: alternating
/// clients each get their own, IPv6 included.
#[test]
fn the_kept_address_value_is_the_clients_own() {
    let v4 = std::net::IpAddr::from([192, 0, 2, 7]);
    let other = std::net::IpAddr::from([10, 0, 0, 255]);
    let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
    for _ in 0..2 {
        assert_eq!(ip_value(v4).unwrap(), "192.0.2.7");
        assert_eq!(ip_value(v4).unwrap(), "192.0.2.7");
        assert_eq!(ip_value(other).unwrap(), "10.0.0.255");
        assert_eq!(ip_value(v6).unwrap(), "2001:db8::1");
    }
}
