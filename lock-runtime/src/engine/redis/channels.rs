//! What both subscriber actors (plain pub/sub in `waiters`, sharded pub/sub on a Cluster in
//! `shard_waiters`) keep alike: the table of channels local tasks wait on, each with its wake-up,
//! whether releases reach it ([`Link`]) and how many wait; one WARN per outage; and how a request
//! is started beside the actor.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::engine::{FALLBACK_RETRY_INTERVAL, Link};

/// What a waiter gets for its registration: its channel's wake-up and link state.
pub(super) struct Registered {
    pub(super) notify: Arc<Notify>,
    pub(super) link: watch::Receiver<Link>,
}

/// One channel: its waiters' wake-up, whether releases reach them, how many there are.
struct Channel {
    notify: Arc<Notify>,
    link: watch::Sender<Link>,
    waiters: usize,
}

#[derive(Default)]
pub(super) struct Channels {
    table: HashMap<String, Channel>,
    /// Waiters are without wake-ups and a WARN said so: one per outage.
    outage_reported: bool,
}

impl Channels {
    /// Adds a waiter on `name`; true as well when it is the channel's first (it must be
    /// subscribed). A new channel starts `Down` when nothing will come soon (`backing_off`),
    /// else `Pending`.
    pub(super) fn join(&mut self, name: &str, backing_off: bool) -> (Registered, bool) {
        let channel = self
            .table
            .entry(name.to_owned())
            .or_insert_with(|| Channel {
                notify: Arc::new(Notify::new()),
                link: watch::Sender::new(if backing_off {
                    Link::Down
                } else {
                    Link::Pending
                }),
                waiters: 0,
            });
        channel.waiters += 1;
        let registered = Registered {
            notify: Arc::clone(&channel.notify),
            link: channel.link.subscribe(),
        };
        (registered, channel.waiters == 1)
    }

    /// Removes a waiter from `name`; true when it was the last (the channel was dropped and may
    /// be unsubscribed).
    pub(super) fn leave(&mut self, name: &str) -> bool {
        let Some(channel) = self.table.get_mut(name) else {
            return false;
        };
        channel.waiters -= 1;
        if channel.waiters > 0 {
            return false;
        }
        self.table.remove(name);
        true
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.table.contains_key(name)
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    /// The names whose link is down, to subscribe again.
    pub(super) fn down_names(&self) -> Vec<String> {
        self.table
            .iter()
            .filter(|(_, c)| *c.link.borrow() == Link::Down)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The identity of `name`'s current registration: a request made for it carries this, so
    /// that its answer is not taken for a channel left and joined again since.
    pub(super) fn identity(&self, name: &str) -> Option<Arc<Notify>> {
        self.table.get(name).map(|c| Arc::clone(&c.notify))
    }

    /// A release message on `name`: wakes one waiter (a woken waiter that goes away before
    /// acting passes it on).
    pub(super) fn message(&self, name: &str) {
        if let Some(channel) = self.table.get(name) {
            channel.notify.notify_one();
        }
    }

    /// `name`'s subscription, made for the registration `identity` (`None`: whichever), is
    /// confirmed. A waiter that retried before it took effect saw the lock busy and may have
    /// missed its release: all retry once more. Ends the outage when every channel is live.
    pub(super) fn confirmed(&mut self, name: &str, identity: Option<&Arc<Notify>>) {
        if let Some(channel) = self.table.get(name)
            && identity.is_none_or(|id| Arc::ptr_eq(&channel.notify, id))
            && *channel.link.borrow() != Link::Live
        {
            channel.link.send_replace(Link::Live);
            channel.notify.notify_waiters();
        }
        if self.all_live() {
            self.report_recovery();
        }
    }

    /// Releases on `name` may be missed from now on: its waiters retry, and keep retrying at a
    /// steady pace until it is confirmed again.
    pub(super) fn lost(&self, name: &str) {
        if let Some(channel) = self.table.get(name) {
            channel.link.send_replace(Link::Down);
            channel.notify.notify_waiters();
        }
    }

    /// The same for every channel (the connection is gone).
    pub(super) fn all_lost(&self) {
        for channel in self.table.values() {
            channel.link.send_replace(Link::Down);
            channel.notify.notify_waiters();
        }
    }

    /// Every channel is down, without a wake-up (a connect failed: nobody was live).
    pub(super) fn all_down(&self) {
        for channel in self.table.values() {
            channel.link.send_replace(Link::Down);
        }
    }

    pub(super) fn all_live(&self) -> bool {
        self.table.values().all(|c| *c.link.borrow() == Link::Live)
    }

    pub(super) fn report_outage(&mut self, why: &str) {
        if self.table.is_empty() || self.outage_reported {
            return;
        }
        self.outage_reported = true;
        tracing::warn!(
            reason = why,
            "lock wake-up subscriber unavailable: waiting tasks retry every \
             {FALLBACK_RETRY_INTERVAL:?} until it is back"
        );
    }

    pub(super) fn report_recovery(&mut self) {
        if std::mem::take(&mut self.outage_reported) {
            tracing::info!(
                "lock wake-up subscriber back: waiting tasks are woken by releases again"
            );
        }
    }
}

/// Polls `request` once, right here: a request is queued on its connection at its first poll,
/// so requests started one after another reach the server in that order (an UNSUBSCRIBE and a
/// later SUBSCRIBE of one channel must not swap). `Err` holds it when it is not done yet: the
/// actor polls it on with its own waker.
pub(super) fn start<D>(
    request: impl Future<Output = D> + Send + 'static,
) -> Result<D, BoxFuture<'static, D>> {
    let mut request: BoxFuture<'static, D> = Box::pin(request);
    match request
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => Err(request),
    }
}

/// `connect` within `timeout`, its error as text for the logs.
pub(super) async fn connect_within<T>(
    timeout: Duration,
    connect: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or_else(|_| Err(format!("connecting took longer than {timeout:?}")))
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
