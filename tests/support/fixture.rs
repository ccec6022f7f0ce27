//! The conformance suite's fixtures: a locker on each engine (a private Redis server, the test
//! binary's Redis Cluster and Sentinel setup, in memory), the Redis-only checks of each
//! (`probe.rs`), and a shared counter to race on. The behaviours listed in `conformance!`
//! (tests/runtime.rs, by_hand.rs, cancellation.rs, operators.rs) run on every engine in the list
//! in `conformance!`; a new engine is done when it passes all of them plus fault rows of its own
//! (tests/faults).

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use distlock::{Locker, LockerBuilder};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::cluster::RedisCluster;
use super::probe::{KeyedConnection, Probe};
use super::redis_server::RedisServer;
use super::sentinel::RedisSentinel;

/// How long a behaviour's leftover tasks (a background release, a watchdog) may take to end
/// after it returned, before the next behaviour gets the shared topology: a round trip each.
const LEFTOVERS_BOUND: Duration = Duration::from_secs(10);

/// One Cluster and one Sentinel setup per test binary (starting one takes seconds, and the suite
/// has dozens of behaviours), started by the first test that asks, killed when the binary exits
/// (`process.rs`). Behaviours take turns on each, after a FLUSHALL, so they keep their key names.
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
static CLUSTER_TURN: LazyLock<Arc<Mutex<()>>> = LazyLock::new(Arc::default);
static SENTINEL: OnceLock<RedisSentinel> = OnceLock::new();
static SENTINEL_TURN: LazyLock<Arc<Mutex<()>>> = LazyLock::new(Arc::default);

pub struct Fixture {
    pub locker: Locker,
    /// Redis topologies: the URL a locker connects to, and the checks' view of the processes.
    redis: Option<(String, Probe)>,
    /// A server of this test's own (`redis()`).
    server: Option<RedisServer>,
    /// This test's turn on a shared topology.
    turn: Option<OwnedMutexGuard<()>>,
}

impl Fixture {
    /// A server of this test's own, without persistence.
    pub async fn redis() -> Self {
        let server = RedisServer::start();
        let locker = Locker::connect(&server.url()).await.expect("connect");
        Self::on_server(server, locker).await
    }

    /// `locker` (made by the caller, e.g. through a proxy) on `server`, which the checks look at.
    pub async fn on_server(server: RedisServer, locker: Locker) -> Self {
        Fixture {
            locker,
            redis: Some((server.url(), Probe::single(server.port()).await)),
            server: Some(server),
            turn: None,
        }
    }

    /// The test binary's Redis Cluster (3 primaries, 3 replicas), flushed, for this test alone.
    pub async fn cluster() -> Self {
        let turn = Arc::clone(&CLUSTER_TURN).lock_owned().await;
        let cluster = CLUSTER.get_or_init(RedisCluster::start);
        cluster.flushall();
        Self::shared(cluster.url(), Probe::cluster(cluster).await, turn).await
    }

    /// The test binary's Sentinel setup (a primary, a replica, 3 sentinels), flushed, for this
    /// test alone.
    pub async fn sentinel() -> Self {
        let turn = Arc::clone(&SENTINEL_TURN).lock_owned().await;
        let setup = SENTINEL.get_or_init(RedisSentinel::start);
        setup.flushall();
        Self::shared(setup.url(), Probe::sentinel(setup).await, turn).await
    }

    async fn shared(url: String, probe: Probe, turn: OwnedMutexGuard<()>) -> Self {
        let locker = Locker::connect(&url).await.expect("connect");
        Fixture {
            locker,
            redis: Some((url, probe)),
            server: None,
            turn: Some(turn),
        }
    }

    pub async fn memory() -> Self {
        Fixture {
            locker: Locker::in_memory(),
            redis: None,
            server: None,
            turn: None,
        }
    }

    /// Any Redis topology (the checks of `probe()` work).
    pub fn is_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// A builder for another locker on the same backend kind (memory: a fresh in-memory one).
    pub fn builder(&self) -> LockerBuilder {
        match &self.redis {
            Some((url, _)) => Locker::builder(url.as_str()),
            None => Locker::in_memory_builder(),
        }
    }

    /// A second, independent locker on the same store (Redis: its own connections). The memory
    /// backend is process-local, so there it is a clone sharing the store.
    pub async fn other_locker(&self) -> Locker {
        match &self.redis {
            Some((url, _)) => Locker::connect(url).await.expect("connect"),
            None => self.locker.clone(),
        }
    }

    /// The server of a single-server fixture (`redis()`).
    pub fn server(&self) -> &RedisServer {
        self.server
            .as_ref()
            .expect("a single-server check ran on another backend")
    }

    /// Redis-only checks, on whatever topology this is.
    pub fn probe(&self) -> &Probe {
        match &self.redis {
            Some((_, probe)) => probe,
            None => panic!("a Redis-only check ran on the memory backend"),
        }
    }

