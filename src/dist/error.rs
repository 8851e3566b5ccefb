//! The one error type of the distribution layer.

use crate::freq::FreqError;

/// What can go wrong on the distribution layer: names, epmd, connections, terms, remote calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// A cluster node could not serve its part: the store has no cluster layout, the node is
    /// not in it, a peer serves another configuration, or its shards could not open.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The node reported a failure of its own (its words).
    #[error("the node reported: {0}")]
    Remote(String),
    /// A node name that is not `name@host`.
    #[error("bad node name {0:?}: expected name@host")]
    BadNodeName(String),
    /// No cookie was given and none could be read from `~/.erlang.cookie`.
    #[error("no cookie: pass --cookie, set FREQALLOC_COOKIE, or create ~/.erlang.cookie")]
    NoCookie,
    /// epmd did not answer (and starting `epmd -daemon` did not help).
    #[error(
        "epmd at {addr}: {reason} (start one with `epmd -daemon`, from the erlang-base package)"
    )]
    Epmd {
        /// The address tried.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The name is already registered with epmd by a running node.
    #[error("the name {0:?} is already in use by another node on this host")]
    NameInUse(String),
    /// epmd knows no node of that name: it is down, or never started.
    #[error("node {0} is not running (epmd on its host does not know it)")]
    NodeNotRunning(String),
    /// The node could not be reached (its host, its epmd, or its port).
    #[error("node {node} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: String,
        /// What happened.
        reason: String,
    },
    /// The handshake failed (wrong cookie, refused, bad protocol).
    #[error("handshake with {node} failed: {reason}")]
    Handshake {
        /// The peer, as far as known.
        node: String,
        /// What happened (for a wrong cookie: "cookie mismatch").
        reason: String,
    },
    /// The connection to the node was lost while a call was pending, or is down.
    #[error("connection to node {0} lost")]
    NodeDown(String),
    /// The remote process or name does not exist (a monitor answered `noproc`).
    #[error("no process {name} on node {node}")]
    NoProc {
        /// The registered name.
        name: String,
        /// The node.
        node: String,
    },
    /// A call got no reply in time.
    #[error("call to {0} timed out")]
    Timeout(String),
    /// A term that could not be decoded or encoded.
    #[error("bad term: {0}")]
    BadTerm(String),
    /// A frame longer than the limit, or malformed framing.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A reply the protocol does not allow (the peer is not a freqalloc node, or a newer one).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// The peer's outbound queue is full: it stopped reading, and was disconnected.
    #[error("peer {0} stopped reading: disconnected")]
    Backlog(String),
    /// The local node is stopped.
    #[error("the local node is stopped")]
    Stopped,
    /// The allocator refused or failed the operation (the same typed errors as in-process).
    #[error(transparent)]
    Freq(#[from] FreqError),
    /// An I/O error on a socket or file.
    #[error("{context}: {}", crate::io_words::io_words(source))]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl DistError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DistError::Io {
            context: context.into(),
            source,
        }
    }
}
