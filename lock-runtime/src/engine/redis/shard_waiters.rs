//! Wake-ups on a Cluster: sharded pub/sub (`SSUBSCRIBE`, Redis >= 7.0) on each lock's channel,
//! which lives in the lock's slot, so a release wakes waiters through one shard only (a plain
//! PUBLISH is broadcast to every node of the cluster).
//!
//! One task (the actor) owns a RESP3 cluster connection whose pushes (messages, confirmations,
//! disconnections) come to it, and the same table of channels as the single-server subscriber
//! (`waiters`): a channel is subscribed while a local task waits on it, and a message wakes one of
//! them. The cluster client routes each SSUBSCRIBE to the node that serves the channel's slot and
//! follows MOVED and topology changes; what it cannot know is that waiters may have missed a
//! release meanwhile, which the actor handles:
//! - a node's connection lost (a `Disconnection` push): every waiter retries, every channel is
//!   subscribed again (the client routes it to whoever serves the slot now), and waiters retry
//!   at a steady pace until their channel's SSUBSCRIBE is confirmed;
//! - a slot migrated away (the server sends `sunsubscribe` for its channels): the same, for the
//!   channels it names.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::waiters::{Channel, Command, Registered, Source, SubscriberSettings, bounded};
use crate::engine::{FALLBACK_RETRY_INTERVAL, Link};

/// First pause before connecting again or retrying a failed SSUBSCRIBE; doubles up to the maximum.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(50);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// A cluster connection for sharded pub/sub and the receiver of its pushes.
pub(crate) struct Sharded {
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl Sharded {
    /// Connects to the cluster (RESP3, pushes to the returned receiver).
    pub(crate) async fn connect(settings: &SubscriberSettings) -> Result<Self, redis::RedisError> {
        let Source::Cluster(nodes) = &settings.source else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "sharded pub/sub needs a Cluster",
            )));
        };
        let (sender, pushes) = mpsc::unbounded_channel();
        let client = nodes.client(
            Some(sender),
            settings.connect_timeout,
            settings.response_timeout,
        )?;
        let conn = client.get_async_connection().await?;
        Ok(Sharded { conn, pushes })
    }

    /// Subscribes to `channel` and leaves it again: the user may SSUBSCRIBE to the locks'
    /// channels.
    pub(crate) async fn probe(&mut self, channel: &str) -> Result<(), redis::RedisError> {
        self.conn.ssubscribe(channel).await?;
        self.conn.sunsubscribe(channel).await
    }
}

/// Starts the actor on the current runtime; with `conn`, the connection made at connect.
pub(super) fn spawn(
    settings: Arc<SubscriberSettings>,
    conn: Option<Sharded>,
) -> mpsc::UnboundedSender<Command> {
    let (commands, rx) = mpsc::unbounded_channel();
    let mut actor = ShardActor {
        settings,
        conn: None,
        pushes: None,
        connecting: false,
        channels: HashMap::new(),
        in_flight: FuturesUnordered::new(),
        retry_at: None,
        backoff: RETRY_MIN_DELAY,
        outage_reported: false,
    };
    if let Some(conn) = conn {
        actor.connected(conn);
    }
    tokio::spawn(actor.run(rx));
    commands
}

/// A request that ran beside the actor, and how it ended (the error as text for the logs).
enum Done {
    Connected(Result<Sharded, String>),
    Subscribed {
        name: String,
        notify: Arc<Notify>,
        result: Result<(), String>,
    },
    Unsubscribed,
}

struct ShardActor {
    settings: Arc<SubscriberSettings>,
    conn: Option<ClusterConnection>,
    pushes: Option<mpsc::UnboundedReceiver<PushInfo>>,
    connecting: bool,
    channels: HashMap<String, Channel>,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
    /// When to connect again (no connection) or to subscribe the channels that are not live.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Waiters are without wake-ups and a WARN said so: one per outage.
    outage_reported: bool,
}

