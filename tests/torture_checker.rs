//! The fault suite's overlap checker on hand-made records: it must catch what it exists to catch
//! (two holders inside one key at once, tokens going backwards) and excuse only what it should.

mod support;

use support::checker::{Counts, check};
use support::records::Record;

/// One section of `key` held by process `pid`, from `enter` to `exit` (ns).
fn section(key: &str, pid: u32, fence: u64, enter: u64, exit: u64) -> Record {
    Record {
        key: key.to_owned(),
        fence,
        pid,
        task: 0,
        enter_ns: enter,
        exit_ns: exit,
        lost: false,
    }
}

fn lost(mut record: Record) -> Record {
    record.lost = true;
    record
}

#[test]
fn empty_input_reports_nothing() {
    let report = check(&[]);
    assert_eq!(report.total, Counts::default());
    assert!(report.per_key.is_empty());
    assert!(report.is_sound());
}

#[test]
fn sections_one_after_another_do_not_overlap() {
    let records = [
        section("k", 1, 1, 0, 10),
        section("k", 2, 2, 20, 30),
        section("k", 1, 3, 31, 40),
    ];
    let report = check(&records);
    assert_eq!(report.total.sections, 3);
    assert_eq!(report.total.overlaps, 0);
    assert_eq!(report.total.fence_inversions, 0);
    assert!(report.is_sound(), "{report}");
}

#[test]
fn two_holders_inside_at_once_are_an_unreported_overlap() {
    let records = [section("k", 1, 1, 0, 10), section("k", 2, 2, 5, 15)];
    let report = check(&records);
    assert_eq!(report.total.overlaps, 1);
    assert_eq!(report.total.unreported_overlaps, 1);
    assert!(!report.is_sound());
    let example = &report.unreported_overlap_examples[0];
    assert!(
        example.contains("pid 1") && example.contains("pid 2") && example.contains("0.000 ms"),
        "the example names both holders and the shared time: {example}"
    );
}

#[test]
fn the_input_order_does_not_matter() {
    let records = [
        section("k", 2, 2, 5, 15),
        section("k", 3, 3, 100, 110),
        section("k", 1, 1, 0, 10),
    ];
    let report = check(&records);
    assert_eq!(report.total.overlaps, 1);
    assert_eq!(report.total.fence_inversions, 0);
}

#[test]
fn a_long_section_overlaps_each_section_nested_inside_it() {
    let records = [
        section("k", 1, 1, 0, 100),
        section("k", 2, 2, 10, 20),
        section("k", 3, 3, 30, 40),
        section("k", 4, 4, 150, 160),
    ];
    let report = check(&records);
    // The outer one with each inner one; the inner ones do not meet.
    assert_eq!(report.total.overlaps, 2);
    assert_eq!(report.total.unreported_overlaps, 2);
}

#[test]
fn three_holders_at_once_are_three_pairs() {
    let records = [
        section("k", 1, 1, 0, 50),
        section("k", 2, 2, 10, 60),
        section("k", 3, 3, 20, 70),
    ];
    assert_eq!(check(&records).total.overlaps, 3);
}

#[test]
fn touching_endpoints_are_not_an_overlap() {
    let records = [section("k", 1, 1, 0, 10), section("k", 2, 2, 10, 20)];
    let report = check(&records);
    assert_eq!(report.total.overlaps, 0, "{report}");
}

#[test]
fn sections_entering_at_the_same_instant_overlap() {
    let records = [section("k", 1, 1, 5, 10), section("k", 2, 2, 5, 7)];
    assert_eq!(check(&records).total.overlaps, 1);
}

#[test]
fn a_zero_length_section_overlaps_nothing() {
    let records = [section("k", 1, 1, 0, 10), section("k", 2, 2, 5, 5)];
    assert_eq!(check(&records).total.overlaps, 0);
}

#[test]
fn an_overlap_with_a_holder_told_of_its_loss_is_excused() {
    // A paused holder past its lease: it overlaps its successor, and its guard said so.
    let records = [lost(section("k", 1, 1, 0, 100)), section("k", 2, 2, 50, 60)];
    let report = check(&records);
    assert_eq!(report.total.overlaps, 1);
    assert_eq!(report.total.unreported_overlaps, 0);
    assert_eq!(report.total.lost, 1);
    assert!(report.is_sound(), "{report}");
    assert!(report.overlap_examples[0].contains("reported lost"));
}

