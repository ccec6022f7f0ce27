//! The Cluster and Sentinel part of the report: a table of distlock on one server, on the Cluster
//! and under Sentinel, each latency a multiple of its own topology's PING; the per-shard figures
//! and the argument for throughput across shards, which two cores cannot show.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::cluster::PRIMARIES;
use crate::commandstats;
use crate::plan::Plan;
use crate::report::{num, secs};
use crate::scenarios::Measurements;
use crate::scenarios::topology::{
    Counted, REPLICA_ACKS_WITHIN, Shards, Topology, TopologyMeasured, WRITING_SCRIPT,
};
use crate::stats::Summary;
use crate::subject::Kind;

pub struct TopologyRow {
    pub metric: String,
    pub one_server: String,
    /// In the order of [`Topology::ALL`].
    pub values: Vec<String>,
}

pub struct TopologyReport {
    pub rows: Vec<TopologyRow>,
    pub json: serde_json::Value,
    /// The "on paper" section, with the figures filled in.
    scaling: String,
    how: String,
}

impl TopologyReport {
    pub fn build(
        plan: &Plan,
        single: &Measurements,
        topologies: &[TopologyMeasured],
    ) -> TopologyReport {
        let ours = &single.kinds[Kind::Ours.index()];
        let single_ping = Summary::of(&single.ping);
        let single_unit = single_ping.map_or(f64::NAN, |s| s.median_us);
        let by_topology = |f: &dyn Fn(&TopologyMeasured) -> String| -> Vec<String> {
            Topology::ALL
                .iter()
                .map(|t| {
                    topologies
                        .iter()
                        .find(|m| m.topology == *t)
                        .map_or_else(|| "-".to_owned(), f)
                })
                .collect()
        };
        let unit = |m: &TopologyMeasured| Summary::of(&m.ping).map_or(f64::NAN, |s| s.median_us);
        let median = |samples: &[Duration], unit: f64| {
            Summary::of(samples).map_or(f64::NAN, |s| s.median_us / unit)
        };
        let p99 = |samples: &[Duration], unit: f64| {
            Summary::of(samples).map_or(f64::NAN, |s| s.p99_us / unit)
        };
        let mut rows = Vec::new();

        let ping_cell = |s: Option<Summary>| {
            s.map_or("-".into(), |s| {
                format!("{:.1} (p99 {:.1}; n = {})", s.median_us, s.p99_us, s.n)
            })
        };
        rows.push(TopologyRow {
            metric: "PING, median µs: the unit of this column (one server: a `ConnectionManager`; \
                     Cluster: the cluster connection, routed to the primary of a slot that moves \
                     on at each PING; Sentinel: a `ConnectionManager` to the primary)"
                .into(),
            one_server: ping_cell(single_ping),
            values: by_topology(&|m| ping_cell(Summary::of(&m.ping))),
        });
        rows.push(TopologyRow {
            metric:
                "for scale: two calls of an empty script (`EVALSHA` of `return 1`) on the PING \
                     connection, median, x PING"
                    .into(),
            one_server: num(median(&single.empty_scripts, single_unit)),
            values: by_topology(&|m| num(median(&m.empty_scripts, unit(m)))),
        });
        rows.push(TopologyRow {
            metric: format!(
                "for scale: two calls of a script that writes (`{WRITING_SCRIPT}`), the same way, \
                 median, x PING"
            ),
            one_server: "-".into(),
            values: by_topology(&|m| num(median(&m.writing_scripts, unit(m)))),
        });
        rows.push(TopologyRow {
            metric: "uncontended acquire+release on a fresh key, median, x PING".into(),
            one_server: with_n(
                median(&ours.uncontended, single_unit),
                ours.uncontended.len(),
            ),
            values: by_topology(&|m| with_n(median(&m.uncontended, unit(m)), m.uncontended.len())),
        });
        rows.push(TopologyRow {
            metric: "same, p99, x PING".into(),
            one_server: num(p99(&ours.uncontended, single_unit)),
            values: by_topology(&|m| num(p99(&m.uncontended, unit(m)))),
        });
        let acks = format!("`replica_acks({} s)`", REPLICA_ACKS_WITHIN.as_secs_f64());
        rows.push(TopologyRow {
            metric: format!("same with {acks}, median, x PING"),
            one_server: "- (no replica)".into(),
            values: by_topology(&|m| with_n(median(&m.acked, unit(m)), m.acked.len())),
        });
        rows.push(TopologyRow {
            metric: "same with acknowledgement, p99, x PING".into(),
            one_server: "-".into(),
            values: by_topology(&|m| num(p99(&m.acked, unit(m)))),
        });
        rows.push(TopologyRow {
            metric: "cost of acknowledgement: median with / median without (µs added)".into(),
            one_server: "-".into(),
            values: by_topology(&|m| {
                let (with, without) = (median(&m.acked, 1.0), median(&m.uncontended, 1.0));
                format!("{:.2} x (+{:.0} µs)", with / without, with - without)
            }),
        });
        rows.push(TopologyRow {
            metric: "commands the primaries ran per critical section (`INFO commandstats`, summed \
                     over the primaries; a script's own commands included)"
                .into(),
            one_server: "-".into(),
            values: by_topology(&|m| per_section(&m.counted)),
        });
        rows.push(TopologyRow {
            metric: "same with acknowledgement".into(),
            one_server: "-".into(),
            values: by_topology(&|m| per_section(&m.acked_counted)),
        });
        for (i, &k) in plan.crossprocess_ks.iter().enumerate() {
            let single_k = ours.crossprocess.get(i).map_or(&[][..], Vec::as_slice);
            rows.push(TopologyRow {
                metric: format!(
                    "cross-process handoff, {k} processes: release returned -> next acquire \
                     returned in another process, median, x PING"
                ),
                one_server: with_n(median(single_k, single_unit), single_k.len()),
                values: by_topology(&|m| {
                    with_n(median(&m.crossprocess[i], unit(m)), m.crossprocess[i].len())
                }),
            });
            rows.push(TopologyRow {
                metric: format!("same ({k} processes), p99, x PING"),
                one_server: num(p99(single_k, single_unit)),
                values: by_topology(&|m| num(p99(&m.crossprocess[i], unit(m)))),
            });
        }

        let single_throughput =
            ours.throughput_sections as f64 / ours.throughput_time.as_secs_f64();
        let single_cpu =
            ours.throughput_server_cpu.as_secs_f64() * 1e6 / ours.throughput_sections as f64;
        let shard_cell = |f: &dyn Fn(&Shards) -> String| {
            by_topology(&|m| m.shards.as_ref().map_or("-".into(), f))
        };
        rows.push(TopologyRow {
            metric: format!(
                "critical sections per second, {} tasks on their own keys, all keys on one shard \
                 (one server: scenario 2)",
                plan.throughput_tasks
            ),
            one_server: num(single_throughput),
            values: shard_cell(&|s| num(s.one_shard_rate())),
        });
        rows.push(TopologyRow {
            metric: "redis-server CPU time per critical section on that shard, µs (`INFO cpu`)"
                .into(),
            one_server: num(single_cpu),
            values: shard_cell(&|s| num(s.one_shard_cpu_us())),
        });
        rows.push(TopologyRow {
            metric: "meanwhile, commands the other primaries ran, in all (health checks left out)"
                .into(),
            one_server: "-".into(),
            values: shard_cell(&|s| {
                format!(
                    "{} (that shard: {})",
                    s.other_shards_commands, s.one_shard_commands
                )
            }),
        });
        rows.push(TopologyRow {
            metric: format!(
                "critical sections per second, {} tasks, keys spread over all {PRIMARIES} shards \
                 (on this machine's cores)",
                plan.throughput_tasks
            ),
            one_server: "-".into(),
            values: shard_cell(&|s| num(s.spread_rate())),
        });

        let cluster = topologies.iter().find(|m| m.topology == Topology::Cluster);
        let scaling = scaling(cluster);
        let how = how(plan);
        let json = json!({
            "replica_acks_within_s": REPLICA_ACKS_WITHIN.as_secs_f64(),
            "topologies": topologies.iter().map(|m| json!({
                "topology": m.topology,
                "name": m.topology.name(),
                "ping_us": Summary::of(&m.ping),
                "empty_script_pairs_us": Summary::of(&m.empty_scripts),
                "writing_script_pairs_us": Summary::of(&m.writing_scripts),
                "uncontended_us": Summary::of(&m.uncontended),
                "uncontended_acked_us": Summary::of(&m.acked),
                "commands": m.counted,
                "commands_acked": m.acked_counted,
                "crossprocess_handoff": plan.crossprocess_ks.iter().zip(&m.crossprocess).map(|(k, s)| json!({
                    "k": k,
                    "summary_us": Summary::of(s),
                })).collect::<Vec<_>>(),
                "shards": m.shards,
            })).collect::<Vec<_>>(),
            "rows": rows.iter().map(|r| json!({
                "metric": r.metric,
                "one_server": r.one_server,
                "values": r.values,
            })).collect::<Vec<_>>(),
        });
        TopologyReport {
            rows,
            json,
            scaling,
            how,
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let names: Vec<&str> = Topology::ALL.iter().map(|t| t.name()).collect();
        let _ = writeln!(
            out,
            "| distlock | one server (above) | {} |",
            names.join(" | ")
        );
        let _ = writeln!(out, "|---|---|{}", "---|".repeat(names.len()));
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                row.metric,
                row.one_server,
                row.values.join(" | ")
            );
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n## Cluster and Sentinel\n");
        let _ = writeln!(
            out,
            "distlock alone (the peers have no Cluster or Sentinel mode), on a private 3-primary \
             Cluster and a private Sentinel setup started on this machine after the runs above. \
             Each latency is a multiple of its own column's PING, so the columns compare the lock's \
             cost, not the topologies' network paths.\n"
        );
        out.push_str(&self.table());
        out.push_str(&self.scaling);
        out.push_str(&self.how);
        out
    }
}

