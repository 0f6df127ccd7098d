use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tower::{ServiceExt, service_fn};

use super::*;
use crate::{Call, events::Recorder};

#[derive(Debug, thiserror::Error)]
#[error("connection reset")]
struct Reset;

/// The outcome the primary service produces for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    BreakerOpen,
    BulkheadFull,
    RateLimited,
    Deadline,
    Upstream,
    RetriesOnUpstream,
    RetriesOnBreaker,
}

fn error(outcome: Outcome) -> Option<Error> {
    let upstream = || Error::Upstream(Box::new(Reset));
    Some(match outcome {
        Outcome::Ok => return None,
        Outcome::BreakerOpen => Error::BreakerOpen {
            retry_after: Duration::from_secs(5),
        },
        Outcome::BulkheadFull => Error::BulkheadFull { max_concurrent: 1 },
        Outcome::RateLimited => Error::RateLimited {
            retry_after: Duration::from_millis(100),
        },
        Outcome::Deadline => Error::DeadlineExceeded,
        Outcome::Upstream => upstream(),
        Outcome::RetriesOnUpstream => Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(upstream()),
        },
        Outcome::RetriesOnBreaker => Error::BudgetExhausted {
            attempts: 1,
            last: Box::new(Error::BreakerOpen {
                retry_after: Duration::ZERO,
            }),
        },
    })
}

/// The primary service: answers "primary" or fails as the request says; the
/// error comes as a boxed foreign error for `Upstream`, as tower services do.
fn primary(
    calls: Arc<AtomicUsize>,
) -> impl Service<Call<Outcome>, Response = String, Error = BoxError, Future: Send> + Clone {
    service_fn(move |call: Call<Outcome>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let outcome = call.into_inner();
        let result = match (outcome, error(outcome)) {
            (Outcome::Upstream, _) => Err(BoxError::from(Reset)),
            (_, Some(err)) => Err(BoxError::from(err)),
            (_, None) => Ok("primary".to_owned()),
        };
        async move { result }
    })
}

async fn send<S>(svc: &mut S, outcome: Outcome) -> Result<String, Error>
where
    S: Service<Call<Outcome>, Response = String, Error = Error>,
{
    svc.ready().await?.call(Call::new(outcome)).await
}

#[tokio::test]
async fn s47_fires_for_the_kinds_it_is_set_for_and_not_for_others() {
    let recorder = Recorder::new();
    let on: FallbackOn = [
        FallbackKind::BreakerOpen,
        FallbackKind::DeadlineExceeded,
        FallbackKind::Upstream,
    ]
    .into_iter()
    .collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = FallbackLayer::value(on, "fallback".to_owned())
        .with_events(Events::new("recs", recorder.clone()))
        .layer(primary(calls.clone()));

    assert_eq!(send(&mut svc, Outcome::Ok).await.unwrap(), "primary");
    for fires in [
        Outcome::BreakerOpen,
        Outcome::Deadline,
        Outcome::Upstream,
        Outcome::RetriesOnUpstream,
        Outcome::RetriesOnBreaker,
    ] {
        assert_eq!(
            send(&mut svc, fires).await.unwrap(),
            "fallback",
            "fallback for {fires:?}"
        );
    }
    let err = send(&mut svc, Outcome::BulkheadFull).await.unwrap_err();
    assert!(matches!(err, Error::BulkheadFull { .. }), "{err:?}");
    let err = send(&mut svc, Outcome::RateLimited).await.unwrap_err();
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_millis(100)),
        "passed through unchanged"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 8);

    let events = recorder.take();
    assert_eq!(events.len(), 5, "{events:?}");
    for (event, kind) in events.iter().zip([
        "breaker-open",
        "deadline-exceeded",
        "upstream",
        "retries-exhausted",
        "budget-exhausted",
    ]) {
        assert!(
            event.starts_with("Fallback") && event.contains(&format!("\"{kind}\"")),
            "{event}"
        );
    }
}

#[tokio::test]
async fn s47_default_set_answers_every_kind() {
    let mut svc = FallbackLayer::value(FallbackOn::default(), "fallback".to_owned())
        .layer(primary(Arc::default()));
    for outcome in [
        Outcome::BreakerOpen,
        Outcome::BulkheadFull,
        Outcome::RateLimited,
        Outcome::Deadline,
        Outcome::Upstream,
    ] {
        assert_eq!(send(&mut svc, outcome).await.unwrap(), "fallback");
    }
    let mut never = FallbackLayer::value(FallbackOn::NONE, "fallback".to_owned())
        .layer(primary(Arc::default()));
    assert!(send(&mut never, Outcome::Upstream).await.is_err());
}

