//! The overlap checker: reads the critical sections of a run (the torture workers' records, see
//! `records.rs`) and finds what a lock must never allow.
//!
//! - **Overlaps**: two sections of one key whose `[enter, exit]` intervals share a stretch of
//!   time of positive length. Touching endpoints (one leaves at the nanosecond the other enters)
//!   are not an overlap, and neither is a zero-length section.
//! - **Unreported overlaps**: overlaps where NEITHER guard reported its lease lost: the failure
//!   the suite exists to catch. An overlap where a holder was told (a paused holder past its
//!   lease) is what a single Redis cannot prevent, and is excused.
//! - **Fence inversions**: per key, in order of entry, a fencing token that is not strictly
//!   greater than the one before it. Tokens of 0 (control runs without the lock) are skipped.
//!   Counted once over all sections, and once over the sections not reported lost (a holder that
//!   was paused between its acquire and its first instruction may enter after its successor).
//!
//! `check` is pure and O(n log n): per key, one sort by entry and a sweep that keeps the sections
//! still open in two min-heaps of exit times (lost, not lost). A pair is counted when the later
//! one enters, so the work beyond the sort is proportional to the pairs found.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt::{self, Write as _};

use super::records::Record;

/// How many examples of each violation a report keeps for its messages.
pub const EXAMPLES: usize = 5;

/// What the checker counts, for one key or for all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Critical sections.
    pub sections: u64,
    /// Sections whose guard reported the lease lost.
    pub lost: u64,
    /// Pairs of sections of one key inside at the same time.
    pub overlaps: u64,
    /// Of `overlaps`, the pairs where neither section reported its lease lost.
    pub unreported_overlaps: u64,
    /// Sections (token not 0) whose token is not above the one of the section entered before.
    pub fence_inversions: u64,
    /// The same among the sections not reported lost only.
    pub unreported_fence_inversions: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.sections += other.sections;
        self.lost += other.lost;
        self.overlaps += other.overlaps;
        self.unreported_overlaps += other.unreported_overlaps;
        self.fence_inversions += other.fence_inversions;
        self.unreported_fence_inversions += other.unreported_fence_inversions;
    }
}

/// The checker's findings: totals, per key, and a few examples of each violation.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub total: Counts,
    pub per_key: BTreeMap<String, Counts>,
    /// Up to [`EXAMPLES`] overlaps where neither holder was told.
    pub unreported_overlap_examples: Vec<String>,
    /// Up to [`EXAMPLES`] overlaps of any kind.
    pub overlap_examples: Vec<String>,
    /// Up to [`EXAMPLES`] fence inversions.
    pub fence_inversion_examples: Vec<String>,
}

impl CheckReport {
    /// True when nothing a lock must prevent happened: no unreported overlap, and tokens
    /// strictly increasing among the sections not reported lost.
    pub fn is_sound(&self) -> bool {
        self.total.unreported_overlaps == 0 && self.total.unreported_fence_inversions == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        write!(
            f,
            "{} sections ({} lost), {} overlapping pairs ({} unreported), {} fence inversions \
             ({} among sections not lost)",
            t.sections,
            t.lost,
            t.overlaps,
            t.unreported_overlaps,
            t.fence_inversions,
            t.unreported_fence_inversions
        )?;
        for (key, c) in &self.per_key {
            write!(
                f,
                "\n  key {key:?}: {} sections, {} lost, {} overlaps ({} unreported), {} inversions \
                 ({} unreported)",
                c.sections,
                c.lost,
                c.overlaps,
                c.unreported_overlaps,
                c.fence_inversions,
                c.unreported_fence_inversions
            )?;
        }
        for (title, examples) in [
            ("unreported overlaps", &self.unreported_overlap_examples),
            ("overlaps", &self.overlap_examples),
            ("fence inversions", &self.fence_inversion_examples),
        ] {
            if !examples.is_empty() {
                write!(f, "\n  {title}, e.g.:")?;
                for example in examples {
                    write!(f, "\n    {example}")?;
                }
            }
        }
        Ok(())
    }
}

