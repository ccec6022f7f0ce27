//! How much of each scenario one run does: the full run the README quotes, or `--quick` for CI.

use std::time::Duration;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    /// Rounds of rotating blocks: each round runs every scenario's block for every
    /// implementation, in an order that rotates from round to round.
    pub rounds: usize,
    pub ping_per_round: usize,
    pub warmup_sections: usize,
    pub warmup_throughput: Duration,
    /// Scenario 1: sequential acquire+release on fresh keys, per block (x rounds in all).
    pub uncontended_per_block: usize,
    /// Scenario 1: critical sections counted under MONITOR (a separate run, so MONITOR's own cost
    /// stays out of the latencies).
    pub counted_sections: usize,
    /// Scenario 2.
    pub throughput_tasks: usize,
    pub throughput_block: Duration,
    /// Scenario 3.
    pub handoff_ks: Vec<usize>,
    pub handoff_block: Duration,
    /// The holder keeps the lock until every other task has been inside `acquire()` this long,
    /// so each release hands the lock to a task that is already waiting.
    pub handoff_hold: Duration,
    /// Scenarios 4 and 5.
    pub waiters: usize,
    /// Scenario 4: after the waiters start, wait this long before counting (their first attempts
    /// are not the steady state), then count for `waiting_window`.
    pub waiting_settle: Duration,
    pub waiting_window: Duration,
    /// Scenario 5: the holder releases once all waiters have been inside `acquire()` this long.
    pub served_settle: Duration,
    /// Scenario 6.
    pub starvation_tasks: usize,
    pub starvation_time: Duration,
    /// Scenario 7.
    pub scale_tasks: usize,
    /// Scenario 7: measure this long after the last waiter started.
    pub scale_settle: Duration,
    /// Scenario 8: worker processes per block (one task each), and how long a block runs.
    pub crossprocess_ks: Vec<usize>,
    pub crossprocess_block: Duration,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            rounds: 4,
            ping_per_round: 500,
            warmup_sections: 500,
            warmup_throughput: Duration::from_millis(500),
            uncontended_per_block: 500,
            counted_sections: 200,
            throughput_tasks: 256,
            throughput_block: Duration::from_millis(750),
            handoff_ks: vec![2, 8, 32],
            handoff_block: Duration::from_millis(750),
            handoff_hold: Duration::from_millis(2),
            waiters: 32,
            waiting_settle: Duration::from_millis(500),
            waiting_window: Duration::from_secs(2),
            served_settle: Duration::from_millis(300),
            starvation_tasks: 32,
            starvation_time: Duration::from_secs(3),
            scale_tasks: 10_000,
            scale_settle: Duration::from_secs(3),
            crossprocess_ks: vec![2, 8],
            crossprocess_block: Duration::from_secs(1),
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            rounds: 1,
            ping_per_round: 100,
            warmup_sections: 20,
            warmup_throughput: Duration::from_millis(100),
            uncontended_per_block: 100,
            counted_sections: 20,
            throughput_tasks: 256,
            throughput_block: Duration::from_millis(300),
            handoff_ks: vec![2, 8, 32],
            handoff_block: Duration::from_millis(300),
            handoff_hold: Duration::from_millis(2),
            waiters: 32,
            waiting_settle: Duration::from_millis(200),
            waiting_window: Duration::from_millis(500),
            served_settle: Duration::from_millis(200),
            starvation_tasks: 32,
            starvation_time: Duration::from_millis(500),
            scale_tasks: 1_000,
            scale_settle: Duration::from_millis(500),
            crossprocess_ks: vec![4],
            crossprocess_block: Duration::from_millis(500),
        }
    }
}
