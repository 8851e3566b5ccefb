//! The node runtime: a listener registered with epmd, handshakes (erl_dist) as server and client,
//! the connection table (one connection per peer, the simultaneous-connect tie-break), one reader
//! and one writer thread per connection, ticks, local processes and registered names, monitors
//! both ways, and `net_kernel`'s `is_auth` so that `net_adm:ping/1` answers `pong`.
//!
//! A local "process" here is a pid and a handler closure: messages, monitor `DOWN`s and lost
//! connections are delivered to it on the connection's reader thread, so a handler must only hand
//! work on (to a channel), never block. The node is **hidden** (as C nodes are): BEAM nodes do not
//! send it `global` or `rex` traffic.
//!
//! Architecture Invariant: nothing a peer sends can panic this code: every frame is bounded,
//! every term is decoded by [`super::term`], every unexpected shape is dropped or closes only that
//! connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eetf::{Pid, Reference, Term};
use erl_dist::handshake::{
    ClientSideHandshake, HandshakeError, HandshakeStatus, ServerSideHandshake,
};
use erl_dist::node::{Creation, LocalNode, NodeName};
use erl_dist::DistributionFlags;
use futures::executor::block_on;

use super::blocking::BlockingIo;
use super::epmd;
use super::error::DistError;
use super::frame::{self, Control};
use super::term::{as_atom, as_tuple, atom, tuple};

/// What a local process receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A message (`from` is known for registered-name sends).
    Message {
        /// The sender, when the frame says.
        from: Option<Pid>,
        /// The message.
        msg: Term,
    },
    /// A monitor fired: the monitored `object` is gone with `reason` (`noconnection` when its
    /// node's connection was lost, `noproc` when it did not exist).
    Down {
        /// The monitor's reference (as returned by [`NodeHandle::monitor`]).
        reference: Reference,
        /// The pid, or the `{Name, Node}` tuple for a name monitor.
        object: Term,
        /// The reason.
        reason: Term,
    },
    /// The connection to this node was lost.
    NodeDown(String),
}

/// A local process's handler. Called on connection threads: hand work on, never block.
pub type Handler = Arc<dyn Fn(Delivery) + Send + Sync>;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `name@host`.
    pub name: String,
    /// The cookie (see [`super::resolve_cookie`]).
    pub cookie: String,
    /// Listen for connections and register with epmd (a server); `false` for a client-only node.
    pub listen: bool,
    /// The address to listen on (port 0: any). Default: loopback.
    pub listen_addr: String,
    /// Erlang's `net_ticktime`: a peer silent this long is disconnected; we tick every quarter
    /// (a client-only node at least every 250 ms, so that a server with a shorter tick time
    /// keeps it while it waits for a slow reply).
    pub tick_time: Duration,
    /// Longest frame accepted.
    pub max_frame: usize,
    /// Frames queued for one peer before it counts as not reading and is disconnected.
    pub out_queue: usize,
    /// Bound of a connection attempt (epmd lookup, TCP connect, handshake).
    pub connect_timeout: Duration,
    /// epmd's port (default: `ERL_EPMD_PORT`, else 4369).
    pub epmd_port: u16,
    /// How long a connection's reader, its input drained and its replies sent, polls for the
    /// next frame before it parks in a blocking read (as BEAM's schedulers busy-wait). A caller
    /// doing one call after another then does not wait for this thread's wake-up from idle
    /// (measured on our 2-core VMs: one BEAM caller did 4.8 K pairs/s without the spin, 9.7 K
    /// with it); a quiet connection costs nothing, a busy one up to a core. Default: 100 µs
    /// for a listening node (a server; `freqalloc node --reader-spin-us N` sets it), 0 for a
    /// client-only node (its callers' threads need the cores).
    pub reader_spin: Duration,
}

impl NodeConfig {
    /// Defaults: loopback, 60 s tick time, 8 MiB frames, 64 K queued frames, 5 s connects,
    /// [`NodeConfig::reader_spin`] 100 µs when listening.
    pub fn new(name: &str, cookie: &str, listen: bool) -> Self {
        NodeConfig {
            name: name.to_string(),
            cookie: cookie.to_string(),
            listen,
            listen_addr: "127.0.0.1:0".into(),
            tick_time: Duration::from_secs(60),
            max_frame: frame::DEFAULT_MAX_FRAME,
            out_queue: 65_536,
            connect_timeout: Duration::from_secs(5),
            epmd_port: epmd::epmd_port(),
            reader_spin: if listen {
                Duration::from_micros(100)
            } else {
                Duration::ZERO
            },
        }
    }
}

/// Splits `name@host`.
pub fn split_name(full: &str) -> Result<(&str, &str), DistError> {
    match full.split_once('@') {
        Some((a, h)) if !a.is_empty() && !h.is_empty() && !h.contains('@') => Ok((a, h)),
        _ => Err(DistError::BadNodeName(full.to_string())),
    }
}

/// Frames waiting to be written to one peer, in the order they were queued.
struct Outbox {
    /// The encoded frames, back to back.
    buf: Vec<u8>,
    /// Frames in `buf` (the bound of [`NodeConfig::out_queue`]).
    frames: usize,
    /// One thread is writing (the only one that may touch the socket's write side): batches
    /// are taken from `buf` by it alone, so they leave in the order they were queued.
    writing: bool,
    /// The socket was full: the writer thread owns `writing` now and blocks on the rest.
    handoff: bool,
    /// Stop once `buf` is written (an orderly close), or at once after [`Conn::close`].
    close: bool,
    /// A written buffer kept for the next batch (no allocation per batch).
    spare: Vec<u8>,
}

impl Outbox {
    fn take(&mut self) -> Vec<u8> {
        self.frames = 0;
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.buf, spare)
    }

    fn recycle(&mut self, mut batch: Vec<u8>) {
        batch.clear();
        if self.spare.capacity() < batch.capacity() && batch.capacity() <= 1 << 20 {
            self.spare = batch;
        }
    }
}

thread_local! {
    /// The id of the connection whose reader loop runs on this thread (0: none). Frames that
    /// reader queues for its own connection (replies answered inline) are sent by the reader
    /// itself once its input is drained: one `send` per batch.
    static READING: Cell<u64> = const { Cell::new(0) };
    /// The connection whose reader runs on this thread, for [`Inner::up`]'s shortcut.
    static READER_CONN: RefCell<Option<Arc<Conn>>> = const { RefCell::new(None) };
}

