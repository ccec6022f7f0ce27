//! A TCP proxy between clients and Redis that breaks the network on command, without root or
//! external tools: delay every chunk, stall (a blackhole: connections stay open, bytes are held),
//! cut (every connection reset at once, new ones refused), heal.
//!
//! It runs on its own thread with its own single-threaded runtime, so it keeps forwarding (or
//! holding) whatever the caller's runtime does: a test that blocks its runtime, builds and drops
//! runtimes, or has none at all. The controls are plain methods, callable from sync or async code.
//! Dropping the proxy stops it and closes every connection.
//!
//! ```ignore
//! let proxy = Proxy::start(server.port());
//! let locker = Locker::connect(&proxy.url()).await?;
//! proxy.stall(); // requests hang until their response timeout
//! proxy.heal();  // the held bytes flow, in order
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Bytes read per chunk: each chunk is forwarded (and delayed) as one unit.
const CHUNK: usize = 16 * 1024;
/// How long `cut()` waits for every connection to close; the proxy's own thread only has to run
/// a few tasks, so anything near this means it is broken.
const CUT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Forward every chunk once its delay has passed.
    Forward,
    /// Hold every chunk (connections stay open, new ones are accepted and held too).
    Stall,
    /// Reset every connection, and every new one as soon as it is accepted.
    Cut,
}

#[derive(Debug, Clone, Copy)]
struct State {
    flow: Flow,
    /// Added to every chunk, in each direction, counted from when the proxy read it.
    delay: Duration,
    /// Connections (by accept order, from 0, end excluded) held as in `Stall` while the others
    /// flow.
    stalled_ids: Option<(u64, u64)>,
    /// Where new connections are forwarded (`redirect()` changes it; open ones stay where they
    /// are).
    upstream: SocketAddr,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Connections whose sockets are still open, with a signal for `cut()` to wait on.
    open: Mutex<usize>,
    closed: Condvar,
}

pub struct Proxy {
    port: u16,
    state: watch::Sender<State>,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port, forwarding to `127.0.0.1:<upstream_port>`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind the proxy's listening socket");
        listener
            .set_nonblocking(true)
            .expect("make the proxy's listener non-blocking");
        let port = listener.local_addr().expect("proxy address").port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the proxy's runtime");
        let (state, watcher) = watch::channel(State {
            flow: Flow::Forward,
            delay: Duration::ZERO,
            stalled_ids: None,
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port)),
        });
        let counters = Arc::new(Counters::default());
        let (shutdown, stopped) = oneshot::channel();
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("proxy:{port}->{upstream_port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("register the proxy's listener");
                    tokio::select! {
                        () = accept_loop(listener, watcher, thread_counters) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing their sockets.
                drop(runtime);
            })
            .expect("spawn the proxy thread");
        Proxy {
            port,
            state,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Delays every chunk by `d` in each direction (a request's answer comes `2 d` late), keeping
    /// their order. Applies to chunks already held too; `Duration::ZERO` ends it.
    pub fn delay(&self, d: Duration) {
        self.state.send_modify(|s| s.delay = d);
    }

    /// Stops forwarding in both directions: connections stay open, bytes are held (a blackhole).
    /// A new connection is accepted and held likewise. Every chunk not already being written when
    /// this returns is held until `heal()`.
    pub fn stall(&self) {
        self.state.send_modify(|s| s.flow = Flow::Stall);
    }

    /// Holds the bytes of some connections, both ways, as `stall()` does, and lets the others
    /// flow: `ids` counts the connections accepted from 0 (a client's second connection, e.g. a
    /// locker's subscriber, is 1; `1..u64::MAX` holds it and every later one). Until `heal()`.
    pub fn stall_connections(&self, ids: std::ops::Range<u64>) {
        self.state
            .send_modify(|s| s.stalled_ids = Some((ids.start, ids.end)));
    }

    /// Forwards connections accepted from now on to `127.0.0.1:<upstream_port>` instead: the
    /// address clients know stays the same while the server behind it changes (a failover).
    /// Open connections stay with the old server; `cut()` them to move every client.
    pub fn redirect(&self, upstream_port: u16) {
        self.state.send_modify(|s| {
            s.upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        });
    }

    /// Resets every open connection (RST, held bytes discarded) and resets each new one as soon
    /// as it is accepted, until `heal()`. Returns once every open connection is closed.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.flow = Flow::Cut);
        let open = self
            .counters
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (open, timeout) = self
            .counters
            .closed
            .wait_timeout_while(open, CUT_TIMEOUT, |open| *open > 0)
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            !timeout.timed_out(),
            "proxy cut: {} connection(s) still open after {CUT_TIMEOUT:?}",
            *open
        );
    }

    /// Back to normal: no delay, forwarding resumes, held bytes flow in order, connections are
    /// accepted again.
    pub fn heal(&self) {
        self.state.send_modify(|s| {
            s.flow = Flow::Forward;
            s.delay = Duration::ZERO;
            s.stalled_ids = None;
        });
    }

    /// Connections accepted and forwarded to the upstream so far (a reconnecting client shows up
    /// here).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections reset on arrival because the proxy was cut.
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        *self
            .counters
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: watch::Receiver<State>,
    counters: Arc<Counters>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors and the like: try again shortly rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (flow, upstream) = {
            let now = state.borrow();
            (now.flow, now.upstream)
        };
        if flow == Flow::Cut {
            counters.refused.fetch_add(1, Ordering::SeqCst);
            reset(client);
            continue;
        }
        let id = counters.accepted.fetch_add(1, Ordering::SeqCst);
        // Counted before the task starts, so a `cut()` right now waits for it too.
        let open = Open::new(&counters);
        tokio::spawn(serve(client, upstream, state.clone(), open, id));
    }
}

