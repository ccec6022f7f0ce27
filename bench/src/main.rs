//! The benchmark of distlock against rslock, async-redis-lock and distributed-lock, with a
//! no-fencing floor for reference: starts a private `redis-server`, runs the seven scenarios of
//! issue 6 and the cross-process handoff of issue 11 in rotating blocks; then distlock alone on a
//! private 3-primary Cluster and a Sentinel setup (issue 12); prints the tables, and writes
//! `BENCHMARKS.md`, `results.json` and `chart.svg`.
//!
//! ```sh
//! cargo run --release --manifest-path bench/Cargo.toml                 # the full run (a few minutes)
//! cargo run --release --manifest-path bench/Cargo.toml -- --quick --out /tmp/b   # what CI runs
//! ```

mod backoff;
mod chart;
mod cluster;
mod commandstats;
mod floor;
mod machine;
mod monitor;
mod plan;
mod probe;
mod report;
mod scenarios;
mod sentinel;
mod server;
mod stats;
mod subject;
mod topology_report;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use plan::Plan;
use probe::Probe;
use report::Report;
use server::RedisServer;

const USAGE: &str = "usage: distlock-bench [--quick] [--out DIR]
  --quick    tiny counts (under a minute), for CI: the figures mean nothing
  --out DIR  write BENCHMARKS.md, results.json and chart.svg there (default: bench/)";

const COMMAND: &str = "cargo run --release --manifest-path bench/Cargo.toml";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(scenarios::crossprocess::WORKER_FLAG) {
        // One task per worker process, like a replica's one request at a time.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(scenarios::crossprocess::worker(&args[1..]));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if args.first().map(String::as_str) == Some("--scale-child") {
        return runtime.block_on(scenarios::scale::child(&args[1..]));
    }
    let mut quick = false;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = rest.next().context("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let command = if quick {
        format!("{COMMAND} -- --quick")
    } else {
        COMMAND.to_owned()
    };
    runtime.block_on(run(plan, out, command))
}

async fn run(plan: Plan, out: PathBuf, command: String) -> Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let server = RedisServer::start().await?;
    let url = server.url();
    let probe = Probe::connect(&url).await?;
    let measurements = scenarios::run(&plan, &probe, &url).await?;
    drop(server);
    let topologies = scenarios::topology::run(&plan).await?;

    let report = Report::build(
        &plan,
        &measurements,
        &topologies,
        machine::describe(),
        command,
    )?;
    println!("{}", report.table());
    println!("{}", report.topologies.table());
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("BENCHMARKS.md", report.markdown())?;
    write(
        "results.json",
        serde_json::to_string_pretty(&report.json)? + "\n",
    )?;
    chart::draw(&report.chart, &out.join("chart.svg"))?;
    eprintln!(
        "wrote BENCHMARKS.md, results.json and chart.svg to {} ({:.0} s in all)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