/// A mutex's guard, poisoned or not (a panicking holder leaves plain data behind).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The number a reference made by [`NodeHandle::make_ref`] carries (its first two id words),
/// for tables of pending calls keyed by reference.
pub(crate) fn ref_number(r: &Reference) -> Option<u64> {
    (r.id.len() >= 2).then(|| u64::from(r.id[0]) | (u64::from(r.id[1]) << 18))
}

/// Why a frame was not queued.
enum Push {
    /// The outbox is at its bound.
    Full,
    /// The frame could not be encoded (nothing was queued).
    Encode(DistError),
}

/// Rounds of "send what was queued meanwhile" a queuing thread does before it leaves the rest
/// to the writer thread (a caller is not kept sending other threads' frames for long).
const SEND_ROUNDS: usize = 4;

/// One live connection.
///
/// Writing: the thread that queues a frame when nobody is writing sends it at once with one
/// non-blocking `send` (and whatever others queued meanwhile); the connection's reader
/// instead sends at the end of each drained input (its replies in one batch). Only when the
/// socket is full does the writer thread take over and block, bounded by the write timeout,
/// while frames pile up in the outbox up to its bound. So no thread ever blocks on a peer that
/// does not read except the writer, and a reply costs no thread hop.
struct Conn {
    id: u64,
    peer: String,
    /// We dialled it (else we accepted it): for the simultaneous-connect rule.
    outgoing: bool,
    /// What is queued for the peer.
    out: Mutex<Outbox>,
    /// Wakes the writer thread (hand-off, close).
    ready: Condvar,
    /// The outbox's bound in frames.
    out_queue: usize,
    stream: TcpStream,
    closed: AtomicBool,
    /// Monitors the peer holds on our processes and names: reference → (monitoring pid, target).
    monitors_on_us: Mutex<HashMap<Reference, (Pid, Term)>>,
}

impl Conn {
    fn new(id: u64, peer: &str, outgoing: bool, stream: TcpStream, out_queue: usize) -> Conn {
        Conn {
            id,
            peer: peer.to_string(),
            outgoing,
            out: Mutex::new(Outbox {
                buf: Vec::with_capacity(16 * 1024),
                frames: 0,
                writing: false,
                handoff: false,
                close: false,
                spare: Vec::with_capacity(16 * 1024),
            }),
            ready: Condvar::new(),
            out_queue: out_queue.max(1),
            stream,
            closed: AtomicBool::new(false),
            monitors_on_us: Mutex::new(HashMap::new()),
        }
    }

    /// Closes after what is queued has been written (an orderly stop: a reply sent just before
    /// still reaches the peer), bounded by a short write timeout.
    fn close_after_queue(&self) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(2)));
        self.stop_writer();
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.stream.shutdown(Shutdown::Both);
            self.stop_writer();
        }
    }

    fn stop_writer(&self) {
        lock(&self.out).close = true;
        self.ready.notify_one();
    }

    /// Queues one frame, written into the outbox by `encode` (no buffer of its own), and sends
    /// it at once when nobody is writing (unless this is the connection's own reader, which
    /// sends when its input is drained, or `defer`: the caller flushes, see
    /// [`NodeHandle::reg_send_call_deferred`]). [`Push::Full`] when the peer has let
    /// [`NodeConfig::out_queue`] frames pile up (it is not reading): the caller disconnects it.
    fn push_with(
        &self,
        defer: bool,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), DistError>,
    ) -> Result<(), Push> {
        let on_reader = defer || READING.with(|r| r.get()) == self.id;
        let mut o = lock(&self.out);
        if o.close {
            return Ok(()); // closing: nothing more goes out (as Erlang drops sends to a dead link)
        }
        if o.frames >= self.out_queue {
            return Err(Push::Full);
        }
        let len = o.buf.len();
        if let Err(e) = encode(&mut o.buf) {
            o.buf.truncate(len);
            return Err(Push::Encode(e));
        }
        o.frames += 1;
        if on_reader || o.writing {
            return Ok(()); // the reader's flush, or the thread writing now, sends it
        }
        o.writing = true;
        let batch = o.take();
        drop(o);
        self.send_batches(batch);
        Ok(())
    }

    /// The flush of a reader (or of a deferring caller): what is queued goes out now, unless
    /// another thread is writing (it takes what is queued before it stops).
    fn flush(&self) {
        let mut o = lock(&self.out);
        if o.writing || o.buf.is_empty() {
            return;
        }
        o.writing = true;
        let batch = o.take();
        drop(o);
        self.send_batches(batch);
    }

    /// Holding `writing`: sends `batch`, then what was queued meanwhile, without blocking. When
    /// the socket is full the rest goes back first in the outbox and the writer thread takes
    /// over (and `writing` with it).
    fn send_batches(&self, mut batch: Vec<u8>) {
        for _ in 0..SEND_ROUNDS {
            match send_nowait(&self.stream, &batch) {
                Ok(n) if n == batch.len() => {
                    let mut o = lock(&self.out);
                    o.recycle(batch);
                    if o.buf.is_empty() {
                        o.writing = false;
                        if o.close {
                            drop(o);
                            self.ready.notify_one(); // the writer finishes the close
                        }
                        return;
                    }
                    batch = o.take();
                }
                Ok(n) => {
                    batch.drain(..n);
                    return self.hand_off(batch);
                }
                Err(_) => {
                    lock(&self.out).writing = false;
                    return self.close();
                }
            }
        }
        self.hand_off(batch);
    }

    /// Puts `rest` back in front of the outbox and wakes the writer thread, which now owns
    /// `writing` (nothing can overtake `rest`: only the holder of `writing` takes batches).
    fn hand_off(&self, rest: Vec<u8>) {
        let mut o = lock(&self.out);
        if !rest.is_empty() {
            let after = std::mem::replace(&mut o.buf, rest);
            o.buf.extend_from_slice(&after);
            o.frames += 1;
        }
        o.handoff = true;
        drop(o);
        self.ready.notify_one();
    }
}

