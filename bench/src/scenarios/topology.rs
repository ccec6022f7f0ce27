//! distlock on a 3-primary Cluster and under Sentinel, on this machine: the PING of the same kind
//! of client, uncontended acquire+release (with and without replica acknowledgement),
//! cross-process handoff, the commands the primaries ran per critical section, and on the Cluster
//! the throughput of one shard. The peers have no Cluster or Sentinel mode, so distlock runs
//! alone; its single-server figures are the reference.

use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::time::Instant;

use super::{crossprocess, throughput, uncontended};
use crate::cluster::Cluster;
use crate::commandstats::{self, Counts, Primaries};
use crate::plan::Plan;
use crate::sentinel::Sentinel;
use crate::subject::{Kind, Subject};

/// The bound given to replica acknowledgement: far above a replica's round trip on loopback, so it
/// never runs out here; what is measured is what waiting for the replica costs.
pub const REPLICA_ACKS_WITHIN: Duration = Duration::from_secs(1);
/// The floor, on a connection, of any lock that makes one script call per step.
pub const EMPTY_SCRIPT: &str = "return 1";
/// The same for a step that writes: a write is also sent to the primary's replica, which on this
/// machine shares the cores with everything else (one `SET`, one `DEL`: a key left behind would
/// not be a fresh key for the next call).
pub const WRITING_SCRIPT: &str =
    "redis.call('set', KEYS[1], '1') redis.call('del', KEYS[1]) return 1";
/// Redis Cluster's slots.
const SLOTS: u16 = 16384;
/// A step through the slots that visits the three shards' ranges in turn (prime to 16384).
const SLOT_STEP: u32 = 5471;
/// Candidate keys asked about per `CLUSTER KEYSLOT` pipeline when choosing keys of one shard.
const KEYSLOT_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Topology {
    #[serde(rename = "cluster")]
    Cluster,
    #[serde(rename = "sentinel")]
    Sentinel,
}

impl Topology {
    pub const ALL: [Topology; 2] = [Topology::Cluster, Topology::Sentinel];

    pub fn name(self) -> &'static str {
        match self {
            Topology::Cluster => "Cluster (3 primaries + 3 replicas)",
            Topology::Sentinel => "Sentinel (primary + 1 replica, 3 sentinels)",
        }
    }
}

/// Commands the primaries ran over some critical sections.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counted {
    pub sections: u64,
    pub commands: Counts,
}

impl Counted {
    fn add(&mut self, sections: u64, counts: &Counts) {
        self.sections += sections;
        self.commands = commandstats::sum([&self.commands, counts]);
    }
}

/// The Cluster's per-shard figures.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Shards {
    pub primaries: usize,
    pub tasks: usize,
    /// All tasks' keys on the first primary's slots.
    pub one_shard_sections: u64,
    pub one_shard_time: Duration,
    /// That primary's CPU time over those blocks.
    pub one_shard_cpu: Duration,
    /// The commands that primary ran in those blocks, and the other primaries.
    pub one_shard_commands: u64,
    pub other_shards_commands: u64,
    /// Keys spread over all slots, the same number of tasks.
    pub spread_sections: u64,
    pub spread_time: Duration,
}

pub struct TopologyMeasured {
    pub topology: Topology,
    pub ping: Vec<Duration>,
    /// Two calls of [`EMPTY_SCRIPT`] per sample, on the PING connection.
    pub empty_scripts: Vec<Duration>,
    /// Two calls of [`WRITING_SCRIPT`] per sample, on the PING connection.
    pub writing_scripts: Vec<Duration>,
    pub uncontended: Vec<Duration>,
    pub counted: Counted,
    /// The same uncontended sections with replica acknowledgement.
    pub acked: Vec<Duration>,
    pub acked_counted: Counted,
    /// Per K of the plan's cross-process handoff, in its order.
    pub crossprocess: Vec<Vec<Duration>>,
    pub shards: Option<Shards>,
}

/// What the PING of a topology goes through: the kind of connection distlock sends its commands on.
enum Pinger {
    /// Routed to the primary of a slot, the slot moving on each time so every shard answers its
    /// share, as fresh lock keys spread.
    Cluster(ClusterConnection),
    /// To the primary the sentinels name.
    Primary(ConnectionManager),
}

