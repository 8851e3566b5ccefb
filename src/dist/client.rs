//! [`RemoteAllocator`]: the operations of [`crate::freq::Allocator`] on a `freqalloc node`, over
//! distribution, as a hidden node of its own.
//!
//! Calls are `gen_server:call`s to `{frequency, Node}` with `allocate_as`-style requests (the
//! owner is the client name you pass, as in-process). Several calls may be in flight on the one
//! connection ([`RemoteAllocator::call_async`], or from several threads); each has its own
//! timeout; a lost connection fails every pending call with [`DistError::NodeDown`] at once and
//! the next call dials again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eetf::{Pid, Term};

use super::error::DistError;
use super::node::{ref_number, split_name, Delivery, Node, NodeConfig, NodeHandle};
use super::service::SERVICE_NAME;
use super::term::{as_atom, as_list, as_tuple, as_u64, atom, binary, tuple, uint};
use crate::freq::FreqError;

/// How a [`RemoteAllocator`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The cookie.
    pub cookie: String,
    /// How long one call waits for its reply. Default: 5 s (OTP's default call timeout).
    pub call_timeout: Duration,
    /// Bound of a connection attempt. Default: 5 s.
    pub connect_timeout: Duration,
    /// This client's own node name; default `freqalloc-client-<pid>-<n>@<the server's host>`.
    pub name: Option<String>,
    /// epmd's port (default: `ERL_EPMD_PORT`, else 4369).
    pub epmd_port: u16,
}

impl ClientOptions {
    /// Defaults with `cookie`.
    pub fn new(cookie: &str) -> Self {
        ClientOptions {
            cookie: cookie.to_string(),
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            name: None,
            epmd_port: super::epmd::epmd_port(),
        }
    }
}

/// A pool's state as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Frequencies in the pool.
    pub pool: u64,
    /// Free.
    pub free: u64,
    /// Allocated.
    pub allocated: u64,
    /// Per shard, in shard order.
    pub shards: Vec<RemoteShard>,
    /// The routing strategy's name.
    pub strategy: String,
    /// The durability, as `freqalloc init` spells it.
    pub durability: String,
    /// In a cluster: the node's view of the control plane, one line.
    pub cluster: Option<String>,
}

/// One shard's line in a [`RemoteStatus`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteShard {
    /// The shard's index.
    pub shard: u64,
    /// Free frequencies.
    pub free: u64,
    /// Allocated frequencies.
    pub allocated: u64,
    /// The ranges it owns, `(first, last)` inclusive.
    pub ranges: Vec<(u64, u64)>,
    /// In a cluster: the node serving the shard (`None` otherwise).
    pub node: Option<String>,
    /// Whether the shard serves (in a cluster: whether its node was reachable at its last call;
    /// its counts are then the last it reported).
    pub alive: bool,
    /// In a cluster with replicas: the shard's epoch (raised by every failover).
    pub epoch: Option<u64>,
    /// In a cluster with replicas: the node holding its backup.
    pub backup: Option<String>,
    /// In a cluster with replicas: whether the backup is in sync (may take over).
    pub in_sync: bool,
    /// In a cluster with replicas: how many changes the backup is behind, as last known.
    pub lag: Option<u64>,
}

impl RemoteStatus {
    /// The shard owning `f`, if any.
    pub fn owner_of(&self, f: u64) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| s.ranges.iter().any(|&(a, b)| a <= f && f <= b))
    }
}

type Reply = Result<Term, DistError>;

struct State {
    pending: Mutex<HashMap<u64, SyncSender<Reply>>>,
    server: String,
    /// Set when the connection was lost: the next call re-establishes the name monitor.
    lost: AtomicBool,
}

impl State {
    fn fail_all(&self, e: impl Fn() -> DistError) {
        let drained: Vec<SyncSender<Reply>> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in drained {
            let _ = s.try_send(Err(e()));
        }
    }
}

fn ref_key(t: &Term) -> Option<u64> {
    match t {
        Term::Reference(r) => ref_number(r),
        _ => None,
    }
}

/// A client of a `freqalloc node`'s `frequency` service.
pub struct RemoteAllocator {
    node: Node,
    me: Pid,
    state: Arc<State>,
    options: ClientOptions,
    reconnect: Mutex<()>,
    pool_size: AtomicU64,
}

impl std::fmt::Debug for RemoteAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAllocator")
            .field("server", &self.state.server)
            .field("me", &self.me)
            .finish()
    }
}