impl ShardActor {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Register { channel, reply }) => {
                        let registered = self.register(channel);
                        let _ = reply.send(registered);
                    }
                    Some(Command::Unregister { channel }) => self.unregister(channel),
                    Some(Command::Stop) | None => return,
                },
                push = next_push(&mut self.pushes) => match push {
                    Some(push) => self.pushed(push),
                    None => self.connection_lost("the cluster connection ended"),
                },
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finish(done);
                }
                () = sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.retry();
                }
            }
        }
    }

    fn register(&mut self, name: String) -> Registered {
        let backing_off = self.conn.is_none() && !self.connecting && self.retry_at.is_some();
        let channel = self
            .channels
            .entry(name.clone())
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
        if channel.waiters == 1 {
            if self.conn.is_some() {
                self.subscribe(name);
            } else if backing_off {
                self.report_outage("the cluster subscriber connection is down");
            } else if !self.connecting {
                self.connect();
            }
        }
        registered
    }

    fn unregister(&mut self, name: String) {
        let Some(channel) = self.channels.get_mut(&name) else {
            return;
        };
        channel.waiters -= 1;
        if channel.waiters > 0 {
            return;
        }
        self.channels.remove(&name);
        let Some(conn) = &self.conn else {
            return;
        };
        let mut conn = conn.clone();
        let timeout = self.settings.response_timeout;
        // A failure leaves a subscription nobody listens to; its messages are dropped here.
        self.start(async move {
            let _ = bounded(timeout, conn.sunsubscribe(&name)).await;
            Done::Unsubscribed
        });
    }

    fn subscribe(&mut self, name: String) {
        let (Some(conn), Some(channel)) = (&self.conn, self.channels.get(&name)) else {
            return;
        };
        let mut conn = conn.clone();
        let notify = Arc::clone(&channel.notify);
        let timeout = self.settings.response_timeout;
        self.start(async move {
            let result = bounded(timeout, conn.ssubscribe(&name)).await;
            Done::Subscribed {
                name,
                notify,
                result,
            }
        });
    }

    fn connect(&mut self) {
        self.connecting = true;
        let settings = Arc::clone(&self.settings);
        self.start(async move {
            let connect = Sharded::connect(&settings);
            let result = match tokio::time::timeout(settings.connect_timeout, connect).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "connecting took longer than {:?}",
                    settings.connect_timeout
                )),
            };
            Done::Connected(result)
        });
    }

    /// Runs `request` beside the actor; polled once here, so requests reach the connection in
    /// the order they were made (an SUNSUBSCRIBE and a later SSUBSCRIBE of one channel must not
    /// swap).
    fn start(&mut self, request: impl Future<Output = Done> + Send + 'static) {
        let mut request: BoxFuture<'static, Done> = Box::pin(request);
        let waker = std::task::Waker::noop();
        match request
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(done) => self.finish(done),
            std::task::Poll::Pending => self.in_flight.push(request),
        }
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Connected(Ok(conn)) => self.connected(conn),
            Done::Connected(Err(why)) => {
                self.connecting = false;
                self.failed(&why);
            }
            Done::Subscribed {
                name,
                notify,
                result,
            } => {
                // A channel left and registered again since has its own SSUBSCRIBE under way.
                let Some(channel) = self.channels.get(&name) else {
                    return;
                };
                if !Arc::ptr_eq(&channel.notify, &notify) {
                    return;
                }
                match result {
                    Ok(()) => self.live(&name),
                    Err(why) => {
                        channel.link.send_replace(Link::Down);
                        self.failed(&format!("SSUBSCRIBE {name} failed: {why}"));
                    }
                }
            }
            Done::Unsubscribed => {}
        }
    }

    fn connected(&mut self, sharded: Sharded) {
        self.conn = Some(sharded.conn);
        self.pushes = Some(sharded.pushes);
        self.connecting = false;
        tracing::debug!("lock wake-up subscriber connected to the cluster");
        let names: Vec<String> = self.channels.keys().cloned().collect();
        if names.is_empty() {
            self.report_recovery();
        }
        for name in names {
            self.subscribe(name);
        }
    }

    /// A channel's subscription is confirmed: its waiters retry once (they may have missed a
    /// release before it took effect), then sleep until a release.
    fn live(&mut self, name: &str) {
        let Some(channel) = self.channels.get(name) else {
            return;
        };
        if *channel.link.borrow() != Link::Live {
            channel.link.send_replace(Link::Live);
            channel.notify.notify_waiters();
        }
        if self
            .channels
            .values()
            .all(|c| *c.link.borrow() == Link::Live)
        {
            self.backoff = RETRY_MIN_DELAY;
            self.report_recovery();
        }
    }

    fn pushed(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                if let Some(channel) =
                    channel_name(&push.data).and_then(|name| self.channels.get(name.as_str()))
                {
                    channel.notify.notify_one();
                }
            }
            PushKind::SSubscribe => {
                if let Some(name) = channel_name(&push.data) {
                    self.live(&name);
                }
            }
            // Sent for a channel this actor still wants only when its slot moved to another
            // node: subscribe again (the client finds the new owner through MOVED).
            PushKind::SUnsubscribe => {
                if let Some(name) = channel_name(&push.data)
                    && let Some(channel) = self.channels.get(&name)
                {
                    tracing::debug!(
                        channel = name,
                        "lock channel's slot moved; subscribing again"
                    );
                    channel.link.send_replace(Link::Down);
                    channel.notify.notify_waiters();
                    self.subscribe(name);
                }
            }
            PushKind::Disconnection => {
                // The client reconnects and resubscribes that node's channels by itself; which
                // ones those are is not said, so every waiter retries and every channel is
                // subscribed again (a second SSUBSCRIBE of a channel changes nothing).
                self.all_down();
                let names: Vec<String> = self.channels.keys().cloned().collect();
                for name in names {
                    self.subscribe(name);
                }
            }
            _ => {}
        }
    }

    fn all_down(&mut self) {
        for channel in self.channels.values() {
            channel.link.send_replace(Link::Down);
            channel.notify.notify_waiters();
        }
    }

    fn connection_lost(&mut self, why: &str) {
        self.conn = None;
        self.pushes = None;
        self.all_down();
        self.failed(why);
    }

    /// Something failed: retry after the backoff (connect, or subscribe what is not live).
    fn failed(&mut self, why: &str) {
        self.report_outage(why);
        if self.retry_at.is_none() {
            tracing::debug!(reason = why, retry_in = ?self.backoff, "lock wake-up subscriber retrying");
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(RETRY_MAX_DELAY);
        }
    }

    fn retry(&mut self) {
        if self.channels.is_empty() {
            return;
        }
        if self.conn.is_none() {
            if !self.connecting {
                self.connect();
            }
            return;
        }
        let names: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| *c.link.borrow() == Link::Down)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.subscribe(name);
        }
    }

    fn report_outage(&mut self, why: &str) {
        if self.channels.is_empty() || self.outage_reported {
            return;
        }
        self.outage_reported = true;
        tracing::warn!(
            reason = why,
            "lock wake-up subscriber unavailable: waiting tasks retry every \
             {FALLBACK_RETRY_INTERVAL:?} until it is back"
        );
    }

    fn report_recovery(&mut self) {
        if std::mem::take(&mut self.outage_reported) {
            tracing::info!(
                "lock wake-up subscriber back: waiting tasks are woken by releases again"
            );
        }
    }
}

/// The channel a push is about: its first element.
fn channel_name(data: &[Value]) -> Option<String> {
    match data.first()? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

async fn next_push(pushes: &mut Option<mpsc::UnboundedReceiver<PushInfo>>) -> Option<PushInfo> {
    match pushes {
        Some(pushes) => pushes.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