impl Pinger {
    async fn samples(&mut self, n: usize) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let started = Instant::now();
            match self {
                Pinger::Cluster(conn) => {
                    let slot = u16::try_from(i as u64 * u64::from(SLOT_STEP) % u64::from(SLOTS))
                        .unwrap_or(0);
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(slot, SlotAddr::Master),
                    ));
                    conn.route_command(redis::cmd("PING"), route)
                        .await
                        .context("PING through the cluster connection")?;
                }
                Pinger::Primary(conn) => {
                    redis::cmd("PING")
                        .query_async::<String>(conn)
                        .await
                        .context("PING to the primary")?;
                }
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    /// `n` samples of two sequential calls of `script` (with a key, so the Cluster routes it
    /// like a lock's script; the key moves on each time).
    async fn script_pairs(&mut self, script: &str, n: usize) -> Result<Vec<Duration>> {
        let script = redis::Script::new(script);
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let key = format!("reference-script:{i}");
            let started = Instant::now();
            for _ in 0..2 {
                let call = script.key(&key);
                let _: i64 = match self {
                    Pinger::Cluster(conn) => call.invoke_async(conn).await,
                    Pinger::Primary(conn) => call.invoke_async(conn).await,
                }
                .context("EVALSHA of a reference script")?;
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }
}

/// One running topology, as the scenarios see it.
struct Setup {
    topology: Topology,
    url: String,
    pinger: Pinger,
    primaries: Primaries,
    /// Cluster only: keys on the first primary's slots, one per throughput task.
    one_shard_keys: Option<Vec<String>>,
}

/// Starts each topology in turn, measures it, and stops it before the next starts.
pub async fn run(plan: &Plan) -> Result<Vec<TopologyMeasured>> {
    let mut out = Vec::new();
    for topology in Topology::ALL {
        let started = Instant::now();
        let measured = match topology {
            Topology::Cluster => {
                let cluster = Cluster::start().await?;
                eprintln!(
                    "{}: started in {:.1} s",
                    topology.name(),
                    started.elapsed().as_secs_f64()
                );
                let client = redis::cluster::ClusterClient::new(cluster.node_urls())?;
                let primaries = cluster.primary_urls();
                let setup = Setup {
                    topology,
                    url: cluster.url(),
                    pinger: Pinger::Cluster(client.get_async_connection().await?),
                    one_shard_keys: Some(
                        one_shard_keys(&cluster, &primaries[0], plan.throughput_tasks).await?,
                    ),
                    primaries: Primaries::connect(&primaries).await?,
                };
                measure(plan, setup).await?
            }
            Topology::Sentinel => {
                let sentinel = Sentinel::start().await?;
                eprintln!(
                    "{}: started in {:.1} s",
                    topology.name(),
                    started.elapsed().as_secs_f64()
                );
                let primary = sentinel.primary_url();
                let setup = Setup {
                    topology,
                    url: sentinel.url(),
                    pinger: Pinger::Primary(
                        redis::Client::open(primary.as_str())?
                            .get_connection_manager()
                            .await?,
                    ),
                    primaries: Primaries::connect(&[primary]).await?,
                    one_shard_keys: None,
                };
                measure(plan, setup).await?
            }
        };
        eprintln!(
            "{}: {:.1} s in all",
            topology.name(),
            started.elapsed().as_secs_f64()
        );
        out.push(measured);
    }
    Ok(out)
}

