//! Medians, percentiles, and Jain's fairness index.

use std::time::Duration;

use serde::Serialize;

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        Some(Summary {
            n: us.len(),
            median_us: percentile(&us, 50.0),
            p99_us: percentile(&us, 99.0),
            max_us: us[us.len() - 1],
        })
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Jain's fairness index: 1 when every task got the same share, 1/n when one got everything.
pub fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    if squares == 0.0 {
        0.0
    } else {
        sum * sum / (counts.len() as f64 * squares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!((s.median_us, s.p99_us, s.max_us), (50.0, 99.0, 100.0));
    }

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_not() {
        assert_eq!(jain(&[5, 5, 5, 5]), 1.0);
        assert_eq!(jain(&[8, 0, 0, 0]), 0.25);
    }
}