#[test]
fn the_later_holder_reporting_its_loss_also_excuses_the_overlap() {
    let records = [section("k", 1, 1, 0, 100), lost(section("k", 2, 2, 50, 60))];
    let report = check(&records);
    assert_eq!(report.total.overlaps, 1);
    assert_eq!(report.total.unreported_overlaps, 0);
}

#[test]
fn a_lost_section_excuses_only_its_own_overlaps() {
    let records = [
        lost(section("k", 1, 1, 0, 100)),
        section("k", 2, 2, 10, 30),
        section("k", 3, 3, 20, 40),
    ];
    let report = check(&records);
    // 1-2 and 1-3 are excused, 2-3 is not.
    assert_eq!(report.total.overlaps, 3);
    assert_eq!(report.total.unreported_overlaps, 1);
    assert!(report.unreported_overlap_examples[0].contains("pid 3"));
}

#[test]
fn a_token_lower_than_the_one_before_is_an_inversion() {
    let records = [
        section("k", 1, 1, 0, 10),
        section("k", 2, 3, 20, 30),
        section("k", 3, 2, 40, 50),
    ];
    let report = check(&records);
    assert_eq!(report.total.fence_inversions, 1);
    assert_eq!(report.total.unreported_fence_inversions, 1);
    assert!(!report.is_sound());
    assert!(
        report.fence_inversion_examples[0].contains("fence 2"),
        "{report}"
    );
}

#[test]
fn a_repeated_token_is_an_inversion() {
    let records = [section("k", 1, 7, 0, 10), section("k", 2, 7, 20, 30)];
    assert_eq!(check(&records).total.fence_inversions, 1);
}

#[test]
fn control_runs_without_tokens_have_no_inversions() {
    let records = [section("k", 1, 0, 0, 10), section("k", 2, 0, 5, 30)];
    let report = check(&records);
    assert_eq!(report.total.fence_inversions, 0);
    assert_eq!(report.total.overlaps, 1, "the overlap still counts");
}

#[test]
fn an_inversion_next_to_a_lost_section_is_excused_only_there() {
    // A holder paused before its first instruction enters after its successor: excused. The
    // sections that kept their lease must still be in token order.
    let excused = [section("k", 2, 6, 0, 10), lost(section("k", 1, 5, 20, 30))];
    let report = check(&excused);
    assert_eq!(report.total.fence_inversions, 1);
    assert_eq!(report.total.unreported_fence_inversions, 0);
    assert!(report.is_sound());

    // 7 then (lost 9) then 5: the lost one does not hide that 5 came after 7.
    let hidden = [
        section("k", 1, 7, 0, 10),
        lost(section("k", 2, 9, 20, 30)),
        section("k", 3, 5, 40, 50),
    ];
    let report = check(&hidden);
    assert_eq!(report.total.unreported_fence_inversions, 1);
    assert!(!report.is_sound());
}

#[test]
fn sections_of_different_keys_never_overlap_each_other() {
    let records = [
        section("a", 1, 1, 0, 100),
        section("b", 2, 1, 10, 20),
        section("a", 3, 2, 50, 60),
        section("b", 4, 2, 30, 40),
    ];
    let report = check(&records);
    assert_eq!(report.total.sections, 4);
    assert_eq!(report.total.overlaps, 1);
    assert_eq!(report.per_key["a"].overlaps, 1);
    assert_eq!(report.per_key["b"].overlaps, 0);
    assert_eq!(report.per_key["b"].sections, 2);
    assert_eq!(report.total.fence_inversions, 0, "tokens are per key");
}

#[test]
fn examples_are_capped() {
    let records: Vec<Record> = (0..100)
        .map(|i| section("k", i, 0, i as u64, 1_000))
        .collect();
    let report = check(&records);
    assert_eq!(report.total.overlaps, 100 * 99 / 2);
    assert_eq!(
        report.unreported_overlap_examples.len(),
        support::checker::EXAMPLES
    );
}

#[test]
fn half_a_million_sections_are_checked_in_one_sweep() {
    // Shuffled, back to back, on 3 keys: nothing to find, and no quadratic pass to wait for.
    let mut records: Vec<Record> = (0..500_000u64)
        .map(|i| {
            let key = ["a", "b", "c"][(i % 3) as usize];
            section(key, 1, i + 1, i * 10, i * 10 + 9)
        })
        .collect();
    fastrand::shuffle(&mut records);
    let started = std::time::Instant::now();
    let report = check(&records);
    assert_eq!(report.total.sections, 500_000);
    assert_eq!(report.total.overlaps, 0);
    assert_eq!(report.total.fence_inversions, 0);
    println!("checked 500,000 sections in {:?}", started.elapsed());
}
