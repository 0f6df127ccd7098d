//! Hedged requests: when an attempt is slow, send a backup and take whichever
//! answers well first.
//!
//! # Placement
//!
//! The stack is `deadline → bulkhead → breaker → retry → hedge → balancer`.
//! Hedging sits inside retry: every attempt the retry layer makes may be
//! hedged, and the retry layer sees one outcome per attempt (the winner's).
//! Below it, the balancer sends the backup to whichever endpoint it picks,
//! usually not the slow one.
//!
//! # Behaviour
//!
//! - The hedge delay is either fixed ([`HedgeConfig::delay`]) or a percentile
//!   of recent attempt latencies ([`HedgeConfig::percentile`]); percentile
//!   hedging engages once [`HedgeConfig::min_samples`] latencies were seen,
//!   and sends no backup before that. With neither set, calls pass through.
//! - When the delay passes with no acceptable answer, a backup is sent (up to
//!   [`HedgeConfig::max_hedges`], one more after each further delay) and an
//!   [`Event::Hedge`] is emitted.
//! - Every backup first [withdraws](RetryBudget::withdraw) from the service's
//!   [`RetryBudget`], the *same* budget the retry layer uses, so retries and
//!   hedges together never add more than the budget's ratio of extra load.
//!   With nothing left, no backup is sent and the call just waits.
//! - The first *acceptable* answer wins: an `Ok` response not classified as a
//!   failure. The other attempts still in flight are dropped (cancelled) at
//!   once.
//! - An attempt that fails while another is still in flight does not end the
//!   call: we wait for the other (it may still succeed), and send no further
//!   backups (recovering from failures is the retry layer's job). When
//!   nothing is left in flight, the last failure is returned. A failure with
//!   no backup in flight returns at once, without waiting for the hedge timer.
//! - Only requests that can be copied ([`PolicyRequest::try_clone`]) are
//!   hedged.
//! - Latencies of attempts that complete (winners and failures, not
//!   cancelled losers) feed the percentile estimate: the last 512, with the
//!   percentile refreshed every 16 records.
//!
//! # Budget deposits
//!
//! A hedge layer never deposits into the budget by default: the retry layer
//! in front of it deposits once per logical call, and depositing here too
//! would count a call once per retry attempt. A hedge layer used without a
//! retry layer should call [`HedgeLayer::deposit_per_call`].
//!
//! # Readiness
//!
//! `poll_ready` passes the inner service's readiness through. The first
//! attempt is sent in `call` on the readied service; backups go through a
//! clone of the service, whose `poll_ready` is driven inside the response
//! future before each backup (so a backup waits for capacity while the first
//! attempt keeps running).
//!
//! # Allocation
//!
//! The first attempt is stored inline in the response future. Backups are
//! boxed: their number is only known at run time, and they are the rare
//! path (at most the budget's ratio of calls).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::{sync::{Arc, atomic::{AtomicU32, Ordering}}, time::Duration};
//! use switchyard_policy::{BoxError, Call, DefaultClassifier, Events};
//! use switchyard_policy::hedge::{HedgeConfig, HedgeLayer};
//! use switchyard_policy::retry::{BudgetConfig, RetryBudget};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let config = HedgeConfig {
//!     delay: Some(Duration::from_millis(50)),
//!     ..HedgeConfig::default()
//! };
//! let budget = RetryBudget::new(&BudgetConfig::default());
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(HedgeLayer::new(config, budget, DefaultClassifier, Events::silent("search")))
//!     .service_fn(move |_: Call<()>| {
//!         // The first attempt stalls for 10s; the backup answers in 5ms.
//!         let n = counter.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let took = if n == 0 { 10_000 } else { 5 };
//!             tokio::time::sleep(Duration::from_millis(took)).await;
//!             Ok::<_, BoxError>(n)
//!         }
//!     });
//! let start = tokio::time::Instant::now();
//! let winner = svc.oneshot(Call::new(())).await.unwrap();
//! assert_eq!(winner, 1);
//! assert_eq!(start.elapsed(), Duration::from_millis(55));
//! # }
//! ```

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

#[cfg(doc)]
use crate::Event;
use crate::{
    BoxError, Classify, DefaultClassifier, Error, Events, PolicyRequest, retry::RetryBudget,
};

mod future;
mod history;
#[cfg(test)]
mod tests;

pub use future::ResponseFuture;
use history::LatencyHistory;

/// Default [`HedgeConfig::min_samples`]: 20.
pub const DEFAULT_MIN_SAMPLES: usize = 20;
/// Default [`HedgeConfig::max_hedges`]: 1.
pub const DEFAULT_MAX_HEDGES: u32 = 1;
/// Most latencies percentile hedging remembers (and the largest `min_samples`).
pub const HISTORY_CAPACITY: usize = history::CAPACITY;