async fn measure(plan: &Plan, mut setup: Setup) -> Result<TopologyMeasured> {
    let name = setup.topology.name();
    let plain = Subject::connect(Kind::Ours, &setup.url)
        .await
        .with_context(|| format!("{name}: connecting distlock"))?;
    let acked = acked_subject(&setup.url)
        .await
        .with_context(|| format!("{name}: connecting distlock with replica acknowledgement"))?;
    let mut out = TopologyMeasured {
        topology: setup.topology,
        ping: Vec::new(),
        empty_scripts: Vec::new(),
        writing_scripts: Vec::new(),
        uncontended: Vec::new(),
        counted: Counted::default(),
        acked: Vec::new(),
        acked_counted: Counted::default(),
        crossprocess: vec![Vec::new(); plan.crossprocess_ks.len()],
        shards: setup.one_shard_keys.as_ref().map(|keys| Shards {
            primaries: setup.primaries.len(),
            tasks: keys.len(),
            ..Shards::default()
        }),
    };

    setup.pinger.samples(plan.ping_per_round).await?;
    // Loads the scripts on every primary.
    for script in [EMPTY_SCRIPT, WRITING_SCRIPT] {
        setup
            .pinger
            .script_pairs(script, plan.ping_per_round)
            .await?;
    }
    uncontended::latencies(&plain, "topo-warm", plan.warmup_sections).await?;
    uncontended::latencies(&acked, "topo-warm-acked", plan.warmup_sections).await?;
    setup.primaries.flush().await?;

    for round in 0..plan.rounds {
        let tag = |what: &str| format!("t{round}-{what}");
        out.ping
            .extend(setup.pinger.samples(plan.ping_per_round).await?);
        out.empty_scripts.extend(
            setup
                .pinger
                .script_pairs(EMPTY_SCRIPT, plan.ping_per_round)
                .await?,
        );
        out.writing_scripts.extend(
            setup
                .pinger
                .script_pairs(WRITING_SCRIPT, plan.ping_per_round)
                .await?,
        );

        // Without and with acknowledgement, the order alternating from round to round.
        let mut variants = [(false, &plain), (true, &acked)];
        if round % 2 == 1 {
            variants.reverse();
        }
        for (with_acks, subject) in variants {
            setup.primaries.reset().await?;
            let samples = uncontended::latencies(
                subject,
                &tag(if with_acks { "1a" } else { "1" }),
                plan.uncontended_per_block,
            )
            .await?;
            let counts = commandstats::sum(&setup.primaries.counts().await?);
            let sections = samples.len() as u64;
            if with_acks {
                out.acked_counted.add(sections, &counts);
                out.acked.extend(samples);
            } else {
                out.counted.add(sections, &counts);
                out.uncontended.extend(samples);
            }
            setup.primaries.flush().await?;
        }

        if let (Some(keys), Some(shards)) = (&setup.one_shard_keys, &mut out.shards) {
            let spread = || -> Vec<String> {
                (0..keys.len())
                    .map(|task| format!("t2:{}:{task}", tag("spread")))
                    .collect()
            };
            for one_shard in [round % 2 == 0, round % 2 == 1] {
                if one_shard {
                    setup.primaries.reset().await?;
                    let cpu = setup.primaries.cpu(0).await?;
                    let sections =
                        throughput::sections_on(&plain, keys.clone(), plan.throughput_block)
                            .await?;
                    shards.one_shard_cpu += setup.primaries.cpu(0).await? - cpu;
                    let per_primary = setup.primaries.counts().await?;
                    shards.one_shard_sections += sections;
                    shards.one_shard_time += plan.throughput_block;
                    shards.one_shard_commands += commandstats::total(&per_primary[0]);
                    shards.other_shards_commands += per_primary[1..]
                        .iter()
                        .map(commandstats::total)
                        .sum::<u64>();
                } else {
                    shards.spread_sections +=
                        throughput::sections_on(&plain, spread(), plan.throughput_block).await?;
                    shards.spread_time += plan.throughput_block;
                }
                setup.primaries.flush().await?;
            }
        }

        for (i, &k) in plan.crossprocess_ks.iter().enumerate() {
            let samples = crossprocess::latencies(
                &setup.url,
                Kind::Ours,
                &tag(&format!("8-{k}")),
                k,
                plan.crossprocess_block,
                plan.handoff_hold,
            )
            .await
            .with_context(|| format!("{name}: cross-process handoff"))?;
            out.crossprocess[i].extend(samples);
            setup.primaries.flush().await?;
        }
    }
    Ok(out)
}

/// distlock with replica acknowledgement on every lock.
async fn acked_subject(url: &str) -> Result<Subject> {
    let locker = distlock::Locker::builder(url)
        .replica_acks(REPLICA_ACKS_WITHIN)
        .build()
        .await?;
    Ok(Subject::Ours(locker))
}

/// `n` lock names whose keys hash to slots of the primary at `primary_url`.
async fn one_shard_keys(cluster: &Cluster, primary_url: &str, n: usize) -> Result<Vec<String>> {
    let ranges: Vec<(u16, u16)> = cluster
        .slot_owners()
        .await?
        .into_iter()
        .filter(|(_, _, owner)| owner == primary_url)
        .map(|(first, last, _)| (first, last))
        .collect();
    let mut conn = redis::Client::open(primary_url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut keys = Vec::with_capacity(n);
    let mut next = 0usize;
    while keys.len() < n {
        let candidates: Vec<String> = (next..next + KEYSLOT_CHUNK)
            .map(|i| format!("t2:shard:{i}"))
            .collect();
        next += KEYSLOT_CHUNK;
        let mut pipe = redis::pipe();
        for key in &candidates {
            pipe.cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(Kind::Ours.redis_key(key));
        }
        let slots: Vec<u16> = pipe
            .query_async(&mut conn)
            .await
            .context("CLUSTER KEYSLOT")?;
        keys.extend(
            candidates
                .into_iter()
                .zip(slots)
                .filter(|(_, slot)| ranges.iter().any(|(a, b)| (a..=b).contains(&slot)))
                .map(|(key, _)| key),
        );
    }
    keys.truncate(n);
    Ok(keys)
}
