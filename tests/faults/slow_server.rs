//! Fault 6: the server answers later than the response timeout, two ways: the server itself
//! stops (`DEBUG SLEEP`, every client waits), and the network is slow (the fault proxy delays
//! every chunk by more than the response timeout, each way).
//!
//! Promised, each way:
//! - an acquire returns a Backend timeout error naming the key, at once (one response timeout),
//!   whatever its wait: the wait is for a busy lock, not for a slow server;
//! - the timed-out acquire still reaches the server late and takes the lock there, and the
//!   compare-and-delete the runtime sends behind it removes it: no lock is left behind once the
//!   server catches up (the lease is 30 s, so only that delete can remove it in time);
//! - a release against the slow server returns Backend within one response timeout; a holder
//!   kept by the watchdog reports the loss at the latest when its lease ends, although every
//!   renewal hangs; nothing waits longer;
//! - the same locker works again once the slowness ends.

use std::time::Duration;

use distlock::{LockError, LockGuard, LockOptions, Locker};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::report::FaultRow;
use crate::support::proxy::Proxy;
use crate::support::redis_server::{RedisServer, wait_until_unlocked};
use crate::within;

const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const WATCHDOG_LEASE: Duration = Duration::from_secs(2);
const RENEWAL: Duration = Duration::from_millis(600);
/// How long the server is slow for the acquire and release cases: past the response timeout.
const SLOW: Duration = Duration::from_secs(1);
/// How long it is slow for the watchdog case: past the watchdog lease, so the holder can only
/// learn of the loss from its own clock.
const SLOW_PAST_LEASE: Duration = Duration::from_secs(3);
/// The proxy's delay, each way: one way alone is past the response timeout.
const DELAY: Duration = Duration::from_millis(400);
/// An acquire's wait longer than the response timeout: it must not turn a slow server into a
/// longer wait.
const LONG_WAIT: Duration = Duration::from_secs(2);
/// Long enough that a lock left behind would still be there when we look.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// Scheduling slack on top of every promised bound: a loaded 2-core CI machine, debug build.
const MARGIN: Duration = Duration::from_millis(250);
/// After the slowness: the locker acquires again within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(2);
/// How long a timed-out acquire's lock may outlive the server's catching up.
const CLEANUP_BOUND: Duration = Duration::from_secs(3);
/// A PING not answered within this, right after a DEBUG SLEEP was sent: the server sleeps.
const ASLEEP_PROBE: Duration = Duration::from_millis(100);
/// Nothing in this fault may take longer than this: "nothing hangs".
const HANG_BOUND: Duration = Duration::from_secs(10);

pub fn run() -> FaultRow {
    crate::runtime().block_on(slow_server())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slowness {
    /// `DEBUG SLEEP` on the server: it answers nobody.
    ServerSleep,
    /// The proxy delays every chunk by `DELAY` each way.
    NetworkDelay,
}

impl Slowness {
    fn name(self) -> &'static str {
        match self {
            Slowness::ServerSleep => "sleep",
            Slowness::NetworkDelay => "delay",
        }
    }
}

/// The server, reached directly (for `DEBUG SLEEP`) or through the proxy (for the delay).
struct Setup {
    server: RedisServer,
    proxy: Proxy,
}

/// A slowness in effect; `end` waits for it to be over.
enum Slowed {
    /// The connection the DEBUG SLEEP was sent on: its answer comes when the server wakes.
    Sleeping(TcpStream),
    /// The delay is lifted at this instant.
    Delayed(Instant),
}

