//! The `frequency` service: the course's protocol (raw `{request, Pid, ...}` messages and
//! `gen_server:call`s) over a [`freq::Allocator`], on a [`Node`].
//!
//! Requests are handled by a few worker threads; each caller pid always goes to the same worker,
//! so one process's messages are handled in the order sent (Erlang's per-pair ordering) and its
//! monitor's `DOWN` after its last request. Several workers keep several calls in flight, which
//! lets the shards' group commit share one flush among them in `sync` durability.
//!
//! Architecture Invariant: a frequency allocated by a BEAM process is owned by its pid, stored
//! as the client name `pid:<node>:<id>.<serial>.<creation>`; the service monitors the pid and
//! releases what it held when the pid exits or its node disconnects (unless `keep_on_exit`).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use eetf::{Map, Pid, Term};

use super::error::DistError;
use super::node::{Delivery, Node, NodeHandle};
use super::term::{as_atom, as_text, as_tuple, as_u64, atom, binary, error, list, ok, tuple, uint};
use crate::freq::Durability;
use crate::freq::{Allocator, FreqError};

/// The registered name the service answers on.
pub const SERVICE_NAME: &str = "frequency";
/// The prefix of owner names that stand for a pid (refused by `allocate_as`).
pub const PID_OWNER_PREFIX: &str = "pid:";

/// How the service behaves.
#[derive(Clone, Default)]
pub struct ServiceOptions {
    /// Keep what a pid held when it exits (frequency2.erl's own semantics). Default: release.
    pub keep_on_exit: bool,
    /// Refuse `{request, Pid, stop}` with `{reply, {error, not_allowed}}`.
    pub no_remote_stop: bool,
    /// Worker threads. 0 (the default): none in `none`/`interval` durability (requests are
    /// answered on the connection's reader thread, the shortest path), 8 in `sync` (so that
    /// concurrent calls share a flush).
    pub workers: usize,
    /// Called once when a client asked the node to stop (and it was allowed).
    pub on_stop: Option<Arc<dyn Fn() + Send + Sync>>,
    /// A line `status` adds under the key `cluster` (a cluster node's control plane as it
    /// sees it: [`ClusterMember::control_summary_fn`](super::ClusterMember::control_summary_fn)).
    pub status_note: Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
}

impl std::fmt::Debug for ServiceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceOptions")
            .field("keep_on_exit", &self.keep_on_exit)
            .field("no_remote_stop", &self.no_remote_stop)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// The owner name of a pid.
pub fn pid_owner(p: &Pid) -> String {
    format!(
        "{PID_OWNER_PREFIX}{}:{}.{}.{}",
        p.node.name, p.id, p.serial, p.creation
    )
}

/// The pid an owner name stands for, if it is one.
pub fn parse_pid_owner(owner: &str) -> Option<Pid> {
    let rest = owner.strip_prefix(PID_OWNER_PREFIX)?;
    let (node, nums) = rest.rsplit_once(':')?;
    let mut it = nums.split('.');
    let id = it.next()?.parse().ok()?;
    let serial = it.next()?.parse().ok()?;
    let creation = it.next()?.parse().ok()?;
    if it.next().is_some() || !node.contains('@') {
        return None;
    }
    Some(Pid::new(node.to_string(), id, serial, creation))
}

/// The atom a typed error is sent as.
pub fn error_atom(e: &FreqError) -> &'static str {
    match e {
        FreqError::NoFrequency { .. } => "no_frequency",
        FreqError::NotAllocated(_) => "not_allocated",
        FreqError::NotOwner { .. } => "not_owner",
        FreqError::UnknownFrequency(_) => "unknown_frequency",
        FreqError::LimitReached { .. } => "limit_reached",
        FreqError::BadClientName(_) | FreqError::ClientInUse(_) => "bad_client",
        FreqError::ShardFailed { .. } => "shard_failed",
        FreqError::ShardUnreachable { .. } => "shard_unreachable",
        FreqError::Stopped => "stopped",
        _ => "internal",
    }
}

/// The error reply for `e`: the course's `{error, Atom}`, and for a failure the user must read
/// the reason of (a shard failed or unreachable, anything else), `{error, Atom, Shard, Text}` /
/// `{error, failed, Text}` (see `shard_wire`).
pub(crate) fn error_reply(e: &FreqError) -> Term {
    match error_atom(e) {
        "shard_failed" | "shard_unreachable" | "internal" => super::shard_wire::error_term(e),
        a => error(a),
    }
}

