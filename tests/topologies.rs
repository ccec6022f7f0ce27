//! The test topologies themselves (tests/support/cluster.rs, sentinel.rs), before any lock runs
//! on them: each starts whole, keeps acknowledged data through a failover, a cluster moves a slot
//! with its keys, a proxied cluster can be cut off from one shard, and no process outlives the
//! test binary, also of a topology kept in a `static`.

mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use redis::AsyncCommands;
use support::cluster::{RedisCluster, Role};
use support::node::{must, poll_until};
use support::sentinel::RedisSentinel;

/// Until the processes of a dropped topology, or of an exited test binary, are gone: a SIGKILL
/// takes effect at once, the reaping by init may lag on a loaded machine.
const GONE_BOUND: Duration = Duration::from_secs(10);

/// Writes `key` on the node at `port` and waits until a replica has it, so a failover keeps it.
fn set_replicated(port: u16, key: &str, value: &str) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
    let mut conn = client.get_connection().expect("connect");
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut conn)
        .expect("SET");
    // WAIT covers this connection's writes: the SET above.
    let acked: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut conn)
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica did not acknowledge {key}");
}

fn get(port: u16, key: &str) -> Option<String> {
    must(port, redis::cmd("GET").arg(key))
}

/// Until none of `pids` is a live process (a zombie nobody reaped yet counts as gone).
fn wait_until_gone(pids: &[u32]) {
    poll_until("processes gone", GONE_BOUND, || {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    // The state follows the parenthesised command name.
                    .map(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
                    .unwrap_or(false)
            })
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {alive:?}"))
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_moves_a_slot_and_survives_a_failover() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.primaries().len(), 3);
    let replicas = cluster
        .nodes()
        .iter()
        .filter(|node| node.role() == Some(Role::Replica))
        .count();
    assert_eq!(replicas, 3);
    assert!(
        cluster.url().starts_with("redis+cluster://127.0.0.1:") && cluster.url().ends_with('/'),
        "{}",
        cluster.url()
    );

    // The plain client writes where primary_for_key says the key lives.
    let key = "lock:{moved}";
    let mut client = cluster.client().await;
    let () = client.set(key, "held").await.expect("SET");
    let home = cluster.primary_for_key(key).port();
    assert_eq!(get(home, key).as_deref(), Some("held"));

    let to = cluster
        .primaries()
        .iter()
        .map(|node| node.port())
        .find(|&port| port != home)
        .expect("another primary");
    cluster.migrate_slot_of(key, to);
    assert_eq!(cluster.primary_for_key(key).port(), to);
    assert_eq!(get(to, key).as_deref(), Some("held"), "the key moved along");
    let read: Option<String> = client.get(key).await.expect("GET after the move");
    assert_eq!(read.as_deref(), Some("held"), "the client follows MOVED");

    set_replicated(to, key, "acknowledged");
    let killed = cluster.kill_primary_of(key);
    let started = std::time::Instant::now();
    assert_eq!(killed, to);
    let promoted = cluster.wait_for_failover(killed, key);
    eprintln!("cluster failover in {:?}", started.elapsed());
    assert_ne!(promoted, killed);
    assert_eq!(cluster.node(promoted).role(), Some(Role::Primary));
    assert_eq!(get(promoted, key).as_deref(), Some("acknowledged"));

    let started = std::time::Instant::now();
    cluster.restart(killed);
    eprintln!("cluster restart in {:?}", started.elapsed());
    assert_eq!(
        cluster.node(killed).role(),
        Some(Role::Replica),
        "the old primary rejoins as a replica"
    );
    cluster.flushall();
    let read: Option<String> = client.get(key).await.expect("GET after FLUSHALL");
    assert_eq!(read, None);

    let pids = cluster.pids();
    assert_eq!(pids.len(), 6);
    drop(cluster);
    wait_until_gone(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_cluster_can_be_cut_off_from_one_shard() {
    let cluster = RedisCluster::start_behind_proxies();
    // A client that only knows what the nodes announce: the proxies.
    let seeds: Vec<String> = cluster
        .url()
        .trim_start_matches("redis+cluster://")
        .trim_end_matches('/')
        .split(',')
        .map(|address| format!("redis://{address}/"))
        .collect();
    let mut client = redis::cluster::ClusterClient::builder(seeds)
        .retries(1)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()
        .expect("client")
        .get_async_connection()
        .await
        .expect("connect through the proxies");
    let cut_key = "{cut}";
    let cut = cluster.primary_for_key(cut_key);
    let other_key = ["{a}", "{b}", "{c}", "{d}", "{e}"]
        .into_iter()
        .find(|key| cluster.primary_for_key(key).port() != cut.port())
        .expect("a key on another shard");
    for key in [cut_key, other_key] {
        let () = client.set(key, "v").await.expect("SET through the proxies");
    }
    let proxy = cut.proxy().expect("a proxy in front");
    assert!(
        proxy.accepted() > 0,
        "the client did not go through the proxy"
    );

    proxy.cut();
    let read: Result<Option<String>, _> = client.get(cut_key).await;
    assert!(read.is_err(), "the cut-off shard answered: {read:?}");
    let read: Option<String> = client.get(other_key).await.expect("another shard");
    assert_eq!(read.as_deref(), Some("v"));

    proxy.heal();
    let healed = poll_until("the healed shard answers", Duration::from_secs(10), || {
        Ok::<_, String>(get(cut.port(), cut_key))
    });
    assert_eq!(healed.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_setup_promotes_the_replica_when_the_primary_dies() {
    let setup = RedisSentinel::start();
    assert_eq!(setup.sentinel_ports().len(), 3);
    assert!(
        setup.url().starts_with("redis+sentinel://127.0.0.1:")
            && setup.url().ends_with("/mymaster"),
        "{}",
        setup.url()
    );
    let primary = setup.primary_port();
    let [replica] = setup.replica_ports()[..] else {
        panic!("one replica: {:?}", setup.replica_ports());
    };

    let mut client = setup.client().await;
    let () = client.set("plain", "v").await.expect("SET");
    set_replicated(primary, "acknowledged", "v");
    let killed = setup.kill_primary();
    let started = std::time::Instant::now();
    assert_eq!(killed, primary);
    let promoted = setup.wait_for_failover(killed);
    eprintln!("sentinel failover in {:?}", started.elapsed());
    assert_eq!(promoted, replica, "the only replica is promoted");
    assert_eq!(get(promoted, "acknowledged").as_deref(), Some("v"));

    let started = std::time::Instant::now();
    setup.restart(killed);
    eprintln!("sentinel restart in {:?}", started.elapsed());
    assert_eq!(
        setup.replica_ports(),
        [killed],
        "the old primary rejoins as the replica of {}",
        setup.primary_port()
    );
    setup.flushall();
    let mut client = setup.client().await;
    let read: Option<String> = client.get("acknowledged").await.expect("GET");
    assert_eq!(read, None);

    let pids = setup.pids();
    assert_eq!(pids.len(), 5);
    drop(setup);
    wait_until_gone(&pids);
}

static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
static SENTINEL: OnceLock<RedisSentinel> = OnceLock::new();

/// Run by `topologies_in_statics_die_with_the_test_binary` in a test binary of its own: starts a
/// cluster and a sentinel setup in statics, which are never dropped, and prints their processes.
#[test]
#[ignore = "run as a child process by topologies_in_statics_die_with_the_test_binary"]
fn static_topologies_child() {
    let cluster = CLUSTER.get_or_init(RedisCluster::start);
    let setup = SENTINEL.get_or_init(RedisSentinel::start);
    let pids: Vec<String> = cluster
        .pids()
        .into_iter()
        .chain(setup.pids())
        .map(|pid| pid.to_string())
        .collect();
    println!("pids: {}", pids.join(" "));
}

#[test]
fn topologies_in_statics_die_with_the_test_binary() {
    let output = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "static_topologies_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pids: Vec<u32> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("pids: "))
        .expect("the child's pids")
        .split(' ')
        .map(|pid| pid.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 6 + 5);
    wait_until_gone(&pids);
}