/// Checks the sections of a run; see the module docs for what is counted.
pub fn check(records: &[Record]) -> CheckReport {
    let mut by_key: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in records {
        by_key.entry(&record.key).or_default().push(record);
    }
    let mut report = CheckReport::default();
    for (key, mut sections) in by_key {
        sections.sort_by_key(|r| (r.enter_ns, r.exit_ns, r.fence, r.pid, r.task));
        let mut counts = Counts {
            sections: sections.len() as u64,
            lost: sections.iter().filter(|r| r.lost).count() as u64,
            ..Counts::default()
        };
        sweep_overlaps(&sections, &mut counts, &mut report);
        count_inversions(&sections, &mut counts, &mut report);
        report.total.add(&counts);
        report.per_key.insert(key.to_owned(), counts);
    }
    report
}

/// Sections of one key, sorted by entry: counts the overlapping pairs.
fn sweep_overlaps(sections: &[&Record], counts: &mut Counts, report: &mut CheckReport) {
    // (exit, index) of the sections entered so far and not yet left, split by lost.
    let mut open_kept: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut open_lost: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    for (i, section) in sections.iter().enumerate() {
        for open in [&mut open_kept, &mut open_lost] {
            // Left at or before this entry: touching, not overlapping.
            while open
                .peek()
                .is_some_and(|Reverse((exit, _))| *exit <= section.enter_ns)
            {
                open.pop();
            }
        }
        if section.exit_ns <= section.enter_ns {
            continue; // zero length: shares no stretch of time with anything
        }
        // Every open section entered at or before this one and leaves after this entry.
        let with_kept = open_kept.len() as u64;
        let with_lost = open_lost.len() as u64;
        counts.overlaps += with_kept + with_lost;
        if !section.lost {
            counts.unreported_overlaps += with_kept;
            if let Some(Reverse((_, j))) = open_kept.iter().next()
                && report.unreported_overlap_examples.len() < EXAMPLES
            {
                report
                    .unreported_overlap_examples
                    .push(describe_overlap(sections[*j], section));
            }
        }
        if let Some(Reverse((_, j))) = open_kept.iter().chain(open_lost.iter()).next()
            && report.overlap_examples.len() < EXAMPLES
        {
            report
                .overlap_examples
                .push(describe_overlap(sections[*j], section));
        }
        let open = if section.lost {
            &mut open_lost
        } else {
            &mut open_kept
        };
        open.push(Reverse((section.exit_ns, i)));
    }
}

/// Sections of one key, sorted by entry: counts tokens that do not strictly increase.
fn count_inversions(sections: &[&Record], counts: &mut Counts, report: &mut CheckReport) {
    let fenced = || sections.iter().copied().filter(|r| r.fence != 0);
    let descents = |seq: Vec<&Record>| -> Vec<(Record, Record)> {
        seq.windows(2)
            .filter(|w| w[1].fence <= w[0].fence)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    };
    let all = descents(fenced().collect());
    let kept = descents(fenced().filter(|r| !r.lost).collect());
    counts.fence_inversions += all.len() as u64;
    counts.unreported_fence_inversions += kept.len() as u64;
    // Unexcused inversions first: they are the ones a failure message needs.
    for (before, after) in kept.iter().chain(all.iter()) {
        if report.fence_inversion_examples.len() >= EXAMPLES {
            break;
        }
        let example = format!(
            "key {:?}: {} entered after {} with a token not above it",
            after.key,
            describe_section(after),
            describe_section(before)
        );
        if !report.fence_inversion_examples.contains(&example) {
            report.fence_inversion_examples.push(example);
        }
    }
}

fn describe_overlap(earlier: &Record, later: &Record) -> String {
    let shared_ns = earlier.exit_ns.min(later.exit_ns) - later.enter_ns;
    let mut s = format!(
        "key {:?}: {} and {} were inside together for {:.3} ms",
        later.key,
        describe_section(earlier),
        describe_section(later),
        shared_ns as f64 / 1e6
    );
    if earlier.lost || later.lost {
        let _ = write!(s, " (reported lost)");
    }
    s
}

fn describe_section(r: &Record) -> String {
    format!(
        "[pid {} task {} fence {} enter {} exit {}{}]",
        r.pid,
        r.task,
        r.fence,
        r.enter_ns,
        r.exit_ns,
        if r.lost { " lost" } else { "" }
    )
}