/// Writes as much of `buf` as the socket takes now, without blocking.
#[cfg(target_os = "linux")]
fn send_nowait(s: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut sent = 0;
    while sent < buf.len() {
        let rest = &buf[sent..];
        // SAFETY: the pointer and length describe the live slice `rest`; the descriptor is the
        // open socket `s` borrows for the duration of the call. `MSG_DONTWAIT` makes this one
        // call non-blocking without changing the socket's mode (shared with the reader);
        // `MSG_NOSIGNAL` turns a closed peer into `EPIPE` instead of a signal.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => return Ok(sent),
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

/// Polls (without blocking) for up to `spin` whether `s` has input, so a reader whose peer
/// answers quickly avoids parking (and the wake-up from idle that costs ~50 µs here).
/// `true` when input (or EOF) came within the spin.
#[cfg(target_os = "linux")]
fn spin_until_readable(s: &TcpStream, spin: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let until = Instant::now() + spin;
    let mut b = [0u8; 1];
    loop {
        // SAFETY: a one-byte buffer we own; the descriptor is the open socket `s` borrows.
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return true; // input (or EOF): the read will not block
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return true; // an error: the read reports it
        }
        if Instant::now() >= until {
            return false;
        }
        std::hint::spin_loop();
    }
}

#[cfg(not(target_os = "linux"))]
fn spin_until_readable(_: &TcpStream, _: Duration) -> bool {
    false
}

/// Elsewhere the reader leaves every write to the writer thread.
#[cfg(not(target_os = "linux"))]
fn send_nowait(_: &TcpStream, _: &[u8]) -> std::io::Result<usize> {
    Ok(0)
}

enum PeerState {
    /// We are dialling it.
    Dialling,
    Up(Arc<Conn>),
}

struct Inner {
    config: NodeConfig,
    name: String,
    creation: u32,
    port: u16,
    stopping: AtomicBool,
    next_id: AtomicU32,
    next_ref: AtomicU64,
    next_conn: AtomicU64,
    processes: RwLock<HashMap<u32, Handler>>,
    names: RwLock<HashMap<String, u32>>,
    peers: Mutex<HashMap<String, PeerState>>,
    peers_changed: Condvar,
    /// Monitors our processes hold on remote ones: reference → (local pid id, peer, object).
    monitors: Mutex<HashMap<Reference, (u32, String, Term)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    epmd: Mutex<Option<TcpStream>>,
}

/// A running node. Dropping it (or [`Node::stop`]) unregisters from epmd, closes every
/// connection and joins every thread. Its operations are those of [`NodeHandle`] (it derefs
/// to one).
pub struct Node {
    handle: NodeHandle,
    accept: Option<JoinHandle<()>>,
}

/// A cheap, cloneable reference to a running node's operations (send, monitor, processes),
/// for handlers and worker threads; it does not keep the node's threads alive.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Node {
    type Target = NodeHandle;
    fn deref(&self) -> &NodeHandle {
        &self.handle
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("port", &self.inner.port)
            .finish()
    }
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("name", &self.inner.name)
            .finish()
    }
}

fn log(msg: &str) {
    eprintln!("freqalloc dist: {msg}");
}

fn spawn(inner: &Inner, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), DistError> {
    let h = std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| DistError::io("spawning a thread", e))?;
    let mut threads = inner.threads.lock().unwrap_or_else(|e| e.into_inner());
    threads.retain(|t| !t.is_finished());
    threads.push(h);
    Ok(())
}

impl Node {
    /// Starts a node: with `config.listen`, binds, registers with epmd (starting `epmd -daemon`
    /// if none answers) and accepts connections.
    pub fn start(config: NodeConfig) -> Result<Node, DistError> {
        let (alive, _host) = split_name(&config.name)?;
        let alive = alive.to_string();
        let (listener, port, creation, reg) = if config.listen {
            let listener = TcpListener::bind(&config.listen_addr)
                .map_err(|e| DistError::io(format!("binding {}", config.listen_addr), e))?;
            let port = listener
                .local_addr()
                .map_err(|e| DistError::io("local address", e))?
                .port();
            let (reg, creation) = epmd::register(&alive, port, config.epmd_port)?;
            (Some(listener), port, creation, Some(reg))
        } else {
            (None, 0, Creation::random().get(), None)
        };
        let inner = Arc::new(Inner {
            name: config.name.clone(),
            config,
            creation,
            port,
            stopping: AtomicBool::new(false),
            next_id: AtomicU32::new(1),
            // Seeded from the clock: a restarted node (same name, maybe the same creation)
            // does not make the references its previous run made.
            next_ref: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| (d.as_nanos() as u64) & 0x0000_00ff_ffff_ffff)
                    | 1,
            ),
            next_conn: AtomicU64::new(1),
            processes: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            peers_changed: Condvar::new(),
            monitors: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            epmd: Mutex::new(reg),
        });
        let accept = match listener {
            Some(l) => {
                let i = inner.clone();
                Some(
                    std::thread::Builder::new()
                        .name("dist-accept".into())
                        .spawn(move || accept_loop(i, l))
                        .map_err(|e| DistError::io("spawning a thread", e))?,
                )
            }
            None => None,
        };
        Ok(Node {
            handle: NodeHandle { inner },
            accept,
        })
    }

    /// Stops: unregisters from epmd, closes connections, joins every thread. Idempotent.
    pub fn stop(&mut self) {
        self.handle.stop_inner(&mut self.accept);
    }
}

