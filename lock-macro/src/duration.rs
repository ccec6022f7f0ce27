//! Duration literals (`"250ms"`, `"10s"`, `"1m30s"`, `"2h"`) parsed while the macro expands.
//!
//! Parsing here rather than at run time means a typo in `wait = "10sec"` is a compile error at
//! the literal instead of a lock that silently never waits. The parser works on plain `&str` and
//! returns a message (never panics), so it can be fuzzed without a compiler around it.

/// The units a duration may use, as written in every message that lists them.
pub(crate) const UNITS: &str = "ms, s, m, h, d";

/// The longest duration a lock accepts, in milliseconds: `distlock_runtime::MAX_DURATION` (a
/// year), mirrored here because the macro cannot depend on the runtime; a test compares them.
pub(crate) const MAX_MILLIS: u64 = 365 * 86_400_000;

/// Milliseconds per unit, largest first: the order units must appear in (`"1h30m"`, not `"30m1h"`),
/// which rules out ambiguous spellings such as `"1s1s"`.
const UNIT_MILLIS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration literal into milliseconds (the lock's resolution).
///
/// The grammar is one or more `<digits><unit>` parts, units from largest to smallest, each at
/// most once, no spaces: `"250ms"`, `"10s"`, `"1m30s"`, `"2h"`, `"1d12h"`. The error is a
/// sentence naming the problem and the fix, ready to be put in a `compile_error!`.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!(
            "the duration is empty: write a number and a unit, e.g. \"10s\" (units: {UNITS})"
        ));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNIT_MILLIS of the previous part's unit; the next one must come after it.
    let mut previous_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after_digits) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(no_number_message(text, after_digits));
        }
        let unit_end = after_digits
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after_digits.len());
        let (unit, after_unit) = after_digits.split_at(unit_end);
        if unit.is_empty() {
            return Err(no_unit_message(digits, after_digits));
        }
        let Some(index) = UNIT_MILLIS.iter().position(|(name, _)| *name == unit) else {
            return Err(unknown_unit_message(unit));
        };
        if previous_unit.is_some_and(|previous| index <= previous) {
            return Err(format!(
                "units must go from largest to smallest, each at most once (e.g. \"1m30s\"), \
                 but \"{text}\" has `{unit}` after a part with an equal or smaller unit"
            ));
        }
        previous_unit = Some(index);
        let part = digits
            .parse::<u64>()
            .ok()
            .and_then(|value| value.checked_mul(UNIT_MILLIS[index].1))
            .and_then(|millis| total.checked_add(millis));
        total = part.ok_or_else(|| {
            format!("\"{text}\" is too long: a duration must fit in u64 milliseconds (about 584 million years)")
        })?;
        rest = after_unit;
    }
    Ok(total)
}

/// The message for a part that does not start with a digit (`"-1s"`, `"s"`, `" 10s"`).
fn no_number_message(text: &str, at: &str) -> String {
    match at.chars().next() {
        Some('-') => "a duration cannot be negative: write e.g. \"0s\" or \"10s\"".to_string(),
        Some(c) if c.is_whitespace() => {
            format!(
                "\"{text}\" contains a space: durations are written without spaces, e.g. \"1m30s\""
            )
        }
        Some(c) if c.is_alphabetic() && UNIT_MILLIS.iter().any(|(unit, _)| *unit == at) => format!(
            "\"{text}\" has a unit without a number before it: write e.g. \"10{at}\" (units: {UNITS})"
        ),
        Some(c) if c.is_alphabetic() => format!(
            "\"{text}\" is not a duration: write a number followed by a unit, e.g. \"10s\" or \"1m30s\" (units: {UNITS})"
        ),
        Some(c) => format!(
            "unexpected `{c}` in \"{text}\": write a number and a unit, e.g. \"10s\" or \"1m30s\" (units: {UNITS})"
        ),
        None => format!("\"{text}\" is not a duration: write e.g. \"10s\" (units: {UNITS})"),
    }
}

/// The message for digits with no unit after them (`"10"`, `"1.5s"`, `"10 s"`).
fn no_unit_message(digits: &str, after_digits: &str) -> String {
    match after_digits.chars().next() {
        None => format!(
            "`{digits}` has no unit: write \"{digits}s\" for seconds or \"{digits}ms\" for milliseconds (units: {UNITS})"
        ),
        Some('.') | Some(',') => {
            "fractions are not supported: write the smaller unit instead, e.g. \"1500ms\" for 1.5 s"
                .to_string()
        }
        Some(c) if c.is_whitespace() => format!(
            "durations are written without spaces: write \"{digits}{}\"",
            after_digits.trim_start()
        ),
        Some(c) => format!(
            "unexpected `{c}` after `{digits}`: write a number and a unit, e.g. \"{digits}s\" (units: {UNITS})"
        ),
    }
}

