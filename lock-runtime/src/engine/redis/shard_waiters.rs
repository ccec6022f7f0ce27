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
//!   channels it names;
//! - a primary that does not answer the health-check PING (sent to every primary each
//!   `subscriber_health_check`, to be answered within the same time; a host that vanished, or a
//!   connection that went half-open, sends no disconnection): the same as a lost connection. The
//!   channels of the shards that answer are confirmed again at once; the others' waiters retry
//!   at a steady pace until theirs are.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use super::channels::{self, Channels, Registered, sleep_until};
use super::waiters::{Command, Source, SubscriberSettings, bounded};

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
        ping_in_flight: false,
        channels: Channels::default(),
        in_flight: FuturesUnordered::new(),
        retry_at: None,
        backoff: RETRY_MIN_DELAY,
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
        identity: Arc<Notify>,
        result: Result<(), String>,
    },
    Unsubscribed,
    Pinged(Result<(), String>),
}

struct ShardActor {
    settings: Arc<SubscriberSettings>,
    conn: Option<ClusterConnection>,
    pushes: Option<mpsc::UnboundedReceiver<PushInfo>>,
    connecting: bool,
    ping_in_flight: bool,
    channels: Channels,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
    /// When to connect again (no connection) or to subscribe the channels that are down.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl ShardActor {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut health = tokio::time::interval(self.settings.health_check);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                _ = health.tick() => self.ping(),
                () = sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.retry();
                }
            }
        }
    }

    fn register(&mut self, name: String) -> Registered {
        // Down only while a retry waits for its backoff: nothing will come sooner.
        let backing_off = self.conn.is_none() && !self.connecting && self.retry_at.is_some();
        let (registered, first) = self.channels.join(&name, backing_off);
        if first {
            if self.conn.is_some() {
                self.subscribe(name);
            } else if backing_off {
                self.channels
                    .report_outage("the cluster subscriber connection is down");
            } else if !self.connecting {
                self.connect();
            }
        }
        registered
    }

    fn unregister(&mut self, name: String) {
        if !self.channels.leave(&name) {
            return;
        }
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
        let (Some(conn), Some(identity)) = (&self.conn, self.channels.identity(&name)) else {
            return;
        };
        let mut conn = conn.clone();
        let timeout = self.settings.response_timeout;
        self.start(async move {
            let result = bounded(timeout, conn.ssubscribe(&name)).await;
            Done::Subscribed {
                name,
                identity,
                result,
            }
        });
    }

    /// PINGs every primary; one that does not answer within the interval may have taken
    /// releases with it (see the module docs).
    fn ping(&mut self) {
        if self.ping_in_flight || self.channels.is_empty() {
            return;
        }
        let Some(conn) = &self.conn else {
            return;
        };
        let mut conn = conn.clone();
        let every = self.settings.health_check;
        self.ping_in_flight = true;
        self.start(async move {
            let every_primary = RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            ));
            let ping = conn.route_command(redis::cmd("PING"), every_primary);
            Done::Pinged(bounded(every, ping).await.map(drop))
        });
    }

    fn connect(&mut self) {
        self.connecting = true;
        let settings = Arc::clone(&self.settings);
        self.start(async move {
            let connect = async { Sharded::connect(&settings).await.map_err(|e| e.to_string()) };
            Done::Connected(channels::connect_within(settings.connect_timeout, connect).await)
        });
    }

    /// Runs `request` beside the actor (see [`channels::start`]).
    fn start(&mut self, request: impl Future<Output = Done> + Send + 'static) {
        match channels::start(request) {
            Ok(done) => self.finish(done),
            Err(pending) => self.in_flight.push(pending),
        }
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Connected(Ok(conn)) => self.connected(conn),
            Done::Connected(Err(why)) => {
                self.connecting = false;
                self.channels.all_down();
                self.failed(&why);
            }
            Done::Subscribed {
                name,
                identity,
                result: Ok(()),
            } => {
                // A channel left and registered again since has its own SSUBSCRIBE under way.
                self.channels.confirmed(&name, Some(&identity));
                if self.channels.all_live() {
                    self.backoff = RETRY_MIN_DELAY;
                }
            }
            Done::Subscribed {
                name,
                identity,
                result: Err(why),
            } => {
                if self
                    .channels
                    .identity(&name)
                    .is_some_and(|id| Arc::ptr_eq(&id, &identity))
                {
                    self.channels.lost(&name);
                    self.failed(&format!("SSUBSCRIBE {name} failed: {why}"));
                }
            }
            Done::Unsubscribed => {}
            Done::Pinged(result) => {
                self.ping_in_flight = false;
                if let Err(why) = result {
                    tracing::debug!(reason = why, "a primary missed the lock subscriber's PING");
                    self.resubscribe_all();
                }
            }
        }
    }

    fn connected(&mut self, sharded: Sharded) {
        self.conn = Some(sharded.conn);
        self.pushes = Some(sharded.pushes);
        self.connecting = false;
        tracing::debug!("lock wake-up subscriber connected to the cluster");
        let names = self.channels.names();
        if names.is_empty() {
            self.channels.report_recovery();
        }
        for name in names {
            self.subscribe(name);
        }
    }

    fn pushed(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                if let Some(name) = channel_name(&push.data) {
                    self.channels.message(&name);
                }
            }
            // The client's own resubscription after a reconnect is confirmed this way too.
            PushKind::SSubscribe => {
                if let Some(name) = channel_name(&push.data) {
                    self.channels.confirmed(&name, None);
                }
            }
            // Sent for a channel this actor still wants only when its slot moved to another
            // node: subscribe again (the client finds the new owner through MOVED).
            PushKind::SUnsubscribe => {
                if let Some(name) = channel_name(&push.data)
                    && self.channels.contains(&name)
                {
                    tracing::debug!(
                        channel = name,
                        "lock channel's slot moved; subscribing again"
                    );
                    self.channels.lost(&name);
                    self.subscribe(name);
                }
            }
            // The client reconnects and resubscribes that node's channels by itself; which ones
            // those are is not said.
            PushKind::Disconnection => self.resubscribe_all(),
            _ => {}
        }
    }

    /// Releases on some node may have been missed: every waiter retries and every channel is
    /// subscribed again (a second SSUBSCRIBE of a channel changes nothing).
    fn resubscribe_all(&mut self) {
        self.channels.all_lost();
        for name in self.channels.names() {
            self.subscribe(name);
        }
    }

    fn connection_lost(&mut self, why: &str) {
        self.conn = None;
        self.pushes = None;
        self.channels.all_lost();
        self.failed(why);
    }

    /// Something failed: retry after the backoff (connect, or subscribe what is down).
    fn failed(&mut self, why: &str) {
        self.channels.report_outage(why);
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
        for name in self.channels.down_names() {
            self.subscribe(name);
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
