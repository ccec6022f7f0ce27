//! The conformance suite's fixtures: a locker on each engine (a private Redis server, in memory),
//! and a shared counter to race on. The behaviours listed in `conformance!` (tests/runtime.rs,
//! tests/cancellation.rs) run on every engine in the list in `conformance!`; a new engine is done
//! when it passes all of them plus fault rows of its own (tests/faults).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use distlock::{Locker, LockerBuilder};

use super::redis_server::RedisServer;

pub struct Fixture {
    pub server: Option<RedisServer>,
    pub locker: Locker,
}

impl Fixture {
    pub async fn redis() -> Self {
        let server = RedisServer::start();
        let locker = Locker::connect(&server.url()).await.expect("connect");
        Fixture {
            server: Some(server),
            locker,
        }
    }

    pub async fn memory() -> Self {
        Fixture {
            server: None,
            locker: Locker::in_memory(),
        }
    }

    pub fn is_redis(&self) -> bool {
        self.server.is_some()
    }

    /// A builder for another locker on the same backend kind (memory: a fresh in-memory one).
    pub fn builder(&self) -> LockerBuilder {
        match &self.server {
            Some(server) => Locker::builder(server.url()),
            None => Locker::in_memory_builder(),
        }
    }

    /// A second, independent locker on the same store (Redis: its own connections). The memory
    /// backend is process-local, so there it is a clone sharing the store.
    pub async fn other_locker(&self) -> Locker {
        match &self.server {
            Some(server) => Locker::connect(&server.url()).await.expect("connect"),
            None => self.locker.clone(),
        }
    }

    pub fn server(&self) -> &RedisServer {
        self.server
            .as_ref()
            .expect("a Redis-only check ran on the memory backend")
    }

    /// A counter read and written in two separate steps, so concurrent writers lose updates.
    pub async fn counter(&self, name: &str) -> Counter {
        match &self.server {
            Some(server) => Counter::Redis(server.client().await, name.to_owned()),
            None => Counter::Memory(Arc::new(AtomicI64::new(0))),
        }
    }
}

#[derive(Clone)]
pub enum Counter {
    Redis(redis::aio::MultiplexedConnection, String),
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
/// gives a locker on it. Adding an engine (a Redis Cluster or Sentinel topology, etcd) is that
/// line plus its constructor (and its arms in `Fixture`'s methods); it is done when every
/// behaviour passes on it.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $crate::conformance_on!(redis_backend, redis; $($name),*);
        $crate::conformance_on!(memory_backend, memory; $($name),*);
    };
}

/// The behaviours `names` on one engine: a module `module` with a test per behaviour, each given
/// a fresh `Fixture::fixture()`.
#[macro_export]
macro_rules! conformance_on {
    ($module:ident, $fixture:ident; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::support::fixture::Fixture::$fixture().await).await
                }
            )*
        }
    };
}
