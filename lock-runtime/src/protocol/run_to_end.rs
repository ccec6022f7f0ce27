//! `RunToEnd`: work that must be finished once begun, even if the future awaiting it is dropped.
//!
//! A release stops the watchdog, then sends the release or hand-over script. Dropped half-way (an
//! outer `timeout` or `select!` fires), it would leave the lock held until its lease ran out, or
//! passed to a waiting task that is never told. So the work is owned by a `RunToEnd`: polling it
//! drives the work; dropping it unfinished spawns the rest on the runtime, never blocking and
//! never panicking in Drop.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

use crate::error::LockError;

type Work = Pin<Box<dyn Future<Output = Result<(), LockError>> + Send + 'static>>;

pub(crate) struct RunToEnd {
    /// `None` once finished (then Drop has nothing left to do).
    work: Option<Work>,
    /// Where to finish when dropped outside any runtime context (the locker's runtime).
    fallback: Option<Handle>,
    key: String,
    /// What the work is, for the log of a failure in the background.
    what: &'static str,
}

impl RunToEnd {
    pub(crate) fn new(
        work: impl Future<Output = Result<(), LockError>> + Send + 'static,
        fallback: Option<Handle>,
        key: &str,
        what: &'static str,
    ) -> Self {
        RunToEnd {
            work: Some(Box::pin(work)),
            fallback,
            key: key.to_owned(),
            what,
        }
    }
}

impl Future for RunToEnd {
    type Output = Result<(), LockError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Polled again after it finished: the work is done, there is nothing more to report.
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let out = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(out)
    }
}

impl Drop for RunToEnd {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let what = self.what;
        // The spawned task owns the bare work, not a `RunToEnd`: a task dropped unfinished (its
        // runtime shutting down) then drops the work and spawns nothing more.
        let Some(runtime) = Handle::try_current().ok().or_else(|| self.fallback.take()) else {
            tracing::warn!(
                key,
                "{what} dropped outside a runtime; the lock expires with its lease"
            );
            return;
        };
        tracing::debug!(
            key,
            "{what} dropped before it finished; finishing in the background"
        );
        runtime.spawn(async move {
            if let Err(error) = work.await {
                tracing::warn!(key, %error, "{what}, finished in the background, failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// Work that waits for `go`, then records that it ran to its end.
    fn gated_work(
        done: &Arc<AtomicBool>,
    ) -> (
        oneshot::Sender<()>,
        impl Future<Output = Result<(), LockError>> + Send + 'static,
    ) {
        let (go, gate) = oneshot::channel::<()>();
        let done = Arc::clone(done);
        let work = async move {
            let _ = gate.await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        };
        (go, work)
    }

    fn poll_once(run: &mut RunToEnd) -> Poll<Result<(), LockError>> {
        Pin::new(run).poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    async fn until(done: &AtomicBool) {
        // A spawned task on a runtime of its own: a few milliseconds; 5 s for a loaded machine.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the work ran to its end");
    }

    #[tokio::test]
    async fn dropped_unfinished_it_finishes_in_the_background() {
        let done = Arc::new(AtomicBool::new(false));
        let (go, work) = gated_work(&done);
        let mut run = RunToEnd::new(work, None, "k", "a test");
        assert!(poll_once(&mut run).is_pending());
        drop(run);
        let _ = go.send(());
        until(&done).await;
    }

    #[test]
    fn dropped_outside_any_runtime_it_finishes_on_the_fallback() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (go, work) = gated_work(&done);
        let mut run = RunToEnd::new(work, Some(runtime.handle().clone()), "k", "a test");
        assert!(poll_once(&mut run).is_pending());
        drop(run); // no runtime context on this thread
        let _ = go.send(());
        runtime.block_on(until(&done));
    }

    #[test]
    fn dropped_without_a_runtime_it_neither_blocks_nor_panics() {
        let done = Arc::new(AtomicBool::new(false));
        let (_go, work) = gated_work(&done);
        let mut run = RunToEnd::new(work, None, "k", "a test");
        assert!(poll_once(&mut run).is_pending());
        drop(run); // the lease's expiry frees the lock
        assert!(!done.load(Ordering::SeqCst));
    }
}