impl Setup {
    async fn locker(&self, how: Slowness) -> Locker {
        let url = match how {
            Slowness::ServerSleep => self.server.url(),
            Slowness::NetworkDelay => self.proxy.url(),
        };
        Locker::builder(url)
            .watchdog_lease(WATCHDOG_LEASE)
            .renewal_interval(RENEWAL)
            .response_timeout(RESPONSE_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .await
            .expect("connect")
    }

    /// Makes the server slow for `d`; returns once the slowness is in effect.
    async fn slow_down(&self, how: Slowness, d: Duration) -> Slowed {
        match how {
            Slowness::ServerSleep => Slowed::Sleeping(self.put_to_sleep(d).await),
            Slowness::NetworkDelay => {
                self.proxy.delay(DELAY);
                Slowed::Delayed(Instant::now() + d)
            }
        }
    }

    /// Waits until the slowness is over; returns when the server answers promptly again.
    async fn caught_up(&self, slowed: Slowed) -> Instant {
        match slowed {
            Slowed::Sleeping(mut conn) => {
                let mut reply = [0u8; 5];
                tokio::time::timeout(HANG_BOUND, conn.read_exact(&mut reply))
                    .await
                    .expect("the server wakes from DEBUG SLEEP")
                    .expect("read the DEBUG SLEEP answer");
                assert_eq!(&reply, b"+OK\r\n", "DEBUG SLEEP answered");
                Instant::now()
            }
            Slowed::Delayed(until) => {
                tokio::time::sleep_until(until).await; // the fault's length
                self.proxy.heal();
                Instant::now()
            }
        }
    }

    /// Sends `DEBUG SLEEP d` and returns once the server is asleep: a PING on another
    /// connection, sent after it, gets no answer.
    async fn put_to_sleep(&self, d: Duration) -> TcpStream {
        let port = self.server.port();
        let mut conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect for DEBUG SLEEP");
        conn.write_all(format!("DEBUG SLEEP {:.3}\r\n", d.as_secs_f64()).as_bytes())
            .await
            .expect("send DEBUG SLEEP");
        let deadline = Instant::now() + HANG_BOUND;
        loop {
            let mut probe = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect a probe");
            probe.write_all(b"PING\r\n").await.expect("send PING");
            let mut reply = [0u8; 7];
            if tokio::time::timeout(ASLEEP_PROBE, probe.read_exact(&mut reply))
                .await
                .is_err()
            {
                return conn;
            }
            assert!(Instant::now() < deadline, "the server never went to sleep");
        }
    }
}

/// What one way of slowing down measured.
struct Figures {
    /// The slowest of the timed-out acquires, from call to error.
    acquire_error_after: Duration,
    /// One of their messages, for the report.
    acquire_message: String,
    /// How many timed-out acquires reached the server late (and took the lock there).
    late_acquires: usize,
    /// From the catch-up until the timed-out acquires' locks were gone.
    cleaned_after_catch_up: Duration,
    /// From the catch-up to the first successful acquire (worst of the parts).
    recovery: Duration,
    release_error_after: Duration,
    /// From the slowdown to the watchdog's loss report.
    loss_after_slowdown: Duration,
    /// Critical sections that ran (acquire to release).
    sections: u64,
    broken: Vec<String>,
}

async fn slow_server() -> FaultRow {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start(server.port());
    let setup = Setup { server, proxy };

    let mut all = Vec::new();
    for how in [Slowness::ServerSleep, Slowness::NetworkDelay] {
        let figures = one_way_of_slowing(&setup, how).await;
        println!(
            "  {}: acquire errors after {:.0} ms ({}); {} of 2 ran late on the server, their \
             locks gone {:.0} ms after it caught up; release error after {:.0} ms; watchdog \
             loss {:.0} ms after the slowdown; working again {:.1} ms after the catch-up",
            how.name(),
            figures.acquire_error_after.as_secs_f64() * 1e3,
            figures.acquire_message,
            figures.late_acquires,
            figures.cleaned_after_catch_up.as_secs_f64() * 1e3,
            figures.release_error_after.as_secs_f64() * 1e3,
            figures.loss_after_slowdown.as_secs_f64() * 1e3,
            figures.recovery.as_secs_f64() * 1e3,
        );
        all.push(figures);
    }

    let broken: Vec<String> = all.iter().flat_map(|f| f.broken.clone()).collect();
    assert!(
        broken.is_empty(),
        "a slow server broke {} promise(s):\n  - {}",
        broken.len(),
        broken.join("\n  - ")
    );

    let (sleep, delay) = (&all[0], &all[1]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    FaultRow {
        fault: "Slow server (past the response timeout)",
        injected: format!(
            "DEBUG SLEEP {SLOW:?} (acquire, release) and {SLOW_PAST_LEASE:?} (watchdog); proxy \
             delay {DELAY:?} each way for as long; response timeout {RESPONSE_TIMEOUT:?}, \
             watchdog lease {WATCHDOG_LEASE:?}"
        ),
        sections: all.iter().map(|f| f.sections).sum(),
        overlaps: 0,
        lost: all.len() as u64,
        lost_reported: all.len() as u64,
        recovery: all.iter().map(|f| f.recovery).max(),
        notes: format!(
            "acquire failed with a Backend timeout naming the key after {:.0} / {:.0} ms (sleep / \
             delay), whatever the wait; the late locks were gone {:.0} / {:.0} ms after the \
             server caught up; release Backend after {:.0} / {:.0} ms; watchdog loss reported \
             {:.0} / {:.0} ms into the slowdown (lease {} ms)",
            ms(sleep.acquire_error_after),
            ms(delay.acquire_error_after),
            ms(sleep.cleaned_after_catch_up),
            ms(delay.cleaned_after_catch_up),
            ms(sleep.release_error_after),
            ms(delay.release_error_after),
            ms(sleep.loss_after_slowdown),
            ms(delay.loss_after_slowdown),
            WATCHDOG_LEASE.as_millis(),
        ),
    }
}

async fn one_way_of_slowing(setup: &Setup, how: Slowness) -> Figures {
    let name = how.name();
    let locker = setup.locker(how).await;
    let mut broken = Vec::new();
    let mut sections = 0;
    let mut recovery = Duration::ZERO;

    // 1. Acquires against the slow server: one trying once, one willing to wait.
    let keys = [
        format!("slow:{name}:acquire:once"),
        format!("slow:{name}:acquire:waiting"),
    ];
    let listener = ReleaseListener::start(&setup.server, &keys).await;
    let slowed = setup.slow_down(how, SLOW).await;
    let attempts = keys
        .iter()
        .zip([Duration::ZERO, LONG_WAIT])
        .map(|(key, wait)| {
            let (locker, key) = (locker.clone(), key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = locker
                    .acquire(&key, LockOptions::new().wait(wait).lease(LONG_LEASE))
                    .await;
                (key, started.elapsed(), outcome.map(drop))
            })
        });
    let mut acquire_error_after = Duration::ZERO;
    let mut acquire_message = String::new();
    for attempt in attempts.collect::<Vec<_>>() {
        let (key, took, outcome) =
            within(HANG_BOUND, "an acquire against the slow server", attempt)
                .await
                .expect("acquire task");
        acquire_error_after = acquire_error_after.max(took);
        match outcome {
            Err(e) if is_timeout_naming(&e, &key) => acquire_message = e.to_string(),
            other => broken.push(format!(
                "{name}: acquire of `{key}` against the slow server returned {other:?}; expected a \
                 Backend timeout naming the key"
            )),
        }
        if took > RESPONSE_TIMEOUT + MARGIN {
            broken.push(format!(
                "{name}: acquire of `{key}` returned after {took:?}, past one response timeout \
                 {RESPONSE_TIMEOUT:?} + {MARGIN:?}"
            ));
        }
    }
    let caught_up = setup.caught_up(slowed).await;
    // The same locker works again.
    let guard = first_success(&locker, &format!("slow:{name}:after")).await;
    recovery = recovery.max(caught_up.elapsed());
    release_or_note(guard, &mut broken, name).await;
    sections += 1;
    // The acquires did reach the server late (each lock taken there was released by the
    // compare-and-delete behind it, which published), and their locks are gone.
    let cleaned = wait_until_unlocked(&setup.server, &keys, CLEANUP_BOUND).await;
    let cleaned_after_catch_up = caught_up.elapsed();
    if let Err(left) = cleaned {
        broken.push(format!(
            "{name}: timed-out acquires left their locks behind: {left:?} still locked \
             {CLEANUP_BOUND:?} after the server caught up (lease {LONG_LEASE:?})"
        ));
    }
    let late_acquires = listener.count().await;

    // 2. A release against the slow server.
    let release_key = format!("slow:{name}:release");
    let guard = locker
        .acquire(
            &release_key,
            LockOptions::new().wait(Duration::ZERO).lease(LONG_LEASE),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: acquire before the slowdown: {e}"));
    sections += 1;
    let slowed = setup.slow_down(how, SLOW).await;
    let started = Instant::now();
    let released = within(
        HANG_BOUND,
        "a release against the slow server",
        guard.release(),
    )
    .await;
    let release_error_after = started.elapsed();
    match &released {
        Err(e) if is_timeout_naming(e, &release_key) => {}
        other => broken.push(format!(
            "{name}: release against the slow server returned {other:?}; expected a Backend \
             timeout naming the key"
        )),
    }
    if release_error_after > RESPONSE_TIMEOUT + MARGIN {
        broken.push(format!(
            "{name}: release returned after {release_error_after:?}, past one response timeout \
             {RESPONSE_TIMEOUT:?} + {MARGIN:?}"
        ));
    }
    setup.caught_up(slowed).await;
    // The release went out before the timeout: it runs late, and frees the lock long before
    // its 30 s lease would.
    if let Err(left) = wait_until_unlocked(&setup.server, &[release_key], CLEANUP_BOUND).await {
        broken.push(format!(
            "{name}: the timed-out release never ran: {left:?} still locked {CLEANUP_BOUND:?} \
             after the server caught up"
        ));
    }

    // 3. A watchdog holder against a server slow for longer than its lease.
    let watchdog_key = format!("slow:{name}:watchdog");
    let guard = locker
        .acquire(&watchdog_key, LockOptions::new().wait(Duration::ZERO))
        .await
        .unwrap_or_else(|e| panic!("{name}: acquire before the slowdown: {e}"));
    sections += 1;
    let lost = guard.lost();
    // Let it renew at least once, then slow down at a random point of its renewal cycle.
    tokio::time::sleep(RENEWAL + RENEWAL.mul_f64(fastrand::f64())).await;
    let slowed = setup.slow_down(how, SLOW_PAST_LEASE).await;
    let slowed_at = Instant::now();
    within(HANG_BOUND, "the watchdog's loss report", lost).await;
    let loss_after_slowdown = slowed_at.elapsed();
    // Its last answered renewal was sent before the slowdown: its lease ended before
    // slowdown + lease.
    if loss_after_slowdown > WATCHDOG_LEASE + MARGIN {
        broken.push(format!(
            "{name}: the watchdog reported the loss {loss_after_slowdown:?} into the slowdown, \
             past its lease {WATCHDOG_LEASE:?} + {MARGIN:?}"
        ));
    }
    let caught_up = setup.caught_up(slowed).await;
    let released = within(HANG_BOUND, "the lost holder's release", guard.release()).await;
    if !matches!(released, Err(LockError::LeaseLost { .. })) {
        broken.push(format!(
            "{name}: the watchdog holder's release after the slowdown returned {released:?}, \
             expected LeaseLost"
        ));
    }
    let guard = first_success(&locker, &watchdog_key).await;
    recovery = recovery.max(caught_up.elapsed());
    release_or_note(guard, &mut broken, name).await;
    sections += 1;

    if recovery > RECOVERY_BOUND {
        broken.push(format!(
            "{name}: the locker first acquired again {recovery:?} after the server caught up, \
             bound {RECOVERY_BOUND:?}"
        ));
    }

    Figures {
        acquire_error_after,
        acquire_message,
        late_acquires,
        cleaned_after_catch_up,
        recovery,
        release_error_after,
        loss_after_slowdown,
        sections,
        broken,
    }
}

/// A Backend timeout whose message names the key.
fn is_timeout_naming(e: &LockError, key: &str) -> bool {
    matches!(
        e,
        LockError::Backend {
            key: Some(k),
            source,
        } if k == key && source.is_timeout()
    ) && e.to_string().contains(&format!("`{key}`"))
}

/// Tries `key` until it is acquired (Backend errors: a moment later), bounded.
async fn first_success(locker: &Locker, key: &str) -> LockGuard {
    let deadline = Instant::now() + HANG_BOUND;
    loop {
        match locker
            .acquire(key, LockOptions::new().wait(Duration::from_secs(1)))
            .await
        {
            Ok(guard) => return guard,
            Err(LockError::Backend { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{key}: the locker does not work again after the slowdown: {e}"),
        }
    }
}

async fn release_or_note(guard: LockGuard, broken: &mut Vec<String>, name: &str) {
    let key = guard.key().to_owned();
    if let Err(e) = within(HANG_BOUND, "a release after the slowdown", guard.release()).await {
        broken.push(format!(
            "{name}: release of `{key}` after the slowdown: {e}"
        ));
    }
}

/// Listens to `keys`' release channels: a timed-out acquire that still ran on the server took
/// the lock there, and the compare-and-delete the runtime sent behind it published one message.
struct ReleaseListener(redis::aio::PubSub);

/// Silence after which no more release messages are expected (each was published before its
/// lock was gone, and the count is taken after that).
const QUIET: Duration = Duration::from_millis(200);

impl ReleaseListener {
    async fn start(server: &RedisServer, keys: &[String]) -> Self {
        let client = redis::Client::open(server.url()).expect("url");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .expect("subscriber connection");
        for key in keys {
            pubsub
                .subscribe(format!("lock:{{{key}}}:released"))
                .await
                .expect("SUBSCRIBE");
        }
        ReleaseListener(pubsub)
    }

    /// How many releases were published on the channels.
    async fn count(mut self) -> usize {
        let mut messages = self.0.on_message();
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(QUIET, messages.next()).await {
            n += 1;
        }
        n
    }
}