/// The message for a unit that is not one of [`UNITS`], suggesting the one the user likely meant.
fn unknown_unit_message(unit: &str) -> String {
    let suggestion = match unit {
        "sec" | "secs" | "second" | "seconds" | "S" => Some("s"),
        "min" | "mins" | "minute" | "minutes" | "M" => Some("m"),
        "hr" | "hrs" | "hour" | "hours" | "H" => Some("h"),
        "day" | "days" | "D" => Some("d"),
        "msec" | "msecs" | "millis" | "MS" | "Ms" => Some("ms"),
        _ => None,
    };
    match suggestion {
        Some(fix) => format!("unknown unit `{unit}`: write `{fix}` (units: {UNITS})"),
        None if matches!(unit, "us" | "µs" | "ns") => format!(
            "unit `{unit}` is finer than a lock can use: the smallest unit is `ms` (units: {UNITS})"
        ),
        None => format!("unknown unit `{unit}`: the units are {UNITS}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_MILLIS, parse_millis};

    #[test]
    fn the_longest_duration_is_the_runtimes() {
        assert_eq!(
            u128::from(MAX_MILLIS),
            distlock_runtime::MAX_DURATION.as_millis()
        );
    }

    #[test]
    fn single_units_scale_to_milliseconds() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("10s"), Ok(10_000));
        assert_eq!(parse_millis("2m"), Ok(120_000));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
    }

    #[test]
    fn compound_durations_add_their_parts() {
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1h1m1s1ms"), Ok(3_661_001));
        assert_eq!(parse_millis("1d12h"), Ok(129_600_000));
    }

    #[test]
    fn zero_parses_as_zero() {
        assert_eq!(parse_millis("0s"), Ok(0));
        assert_eq!(parse_millis("0ms"), Ok(0));
    }

    #[test]
    fn a_number_without_unit_is_rejected_with_the_fix() {
        let message = parse_millis("10").unwrap_err();
        assert!(message.contains("no unit"), "{message}");
        assert!(message.contains("\"10s\""), "{message}");
    }

    #[test]
    fn unknown_units_suggest_the_right_spelling() {
        assert!(parse_millis("10sec").unwrap_err().contains("write `s`"));
        assert!(parse_millis("5min").unwrap_err().contains("write `m`"));
        assert!(
            parse_millis("10us")
                .unwrap_err()
                .contains("smallest unit is `ms`")
        );
        assert!(
            parse_millis("10x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
    }

    #[test]
    fn malformed_inputs_name_their_problem() {
        assert!(parse_millis("").unwrap_err().contains("empty"));
        assert!(parse_millis("-1s").unwrap_err().contains("negative"));
        assert!(parse_millis("1.5s").unwrap_err().contains("fractions"));
        assert!(parse_millis("1m 30s").unwrap_err().contains("space"));
        assert!(parse_millis("10 s").unwrap_err().contains("\"10s\""));
        assert!(parse_millis("s").unwrap_err().contains("without a number"));
        assert!(parse_millis("1m30s ms").unwrap_err().contains("space"));
        assert!(
            parse_millis("ten seconds")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn units_out_of_order_or_repeated_are_rejected() {
        assert!(
            parse_millis("30s1m")
                .unwrap_err()
                .contains("largest to smallest")
        );
        assert!(
            parse_millis("1s1s")
                .unwrap_err()
                .contains("largest to smallest")
        );
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(
            parse_millis("18446744073709551616ms")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            parse_millis("18446744073709551615s")
                .unwrap_err()
                .contains("too long")
        );
        assert_eq!(parse_millis("18446744073709551615ms"), Ok(u64::MAX));
        assert!(
            parse_millis("213503982335d")
                .unwrap_err()
                .contains("too long")
        );
    }

    mod never_panics {
        use super::super::parse_millis;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn on_arbitrary_strings(text in any::<String>()) {
                let _ = parse_millis(&text);
            }

            #[test]
            fn on_duration_shaped_strings(text in "[0-9]{0,25}(ms|s|m|h|d|x|µs| |\\.)?([0-9]{0,22}(ms|s|m|h|d))*") {
                let _ = parse_millis(&text);
            }

            #[test]
            fn and_round_trips_valid_compounds(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
                let text = format!("{h}h{m}m{s}s{ms}ms");
                prop_assert_eq!(parse_millis(&text), Ok(((h * 60 + m) * 60 + s) * 1000 + ms));
            }
        }
    }
}
