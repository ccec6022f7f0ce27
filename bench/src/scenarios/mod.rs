//! The eight scenarios, and the schedule that runs them: a warm-up, then rounds in which every
//! scenario runs one block per implementation, in an order that rotates from round to round, so
//! a noisy moment of the machine does not land on one implementation only. The floor runs
//! scenarios 1 and 2 only: it is the cost of an owner-checked lock, not a way of waiting.

pub mod all_served;
pub mod crossprocess;
pub mod handoff;
pub mod scale;
pub mod starvation;
pub mod throughput;
pub mod topology;
pub mod uncontended;
pub mod waiting_load;

use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::plan::Plan;
use crate::probe::Probe;
use crate::subject::{KINDS, Kind, Subject, WAIT};
use scale::Scale;
use starvation::Starvation;
use waiting_load::WaitingLoad;

/// Everything measured for one implementation.
#[derive(Default)]
pub struct Measured {
    pub uncontended: Vec<Duration>,
    pub commands_per_section: Option<f64>,
    pub throughput_sections: u64,
    pub throughput_time: Duration,
    /// The server's CPU time over the throughput blocks.
    pub throughput_server_cpu: Duration,
    /// Per K of the plan, in its order.
    pub handoff: Vec<Vec<Duration>>,
    pub waiting_load: Option<WaitingLoad>,
    pub all_served: Vec<Duration>,
    pub starvation: Option<Starvation>,
    pub scale: Option<Scale>,
    /// Scenario 8, per K of the plan, in its order.
    pub crossprocess: Vec<Vec<Duration>>,
}

pub struct Measurements {
    pub ping: Vec<Duration>,
    /// Two calls of an empty script per sample, on the PING connection.
    pub empty_scripts: Vec<Duration>,
    /// Indexed by [`Kind::index`].
    pub kinds: [Measured; KINDS],
}

/// `kinds` rotated left by `shift`.
fn order(kinds: &[Kind], shift: usize) -> Vec<Kind> {
    let mut rotated = kinds.to_vec();
    rotated.rotate_left(shift % kinds.len());
    rotated
}

