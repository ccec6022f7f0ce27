//! One line that says what machine and software the figures come from.

use std::process::Command;

pub fn describe() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.0}", kib / 1024.0 / 1024.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned());
    // "Redis server v=7.0.15 sha=... malloc=...": the version is enough.
    let redis = first_words("redis-server", &["--version"], 3);
    let rustc = first_words("rustc", &["--version"], 2);
    format!(
        "{cpu}, {cores} cores, {memory_gib} GiB; Linux {kernel}; {redis}; {rustc}; redis-server on \
         127.0.0.1 (TCP loopback), no persistence; the machine was not otherwise idle"
    )
}

fn first_words(program: &str, args: &[&str], words: usize) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| {
            s.split_whitespace()
                .take(words)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{program}: unknown version"))
}
