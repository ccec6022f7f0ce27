//! The torture worker's records: one JSON line per critical section, with its enter and exit
//! instants on `CLOCK_MONOTONIC`, one clock for every process on the machine, so sections of
//! different processes can be compared. Shared by `examples/torture_worker.rs` (which writes
//! them, through `#[path]`) and the fault suite (which reads and checks them).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One critical section: from `acquire` returning to `release` being called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The lock's key, as given to `acquire`.
    pub key: String,
    /// The guard's fencing token; 0 in a control run without the lock.
    pub fence: u64,
    /// The process that held it.
    pub pid: u32,
    /// The task within the process.
    pub task: u32,
    /// `CLOCK_MONOTONIC` nanoseconds right after `acquire` returned.
    pub enter_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds right before `release` was called.
    pub exit_ns: u64,
    /// The guard reported the lease lost (`is_lost()` at exit, or `release()` said `LeaseLost`).
    pub lost: bool,
}

impl Record {
    /// A section of task `task` of this process.
    pub fn section(
        key: &str,
        fence: u64,
        task: u32,
        enter_ns: u64,
        exit_ns: u64,
        lost: bool,
    ) -> Record {
        Record {
            key: key.to_owned(),
            fence,
            pid: std::process::id(),
            task,
            enter_ns,
            exit_ns,
            lost,
        }
    }
}

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: comparable across the processes of one machine.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Appends records to a file, one `write` per record, so a process killed with SIGKILL loses at
/// most the record it was writing and never leaves a torn line behind another.
pub struct RecordWriter {
    file: File,
}

impl RecordWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(RecordWriter { file })
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// Every record of every `*.jsonl` file in `dir`. A last line cut short by a kill is skipped.
pub fn read_dir(dir: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            records.extend(read_file(&path)?);
        }
    }
    Ok(records)
}

/// Every record of one file. A last line cut short by a kill is skipped.
pub fn read_file(path: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if let Ok(record) = serde_json::from_str(&line) {
            records.push(record);
        }
    }
    Ok(records)
}

/// The fenced store of the paused-holder fault, as one Lua script: the kind of store the fencing
/// token is for. KEYS[1] is a hash whose field `highest` is the highest token accepted so far;
/// KEYS[2] (`fenced_store_log(KEYS[1])`) lists the accepted writes as "token:pid". ARGV[1] is the
/// writer's fencing token, ARGV[2] its pid. A write is accepted (1) only with a token above every
/// token accepted before; otherwise it is refused (0) and changes nothing. Tokens stay below 2^53
/// (server microseconds at most), so Lua's numbers compare them exactly.
pub const FENCED_WRITE_SCRIPT: &str = r"
local highest = tonumber(redis.call('HGET', KEYS[1], 'highest') or '0')
if tonumber(ARGV[1]) <= highest then
  return 0
end
redis.call('HSET', KEYS[1], 'highest', ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1] .. ':' .. ARGV[2])
return 1
";

/// The list of accepted writes of the fenced store `store` (same hash tag when `store` has one).
pub fn fenced_store_log(store: &str) -> String {
    format!("{store}:accepted")
}