/// A call in flight; [`PendingCall::wait`] gives its reply.
///
/// Its request is queued by [`RemoteAllocator::call_async`] and sent, with every other request
/// queued since, at the latest when this thread (or another) must wait for a reply not yet
/// here, or drops a call whose reply has not come: a pipeline of calls shares one write.
pub struct PendingCall {
    node: NodeHandle,
    /// The reply came (so the request was sent: nothing to flush on drop).
    answered: bool,
    rx: Receiver<Reply>,
    key: u64,
    state: Arc<State>,
    timeout: Duration,
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for PendingCall {
    /// A call dropped before its reply came still has its request sent.
    fn drop(&mut self) {
        if !self.answered {
            self.node.flush(&self.state.server);
        }
    }
}

impl PendingCall {
    /// Waits for the reply, at most the call timeout.
    pub fn wait(mut self) -> Result<Term, DistError> {
        // A reply already here: no write now, so the requests queued meanwhile (a pipeline's
        // next calls) go out together when this thread must wait.
        let r = match self.rx.try_recv() {
            Ok(r) => Ok(r),
            Err(_) => {
                // Our request may still be queued (deferred by `call_async`): out it goes.
                self.node.flush(&self.state.server);
                self.rx.recv_timeout(self.timeout)
            }
        };
        match r {
            Ok(r) => {
                self.answered = true;
                r
            }
            Err(RecvTimeoutError::Timeout) => {
                self.state
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.key);
                Err(DistError::Timeout(self.state.server.clone()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(DistError::NodeDown(self.state.server.clone()))
            }
        }
    }
}

static CLIENTS: AtomicU64 = AtomicU64::new(0);

impl RemoteAllocator {
    /// Connects to the node `server` (`name@host`) with `cookie` and default options.
    pub fn connect(server: &str, cookie: &str) -> Result<Self, DistError> {
        Self::connect_with(server, ClientOptions::new(cookie))
    }