enum Job {
    Msg { msg: Term },
    Down { object: Term },
}

struct Shared {
    alloc: Arc<Allocator>,
    node_pid: Pid,
    options: ServiceOptions,
    /// Pids we monitor (owners of frequencies).
    monitored: Mutex<HashSet<Pid>>,
}

/// A running `frequency` service. Dropping it stops its workers (join) and unregisters the name;
/// the [`Node`] it runs on must outlive it.
pub struct FrequencyService {
    workers: Vec<JoinHandle<()>>,
    senders: Arc<Mutex<Vec<Sender<Job>>>>,
    pid: Pid,
}

impl std::fmt::Debug for FrequencyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrequencyService")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    t.hash(&mut h);
    h.finish()
}

/// Which worker a message goes to. Requests naming a client (`allocate_as`, ...) go by that
/// name, so one name's requests stay in order while one connection's many names spread over
/// the workers; everything else goes by the caller pid (Erlang's per-sender order, and a pid's
/// `DOWN` after its last request).
fn route_key(from: Option<&Pid>, msg: &Term) -> u64 {
    if let Some(el) = as_tuple(msg) {
        if el.len() == 3 && as_atom(&el[0]) == Some("$gen_call") {
            if let Some(req) = as_tuple(&el[2]) {
                if req.len() >= 2
                    && req
                        .first()
                        .and_then(as_atom)
                        .is_some_and(|a| a.ends_with("_as"))
                {
                    return hash_of(&req[1]);
                }
            }
        }
    }
    match from.cloned().or_else(|| caller_of(msg)) {
        Some(p) => hash_of(&p),
        None => 0,
    }
}

