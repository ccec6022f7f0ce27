//! Pub/sub fan-out: one subscriber connection per locker, shared by every waiting task.
//!
//! One task (the actor) owns the connection and the table of channels. Waiters register through
//! a queue, so SUBSCRIBE and UNSUBSCRIBE reach the server in the order the waiters came and went.
//! A channel is subscribed while at least one local task waits on it; a message wakes one of them
//! (tokio's `Notify::notify_one`: a woken waiter that goes away before acting passes it on).
//!
//! The actor never waits on the network in line: connecting, SUBSCRIBE, UNSUBSCRIBE and the
//! health-check PING run beside it, each under its own timeout, so one stalled request holds up
//! no other key's waiters. Each channel tells its waiters whether releases reach them ([`Link`]);
//! a waiter without a live link retries at a steady pace instead (see `Locker::acquire`).
//!
//! A PING goes out every health-check interval and must be answered before the next one: a
//! half-open connection is given up within two intervals. A lost connection (no PONG, stream
//! closed, a request failed) wakes every waiter to retry (it may have missed a release); the actor
//! reconnects with backoff and resubscribes every channel, and a channel whose SUBSCRIBE is
//! confirmed wakes its waiters once more.
//!
//! The actor runs on the runtime that started it. When that runtime is gone (a locker kept in a
//! static and used from the next runtime), the next waiter starts a new actor on its own runtime.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::channels::{self, Channels, Registered, sleep_until};
use super::connection::SentinelSource;
use super::topology::ClusterNodes;
use super::{checks, shard_waiters};
use crate::engine::{Link, Subscription, Unregister};
use crate::mutex::lock;

/// First pause before reconnecting a lost subscriber connection; doubles up to the maximum.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// How long a new waiter waits for its channel's SUBSCRIBE to be confirmed before it goes on
/// without (retrying at a steady pace until the confirmation wakes it): a confirmation takes one
/// round trip, and a stalled one must not keep the waiter from its first paced retry for long.
const SUBSCRIBE_WAIT: Duration = Duration::from_millis(250);

/// What the subscriber needs from the locker's settings.
pub(crate) struct SubscriberSettings {
    pub(crate) source: Source,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// How often the connection is PINGed; a PING unanswered by the next one ends it.
    pub(crate) health_check: Duration,
}

/// Where the subscriber connection goes.
pub(crate) enum Source {
    /// One server: plain pub/sub.
    Single(redis::Client),
    /// The primary the sentinels name at each (re)connect: plain pub/sub.
    Sentinel(Arc<SentinelSource>),
    /// A Cluster: sharded pub/sub, so a release wakes the waiters of one shard only.
    Cluster(ClusterNodes),
}

impl Source {
    /// A new pub/sub connection (not for a Cluster, whose subscriber is `shard_waiters`).
    async fn pubsub(&self) -> Result<PubSub, String> {
        let client = match self {
            Source::Single(client) => client.clone(),
            Source::Sentinel(source) => source.primary().await.map_err(|e| e.to_string())?,
            Source::Cluster(_) => return Err("a Cluster has no plain pub/sub connection".into()),
        };
        match client.get_async_pubsub().await {
            Ok(conn) => Ok(conn),
            Err(error) => Err(checks::connect_error(&client, error).await),
        }
    }
}

pub(super) enum Command {
    Register {
        channel: String,
        reply: oneshot::Sender<Registered>,
    },
    Unregister {
        channel: String,
    },
    /// The locker was closed: end the task and its connection.
    Stop,
}

pub(crate) struct Waiters {
    settings: Arc<SubscriberSettings>,
    actor: Mutex<mpsc::UnboundedSender<Command>>,
}

impl Waiters {
    /// Starts the actor on the current runtime, with the connection made (and checked) at
    /// connect.
    pub(crate) fn start(settings: SubscriberSettings, conn: Initial) -> Self {
        let settings = Arc::new(settings);
        let actor = spawn(Arc::clone(&settings), Some(conn));
        Waiters {
            settings,
            actor: Mutex::new(actor),
        }
    }

    /// The actor's queue; a new actor on the current runtime when the old one is gone.
    fn actor(&self) -> mpsc::UnboundedSender<Command> {
        let mut actor = lock(&self.actor);
        if actor.is_closed() {
            tracing::debug!(
                "lock wake-up subscriber task is gone (its runtime shut down); starting one on \
                 this runtime"
            );
            *actor = spawn(Arc::clone(&self.settings), None);
        }
        actor.clone()
    }