/// When to send backup requests.
///
/// ```toml
/// [hedge]
/// percentile = 95.0
/// min_samples = 20
/// max_hedges = 1
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// A fixed delay after which a backup is sent. Default: none. Set this or
    /// `percentile`, not both; with neither, hedging is off.
    #[serde(with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// Hedge after this percentile (in (0, 100], e.g. `95.0`) of recent attempt
    /// latencies. Default: none.
    pub percentile: Option<f64>,
    /// Latencies to record before percentile hedging engages (no hedging
    /// until then); at most 512. Default `20`.
    pub min_samples: usize,
    /// Backups per call at most. Default `1`.
    pub max_hedges: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            delay: None,
            percentile: None,
            min_samples: DEFAULT_MIN_SAMPLES,
            max_hedges: DEFAULT_MAX_HEDGES,
        }
    }
}

impl HedgeConfig {
    /// Checks the values; the message names the key and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if let (Some(_), Some(_)) = (self.delay, self.percentile) {
            return Err(
                "hedge.delay: set either hedge.delay or hedge.percentile, not both; remove one"
                    .to_owned(),
            );
        }
        if let Some(p) = self.percentile
            && !(p > 0.0 && p <= 100.0)
        {
            return Err(format!(
                "hedge.percentile: must be in (0, 100], got {p}; set a percentile such as 95.0"
            ));
        }
        if self.min_samples == 0 || self.min_samples > HISTORY_CAPACITY {
            return Err(format!(
                "hedge.min_samples: must be between 1 and {HISTORY_CAPACITY}, got {}; set a count such as 20",
                self.min_samples
            ));
        }
        if self.max_hedges == 0 {
            return Err(
                "hedge.max_hedges: must be at least 1; to turn hedging off remove hedge.delay and hedge.percentile"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The state shared by every clone of one hedge layer and its services.
#[derive(Debug)]
struct Shared {
    config: HedgeConfig,
    history: Option<LatencyHistory>,
}

impl Shared {
    fn new(config: HedgeConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            history: config
                .percentile
                .map(|p| LatencyHistory::new(p, config.min_samples)),
        })
    }

    /// The delay before the first backup of a call starting now, if any.
    fn delay(&self) -> Option<Duration> {
        if self.config.max_hedges == 0 {
            return None;
        }
        self.config
            .delay
            .or_else(|| self.history.as_ref().and_then(LatencyHistory::threshold))
    }
}

/// Applies [`Hedge`] to a service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HedgeLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    budget: RetryBudget,
    classifier: C,
    events: Events,
    deposit: bool,
}

impl<C> HedgeLayer<C> {
    /// A layer hedging as `config` says; backups withdraw from `budget`
    /// (pass the budget the service's retry layer uses).
    pub fn new(config: HedgeConfig, budget: RetryBudget, classifier: C, events: Events) -> Self {
        Self {
            shared: Shared::new(config),
            budget,
            classifier,
            events,
            deposit: false,
        }
    }

    /// Whether every call deposits into the budget. Off by default, since the
    /// retry layer in front deposits; turn it on for a hedge layer used
    /// without a retry layer, or backups only ever draw on the budget's
    /// per-second floor.
    pub fn deposit_per_call(mut self, deposit: bool) -> Self {
        self.deposit = deposit;
        self
    }
}

impl<S, C: Clone> Layer<S> for HedgeLayer<C> {
    type Service = Hedge<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            shared: self.shared.clone(),
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
            events: self.events.clone(),
            deposit: self.deposit,
        }
    }
}

/// Sends backup requests for slow calls. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Hedge<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared>,
    budget: RetryBudget,
    classifier: C,
    events: Events,
    deposit: bool,
}

impl<S, C> Hedge<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The current hedge delay: the fixed delay, or the tracked percentile
    /// (`None` while hedging is off or still learning).
    pub fn hedge_delay(&self) -> Option<Duration> {
        self.shared.delay()
    }
}

impl<S, C, Req> Service<Req> for Hedge<S, C>
where
    Req: PolicyRequest,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    /// Boxed: the policy stack holds either a hedged or a plain attempt in
    /// the retry's state, sized for the larger; unboxed, every call of a
    /// service without hedging would carry (and move) room for the hedge's
    /// timer and bookkeeping.
    type Future = Pin<Box<ResponseFuture<S, Req, C>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.deposit {
            self.budget.deposit();
        }
        let backup = self
            .shared
            .delay()
            .and_then(|delay| Some((delay, req.try_clone()?)))
            .map(|(delay, copy)| future::Backup {
                service: self.inner.clone(),
                request: copy,
                delay,
                remaining: self.shared.config.max_hedges,
            });
        let primary = self.inner.call(req);
        Box::pin(ResponseFuture::new(
            primary,
            backup,
            self.shared.clone(),
            self.budget.clone(),
            self.classifier.clone(),
            self.events.clone(),
        ))
    }
}