impl FrequencyService {
    /// Registers `frequency` on `node` and starts serving `alloc`. Before it answers anything it
    /// monitors again every pid that holds frequencies (after a restart); those that are gone
    /// have their frequencies released as their `DOWN`s arrive.
    pub fn start(
        node: &Node,
        alloc: Arc<Allocator>,
        options: ServiceOptions,
    ) -> Result<Self, DistError> {
        let n = match options.workers {
            0 if matches!(alloc.config().durability, Durability::Sync) => 8,
            w => w,
        };
        let senders: Arc<Mutex<Vec<Sender<Job>>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let mut receivers: Vec<Receiver<Job>> = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel();
            senders.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
            receivers.push(rx);
        }
        // The shared state needs the pid, the pid needs the handler: the handler reads the state
        // from a cell filled right after.
        let cell: Arc<std::sync::OnceLock<Arc<Shared>>> = Arc::new(std::sync::OnceLock::new());
        let (s2, c2, inline) = (senders.clone(), cell.clone(), n == 0);
        let handle = NodeHandle::clone(node);
        let handler = Arc::new(move |d: Delivery| {
            if inline {
                // Answered here, on the connection's reader: no routing, no hop.
                let job = match d {
                    Delivery::Message { msg, .. } => Job::Msg { msg },
                    Delivery::Down { object, .. } => Job::Down { object },
                    Delivery::NodeDown(_) => return,
                };
                if let Some(sh) = c2.get() {
                    sh.handle(&handle, job);
                }
                return;
            }
            let (key, job) = match d {
                Delivery::Message { from, msg } => {
                    let key = route_key(from.as_ref(), &msg);
                    (key, Job::Msg { msg })
                }
                Delivery::Down { object, .. } => match &object {
                    Term::Pid(p) => (hash_of(p), Job::Down { object }),
                    _ => return,
                },
                Delivery::NodeDown(_) => return,
            };
            let senders = s2.lock().unwrap_or_else(|e| e.into_inner());
            if senders.is_empty() {
                return;
            }
            let w = (key % senders.len() as u64) as usize;
            let _ = senders[w].send(job);
        });
        let pid = node.spawn_process(handler);
        let shared = Arc::new(Shared {
            alloc,
            node_pid: pid.clone(),
            options,
            monitored: Mutex::new(HashSet::new()),
        });
        let _ = cell.set(shared.clone());
        let mut workers = Vec::with_capacity(n);
        for (i, rx) in receivers.into_iter().enumerate() {
            let (sh, nd) = (shared.clone(), NodeHandle::clone(node));
            let h = std::thread::Builder::new()
                .name(format!("freq-dist-worker-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        sh.handle(&nd, job);
                    }
                })
                .map_err(|e| DistError::io("spawning a worker", e))?;
            workers.push(h);
        }
        if !shared.options.keep_on_exit {
            shared.remonitor(node);
        }
        node.register_name(SERVICE_NAME, &pid);
        Ok(FrequencyService {
            workers,
            senders,
            pid,
        })
    }

    /// The service's pid.
    pub fn pid(&self) -> &Pid {
        &self.pid
    }

    /// Stops: unregisters the name (monitors of it fire), finishes queued requests, joins.
    pub fn stop(&mut self, node: &Node) {
        node.exit_process(&self.pid, "shutdown");
        self.join_workers();
    }

    /// Closes the workers' queues (they finish what is queued, then end) and joins them.
    fn join_workers(&mut self) {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for FrequencyService {
    fn drop(&mut self) {
        self.join_workers();
    }
}

/// The caller pid of a raw request or a gen_server call, for routing.
fn caller_of(msg: &Term) -> Option<Pid> {
    let el = as_tuple(msg)?;
    match (el.first().and_then(as_atom), el.get(1)) {
        (Some("request"), Some(Term::Pid(p))) => Some(p.clone()),
        (Some("$gen_call"), Some(from)) => match as_tuple(from)?.first()? {
            Term::Pid(p) => Some(p.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn lease(t: &Term) -> Option<Duration> {
    as_u64(t).filter(|&ms| ms >= 1).map(Duration::from_millis)
}

fn freqs(v: Vec<u64>) -> Term {
    list(v.into_iter().map(uint).collect())
}

impl Shared {
    fn remonitor(&self, node: &NodeHandle) {
        let mut pids: Vec<Pid> = self
            .alloc
            .status()
            .allocations
            .iter()
            .filter_map(|(_, a)| parse_pid_owner(&a.owner))
            .collect();
        pids.sort_by(|a, b| (&a.node.name, a.id, a.serial).cmp(&(&b.node.name, b.id, b.serial)));
        pids.dedup();
        for p in pids {
            self.ensure_monitored(node, &p);
        }
    }

    fn ensure_monitored(&self, node: &NodeHandle, p: &Pid) {
        if self.options.keep_on_exit {
            return;
        }
        // Marked before the monitor is made: a DOWN delivered at once (unreachable node) is
        // queued to this pid's worker and handled after this mark.
        {
            let mut m = self.monitored.lock().unwrap_or_else(|e| e.into_inner());
            if m.contains(p) {
                return; // the common case: no clone of the pid
            }
            m.insert(p.clone());
        }
        node.monitor(&self.node_pid, p);
    }

    fn handle(&self, node: &NodeHandle, job: Job) {
        match job {
            Job::Down {
                object: Term::Pid(p),
            } => {
                self.monitored
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p);
                if !self.options.keep_on_exit {
                    let _ = self.alloc.release_all(&pid_owner(&p));
                }
            }
            Job::Down { .. } => {}
            Job::Msg { msg, .. } => self.handle_msg(node, &msg),
        }
    }

    fn handle_msg(&self, node: &NodeHandle, msg: &Term) {
        let Some(el) = as_tuple(msg) else { return };
        match (el.len(), el.first().and_then(as_atom)) {
            (3, Some("$gen_call")) => {
                let Some(from) = as_tuple(&el[1]) else { return };
                let (Some(Term::Pid(pid)), Some(tag)) = (from.first(), from.get(1)) else {
                    return;
                };
                let reply = self.call(node, pid, &el[2]);
                // OTP 25 tags are `[alias|Ref]`: echoed as they came, sent to the pid.
                let _ = node.send_pair_noconnect(pid, tag, &reply);
            }
            (3, Some("request")) => {
                let Term::Pid(pid) = &el[1] else { return };
                let reply = match as_atom(&el[2]) {
                    Some("stop") => {
                        if self.options.no_remote_stop {
                            error("not_allowed")
                        } else {
                            let _ = node
                                .send_noconnect(pid, &tuple(vec![atom("reply"), atom("stopped")]));
                            if let Some(f) = &self.options.on_stop {
                                f();
                            }
                            return;
                        }
                    }
                    _ => match as_tuple(&el[2]) {
                        Some([d, _]) if as_atom(d) == Some("deallocate") => {
                            self.call(node, pid, &el[2])
                        }
                        _ if as_atom(&el[2]) == Some("allocate") => self.call(node, pid, &el[2]),
                        _ => error("badarg"),
                    },
                };
                let _ = node.send_pair_noconnect(pid, &atom("reply"), &reply);
            }
            _ => {}
        }
    }

    fn client_name(t: &Term) -> Result<String, Term> {
        match as_text(t) {
            Some(c) if c.starts_with(PID_OWNER_PREFIX) => Err(error("bad_client")),
            Some(c) => Ok(c),
            None => Err(error("badarg")),
        }
    }

    fn result<T>(r: Result<T, FreqError>, f: impl FnOnce(T) -> Term) -> Term {
        match r {
            Ok(v) => f(v),
            Err(e) => error_reply(&e),
        }
    }

    fn alloc_pid(&self, node: &NodeHandle, pid: &Pid, lease: Option<Duration>) -> Term {
        self.ensure_monitored(node, pid);
        let owner = pid_owner(pid);
        let r = match lease {
            Some(l) => self.alloc.allocate_with_lease(&owner, l),
            None => self.alloc.allocate(&owner),
        };
        Self::result(r, |f| ok(uint(f)))
    }

    fn alloc_as(&self, client: &Term, lease: Option<Duration>) -> Term {
        match Self::client_name(client) {
            Ok(c) => Self::result(
                match lease {
                    Some(l) => self.alloc.allocate_with_lease(&c, l),
                    None => self.alloc.allocate(&c),
                },
                |f| ok(uint(f)),
            ),
            Err(t) => t,
        }
    }

    fn dealloc(&self, owner: &str, f: &Term) -> Term {
        match as_u64(f) {
            Some(f) => Self::result(self.alloc.deallocate(f, owner), |()| atom("ok")),
            None => error("badarg"),
        }
    }

    /// One gen_server request → its reply.
    fn call(&self, node: &NodeHandle, pid: &Pid, req: &Term) -> Term {
        if let Some(a) = as_atom(req) {
            return match a {
                "allocate" => self.alloc_pid(node, pid, None),
                "release" => {
                    Self::result(self.alloc.release_all(&pid_owner(pid)), |v| ok(freqs(v)))
                }
                "held" => Self::result(self.alloc.held_by(&pid_owner(pid)), |mut v| {
                    v.sort_unstable();
                    ok(freqs(v))
                }),
                "status" => self.status(),
                "check" => match self.alloc.check() {
                    Ok(v) if v.is_empty() => atom("ok"),
                    Ok(v) => tuple(vec![
                        atom("error"),
                        tuple(vec![
                            atom("violations"),
                            list(v.iter().map(|s| binary(s.as_bytes())).collect()),
                        ]),
                    ]),
                    Err(e) => error_reply(&e),
                },
                _ => error("badarg"),
            };
        }
        let Some(el) = as_tuple(req) else {
            return error("badarg");
        };
        match (el.first().and_then(as_atom), el.len()) {
            (Some("allocate"), 2) => match lease(&el[1]) {
                Some(l) => self.alloc_pid(node, pid, Some(l)),
                None => error("badarg"),
            },
            (Some("deallocate"), 2) => self.dealloc(&pid_owner(pid), &el[1]),
            (Some("allocate_as"), 2) => self.alloc_as(&el[1], None),
            (Some("allocate_as"), 3) => match lease(&el[2]) {
                Some(l) => self.alloc_as(&el[1], Some(l)),
                None => error("badarg"),
            },
            (Some("deallocate_as"), 3) => match Self::client_name(&el[1]) {
                Ok(c) => self.dealloc(&c, &el[2]),
                Err(t) => t,
            },
            (Some("release_as"), 2) => match Self::client_name(&el[1]) {
                Ok(c) => Self::result(self.alloc.release_all(&c), |v| ok(freqs(v))),
                Err(t) => t,
            },
            (Some("held_as"), 2) => match Self::client_name(&el[1]) {
                Ok(c) => Self::result(self.alloc.held_by(&c), |mut v| {
                    v.sort_unstable();
                    ok(freqs(v))
                }),
                Err(t) => t,
            },
            _ => error("badarg"),
        }
    }

    fn status(&self) -> Term {
        let s = self.alloc.status();
        let free: u64 = s.shards.iter().map(|x| x.free).sum();
        let allocated: u64 = s.shards.iter().map(|x| x.allocated).sum();
        let shards = s
            .shards
            .iter()
            .map(|x| {
                let mut entries = vec![
                    ("shard", uint(x.shard as u64)),
                    ("free", uint(x.free)),
                    ("allocated", uint(x.allocated)),
                    (
                        "ranges",
                        list(
                            x.ranges
                                .iter()
                                .map(|r| tuple(vec![uint(r.first), uint(r.last)]))
                                .collect(),
                        ),
                    ),
                    ("alive", atom(if x.alive { "true" } else { "false" })),
                ];
                if let Some(n) = &x.node {
                    entries.push(("node", binary(n.as_bytes())));
                }
                // With replicas on other nodes: the epoch, the backup, whether it is in sync and
                // how far behind it is.
                if let Some(e) = x.epoch {
                    entries.push(("epoch", uint(e)));
                    entries.push(("in_sync", atom(if x.in_sync { "true" } else { "false" })));
                    if let Some(b) = x
                        .replicas
                        .iter()
                        .find(|r| r.role == crate::freq::Role::Backup)
                    {
                        if let Some(n) = &b.node {
                            entries.push(("backup", binary(n.as_bytes())));
                        }
                        entries.push(("lag", uint(b.lag)));
                    }
                }
                map(entries)
            })
            .collect();
        let mut entries = vec![
            ("pool", uint(s.pool_size)),
            ("free", uint(free)),
            ("allocated", uint(allocated)),
            ("shards", list(shards)),
            // How many client pids the node monitors (0 under --keep-on-exit): what can still
            // release frequencies when their holder exits.
            (
                "monitors",
                uint(
                    self.monitored
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .len() as u64,
                ),
            ),
            ("strategy", binary(s.strategy.name().as_bytes())),
            ("durability", binary(s.durability.to_string().as_bytes())),
        ];
        if let Some(note) = self.options.status_note.as_ref().and_then(|f| f()) {
            entries.push(("cluster", binary(note.as_bytes())));
        }
        ok(map(entries))
    }
}

fn map(pairs: Vec<(&str, Term)>) -> Term {
    Term::from(Map::from(
        pairs
            .into_iter()
            .map(|(k, v)| (atom(k), v))
            .collect::<HashMap<_, _>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_owner_round_trips_and_rejects_others() {
        let p = Pid::new("me@host", 85, 0, 1_700_000_000);
        let o = pid_owner(&p);
        assert_eq!(o, "pid:me@host:85.0.1700000000");
        assert_eq!(parse_pid_owner(&o), Some(p));
        assert_eq!(parse_pid_owner("radio-7"), None);
        assert_eq!(parse_pid_owner("pid:nohost:1.2.3"), None);
        assert_eq!(parse_pid_owner("pid:a@b:1.2"), None);
        assert_eq!(parse_pid_owner("pid:a@b:1.2.3.4"), None);
        assert_eq!(parse_pid_owner("pid:a@b:x.2.3"), None);
    }

    #[test]
    fn callers_are_found_for_routing() {
        let p = Pid::new("me@host", 1, 0, 1);
        let raw = tuple(vec![
            atom("request"),
            Term::from(p.clone()),
            atom("allocate"),
        ]);
        assert_eq!(caller_of(&raw), Some(p.clone()));
        let call = tuple(vec![
            atom("$gen_call"),
            tuple(vec![Term::from(p.clone()), atom("t")]),
            atom("held"),
        ]);
        assert_eq!(caller_of(&call), Some(p));
        assert_eq!(caller_of(&atom("x")), None);
    }

    #[test]
    fn error_atoms() {
        assert_eq!(
            error_atom(&FreqError::NoFrequency { pool_size: 3 }),
            "no_frequency"
        );
        assert_eq!(error_atom(&FreqError::NotAllocated(1)), "not_allocated");
        assert_eq!(
            error_atom(&FreqError::UnknownFrequency(1)),
            "unknown_frequency"
        );
        assert_eq!(
            error_atom(&FreqError::BadClientName(String::new())),
            "bad_client"
        );
    }
}