    /// Registers a waiter on `channel`; returns once the channel is subscribed, or after
    /// `SUBSCRIBE_WAIT` without (the subscription then says it is not live).
    pub(crate) async fn subscribe(&self, channel: String) -> Subscription {
        let (reply, answer) = oneshot::channel();
        let register = Command::Register {
            channel: channel.clone(),
            reply,
        };
        // A failed send hands the command back with its reply sender inside: dropping it here
        // means nothing is left waiting for an answer that cannot come. One more try is for an
        // actor that died between the check and the send.
        let mut actor = self.actor();
        if let Err(mpsc::error::SendError(register)) = actor.send(register) {
            actor = self.actor();
            if actor.send(register).is_err() {
                // No actor can run here (the runtime is shutting down): retry at a steady pace.
                return Subscription::with_link(
                    Arc::new(Notify::new()),
                    down(),
                    Unregister::new(|| {}),
                );
            }
        }
        // Armed before the answer is awaited: a waiter that gives up meanwhile still balances
        // its Register, which the actor handles first, as commands are handled in order.
        let unregister = Unregister::new(move || {
            let _ = actor.send(Command::Unregister { channel });
        });
        // The actor answers at once; no answer means it was dropped (its runtime is shutting
        // down) or is not running (a current-thread runtime outside `block_on`): go on without.
        let give_up = Instant::now() + SUBSCRIBE_WAIT;
        let Ok(Ok(Registered { notify, mut link })) =
            tokio::time::timeout_at(give_up, answer).await
        else {
            return Subscription::with_link(Arc::new(Notify::new()), down(), unregister);
        };
        let confirmed = link.wait_for(|l| *l != Link::Pending);
        let _ = tokio::time::timeout_at(give_up, confirmed).await;
        Subscription::with_link(notify, link, unregister)
    }
}

impl Waiters {
    /// Ends the subscriber task and closes its connection (the locker was closed). A later
    /// subscription, if any, starts a new one.
    pub(crate) fn stop(&self) {
        let _ = lock(&self.actor).send(Command::Stop);
    }
}

/// The subscriber connection made (and checked) at connect.
pub(crate) enum Initial {
    PubSub(PubSub),
    Sharded(shard_waiters::Sharded),
}

/// The actor for the settings' kind of pub/sub, on the current runtime.
fn spawn(
    settings: Arc<SubscriberSettings>,
    initial: Option<Initial>,
) -> mpsc::UnboundedSender<Command> {
    match (&settings.source, initial) {
        (Source::Cluster(_), Some(Initial::Sharded(conn))) => {
            shard_waiters::spawn(settings, Some(conn))
        }
        (Source::Cluster(_), _) => shard_waiters::spawn(settings, None),
        (_, Some(Initial::PubSub(conn))) => Actor::spawn(settings, Some(conn)),
        (_, _) => Actor::spawn(settings, None),
    }
}

/// A link that never comes up.
pub(super) fn down() -> watch::Receiver<Link> {
    watch::channel(Link::Down).1
}

struct Connection {
    sink: PubSubSink,
    stream: PubSubStream,
}

/// A request that ran beside the actor, and how it ended (the error as text for the logs).
enum Done {
    Connected(Result<PubSub, String>),
    Subscribed {
        generation: u64,
        channels: Vec<(String, Arc<Notify>)>,
        result: Result<(), String>,
    },
    Unsubscribed {
        generation: u64,
        result: Result<(), String>,
    },
    Pinged {
        generation: u64,
        result: Result<(), String>,
    },
}

struct Actor {
    settings: Arc<SubscriberSettings>,
    conn: Option<Connection>,
    /// Changes whenever a connection is made or given up, so that a late answer on an old one is
    /// told apart.
    generation: u64,
    connecting: bool,
    ping_in_flight: bool,
    channels: Channels,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
}