impl NodeHandle {
    /// `name@host`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The distribution port (0 for a client-only node).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Peers with a live connection.
    pub fn connected(&self) -> Vec<String> {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .filter(|(_, v)| matches!(v, PeerState::Up(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether `node` has a live connection (no dial, no allocation).
    pub fn is_connected(&self, node: &str) -> bool {
        self.inner.up(node).is_some()
    }

    /// Creates a local process with `handler`; returns its pid.
    pub fn spawn_process(&self, handler: Handler) -> Pid {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        self.inner
            .processes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, handler);
        Pid::new(self.inner.name.clone(), id, 0, self.inner.creation)
    }

    /// Ends a local process: its names are unregistered and monitors on it fire with `reason`.
    pub fn exit_process(&self, pid: &Pid, reason: &str) {
        self.inner
            .processes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid.id);
        let mut gone_names = Vec::new();
        {
            let mut names = self.inner.names.write().unwrap_or_else(|e| e.into_inner());
            names.retain(|n, id| {
                if *id == pid.id {
                    gone_names.push(n.clone());
                    false
                } else {
                    true
                }
            });
        }
        let conns = self.inner.conns();
        for c in conns {
            let fired: Vec<(Reference, Pid, Term)> = {
                let mut m = c.monitors_on_us.lock().unwrap_or_else(|e| e.into_inner());
                let keys: Vec<Reference> = m
                    .iter()
                    .filter(|(_, (_, t))| match t {
                        Term::Pid(p) => p.id == pid.id,
                        Term::Atom(a) => gone_names.contains(&a.name),
                        _ => false,
                    })
                    .map(|(r, _)| r.clone())
                    .collect();
                keys.into_iter()
                    .filter_map(|r| m.remove(&r).map(|(from, t)| (r, from, t)))
                    .collect()
            };
            for (r, from, t) in fired {
                if let Ok(f) = frame::monitor_exit(&t, &from, &r, &atom(reason)) {
                    self.inner.enqueue(&c, f);
                }
            }
        }
    }

    /// Registers `name` for the local process `pid` (replacing any previous holder).
    pub fn register_name(&self, name: &str, pid: &Pid) {
        self.inner
            .names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), pid.id);
    }

    /// A fresh reference of this node.
    pub fn make_ref(&self) -> Reference {
        self.inner.make_ref()
    }

    /// Sends `msg` to `to` (connecting to its node when needed).
    pub fn send(&self, to: &Pid, msg: &Term) -> Result<(), DistError> {
        if to.node.name == self.inner.name {
            self.inner.deliver(
                to.id,
                Delivery::Message {
                    from: None,
                    msg: msg.clone(),
                },
            );
            return Ok(());
        }
        let c = self.inner.connection(&to.node.name)?;
        self.inner.enqueue(&c, frame::send(to, msg)?);
        Ok(())
    }

    /// Sends `msg` to `to` only if its node is connected (Erlang's `noconnect`): a reply to a
    /// process whose node is gone is dropped, never a reason to block on a dial.
    pub fn send_noconnect(&self, to: &Pid, msg: &Term) -> Result<(), DistError> {
        if to.node.name == self.inner.name {
            return self.send(to, msg);
        }
        match self.inner.up(&to.node.name) {
            Some(c) => {
                self.inner.enqueue(&c, frame::send(to, msg)?);
                Ok(())
            }
            None => Err(DistError::NodeDown(to.node.name.clone())),
        }
    }

    /// [`NodeHandle::send_noconnect`] of the message `{first, second}` (a gen_server reply
    /// `{Tag, Reply}`, or the course's `{reply, Reply}`), encoded in place in the connection's
    /// outbox: no tuple, no frame buffer of its own.
    pub(crate) fn send_pair_noconnect(
        &self,
        to: &Pid,
        first: &Term,
        second: &Term,
    ) -> Result<(), DistError> {
        if to.node.name == self.inner.name {
            return self.send(to, &tuple(vec![first.clone(), second.clone()]));
        }
        match self.inner.up(&to.node.name) {
            Some(c) => self
                .inner
                .enqueue_with(&c, |out| frame::send_pair_into(out, to, first, second)),
            None => Err(DistError::NodeDown(to.node.name.clone())),
        }
    }

    /// Sends `msg` from `from` to the name `name` on `node` (REG_SEND), connecting as needed.
    pub fn reg_send(
        &self,
        from: &Pid,
        name: &str,
        node: &str,
        msg: &Term,
    ) -> Result<(), DistError> {
        let c = self.inner.connection(node)?;
        self.inner.enqueue(&c, frame::reg_send(from, name, msg)?);
        Ok(())
    }

    /// Queues the gen_server call `{'$gen_call', {From, Ref}, Request}` from `from` to the name
    /// `name` on `node`, encoded in place in the connection's outbox, without sending it: it
    /// goes out with the next write to that peer, at the latest at [`NodeHandle::flush`], which
    /// the caller must call before it waits for the answer (a pipeline of calls then shares one
    /// `send`).
    pub(crate) fn reg_send_call_deferred(
        &self,
        from: &Pid,
        name: &str,
        node: &str,
        reference: &Reference,
        request: &Term,
    ) -> Result<(), DistError> {
        let c = self.inner.connection(node)?;
        self.queue_call(&c, from, name, reference, request)
    }

    /// [`NodeHandle::reg_send_call_deferred`] only over an existing connection: never dials
    /// ([`DistError::NodeDown`] when `node` is not connected).
    pub(crate) fn reg_send_call_deferred_noconnect(
        &self,
        from: &Pid,
        name: &str,
        node: &str,
        reference: &Reference,
        request: &Term,
    ) -> Result<(), DistError> {
        let c = self
            .inner
            .up(node)
            .ok_or_else(|| DistError::NodeDown(node.to_string()))?;
        self.queue_call(&c, from, name, reference, request)
    }

    /// Queues the call on `c`, deferred, unless `c` is closing.
    fn queue_call(
        &self,
        c: &Arc<Conn>,
        from: &Pid,
        name: &str,
        reference: &Reference,
        request: &Term,
    ) -> Result<(), DistError> {
        if c.closed.load(Ordering::SeqCst) {
            return Err(DistError::NodeDown(c.peer.clone()));
        }
        self.inner.enqueue_deferred(c, true, |out| {
            frame::reg_send_call_into(out, from, name, reference, request)
        })
    }

    /// Sends what is queued for `node` now (calls queued with
    /// [`NodeHandle::reg_send_call_deferred`]), without blocking.
    pub(crate) fn flush(&self, node: &str) {
        if let Some(c) = self.inner.up(node) {
            c.flush();
        }
    }

    /// `from` (local) monitors the remote pid `target`. When the target's node cannot be reached,
    /// the `DOWN` (`noconnection`) is delivered at once.
    pub fn monitor(&self, from: &Pid, target: &Pid) -> Reference {
        self.monitor_term(
            from,
            &target.node.name,
            Term::from(target.clone()),
            Term::from(target.clone()),
        )
    }

    /// `from` (local) monitors the registered `name` on `node`; a name the node lacks gives
    /// a `DOWN` with `noproc` at once.
    pub fn monitor_name(&self, from: &Pid, name: &str, node: &str) -> Reference {
        self.monitor_term(from, node, atom(name), tuple(vec![atom(name), atom(node)]))
    }