    /// Connects with `options`. Fails with [`DistError::NodeNotRunning`] / `Unreachable` /
    /// `Handshake` when the node cannot be reached, and [`DistError::NoProc`] when it has no
    /// `frequency` service.
    pub fn connect_with(server: &str, options: ClientOptions) -> Result<Self, DistError> {
        let (_, host) = split_name(server)?;
        let name = match &options.name {
            Some(n) => n.clone(),
            None => format!(
                "freqalloc-client-{}-{}@{host}",
                std::process::id(),
                CLIENTS.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let mut config = NodeConfig::new(&name, &options.cookie, false);
        config.connect_timeout = options.connect_timeout;
        config.epmd_port = options.epmd_port;
        let node = Node::start(config)?;
        let state = Arc::new(State {
            pending: Mutex::new(HashMap::new()),
            server: server.to_string(),
            lost: AtomicBool::new(false),
        });
        let st = state.clone();
        let handler = Arc::new(move |d: Delivery| match d {
            Delivery::Message { msg, .. } => {
                let Some(el) = as_tuple(&msg) else { return };
                if el.len() != 2 {
                    return;
                }
                let Some(key) = ref_key(&el[0]) else { return };
                let tx = st
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                if let Some(tx) = tx {
                    let _ = tx.try_send(Ok(el[1].clone()));
                }
            }
            Delivery::Down { reason, .. } => {
                st.lost.store(true, Ordering::SeqCst);
                if as_atom(&reason) == Some("noproc") {
                    let server = st.server.clone();
                    st.fail_all(|| DistError::NoProc {
                        name: SERVICE_NAME.into(),
                        node: server.clone(),
                    });
                } else {
                    let server = st.server.clone();
                    st.fail_all(|| DistError::NodeDown(server.clone()));
                }
            }
            Delivery::NodeDown(n) => {
                if n == st.server {
                    st.lost.store(true, Ordering::SeqCst);
                    let server = st.server.clone();
                    st.fail_all(|| DistError::NodeDown(server.clone()));
                }
            }
        });
        let me = node.spawn_process(handler);
        let client = RemoteAllocator {
            node,
            me,
            state,
            options,
            reconnect: Mutex::new(()),
            pool_size: AtomicU64::new(0),
        };
        client.establish()?;
        Ok(client)
    }

    /// Connects and monitors `{frequency, Node}` (so a missing service or a lost link fails the
    /// pending calls at once), then reads the pool size (for [`FreqError::NoFrequency`]).
    fn establish(&self) -> Result<(), DistError> {
        self.node.connect(&self.state.server)?;
        self.state.lost.store(false, Ordering::SeqCst);
        self.node
            .monitor_name(&self.me, SERVICE_NAME, &self.state.server);
        let s = self.status()?;
        self.pool_size.store(s.pool, Ordering::Relaxed);
        Ok(())
    }

    /// The server's name.
    pub fn server(&self) -> &str {
        &self.state.server
    }

    /// Sends one `gen_server:call` request and returns at once; [`PendingCall::wait`] for the
    /// reply. Many may be in flight.
    pub fn call_async(&self, request: &Term) -> Result<PendingCall, DistError> {
        if self.state.lost.load(Ordering::SeqCst) {
            let _g = self.reconnect.lock().unwrap_or_else(|p| p.into_inner());
            if self.state.lost.load(Ordering::SeqCst) {
                self.node.connect(&self.state.server)?;
                self.state.lost.store(false, Ordering::SeqCst);
                self.node
                    .monitor_name(&self.me, SERVICE_NAME, &self.state.server);
            }
        }
        let r = self.node.make_ref();
        let key = ref_number(&r).unwrap_or(0);
        let (tx, rx) = mpsc::sync_channel(1);
        self.state
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, tx);
        // Encoded in place in the outbox, sent at the next wait that must block.
        let sent = self.node.reg_send_call_deferred(
            &self.me,
            SERVICE_NAME,
            &self.state.server,
            &r,
            request,
        );
        if let Err(e) = sent {
            self.state
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            self.state.lost.store(true, Ordering::SeqCst);
            return Err(e);
        }
        Ok(PendingCall {
            node: NodeHandle::clone(&self.node),
            answered: false,
            rx,
            key,
            state: self.state.clone(),
            timeout: self.options.call_timeout,
        })
    }

    /// One call, waited for.
    pub fn call(&self, request: &Term) -> Result<Term, DistError> {
        self.call_async(request)?.wait()
    }

    /// `{allocate_as, Client}`: a frequency for `client`.
    pub fn allocate(&self, client: &str) -> Result<u64, DistError> {
        self.decode_alloc(client, self.call(&Self::allocate_request(client, None))?)
    }

    /// `{allocate_as, Client, Ms}`: a frequency for `client` with a lease.
    pub fn allocate_with_lease(&self, client: &str, lease: Duration) -> Result<u64, DistError> {
        self.decode_alloc(
            client,
            self.call(&Self::allocate_request(client, Some(lease)))?,
        )
    }

    /// The request term of an allocation (for [`RemoteAllocator::call_async`]).
    pub fn allocate_request(client: &str, lease: Option<Duration>) -> Term {
        match lease {
            None => tuple(vec![atom("allocate_as"), binary(client.as_bytes())]),
            Some(l) => tuple(vec![
                atom("allocate_as"),
                binary(client.as_bytes()),
                uint(l.as_millis().max(1) as u64),
            ]),
        }
    }

    /// The request term of a deallocation.
    pub fn deallocate_request(freq: u64, client: &str) -> Term {
        tuple(vec![
            atom("deallocate_as"),
            binary(client.as_bytes()),
            uint(freq),
        ])
    }

    /// The frequency in an allocation reply, or its typed error.
    pub fn decode_alloc(&self, client: &str, reply: Term) -> Result<u64, DistError> {
        match as_tuple(&reply) {
            Some([k, f]) if as_atom(k) == Some("ok") => {
                as_u64(f).ok_or_else(|| DistError::UnexpectedReply(format!("{reply}")))
            }
            _ => Err(self.refusal(&reply, client, None)),
        }
    }

    /// `{deallocate_as, Client, F}`.
    pub fn deallocate(&self, freq: u64, client: &str) -> Result<(), DistError> {
        let reply = self.call(&Self::deallocate_request(freq, client))?;
        self.decode_ok(client, Some(freq), reply)
    }

    /// `ok` or the typed error of a deallocation reply.
    pub fn decode_ok(&self, client: &str, freq: Option<u64>, reply: Term) -> Result<(), DistError> {
        if as_atom(&reply) == Some("ok") {
            Ok(())
        } else {
            Err(self.refusal(&reply, client, freq))
        }
    }

    fn freq_list(&self, client: &str, reply: Term) -> Result<Vec<u64>, DistError> {
        match as_tuple(&reply) {
            Some([k, l]) if as_atom(k) == Some("ok") => as_list(l)
                .and_then(|v| v.iter().map(as_u64).collect::<Option<Vec<u64>>>())
                .ok_or_else(|| DistError::UnexpectedReply(format!("{reply}"))),
            _ => Err(self.refusal(&reply, client, None)),
        }
    }

    /// `{release_as, Client}`: releases everything `client` holds; returns it.
    pub fn release_all(&self, client: &str) -> Result<Vec<u64>, DistError> {
        let reply = self.call(&tuple(vec![atom("release_as"), binary(client.as_bytes())]))?;
        self.freq_list(client, reply)
    }

    /// `{held_as, Client}`: what `client` holds, sorted.
    pub fn held_by(&self, client: &str) -> Result<Vec<u64>, DistError> {
        let reply = self.call(&tuple(vec![atom("held_as"), binary(client.as_bytes())]))?;
        self.freq_list(client, reply)
    }

    /// `status`.
    pub fn status(&self) -> Result<RemoteStatus, DistError> {
        let reply = self.call(&atom("status"))?;
        let bad = || DistError::UnexpectedReply(format!("{reply}"));
        let m = match as_tuple(&reply) {
            Some([k, Term::Map(m)]) if as_atom(k) == Some("ok") => m,
            _ => return Err(bad()),
        };
        let get = |m: &eetf::Map, k: &str| m.map.get(&atom(k)).and_then(as_u64);
        let mut shards = Vec::new();
        for s in m
            .map
            .get(&atom("shards"))
            .and_then(as_list)
            .ok_or_else(bad)?
        {
            let Term::Map(sm) = &s else { return Err(bad()) };
            let mut ranges = Vec::new();
            for r in sm
                .map
                .get(&atom("ranges"))
                .and_then(as_list)
                .unwrap_or_default()
            {
                match as_tuple(&r) {
                    Some([a, b]) => {
                        ranges.push((as_u64(a).ok_or_else(bad)?, as_u64(b).ok_or_else(bad)?))
                    }
                    _ => return Err(bad()),
                }
            }
            shards.push(RemoteShard {
                shard: get(sm, "shard").ok_or_else(bad)?,
                free: get(sm, "free").ok_or_else(bad)?,
                allocated: get(sm, "allocated").ok_or_else(bad)?,
                ranges,
                node: sm.map.get(&atom("node")).and_then(super::term::as_text),
                // Nodes before clusters did not say: their shards served.
                alive: sm.map.get(&atom("alive")).and_then(as_atom) != Some("false"),
                epoch: get(sm, "epoch"),
                backup: sm.map.get(&atom("backup")).and_then(super::term::as_text),
                in_sync: sm.map.get(&atom("in_sync")).and_then(as_atom) == Some("true"),
                lag: get(sm, "lag"),
            });
        }
        shards.sort_unstable();
        let text = |k: &str| {
            m.map
                .get(&atom(k))
                .and_then(super::term::as_text)
                .unwrap_or_default()
        };
        Ok(RemoteStatus {
            pool: get(m, "pool").ok_or_else(bad)?,
            free: get(m, "free").ok_or_else(bad)?,
            allocated: get(m, "allocated").ok_or_else(bad)?,
            shards,
            strategy: text("strategy"),
            durability: text("durability"),
            cluster: m.map.get(&atom("cluster")).and_then(super::term::as_text),
        })
    }

    /// `check`: the invariant violations found (empty when consistent).
    pub fn check(&self) -> Result<Vec<String>, DistError> {
        let reply = self.call(&atom("check"))?;
        if as_atom(&reply) == Some("ok") {
            return Ok(Vec::new());
        }
        if let Some([e, v]) = as_tuple(&reply) {
            if as_atom(e) == Some("error") {
                if let Some([k, l]) = as_tuple(v) {
                    if as_atom(k) == Some("violations") {
                        if let Some(items) = as_list(l) {
                            return Ok(items.iter().filter_map(super::term::as_text).collect());
                        }
                    }
                }
            }
        }
        Err(self.refusal(&reply, "", None))
    }

    /// Maps `{error, Atom}` to the in-process error. Fields the wire does not carry are filled
    /// from what the call knows (the client, the frequency, the pool size from `status`); an
    /// owner or a limit not sent is left empty / 0.
    fn refusal(&self, reply: &Term, client: &str, freq: Option<u64>) -> DistError {
        // A failure with its reason: `{error, shard_failed | shard_unreachable, Shard, Text}`,
        // `{error, failed, Text}`.
        if let Some(el) = as_tuple(reply).filter(|el| el.len() > 2) {
            if as_atom(&el[1]) == Some("failed") {
                if let Some(text) = super::term::as_text(&el[2]) {
                    return DistError::Remote(text);
                }
            }
            if let Some(e) = super::shard_wire::parse_error(reply, 0) {
                return DistError::Freq(e);
            }
        }
        let reason = match as_tuple(reply) {
            Some([e, r]) if as_atom(e) == Some("error") => as_atom(r).map(str::to_string),
            _ => None,
        };
        let f = freq.unwrap_or(0);
        let fe = match reason.as_deref() {
            Some("no_frequency") => FreqError::NoFrequency {
                pool_size: self.pool_size.load(Ordering::Relaxed),
            },
            Some("not_allocated") => FreqError::NotAllocated(f),
            Some("unknown_frequency") => FreqError::UnknownFrequency(f),
            Some("not_owner") => FreqError::NotOwner {
                freq: f,
                owner: String::new(),
                client: client.to_string(),
            },
            Some("limit_reached") => FreqError::LimitReached {
                client: client.to_string(),
                limit: 0,
            },
            Some("bad_client") => FreqError::BadClientName(client.to_string()),
            Some("shard_failed") => FreqError::ShardFailed {
                shard: 0,
                reason: "reported by the node".into(),
            },
            Some("stopped") => FreqError::Stopped,
            _ => return DistError::UnexpectedReply(format!("{reply}")),
        };
        DistError::Freq(fe)
    }
}