/// One open connection in the counters; dropped after its sockets are.
struct Open(Arc<Counters>);

impl Open {
    fn new(counters: &Arc<Counters>) -> Self {
        *counters.open.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Open(Arc::clone(counters))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(PoisonError::into_inner);
        *open -= 1;
        self.0.closed.notify_all();
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset", as when a link or a
/// middlebox drops the connection.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    open: Open,
    id: u64,
) {
    let mut cut = state.clone();
    let connected = tokio::select! {
        connected = TcpStream::connect(upstream) => connected.ok(),
        _ = cut.wait_for(|s| s.flow == Flow::Cut) => None,
    };
    let Some(mut server) = connected else {
        reset(client);
        drop(open);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clean = {
        let (from_client, to_client) = client.split();
        let (from_server, to_server) = server.split();
        tokio::select! {
            both = async {
                tokio::try_join!(
                    one_way(from_client, to_server, state.clone(), id),
                    one_way(from_server, to_client, state.clone(), id),
                )
            } => both.is_ok(),
            // Also when the proxy stops (the state's sender is gone).
            _ = cut.wait_for(|s| s.flow == Flow::Cut) => false,
        }
    };
    if clean {
        drop(client);
        drop(server);
    } else {
        reset(client);
        reset(server);
    }
    drop(open);
}

/// Forwards one direction until end of stream: a reader that stamps and queues every chunk (so
/// a stall holds bytes here, not in the kernel), and a writer that sends them in order once the
/// state allows. The end of stream is forwarded in order too, as a shutdown of the write side.
async fn one_way(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut state: watch::Receiver<State>,
    id: u64,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            // The writer only stops early on an error, which ends this connection anyway.
            let _ = queue.send((Instant::now(), chunk));
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some((read_at, chunk)) = queued.recv().await {
            hold(&mut state, read_at, id).await?;
            match chunk {
                Some(bytes) => to.write_all(&bytes).await?,
                None => {
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Waits until a chunk read at `read_at` may be written: forwarding, and its delay passed. A cut
/// is the connection task's business: here it just holds.
async fn hold(state: &mut watch::Receiver<State>, read_at: Instant, id: u64) -> io::Result<()> {
    loop {
        let now = *state.borrow_and_update();
        let due = read_at + now.delay;
        let singled_out = now
            .stalled_ids
            .is_some_and(|(start, end)| (start..end).contains(&id));
        let flows = now.flow == Flow::Forward && !singled_out;
        if flows && Instant::now() >= due {
            return Ok(());
        }
        let ready = async {
            if flows {
                tokio::time::sleep_until(due).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = ready => return Ok(()),
            changed = state.changed() => {
                changed.map_err(|_| io::Error::other("the proxy stopped"))?;
            }
        }
    }
}