    fn monitor_term(&self, from: &Pid, node: &str, target: Term, object: Term) -> Reference {
        let r = self.inner.make_ref();
        match self.inner.connection(node) {
            Ok(c) => {
                self.inner
                    .monitors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(r.clone(), (from.id, node.to_string(), object.clone()));
                match frame::monitor(from, &target, &r) {
                    Ok(f) => {
                        self.inner.enqueue(&c, f);
                        // Closed between lookup and insert: the teardown may have missed it.
                        if c.closed.load(Ordering::SeqCst) {
                            self.inner.fire_monitors_of(node);
                        }
                    }
                    Err(_) => {
                        self.inner
                            .monitors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&r);
                        self.inner.deliver(
                            from.id,
                            Delivery::Down {
                                reference: r.clone(),
                                object,
                                reason: atom("badarg"),
                            },
                        );
                    }
                }
            }
            Err(_) => self.inner.deliver(
                from.id,
                Delivery::Down {
                    reference: r.clone(),
                    object,
                    reason: atom("noconnection"),
                },
            ),
        }
        r
    }

    /// Removes a monitor made by [`NodeHandle::monitor`] or [`NodeHandle::monitor_name`].
    pub fn demonitor(&self, from: &Pid, r: &Reference) {
        let entry = self
            .inner
            .monitors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(r);
        if let Some((_, node, object)) = entry {
            let target = match &object {
                Term::Tuple(t) if t.elements.len() == 2 => t.elements[0].clone(),
                o => o.clone(),
            };
            if let (Some(c), Ok(f)) = (self.inner.up(&node), frame::demonitor(from, &target, r)) {
                self.inner.enqueue(&c, f);
            }
        }
    }

    /// Connects to `node` now (normally connections are made on first use).
    pub fn connect(&self, node: &str) -> Result<(), DistError> {
        self.inner.connection(node).map(|_| ())
    }

    /// Closes the connection to `node`, if any (its monitors fire with `noconnection`).
    pub fn disconnect(&self, node: &str) {
        if let Some(c) = self.inner.up(node) {
            c.close();
        }
    }

    fn stop_inner(&self, accept: &mut Option<JoinHandle<()>>) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Closing the registration stream unregisters the name.
        if let Some(s) = self
            .inner
            .epmd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop with a connection to ourselves.
        if self.inner.port != 0 {
            let _ = TcpStream::connect(("127.0.0.1", self.inner.port));
        }
        if let Some(h) = accept.take() {
            let _ = h.join();
        }
        for c in self.inner.conns() {
            c.close_after_queue();
        }
        loop {
            let threads: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if threads.is_empty() {
                break;
            }
            for t in threads {
                let _ = t.join();
            }
        }
        // Handlers may hold handles of this node: break the cycle.
        self.inner
            .processes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn make_ref(&self) -> Reference {
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed);
        Reference {
            node: eetf::Atom::from(self.name.clone()),
            id: vec![(n & 0x3ffff) as u32, (n >> 18) as u32, (n >> 50) as u32],
            creation: self.creation,
        }
    }

    fn conns(&self) -> Vec<Arc<Conn>> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .values()
            .filter_map(|s| match s {
                PeerState::Up(c) => Some(c.clone()),
                PeerState::Dialling => None,
            })
            .collect()
    }

    fn up(&self, node: &str) -> Option<Arc<Conn>> {
        // On a reader thread, its own peer (a reply to a caller of that node) needs no table
        // lookup: a connection not closed is the one in the table (a replaced one is closed).
        let own = READER_CONN.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|c| c.peer == node && !c.closed.load(Ordering::SeqCst))
                .cloned()
        });
        if own.is_some() {
            return own;
        }
        match self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            Some(PeerState::Up(c)) => Some(c.clone()),
            _ => None,
        }
    }

    fn deliver(&self, id: u32, d: Delivery) {
        let h = self
            .processes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        if let Some(h) = h {
            h(d);
        }
    }

    fn deliver_all(&self, d: Delivery) {
        let hs: Vec<Handler> = self
            .processes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for h in hs {
            h(d.clone());
        }
    }

    /// Queues a frame; a peer whose queue is full has stopped reading and is disconnected.
    fn enqueue(&self, c: &Arc<Conn>, f: Vec<u8>) {
        let _ = self.enqueue_with(c, |out| {
            out.extend_from_slice(&f);
            Ok(())
        });
    }

    /// [`Inner::enqueue`] of a frame `encode` writes in place; its encoding error is returned.
    fn enqueue_with(
        &self,
        c: &Arc<Conn>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        self.enqueue_deferred(c, false, encode)
    }

    /// [`Inner::enqueue_with`], optionally deferred (see [`Conn::push_with`]).
    fn enqueue_deferred(
        &self,
        c: &Arc<Conn>,
        defer: bool,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        match c.push_with(defer, encode) {
            Ok(()) => Ok(()),
            Err(Push::Full) => {
                log(&format!(
                    "{}: outbound queue full (peer not reading): disconnecting",
                    c.peer
                ));
                c.close();
                Ok(())
            }
            Err(Push::Encode(e)) => Err(e),
        }
    }

    /// The connection to `node`, dialling it when there is none (one dial at a time per peer;
    /// callers that arrive meanwhile wait for its outcome).
    fn connection(self: &Arc<Self>, node: &str) -> Result<Arc<Conn>, DistError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(DistError::Stopped);
        }
        if node == self.name {
            return Err(DistError::BadNodeName(format!("{node} is this node")));
        }
        let deadline = Instant::now() + self.config.connect_timeout;
        {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match peers.get(node) {
                    Some(PeerState::Up(c)) if !c.closed.load(Ordering::SeqCst) => {
                        return Ok(c.clone())
                    }
                    Some(PeerState::Dialling) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(DistError::Unreachable {
                                node: node.into(),
                                reason: "connect timed out".into(),
                            });
                        }
                        peers = self
                            .peers_changed
                            .wait_timeout(peers, deadline - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    _ => {
                        peers.insert(node.to_string(), PeerState::Dialling);
                        break;
                    }
                }
            }
        }
        let result = self.dial(node);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let out = match result {
            Ok((stream, peer)) => {
                // A simultaneous incoming connection may be up already: the tie-break decides.
                let r = self.adopt(&mut peers, stream, &peer, true);
                if r.is_err() && matches!(peers.get(node), Some(PeerState::Dialling)) {
                    peers.remove(node);
                }
                r
            }
            Err(DistError::Handshake { reason, .. }) if reason == "nok" => {
                // Simultaneous connect, the peer's attempt wins: wait for it to come up.
                if matches!(peers.get(node), Some(PeerState::Dialling)) {
                    peers.remove(node);
                }
                loop {
                    if let Some(PeerState::Up(c)) = peers.get(node) {
                        break Ok(c.clone());
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break Err(DistError::Unreachable {
                            node: node.into(),
                            reason: "simultaneous connect did not complete".into(),
                        });
                    }
                    peers = self
                        .peers_changed
                        .wait_timeout(peers, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            Err(e) => match peers.get(node) {
                // The peer's simultaneous attempt won (we answered ok_simultaneous).
                Some(PeerState::Up(c)) => Ok(c.clone()),
                _ => {
                    peers.remove(node);
                    Err(e)
                }
            },
        };
        self.peers_changed.notify_all();
        out
    }

    fn local_node(&self) -> Result<LocalNode, DistError> {
        let name: NodeName = self
            .name
            .parse()
            .map_err(|_| DistError::BadNodeName(self.name.clone()))?;
        let mut local = LocalNode::new(name, Creation::new(self.creation));
        // Hidden: no PUBLISHED flag. Monitors of names are ours to answer.
        local.flags = DistributionFlags::mandatory()
            | DistributionFlags::DIST_MONITOR
            | DistributionFlags::DIST_MONITOR_NAME;
        Ok(local)
    }

    fn dial(&self, node: &str) -> Result<(TcpStream, String), DistError> {
        let (alive, host) = split_name(node)?;
        let port = epmd::port_please(alive, host, self.config.epmd_port)?;
        let unreachable = |reason: String| DistError::Unreachable {
            node: node.to_string(),
            reason,
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("no address".into()))?;
        let stream = TcpStream::connect_timeout(&addr, self.config.connect_timeout)
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(self.config.connect_timeout));
        let _ = stream.set_write_timeout(Some(self.config.connect_timeout));
        let hs_err = |reason: String| DistError::Handshake {
            node: node.to_string(),
            reason,
        };
        let mut hs =
            ClientSideHandshake::new(BlockingIo(stream), self.local_node()?, &self.config.cookie);
        let status = block_on(hs.execute_send_name(6)).map_err(|e| hs_err(e.to_string()))?;
        if status == HandshakeStatus::Nok {
            return Err(hs_err("nok".into()));
        }
        let (io, peer) = block_on(hs.execute_rest(true)).map_err(|e| {
            hs_err(match e {
                HandshakeError::CookieMismatch => "cookie mismatch".to_string(),
                HandshakeError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "closed by the peer (wrong cookie?)".to_string()
                }
                e => e.to_string(),
            })
        })?;
        Ok((io.0, peer.name.to_string()))
    }

    /// Takes a handshaken connection to `peer` into the table, unless one already up wins.
    /// Two live connections between the same pair (simultaneous connects) are settled by one
    /// rule both sides apply alike: the one dialled by the greater node name stays. A new
    /// connection dialled by the same side as the old one replaces it (the peer restarted).
    fn adopt(
        self: &Arc<Self>,
        peers: &mut HashMap<String, PeerState>,
        stream: TcpStream,
        peer: &str,
        outgoing: bool,
    ) -> Result<Arc<Conn>, DistError> {
        if let Some(PeerState::Up(old)) = peers.get(peer) {
            if !old.closed.load(Ordering::SeqCst) && old.outgoing != outgoing {
                let ours_wins = self.name.as_str() > peer;
                if outgoing != ours_wins {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(old.clone());
                }
            }
            old.close();
        }
        let c = self.start_conn(stream, peer, outgoing)?;
        peers.insert(peer.to_string(), PeerState::Up(c.clone()));
        Ok(c)
    }

    /// Starts the reader and writer threads of a handshaken connection.
    fn start_conn(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: &str,
        outgoing: bool,
    ) -> Result<Arc<Conn>, DistError> {
        let _ = stream.set_nodelay(true);
        // A peer silent for the tick time is dead; writes bounded the same way.
        let _ = stream.set_read_timeout(Some(self.config.tick_time));
        let _ = stream.set_write_timeout(Some(self.config.tick_time));
        let r = stream
            .try_clone()
            .map_err(|e| DistError::io("cloning a socket", e))?;
        let conn = Arc::new(Conn::new(
            self.next_conn.fetch_add(1, Ordering::Relaxed),
            peer,
            outgoing,
            stream,
            self.config.out_queue,
        ));
        // A client-only node ticks at least every 250 ms: a server may run with a shorter
        // `net_ticktime` than the client's (its `--net-ticktime 2`), and would drop a client
        // that waits silently for a slow reply. Ticks are 4-byte frames.
        let tick = if self.config.listen {
            self.config.tick_time / 4
        } else {
            (self.config.tick_time / 4).min(Duration::from_millis(250))
        };
        let c = conn.clone();
        spawn(self, format!("dist-write-{peer}"), move || {
            writer_loop(c, tick)
        })?;
        let (i, c) = (self.clone(), conn.clone());
        spawn(self, format!("dist-read-{peer}"), move || {
            reader_loop(i, c, r)
        })?;
        Ok(conn)
    }

    /// Fires every monitor we hold on processes of `node` with `noconnection`.
    fn fire_monitors_of(&self, node: &str) {
        let fired: Vec<(Reference, u32, Term)> = {
            let mut m = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<Reference> = m
                .iter()
                .filter(|(_, (_, n, _))| n == node)
                .map(|(r, _)| r.clone())
                .collect();
            keys.into_iter()
                .filter_map(|r| m.remove(&r).map(|(id, _, o)| (r, id, o)))
                .collect()
        };
        for (r, id, object) in fired {
            self.deliver(
                id,
                Delivery::Down {
                    reference: r,
                    object,
                    reason: atom("noconnection"),
                },
            );
        }
    }

    fn teardown(&self, c: &Arc<Conn>) {
        c.close();
        let lost_to_simultaneous = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let successor = match peers.get(&c.peer) {
                Some(PeerState::Up(cur)) if cur.id == c.id => {
                    peers.remove(&c.peer);
                    None
                }
                Some(PeerState::Up(cur)) => Some(cur.outgoing),
                _ => None,
            };
            self.peers_changed.notify_all();
            // The loser of a simultaneous connect (the other direction stays up): the peer is
            // not down. A connection replaced by one dialled the same way (the peer came back,
            // restarted) is a real loss.
            successor.is_some_and(|o| o != c.outgoing)
        };
        if lost_to_simultaneous {
            return;
        }
        self.fire_monitors_of(&c.peer);
        self.deliver_all(Delivery::NodeDown(c.peer.clone()));
    }

    fn handle(&self, c: &Arc<Conn>, ctl: Control) {
        match ctl {
            Control::Send { from, to, msg } => self.deliver(to.id, Delivery::Message { from, msg }),
            Control::RegSend { from, to, msg } => {
                if to == "net_kernel" {
                    self.net_kernel(c, &msg);
                    return;
                }
                let id = self
                    .names
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&to)
                    .copied();
                if let Some(id) = id {
                    self.deliver(
                        id,
                        Delivery::Message {
                            from: Some(from),
                            msg,
                        },
                    );
                }
            }
            Control::Monitor {
                from,
                target,
                reference,
            } => {
                let exists = match &target {
                    Term::Atom(a) => {
                        a.name == "net_kernel"
                            || self
                                .names
                                .read()
                                .unwrap_or_else(|e| e.into_inner())
                                .contains_key(&a.name)
                    }
                    Term::Pid(p) => {
                        p.node.name == self.name
                            && self
                                .processes
                                .read()
                                .unwrap_or_else(|e| e.into_inner())
                                .contains_key(&p.id)
                    }
                    _ => false,
                };
                if exists {
                    c.monitors_on_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(reference, (from, target));
                } else if let Ok(f) =
                    frame::monitor_exit(&target, &from, &reference, &atom("noproc"))
                {
                    self.enqueue(c, f);
                }
            }
            Control::Demonitor { reference, .. } => {
                c.monitors_on_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&reference);
            }
            Control::MonitorExit {
                reference, reason, ..
            } => {
                let entry = self
                    .monitors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&reference);
                if let Some((id, _, object)) = entry {
                    self.deliver(
                        id,
                        Delivery::Down {
                            reference,
                            object,
                            reason,
                        },
                    );
                }
            }
            Control::UnlinkId { id, from, to } => {
                if let Ok(f) = frame::unlink_id_ack(&id, &to, &from) {
                    self.enqueue(c, f);
                }
            }
            Control::Ignored(_) => {}
        }
    }

    /// `net_kernel`'s part: `{'$gen_call', {From, Tag}, {is_auth, _}}` → `{Tag, yes}`.
    fn net_kernel(&self, c: &Arc<Conn>, msg: &Term) {
        let Some(el) = as_tuple(msg) else { return };
        if el.len() != 3 || as_atom(&el[0]) != Some("$gen_call") {
            return;
        }
        let Some(from) = as_tuple(&el[1]) else { return };
        let (Some(Term::Pid(pid)), Some(tag)) = (from.first(), from.get(1)) else {
            return;
        };
        let reply = match as_tuple(&el[2]) {
            Some(req) if req.first().and_then(as_atom) == Some("is_auth") => atom("yes"),
            _ => atom("ignored"),
        };
        if let Ok(f) = frame::send(pid, &tuple(vec![tag.clone(), reply])) {
            self.enqueue(c, f);
        }
    }

    /// The server side of one handshake, then the connection's life.
    fn accept_one(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(self.config.connect_timeout));
        let _ = stream.set_write_timeout(Some(self.config.connect_timeout));
        let addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let local = match self.local_node() {
            Ok(l) => l,
            Err(_) => return,
        };
        let mut hs = ServerSideHandshake::new(BlockingIo(stream), local, &self.config.cookie);
        let peer = match block_on(hs.execute_recv_name()) {
            Ok(Some(n)) => n.to_string(),
            Ok(None) => {
                let _ = block_on(hs.execute_rest(HandshakeStatus::NotAllowed));
                log(&format!(
                    "refused {addr}: dynamic node names are not served"
                ));
                return;
            }
            Err(e) => {
                log(&format!("refused {addr}: handshake: {e}"));
                return;
            }
        };
        // The tie-break: while we dial the same peer, the greater name wins.
        let status = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            match peers.get(&peer) {
                Some(PeerState::Dialling) if self.name > peer => HandshakeStatus::Nok,
                Some(PeerState::Dialling) => HandshakeStatus::OkSimultaneous,
                _ => HandshakeStatus::Ok,
            }
        };
        if status == HandshakeStatus::Nok {
            let _ = block_on(hs.execute_rest(status));
            return;
        }
        match block_on(hs.execute_rest(status)) {
            Ok((io, _)) => {
                let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = self.adopt(&mut peers, io.0, &peer, false) {
                    log(&format!("{peer}: {e}"));
                }
                self.peers_changed.notify_all();
            }
            Err(HandshakeError::CookieMismatch) => {
                log(&format!("refused {peer} ({addr}): wrong cookie"));
            }
            Err(e) => log(&format!("refused {peer} ({addr}): handshake: {e}")),
        }
    }
}

fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    for stream in listener.incoming() {
        if inner.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let i = inner.clone();
        if spawn(&inner, "dist-handshake".into(), move || {
            i.accept_one(stream)
        })
        .is_err()
        {
            log("cannot spawn a handshake thread");
        }
    }
}

/// Whether `b` (the reader's buffered input) holds a whole frame: else reading the next one
/// may block, so the replies queued meanwhile are flushed first.
fn holds_frame(b: &[u8]) -> bool {
    b.len() >= 4 && b.len() - 4 >= u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Idle periods a reader parks without spinning after a spin that found no input.
const SPIN_BACKOFF: u32 = 8;

/// Frames handled between two flushes at most, when the input never drains.
const FLUSH_EVERY: u32 = 64;

fn reader_loop(inner: Arc<Inner>, c: Arc<Conn>, stream: TcpStream) {
    READING.with(|r| r.set(c.id));
    READER_CONN.with(|r| *r.borrow_mut() = Some(c.clone()));
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut buf = Vec::new();
    let mut since_flush = 0u32;
    let spin = inner.config.reader_spin;
    let mut skip_spins = 0u32;
    loop {
        if since_flush >= FLUSH_EVERY || !holds_frame(r.buffer()) {
            c.flush();
            since_flush = 0;
            if !holds_frame(r.buffer()) && !spin.is_zero() {
                // A spin that found nothing is not tried again for a while: when the gaps are
                // longer than the spin (or the cores are busy) it would only burn CPU.
                if skip_spins > 0 {
                    skip_spins -= 1;
                } else if !spin_until_readable(r.get_ref(), spin) {
                    skip_spins = SPIN_BACKOFF;
                }
            }
        }
        match frame::read_frame(&mut r, &mut buf, inner.config.max_frame) {
            Ok(false) => {} // a tick: the peer is alive
            Ok(true) => {
                since_flush += 1;
                match frame::parse(&buf) {
                    Ok(ctl) => inner.handle(&c, ctl),
                    Err(e) => log(&format!("{}: dropped a frame: {e}", c.peer)),
                }
            }
            Err(e) => {
                if !c.closed.load(Ordering::SeqCst) && !inner.stopping.load(Ordering::SeqCst) {
                    log(&format!("{}: connection closed: {e}", c.peer));
                }
                break;
            }
        }
    }
    c.flush(); // what the last frames produced, if the socket still takes it
    READING.with(|r| r.set(0));
    READER_CONN.with(|r| *r.borrow_mut() = None);
    inner.teardown(&c);
}

/// The writer thread: writes, blocking (bounded by the socket's write timeout), what the
/// non-blocking senders could not (a full socket); a tick when idle for `tick`; the orderly
/// close once what is queued is written.
fn writer_loop(c: Arc<Conn>, tick: Duration) {
    let mut o = lock(&c.out);
    loop {
        if o.handoff || (o.close && !o.writing) {
            o.writing = true;
            o.handoff = false;
            while !o.buf.is_empty() {
                let batch = o.take();
                drop(o);
                let ok = (&c.stream).write_all(&batch).is_ok();
                o = lock(&c.out);
                o.recycle(batch);
                if !ok {
                    o.close = true;
                    break;
                }
            }
            o.writing = false;
            if o.close {
                break;
            }
            continue;
        }
        let (g, t) = c
            .ready
            .wait_timeout(o, tick)
            .unwrap_or_else(|e| e.into_inner());
        o = g;
        if t.timed_out() && !o.writing && !o.close {
            // Idle for a tick: a tick goes out, or frames queued but not yet sent (deferred
            // by a caller that has not waited yet) do.
            if o.buf.is_empty() {
                o.buf.extend_from_slice(&frame::TICK);
            }
            o.handoff = true;
        }
    }
    drop(o);
    c.close();
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Read;

    use super::*;

    /// A connection over a loopback socket pair, with no reader or writer thread: whatever the
    /// peer receives was sent by the thread that queued it. Returns it and the peer's end.
    fn pair(out_queue: usize) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (Conn::new(7, "peer@host", false, ours, out_queue), theirs)
    }

    fn bytes(c: &Conn, b: &[u8]) -> Result<(), Push> {
        c.push_with(false, |out| {
            out.extend_from_slice(b);
            Ok(())
        })
    }

    #[test]
    fn a_frame_queued_while_nobody_writes_is_sent_by_the_queuing_thread() {
        let (c, mut peer) = pair(16);
        assert!(bytes(&c, b"abc").is_ok());
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).unwrap(); // no writer thread exists: this thread sent it
        assert_eq!(&got, b"abc");
        let o = lock(&c.out);
        assert!(o.buf.is_empty() && !o.writing && !o.handoff);
    }

    #[test]
    fn deferred_frames_wait_for_the_flush_and_leave_in_order() {
        let (c, mut peer) = pair(16);
        for f in [&b"one,"[..], b"two,", b"three"] {
            assert!(c
                .push_with(true, |out| {
                    out.extend_from_slice(f);
                    Ok(())
                })
                .is_ok());
        }
        assert_eq!(lock(&c.out).buf, b"one,two,three", "queued, not sent");
        assert_eq!(lock(&c.out).frames, 3);
        c.flush();
        let mut got = [0u8; 13];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one,two,three");
        assert!(lock(&c.out).buf.is_empty());
    }

    #[test]
    fn an_encoding_error_queues_nothing() {
        let (c, _peer) = pair(16);
        let r = c.push_with(true, |out| {
            out.extend_from_slice(b"partial");
            Err(DistError::BadFrame("no".into()))
        });
        assert!(matches!(r, Err(Push::Encode(_))));
        let o = lock(&c.out);
        assert!(o.buf.is_empty());
        assert_eq!(o.frames, 0);
    }

    #[test]
    fn a_peer_that_does_not_read_hands_off_to_the_writer_then_fills_the_bound() {
        let (c, _peer) = pair(8);
        let chunk = vec![0x5a; 64 * 1024];
        let mut pushed = 0;
        // Never read: the socket fills (a few MiB at most), the rest is left to the writer
        // thread (absent here), then the outbox reaches its bound of 8 frames.
        let full = loop {
            match bytes(&c, &chunk) {
                Ok(()) => pushed += 1,
                Err(Push::Full) => break true,
                Err(Push::Encode(_)) => break false,
            }
            assert!(pushed < 100_000, "the bound was never reached");
        };
        assert!(full);
        let o = lock(&c.out);
        assert!(o.writing && o.handoff, "the writer thread owns the rest");
        assert_eq!(
            o.frames, 8,
            "the bound (the unsent rest put back first counts as one)"
        );
        drop(o);
        assert!(
            !c.closed.load(Ordering::SeqCst),
            "closing is the caller's decision"
        );
    }

    #[test]
    fn holds_frame_needs_the_whole_body() {
        assert!(!holds_frame(&[]));
        assert!(!holds_frame(&[0, 0, 0]));
        assert!(holds_frame(&[0, 0, 0, 0])); // a tick
        assert!(!holds_frame(&[0, 0, 0, 2, 112]));
        assert!(holds_frame(&[0, 0, 0, 2, 112, 131]));
        assert!(!holds_frame(&[0xff, 0xff, 0xff, 0xff, 1]));
    }
}
