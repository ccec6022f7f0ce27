//! Pub/sub fan-out: one subscriber connection per locker, shared by every waiting task.
//!
//! One task owns the connection and the table of channels. Waiters talk to it through a queue, so
//! SUBSCRIBE and UNSUBSCRIBE reach the server in the order the waiters came and went. A channel
//! is subscribed while at least one local task waits on it; a message wakes one of them (tokio's
//! `Notify::notify_one`: a woken waiter that goes away before acting passes the wake-up on).
//!
//! When the connection drops, every waiter is woken to retry (it may have missed a release), and
//! the task reconnects with backoff, resubscribes every channel, and wakes everyone once more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{Subscription, Unregister};

/// First pause before reconnecting a lost subscriber connection; doubles up to the maximum.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

enum Command {
    Subscribe {
        channel: String,
        reply: oneshot::Sender<Arc<Notify>>,
    },
    Unsubscribe {
        channel: String,
    },
}

pub(crate) struct Waiters {
    commands: mpsc::UnboundedSender<Command>,
}

impl Waiters {
    pub(crate) fn start(
        client: redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            client,
            connect_timeout,
            response_timeout,
            conn: None,
            channels: HashMap::new(),
            reconnect_at: None,
            backoff: RECONNECT_MIN_DELAY,
        };
        // The task ends when the locker (the only sender) is dropped.
        tokio::spawn(actor.run(rx));
        Waiters { commands }
    }

    /// Registers a waiter on `channel`; returns once the channel is subscribed (or, with the
    /// subscriber connection down, once the reconnect is scheduled: the reconnect wakes everyone).
    pub(crate) async fn subscribe(&self, channel: String) -> Subscription {
        let (reply, answer) = oneshot::channel();
        let sent = self.commands.send(Command::Subscribe {
            channel: channel.clone(),
            reply,
        });
        // Armed before the answer is awaited: a waiter that gives up meanwhile (its wait ran out
        // while the subscriber connection was being made) still balances its Subscribe, which
        // the actor handles first, as commands are handled in order.
        let commands = self.commands.clone();
        let unregister = Unregister::new(move || {
            let _ = commands.send(Command::Unsubscribe { channel });
        });
        // If the actor is gone (runtime shutting down) the waiter still works: it retries when
        // the holder's lease runs out.
        let notify = match (sent, answer.await) {
            (Ok(()), Ok(notify)) => notify,
            _ => Arc::new(Notify::new()),
        };
        Subscription::new(notify, unregister)
    }
}

struct Actor {
    client: redis::Client,
    connect_timeout: Duration,
    response_timeout: Duration,
    conn: Option<(PubSubSink, PubSubStream)>,
    /// Channel -> (the waiters' shared Notify, how many waiters are registered).
    channels: HashMap<String, (Arc<Notify>, usize)>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Subscribe { channel, reply }) => {
                        let notify = self.subscribe(channel).await;
                        let _ = reply.send(notify);
                    }
                    Some(Command::Unsubscribe { channel }) => self.unsubscribe(channel).await,
                    None => return,
                },
                message = next_message(&mut self.conn) => match message {
                    Some(message) => {
                        if let Some((notify, _)) = self.channels.get(message.get_channel_name()) {
                            notify.notify_one();
                        }
                    }
                    None => self.connection_lost("subscriber connection closed"),
                },
                _ = sleep_until(reconnect_at) => {
                    self.reconnect_at = None;
                    // Nobody waits: connect again only when someone does.
                    if !self.channels.is_empty() {
                        self.reconnect().await;
                    }
                }
            }
        }
    }

    async fn subscribe(&mut self, channel: String) -> Arc<Notify> {
        let (notify, count) = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        *count += 1;
        let notify = Arc::clone(notify);
        if *count > 1 {
            return notify; // already subscribed (or queued for the reconnect)
        }
        if self.conn.is_none() {
            if self.reconnect_at.is_none() {
                self.reconnect().await; // the first waiter, or the outage is over
            }
            return notify;
        }
        self.send_subscribe(vec![channel]).await;
        notify
    }

    async fn unsubscribe(&mut self, channel: String) {
        let Some((_, count)) = self.channels.get_mut(&channel) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.channels.remove(&channel);
        if let Some((sink, _)) = &mut self.conn {
            match tokio::time::timeout(self.response_timeout, sink.unsubscribe(&channel)).await {
                Ok(Ok(())) => {}
                _ => self.connection_lost("UNSUBSCRIBE failed"),
            }
        }
    }

    async fn send_subscribe(&mut self, channels: Vec<String>) {
        let Some((sink, _)) = &mut self.conn else {
            return;
        };
        match tokio::time::timeout(self.response_timeout, sink.subscribe(&channels)).await {
            Ok(Ok(())) => {}
            _ => self.connection_lost("SUBSCRIBE failed"),
        }
    }

    async fn reconnect(&mut self) {
        let connect = tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub());
        match connect.await {
            Ok(Ok(pubsub)) => {
                self.conn = Some(pubsub.split());
                self.backoff = RECONNECT_MIN_DELAY;
                let channels: Vec<String> = self.channels.keys().cloned().collect();
                if !channels.is_empty() {
                    self.send_subscribe(channels).await;
                }
                if self.conn.is_some() {
                    tracing::debug!("lock wake-up subscriber connected");
                    // Releases published while we were away were missed: let everyone retry.
                    self.wake_all();
                }
            }
            Ok(Err(error)) => self.schedule_reconnect(&error.to_string()),
            Err(_) => self.schedule_reconnect("connect timed out"),
        }
    }

    fn connection_lost(&mut self, why: &str) {
        self.conn = None;
        self.wake_all();
        self.schedule_reconnect(why);
    }

    fn schedule_reconnect(&mut self, why: &str) {
        tracing::debug!(
            reason = why,
            retry_in = ?self.backoff,
            "lock wake-up subscriber disconnected; waiters fall back to lease expiry until it is back"
        );
        self.reconnect_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX_DELAY);
    }

    fn wake_all(&self) {
        for (notify, _) in self.channels.values() {
            notify.notify_waiters();
        }
    }
}

async fn next_message(conn: &mut Option<(PubSubSink, PubSubStream)>) -> Option<redis::Msg> {
    match conn {
        Some((_, stream)) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