impl Actor {
    fn spawn(
        settings: Arc<SubscriberSettings>,
        conn: Option<PubSub>,
    ) -> mpsc::UnboundedSender<Command> {
        let (commands, rx) = mpsc::unbounded_channel();
        let mut actor = Actor {
            settings,
            conn: None,
            generation: 0,
            connecting: false,
            ping_in_flight: false,
            channels: Channels::default(),
            in_flight: FuturesUnordered::new(),
            reconnect_at: None,
            backoff: RECONNECT_MIN_DELAY,
        };
        if let Some(conn) = conn {
            actor.connected(conn);
        }
        // The task ends when the locker (the only sender besides pending unregistrations) is
        // dropped, or with its runtime.
        tokio::spawn(actor.run(rx));
        commands
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut health = tokio::time::interval(self.settings.health_check);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Register { channel, reply }) => {
                        let registered = self.register(channel);
                        let _ = reply.send(registered);
                    }
                    Some(Command::Unregister { channel }) => self.unregister(channel),
                    Some(Command::Stop) | None => return,
                },
                message = next_message(&mut self.conn) => match message {
                    Some(message) => self.channels.message(message.get_channel_name()),
                    None => self.connection_lost("the subscriber connection closed".to_owned()),
                },
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finish(done);
                }
                _ = health.tick() => self.ping(),
                () = sleep_until(reconnect_at) => {
                    self.reconnect_at = None;
                    // Nobody waits: connect again only when someone does.
                    if !self.channels.is_empty() {
                        self.connect();
                    }
                }
            }
        }
    }

    fn register(&mut self, name: String) -> Registered {
        // Down only while a reconnect waits for its backoff: nothing will come sooner.
        let backing_off = self.conn.is_none() && !self.connecting && self.reconnect_at.is_some();
        let (registered, first) = self.channels.join(&name, backing_off);
        if first {
            if self.conn.is_some() {
                self.send_subscribe(vec![name]);
            } else if backing_off {
                self.channels
                    .report_outage("the subscriber connection is down");
            } else if !self.connecting {
                self.connect(); // the first waiter, or the first since the outage ended
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
        let mut sink = conn.sink.clone();
        let (generation, timeout) = (self.generation, self.settings.response_timeout);
        self.start(async move {
            let result = bounded(timeout, sink.unsubscribe(&name)).await;
            Done::Unsubscribed { generation, result }
        });
    }

    fn send_subscribe(&mut self, names: Vec<String>) {
        let Some(conn) = &self.conn else {
            return;
        };
        let mut sink = conn.sink.clone();
        let channels: Vec<(String, Arc<Notify>)> = names
            .iter()
            .filter_map(|n| self.channels.identity(n).map(|id| (n.clone(), id)))
            .collect();
        let (generation, timeout) = (self.generation, self.settings.response_timeout);
        self.start(async move {
            let result = bounded(timeout, sink.subscribe(&names)).await;
            Done::Subscribed {
                generation,
                channels,
                result,
            }
        });
    }

    fn ping(&mut self) {
        // One still out is answered late already: its own timeout reports it.
        if self.ping_in_flight {
            return;
        }
        let Some(conn) = &self.conn else {
            return;
        };
        let mut sink = conn.sink.clone();
        let (generation, every) = (self.generation, self.settings.health_check);
        self.ping_in_flight = true;
        self.start(async move {
            let result = bounded(every, sink.ping::<redis::Value>()).await.map(drop);
            Done::Pinged { generation, result }
        });
    }

    fn connect(&mut self) {
        self.connecting = true;
        let settings = Arc::clone(&self.settings);
        self.start(async move {
            let connect = settings.source.pubsub();
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
                self.connect_failed(&why);
            }
            Done::Subscribed {
                generation,
                channels,
                result,
            } if generation == self.generation => match result {
                Ok(()) => self.subscribed(channels),
                Err(why) => self.connection_lost(format!("SUBSCRIBE failed: {why}")),
            },
            Done::Unsubscribed {
                generation,
                result: Err(why),
            } if generation == self.generation => {
                self.connection_lost(format!("UNSUBSCRIBE failed: {why}"));
            }
            Done::Pinged { generation, result } if generation == self.generation => {
                self.ping_in_flight = false;
                if let Err(why) = result {
                    self.connection_lost(format!("health-check PING failed: {why}"));
                }
            }
            // An answer on a connection already given up, or an UNSUBSCRIBE done.
            _ => {}
        }
    }

    fn connected(&mut self, conn: PubSub) {
        let (sink, stream) = conn.split();
        self.conn = Some(Connection { sink, stream });
        self.generation += 1;
        self.connecting = false;
        self.ping_in_flight = false;
        self.backoff = RECONNECT_MIN_DELAY;
        tracing::debug!("lock wake-up subscriber connected");
        let names = self.channels.names();
        if names.is_empty() {
            self.channels.report_recovery();
        } else {
            self.send_subscribe(names);
        }
    }

    fn subscribed(&mut self, channels: Vec<(String, Arc<Notify>)>) {
        for (name, identity) in channels {
            // A channel left and registered again since has its own SUBSCRIBE under way.
            self.channels.confirmed(&name, Some(&identity));
        }
    }

    fn connection_lost(&mut self, why: String) {
        self.conn = None;
        self.generation += 1;
        self.ping_in_flight = false;
        // Releases published from now on are missed.
        self.channels.all_lost();
        self.connect_failed(&why);
    }

    fn connect_failed(&mut self, why: &str) {
        self.channels.all_down();
        self.channels.report_outage(why);
        tracing::debug!(reason = why, retry_in = ?self.backoff, "lock wake-up subscriber reconnecting");
        self.reconnect_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX_DELAY);
    }
}

/// `request` under `timeout`, its error as text.
pub(super) async fn bounded<T>(
    timeout: Duration,
    request: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn next_message(conn: &mut Option<Connection>) -> Option<redis::Msg> {
    match conn {
        Some(conn) => conn.stream.next().await,
        None => std::future::pending().await,
    }
}