#[tokio::test]
async fn from_fn_sees_the_error() {
    let mut svc = FallbackLayer::from_fn(FallbackOn::ALL, |err: &Error| {
        format!("degraded ({})", err.kind())
    })
    .layer(primary(Arc::default()));
    assert_eq!(
        send(&mut svc, Outcome::BreakerOpen).await.unwrap(),
        "degraded (breaker-open)"
    );
    assert_eq!(send(&mut svc, Outcome::Ok).await.unwrap(), "primary");
}

#[tokio::test]
async fn service_gets_a_copy_of_the_request() {
    let fallback_calls = Arc::new(AtomicUsize::new(0));
    let counter = fallback_calls.clone();
    let fallback = service_fn(move |call: Call<Outcome>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let out = format!("fallback for {:?}", call.get_ref());
        async move { Ok::<_, BoxError>(out) }
    });
    let on = FallbackOn::NONE.with(FallbackKind::Upstream);
    let mut svc = FallbackLayer::service(on, fallback).layer(primary(Arc::default()));
    assert_eq!(
        send(&mut svc, Outcome::Upstream).await.unwrap(),
        "fallback for Upstream"
    );
    assert!(send(&mut svc, Outcome::Deadline).await.is_err());
    assert_eq!(send(&mut svc, Outcome::Ok).await.unwrap(), "primary");
    assert_eq!(fallback_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failing_fallback_service_returns_its_own_error() {
    let fallback =
        service_fn(|_: Call<Outcome>| async { Err::<String, _>(Error::DeadlineExceeded) });
    let mut svc = FallbackLayer::service(FallbackOn::ALL, fallback).layer(primary(Arc::default()));
    let err = send(&mut svc, Outcome::Upstream).await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
}

/// A request whose body can't be replayed.
#[derive(Debug)]
struct Streamed;

impl PolicyRequest for Streamed {
    fn deadline(&self) -> Option<tokio::time::Instant> {
        None
    }
    fn set_deadline(&mut self, _: tokio::time::Instant) {}
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

#[tokio::test]
async fn a_request_that_cant_be_copied_gets_no_fallback_service() {
    let recorder = Recorder::new();
    let fallback_calls = Arc::new(AtomicUsize::new(0));
    let counter = fallback_calls.clone();
    let fallback = service_fn(move |_: Streamed| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>("fallback") }
    });
    let mut svc = FallbackLayer::service(FallbackOn::ALL, fallback)
        .with_events(Events::new("upload", recorder.clone()))
        .layer(service_fn(|_: Streamed| async {
            Err::<&str, _>(BoxError::from(Reset))
        }));
    let err = svc.ready().await.unwrap().call(Streamed).await.unwrap_err();
    assert!(
        crate::is_caused_by::<Reset>(&err),
        "the original error passes through"
    );
    assert_eq!(fallback_calls.load(Ordering::SeqCst), 0);
    assert!(recorder.take().is_empty(), "no fallback, no event");
}

#[test]
fn fallback_on_parses_kind_names() {
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        on: FallbackOn,
    }
    let parsed: Config =
        toml::from_str(r#"on = ["breaker-open", "deadline_exceeded", "upstream"]"#).unwrap();
    assert_eq!(
        parsed.on,
        FallbackOn::NONE
            .with(FallbackKind::BreakerOpen)
            .with(FallbackKind::DeadlineExceeded)
            .with(FallbackKind::Upstream)
    );
    assert!(!parsed.on.contains(FallbackKind::RateLimited));
    assert_eq!(
        toml::to_string(&parsed).unwrap().trim(),
        r#"on = ["breaker-open", "deadline-exceeded", "upstream"]"#
    );
    let default: Config = toml::from_str("").unwrap();
    assert_eq!(default.on, FallbackOn::ALL);
    assert_eq!(default.on.kinds().count(), 5);
    let empty: Config = toml::from_str("on = []").unwrap();
    assert!(empty.on.is_empty());
    let unknown = toml::from_str::<Config>(r#"on = ["timeout"]"#).unwrap_err();
    assert!(unknown.to_string().contains("timeout"), "{unknown}");
    assert_eq!(
        format!("{:?}", FallbackOn::ALL.without(FallbackKind::Upstream)),
        "{BreakerOpen, BulkheadFull, RateLimited, DeadlineExceeded}"
    );
}

#[test]
fn kind_names_match_error_kinds() {
    for outcome in [
        Outcome::BreakerOpen,
        Outcome::BulkheadFull,
        Outcome::RateLimited,
        Outcome::Deadline,
        Outcome::Upstream,
    ] {
        let err = error(outcome).unwrap();
        assert_eq!(FallbackKind::of(&err).unwrap().as_str(), err.kind());
    }
}
