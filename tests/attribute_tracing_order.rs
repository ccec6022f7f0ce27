//! `#[distributed_lock]` stacked with `#[tracing::instrument]`: the lock's events ("lock
//! acquired", "lock released") are inside the fn's span only when `#[distributed_lock]` comes
//! first. Attributes expand from the outside in, so the first one rewrites the fn first, and the
//! second one wraps what the first made: `#[tracing::instrument]` second enters its span before
//! the lock is taken; `#[tracing::instrument]` first has wrapped only the body, which runs after.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use distlock::{LockError, Locker, distributed_lock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The span names around each "lock acquired" event, innermost first.
#[derive(Clone, Default)]
struct AcquiredIn(Arc<Mutex<Vec<Vec<String>>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for AcquiredIn {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0 != "lock acquired" {
            return;
        }
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.map(|span| span.name().to_owned()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().push(spans);
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Runs `call` under a subscriber with [`AcquiredIn`] and returns the span names around the one
/// "lock acquired" event it emitted.
async fn spans_around_acquire<F: Future<Output = Result<(), LockError>>>(
    call: impl FnOnce(Locker) -> F,
) -> Vec<String> {
    let acquired = AcquiredIn::default();
    let subscriber = tracing_subscriber::registry().with(acquired.clone());
    // A current-thread runtime (`#[tokio::test]`'s default) polls everything on this thread,
    // where the thread-local default subscriber applies.
    let _default = tracing::subscriber::set_default(subscriber);
    call(Locker::in_memory()).await.unwrap();
    let mut events = acquired.0.lock().unwrap();
    assert_eq!(events.len(), 1, "expected one acquire: {events:?}");
    events.remove(0)
}

#[distributed_lock(key = "lock-first", locker = locker)]
#[tracing::instrument(skip_all)]
async fn lock_first(locker: Locker) -> Result<(), LockError> {
    Ok(())
}

#[tracing::instrument(skip_all)]
#[distributed_lock(key = "instrument-first", locker = locker)]
async fn instrument_first(locker: Locker) -> Result<(), LockError> {
    Ok(())
}

#[tokio::test]
async fn lock_events_are_inside_the_span_when_the_lock_attribute_comes_first() {
    let spans = spans_around_acquire(lock_first).await;
    assert_eq!(spans, ["lock_first"]);
}

#[tokio::test]
async fn lock_events_are_outside_the_span_when_instrument_comes_first() {
    let spans = spans_around_acquire(instrument_first).await;
    assert!(spans.is_empty(), "{spans:?}");
}

#[async_trait]
trait Job {
    async fn lock_first(&self) -> Result<(), LockError>;
    async fn instrument_first(&self) -> Result<(), LockError>;
}

struct Nightly {
    locks: Locker,
}

#[async_trait]
impl Job for Nightly {
    #[distributed_lock(key = "lock-first", locker = self.locks)]
    #[tracing::instrument(skip_all)]
    async fn lock_first(&self) -> Result<(), LockError> {
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    #[distributed_lock(key = "instrument-first", locker = self.locks)]
    async fn instrument_first(&self) -> Result<(), LockError> {
        Ok(())
    }
}

#[tokio::test]
async fn the_same_holds_on_an_async_trait_method() {
    let inside =
        spans_around_acquire(|locks| async move { Nightly { locks }.lock_first().await }).await;
    assert_eq!(inside, ["lock_first"]);
    let outside =
        spans_around_acquire(|locks| async move { Nightly { locks }.instrument_first().await })
            .await;
    assert!(outside.is_empty(), "{outside:?}");
}
