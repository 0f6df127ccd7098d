//! The hedged call as a state machine.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::Shared;
use crate::{BoxError, Classify, Error, Event, Events, Outcome, PolicyRequest, retry::RetryBudget};

/// What a call needs to send backups.
pub(super) struct Backup<S, Req> {
    /// A clone of the service, made ready before each backup.
    pub(super) service: S,
    /// A pristine copy of the request.
    pub(super) request: Req,
    /// Time between the first attempt and the first backup, and between backups.
    pub(super) delay: Duration,
    /// Backups still allowed.
    pub(super) remaining: u32,
}

pin_project! {
    #[project = Projection]
    /// The response future of [`Hedge`](super::Hedge): the first attempt
    /// (inline), the backups (boxed) and the hedge timer.
    pub struct ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        primary_started: Instant,
        backups: Vec<(Instant, Pin<Box<S::Future>>)>,
        #[pin]
        timer: Option<Sleep>,
        backup: Option<Backup<S, Req>>,
        // The last failure, kept while other attempts are in flight.
        failed: Option<Result<S::Response, Error>>,
        shared: Arc<Shared>,
        budget: RetryBudget,
        classifier: C,
        events: Events,
    }
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    pub(super) fn new(
        primary: S::Future,
        backup: Option<Backup<S, Req>>,
        shared: Arc<Shared>,
        budget: RetryBudget,
        classifier: C,
        events: Events,
    ) -> Self {
        let now = crate::clock::now();
        let timer = backup
            .as_ref()
            .and_then(|b| now.checked_add(b.delay))
            .map(tokio::time::sleep_until);
        Self {
            primary: Some(primary),
            primary_started: now,
            backups: Vec::new(),
            timer,
            backup,
            failed: None,
            shared,
            budget,
            classifier,
            events,
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    Req: PolicyRequest,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(future) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(result) = future.poll(cx)
            {
                this.primary.set(None);
                let started = *this.primary_started;
                if let Some(winner) = settle(&mut this, result, started) {
                    return Poll::Ready(winner);
                }
            }
            let mut i = 0;
            while i < this.backups.len() {
                let (started, future) = &mut this.backups[i];
                let started = *started;
                if let Poll::Ready(result) = future.as_mut().poll(cx) {
                    drop(this.backups.swap_remove(i));
                    if let Some(winner) = settle(&mut this, result, started) {
                        return Poll::Ready(winner);
                    }
                } else {
                    i += 1;
                }
            }
            // Loop again only when a backup was just sent, so that it is
            // polled (and registers its waker) before we return.
            if !send_backup(&mut this, cx) {
                break;
            }
        }
        if this.primary.is_none() && this.backups.is_empty() {
            return Poll::Ready(this.failed.take().unwrap_or_else(|| {
                Err(Error::Upstream(
                    "hedge future polled after completion".into(),
                ))
            }));
        }
        Poll::Pending
    }
}

/// Classifies a finished attempt: the winner is returned (and the losers
/// dropped); a failure is kept and ends hedging.
fn settle<S, Req, C>(
    this: &mut Projection<'_, S, Req, C>,
    result: Result<S::Response, S::Error>,
    started: Instant,
) -> Option<Result<S::Response, Error>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    let result = result.map_err(Error::from_inner);
    if let Some(history) = &this.shared.history {
        history.record(crate::clock::now().saturating_duration_since(started));
    }
    let class = this.classifier.classify(result.as_ref());
    if result.is_ok() && class.outcome != Outcome::Failure {
        // Cancel the losers now rather than whenever the caller drops us.
        this.primary.set(None);
        this.backups.clear();
        this.timer.set(None);
        *this.backup = None;
        return Some(result);
    }
    *this.failed = Some(result);
    this.timer.set(None);
    *this.backup = None;
    None
}

/// Sends a backup if the timer fired, the service is ready and the budget
/// allows it. Returns whether one was sent.
fn send_backup<S, Req, C>(this: &mut Projection<'_, S, Req, C>, cx: &mut Context<'_>) -> bool
where
    Req: PolicyRequest,
    S: Service<Req>,
{
    let Some(timer) = this.timer.as_mut().as_pin_mut() else {
        return false;
    };
    if timer.poll(cx).is_pending() {
        return false;
    }
    let Some(backup) = this.backup.as_mut() else {
        this.timer.set(None);
        return false;
    };
    match backup.service.poll_ready(cx) {
        // Woken when the service has capacity; the timer stays fired.
        Poll::Pending => return false,
        Poll::Ready(Err(_)) => {
            // The first attempt still runs; a backup isn't worth failing it.
            stop(this);
            return false;
        }
        Poll::Ready(Ok(())) => {}
    }
    if !this.budget.withdraw() {
        tracing::debug!(service = this.events.service(), "hedge budget exhausted");
        stop(this);
        return false;
    }
    // The pristine request stays with `backup`; each backup sends a copy.
    let Some(request) = backup.request.try_clone() else {
        stop(this);
        return false;
    };
    let now = crate::clock::now();
    this.backups
        .push((now, Box::pin(backup.service.call(request))));
    this.events.emit(|service| Event::Hedge { service });
    backup.remaining = backup.remaining.saturating_sub(1);
    let next = now.checked_add(backup.delay);
    match (backup.remaining, next, this.timer.as_mut().as_pin_mut()) {
        (1.., Some(next), Some(timer)) => timer.reset(next),
        _ => stop(this),
    }
    true
}

fn stop<S, Req, C>(this: &mut Projection<'_, S, Req, C>)
where
    S: Service<Req>,
{
    this.timer.set(None);
    *this.backup = None;
}