impl Shards {
    fn one_shard_rate(&self) -> f64 {
        self.one_shard_sections as f64 / self.one_shard_time.as_secs_f64()
    }

    fn one_shard_cpu_us(&self) -> f64 {
        self.one_shard_cpu.as_secs_f64() * 1e6 / self.one_shard_sections as f64
    }

    fn spread_rate(&self) -> f64 {
        self.spread_sections as f64 / self.spread_time.as_secs_f64()
    }
}

/// The argument for throughput across shards, with this run's per-shard figures.
fn scaling(cluster: Option<&TopologyMeasured>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### Throughput across shards, on paper\n");
    let Some((m, s)) = cluster.and_then(|m| m.shards.as_ref().map(|s| (m, s))) else {
        let _ = writeln!(out, "The Cluster was not measured in this run.");
        return out;
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rate = s.one_shard_rate();
    let cpu = s.one_shard_cpu_us();
    let spreads = m.counted.commands.get("spublish").copied().unwrap_or(0) as f64
        / m.counted.sections.max(1) as f64;
    let _ = writeln!(
        out,
        "This machine has {cores} cores for the client, the {} primaries and their {} replicas, \
         so it cannot show what more shards give; the figures that carry over are one shard's:\n",
        s.primaries, s.primaries
    );
    let _ = writeln!(
        out,
        "- **One shard**: {} critical sections per second with {} tasks whose keys all hash to \
         one primary's slots; that primary's redis-server spent {} µs of CPU per section, so one \
         core saturates near {} sections per second.",
        num(rate),
        s.tasks,
        num(cpu),
        num(1e6 / cpu)
    );
    let _ = writeln!(
        out,
        "- **Locality**: meanwhile the other {} primaries ran {} commands in all (health checks \
         left out), against {} on the lock's shard. Uncontended, the primaries ran {} per \
         section, {} of them `SPUBLISH` (the release's wake-up, on the lock's slot).",
        s.primaries - 1,
        s.other_shards_commands,
        s.one_shard_commands,
        per_section(&m.counted),
        num(spreads)
    );
    let _ = writeln!(
        out,
        "- **The argument**: each step of a lock is one script on the slot of the lock's hash \
         tag, and its wake-up is an `SPUBLISH` on a channel in that slot, which Redis delivers \
         within the shard (a plain `PUBLISH` goes over the cluster bus to every node); waiters \
         subscribe on their lock's shard only. No lock command touches a second shard, and shards \
         share nothing a lock needs; so N shards, each primary on a core of its own, serve about \
         N x one shard's figure until the client is the limit (its CPU, or its connection to \
         each primary; more client processes lift it). With this run's one-shard figure, itself \
         held down by the cores it shares here: about {} sections per second for 3 shards, {} \
         for 10; a shard's own ceiling, from its CPU per section, is the {} above.",
        num(3.0 * rate),
        num(10.0 * rate),
        num(1e6 / cpu)
    );
    let _ = writeln!(
        out,
        "- **Here**: spreading the same {} tasks' keys over all {} shards gave {} sections per \
         second ({:.2} x one shard): the servers and the client share {cores} cores, so that is \
         this machine's limit, not the cluster's.",
        s.tasks,
        s.primaries,
        num(s.spread_rate()),
        s.spread_rate() / rate
    );
    out
}

fn how(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### How these are measured\n");
    let _ = writeln!(
        out,
        "- Cluster: 6 `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster \
         create ... --cluster-replicas 1`; Sentinel: a primary, a replica (`--replicaof`) and 3 \
         `redis-server <conf> --sentinel` (quorum 2). Free loopback ports, temp dirs, no \
         persistence; every replica online before measuring. distlock connects with \
         `Locker::connect(\"redis+cluster://<all six nodes>/\")` and \
         `Locker::connect(\"redis+sentinel://<the three sentinels>/mymaster\")`."
    );
    let _ = writeln!(
        out,
        "- Per topology: a warm-up, then {} round(s) of: {} PINGs, as many pairs of each reference \
         script; a block of {} uncontended \
         sections without and one with replica acknowledgement (order alternating); on the \
         Cluster, a {} s throughput block with all keys on one shard and one with keys spread \
         (order alternating); the cross-process handoff of scenario 8 (blocks of {} s). The \
         command statistics are reset on every primary before each uncontended block and read \
         after it; the primaries' `PING`, `REPLCONF` and `CLUSTER` calls (health checks of the \
         sentinels, replicas and cluster client) are left out. The sentinels' `INFO` and hello \
         `PUBLISH`es (under 2 a second in all) stay in: under 0.01 per section.",
        plan.rounds,
        plan.ping_per_round,
        plan.uncontended_per_block,
        secs(plan.throughput_block),
        secs(plan.crossprocess_block)
    );
    let _ = writeln!(
        out,
        "- The reference scripts: where a lock's step costs more than an empty script call, the \
         writing script shows how much of that any write costs here (each write also goes to the \
         primary's replica, a process on the same cores)."
    );
    let _ = writeln!(
        out,
        "- Replica acknowledgement: `LockerBuilder::replica_acks({} s)`: an acquisition counts once \
         every replica connected to the lock's primary has it: the acquire script, `WAIT` and \
         `INFO replication` pipelined in one round trip to that primary; the release does not \
         wait.",
        REPLICA_ACKS_WITHIN.as_secs_f64()
    );
    out
}

/// Commands per section: the total, then per command.
fn per_section(counted: &Counted) -> String {
    if counted.sections == 0 {
        return "-".into();
    }
    let n = counted.sections as f64;
    let each: Vec<String> = counted
        .commands
        .iter()
        .filter(|(_, calls)| **calls as f64 / n >= SHOWN_PER_SECTION)
        .map(|(name, calls)| format!("{name} {}", num(*calls as f64 / n)))
        .collect();
    format!(
        "{} ({})",
        num(commandstats::total(&counted.commands) as f64 / n),
        each.join(", ")
    )
}

/// Commands rarer than this per section (a sentinel's hello, a stray health check) are left out
/// of the breakdown, not of the total.
const SHOWN_PER_SECTION: f64 = 0.05;

fn with_n(value: f64, n: usize) -> String {
    format!("{} (n = {n})", num(value))
}