    /// A plain connection (not distlock's) for keyed commands, on any Redis topology.
    pub async fn client(&self) -> KeyedConnection {
        self.probe().client().await
    }

    /// How many times `command` ran (see `Probe::calls_of`); 0 on the memory backend.
    pub async fn command_calls(&self, command: &str) -> u64 {
        match &self.redis {
            Some((_, probe)) => probe.command_calls(command).await,
            None => 0,
        }
    }

    /// A counter read and written in two separate steps, so concurrent writers lose updates.
    pub async fn counter(&self, name: &str) -> Counter {
        match &self.redis {
            Some((_, probe)) => Counter::Redis(probe.client().await, name.to_owned()),
            None => Counter::Memory(Arc::new(AtomicI64::new(0))),
        }
    }

    /// Gives up the shared topology's turn to the caller, to hold past the fixture.
    pub fn take_turn(&mut self) -> Option<OwnedMutexGuard<()>> {
        self.turn.take()
    }
}

/// Behaviours that fail on an engine because of a library bug, as (engine, behaviour, the bug).
/// Each runs and must still fail: once the bug is fixed its test fails, saying to remove the
/// line here.
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

/// Runs `behaviour` (named `name`) on the fixture `fixture` makes, on engine `engine`, on a
/// runtime of its own (as `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` would),
/// and ends every task it left before the next behaviour gets a turn on a shared topology.
pub fn run<B, F>(engine: &str, name: &str, fixture: impl Future<Output = Fixture>, behaviour: B)
where
    B: FnOnce(Fixture) -> F,
    F: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let known = KNOWN_FAILURES
        .iter()
        .find(|(on, failing, _)| *on == engine && *failing == name)
        .map(|(_, _, bug)| bug);
    let turn = std::sync::Mutex::new(None);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let mut fx = fixture.await;
            *turn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = fx.take_turn();
            behaviour(fx).await;
        })
    }));
    runtime.shutdown_timeout(LEFTOVERS_BOUND);
    drop(turn);
    match (ran, known) {
        (Err(panic), None) => std::panic::resume_unwind(panic),
        (Ok(()), Some(bug)) => panic!(
            "{name} passes on {engine} now: remove it from KNOWN_FAILURES (it failed on: {bug})"
        ),
        (Err(_), Some(bug)) => eprintln!("{name} still fails on {engine}, as known: {bug}"),
        (Ok(()), None) => {}
    }
}

#[derive(Clone)]
pub enum Counter {
    Redis(KeyedConnection, String),
    Memory(Arc<AtomicI64>),
}

impl Counter {
    pub async fn get(&self) -> i64 {
        match self {
            Counter::Redis(conn, key) => {
                let mut conn = conn.clone();
                let v: Option<i64> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                v.unwrap_or(0)
            }
            Counter::Memory(n) => n.load(Ordering::SeqCst),
        }
    }

    pub async fn set(&self, value: i64) {
        match self {
            Counter::Redis(conn, key) => {
                let mut conn = conn.clone();
                let () = redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async(&mut conn)
                    .await
                    .expect("SET");
            }
            Counter::Memory(n) => n.store(value, Ordering::SeqCst),
        }
    }

    /// GET, yield to other tasks, SET +1: a read-modify-write that is only correct under a lock.
    pub async fn increment_non_atomically(&self) {
        let v = self.get().await;
        tokio::task::yield_now().await;
        self.set(v + 1).await;
    }
}

/// The conformance suite: generates each listed behaviour once per engine, as `<engine>::name`
/// (e.g. `redis_backend::name`, `memory_backend::name`). Each behaviour is
/// `async fn name(fx: Fixture)` in the including file.
///
/// Every engine is one line below: the module its tests go in, and the `Fixture` constructor that
/// gives a locker on it. Adding an engine (etcd, say) is that line plus its constructor (and its
/// arms in `Fixture`'s methods); it is done when every behaviour passes on it (`KNOWN_FAILURES`
/// lists the ones that do not yet).
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $crate::conformance_on!(redis_backend, redis; $($name),*);
        $crate::conformance_on!(memory_backend, memory; $($name),*);
        $crate::conformance_on!(cluster_backend, cluster; $($name),*);
        $crate::conformance_on!(sentinel_backend, sentinel; $($name),*);
    };
}

/// The behaviours `names` on one engine: a module `module` with a test per behaviour, each given
/// a fresh `Fixture::fixture()` (on the shared topologies: the topology to itself, flushed).
#[macro_export]
macro_rules! conformance_on {
    ($module:ident, $fixture:ident; $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::support::fixture::run(
                        stringify!($fixture),
                        stringify!($name),
                        super::support::fixture::Fixture::$fixture(),
                        super::$name,
                    )
                }
            )*
        }
    };
}