pub async fn run(plan: &Plan, probe: &Probe, url: &str) -> Result<Measurements> {
    let mut subjects = Vec::new();
    for kind in Kind::ALL {
        subjects.push(Subject::connect(kind, url).await?);
    }
    let mut out = Measurements {
        ping: Vec::new(),
        empty_scripts: Vec::new(),
        kinds: Default::default(),
    };
    for measured in &mut out.kinds {
        measured.handoff = vec![Vec::new(); plan.handoff_ks.len()];
        measured.crossprocess = vec![Vec::new(); plan.crossprocess_ks.len()];
    }

    // Wall time per implementation, for the log: what each one adds to a run (CI runs the quick
    // one on every submission).
    let mut spent = [Duration::ZERO; KINDS];
    let mut crossprocess_spent = Duration::ZERO;
    eprintln!("warm-up");
    probe.ping_samples(plan.ping_per_round).await?;
    for (subject, kind) in subjects.iter().zip(Kind::ALL) {
        let block = Instant::now();
        uncontended::latencies(subject, "warm", plan.warmup_sections).await?;
        throughput::sections(
            subject,
            "warm",
            plan.throughput_tasks,
            plan.warmup_throughput,
        )
        .await?;
        if !Kind::CONTENDERS.contains(&kind) {
            spent[kind.index()] += block.elapsed();
            probe.flush().await?;
            continue;
        }
        // Contention too: a lazily opened connection (ours: the subscriber) is start-up cost.
        handoff::latencies(
            subject,
            "warm",
            2,
            plan.warmup_throughput,
            plan.handoff_hold,
        )
        .await?;
        spent[kind.index()] += block.elapsed();
        probe.flush().await?;
    }

    eprintln!("scenario 1: commands per critical section (MONITOR)");
    for kind in Kind::ALL {
        let block = Instant::now();
        let counted =
            uncontended::commands_per_section(probe, url, kind, "count", plan.counted_sections)
                .await?;
        out.kinds[kind.index()].commands_per_section = Some(counted);
        spent[kind.index()] += block.elapsed();
        probe.flush().await?;
    }

    for round in 0..plan.rounds {
        let tag = |what: &str| format!("r{round}-{what}");
        eprintln!("round {}/{}", round + 1, plan.rounds);
        out.ping
            .extend(probe.ping_samples(plan.ping_per_round).await?);
        out.empty_scripts
            .extend(probe.empty_script_pairs(plan.ping_per_round).await?);

        for kind in order(&Kind::ALL, round) {
            let block = Instant::now();
            let samples = uncontended::latencies(
                &subjects[kind.index()],
                &tag("1"),
                plan.uncontended_per_block,
            )
            .await?;
            out.kinds[kind.index()].uncontended.extend(samples);
            spent[kind.index()] += block.elapsed();
            probe.flush().await?;
        }

        for kind in order(&Kind::ALL, round + 1) {
            let block = Instant::now();
            let cpu_before = probe.server_cpu().await?;
            let sections = throughput::sections(
                &subjects[kind.index()],
                &tag("2"),
                plan.throughput_tasks,
                plan.throughput_block,
            )
            .await?;
            let measured = &mut out.kinds[kind.index()];
            measured.throughput_sections += sections;
            measured.throughput_time += plan.throughput_block;
            // Includes the tasks' last sections after the deadline and their stop: at most one
            // section per task more than counted.
            measured.throughput_server_cpu += probe.server_cpu().await? - cpu_before;
            spent[kind.index()] += block.elapsed();
            probe.flush().await?;
        }

        for (i, &k) in plan.handoff_ks.iter().enumerate() {
            for kind in order(&Kind::CONTENDERS, round + 2 + i) {
                let block = Instant::now();
                let samples = handoff::latencies(
                    &subjects[kind.index()],
                    &tag(&format!("3-{k}")),
                    k,
                    plan.handoff_block,
                    plan.handoff_hold,
                )
                .await?;
                out.kinds[kind.index()].handoff[i].extend(samples);
                spent[kind.index()] += block.elapsed();
                probe.flush().await?;
            }
        }

        for kind in order(&Kind::CONTENDERS, round + 3) {
            let block = Instant::now();
            let took = all_served::duration(url, kind, &tag("5"), plan.waiters, plan.served_settle)
                .await?;
            out.kinds[kind.index()].all_served.push(took);
            spent[kind.index()] += block.elapsed();
            probe.flush().await?;
        }

        for (i, &k) in plan.crossprocess_ks.iter().enumerate() {
            for kind in order(&Kind::CONTENDERS, round + 7 + i) {
                let block = Instant::now();
                let samples = crossprocess::latencies(
                    url,
                    kind,
                    &tag(&format!("8-{k}")),
                    k,
                    plan.crossprocess_block,
                    plan.handoff_hold,
                )
                .await?;
                out.kinds[kind.index()].crossprocess[i].extend(samples);
                spent[kind.index()] += block.elapsed();
                crossprocess_spent += block.elapsed();
                probe.flush().await?;
            }
        }

        // The single-block scenarios, spread over the rounds.
        if round == 0 {
            eprintln!("scenario 4: waiting load (MONITOR)");
            for kind in order(&Kind::CONTENDERS, round + 4) {
                let block = Instant::now();
                let load = waiting_load::measure(
                    probe,
                    url,
                    kind,
                    &tag("4"),
                    plan.waiters,
                    plan.waiting_settle,
                    plan.waiting_window,
                )
                .await?;
                out.kinds[kind.index()].waiting_load = Some(load);
                spent[kind.index()] += block.elapsed();
                probe.flush().await?;
            }
        }
        if round == 1 % plan.rounds {
            eprintln!("scenario 6: starvation");
            for kind in order(&Kind::CONTENDERS, round + 5) {
                let block = Instant::now();
                let starved = starvation::measure(
                    &subjects[kind.index()],
                    &tag("6"),
                    plan.starvation_tasks,
                    plan.starvation_time,
                )
                .await?;
                out.kinds[kind.index()].starvation = Some(starved);
                spent[kind.index()] += block.elapsed();
                probe.flush().await?;
            }
        }
        if round + 1 == plan.rounds {
            eprintln!("scenario 7: {} waiters in one process", plan.scale_tasks);
            for kind in order(&Kind::CONTENDERS, round + 6) {
                let block = Instant::now();
                let scale = scale::measure(
                    probe,
                    url,
                    kind,
                    &tag("7"),
                    plan.scale_tasks,
                    plan.scale_settle,
                )
                .await?;
                out.kinds[kind.index()].scale = Some(scale);
                spent[kind.index()] += block.elapsed();
                probe.flush().await?;
            }
        }
    }
    let spent: Vec<String> = Kind::ALL
        .iter()
        .map(|kind| format!("{} {:.1} s", kind.name(), spent[kind.index()].as_secs_f64()))
        .collect();
    eprintln!(
        "time in blocks: {} (of which scenario 8: {:.1} s)",
        spent.join(", "),
        crossprocess_spent.as_secs_f64()
    );
    Ok(out)
}

/// Awaits tasks that are finishing by themselves, within `timeout` in all; the first error wins.
pub async fn join_tasks<T>(
    handles: Vec<JoinHandle<Result<T>>>,
    timeout: Duration,
) -> Result<Vec<T>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let joined = tokio::time::timeout_at(deadline, handle)
            .await
            .map_err(|_| anyhow!("tasks still running after {timeout:?}"))?;
        out.push(joined.map_err(|e| anyhow!("a benchmark task panicked: {e}"))??);
    }
    Ok(out)
}

/// Stops tasks that loop until stopped; an error one of them ended with before is returned.
pub async fn abort_tasks(handles: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        match handle.await {
            Ok(result) => result?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(anyhow!("a benchmark task panicked: {e}")),
        }
    }
    Ok(())
}

/// Tasks told to stop finish their current critical section within the wait.
pub async fn stop_tasks(handles: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    join_tasks(handles, WAIT).await.map(drop)
}
