//! Child processes (redis-server, sentinels, redis-cli) that die with the test binary, however it
//! ends: also those of a topology kept in a `static`, which is never dropped.
//!
//! Each child asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`). The kernel
//! sends it when the *thread* that forked the child exits, not the process; test threads come and
//! go, so every child is forked by one spawner thread that lives as long as the process.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

use rustix::process::{Signal, getpid, getppid, set_parent_process_death_signal};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from the spawner thread; the child is killed when the test binary exits.
pub fn spawn_owned(command: Command) -> io::Result<Child> {
    let (answer, answered) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, answer))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answered
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, received) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // Never returns while the process lives: the senders sit in a static.
                for (mut command, answer) in received {
                    let _ = answer.send(spawn_dying_with_parent(&mut command));
                }
            })
            .expect("spawn the child-spawner thread");
        Mutex::new(requests)
    })
}

fn spawn_dying_with_parent(command: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = getpid();
    // SAFETY: between fork and exec only async-signal-safe calls: prctl and getppid, both plain
    // system calls that neither allocate nor take locks.
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before the prctl: then nothing would ever kill us.
            if getppid() != Some(parent) {
                return Err(io::Error::other("the test binary exited while spawning"));
            }
            Ok(())
        });
    }
    command.spawn()
}
