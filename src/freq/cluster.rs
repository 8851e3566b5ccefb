//! The cluster layout: which freqalloc node serves which shards. Pure data, no threads, no I/O.
//!
//! A store created with `freqalloc init --nodes a@localhost,b@localhost,c@localhost` records the
//! layout in its configuration ([`StoreConfig::cluster`](super::StoreConfig::cluster)); every
//! node keeps the whole layout in its own data directory, serves the shards placed on it, and
//! reaches the others through their nodes. Shards are placed round the nodes in turn (shard `i`
//! on node `i mod N`), so six shards over three nodes give each node two.
//!
//! Two nodes serve the same cluster only if their configurations agree:
//! [`ClusterLayout::fingerprint`] digests everything the nodes must share (the pool, its split,
//! the strategy, durability, limit, replicas and this placement), and a node whose peer reports
//! another fingerprint refuses to serve.

use serde::{Deserialize, Serialize};

use super::error::LayoutError;

/// The most nodes a cluster may have (each node holds at least one shard, and a store has at
/// most [`MAX_SHARDS`](super::MAX_SHARDS) shards).
pub const MAX_NODES: usize = super::layout::MAX_SHARDS;

/// Which node serves each shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    /// The nodes (`name@host`), in the order given to `init`.
    nodes: Vec<String>,
    /// Per shard: the index in `nodes` of the node that serves it.
    serving: Vec<usize>,
}

impl ClusterLayout {
    /// `shards` shards placed round `nodes` in turn. Every node must get at least one shard, so
    /// there may not be more nodes than shards; names must be `name@host`, each given once.
    pub fn spread(nodes: &[String], shards: usize) -> Result<Self, LayoutError> {
        if nodes.is_empty() {
            return Err(LayoutError::BadNodes("no node given".into()));
        }
        if nodes.len() > MAX_NODES {
            return Err(LayoutError::BadNodes(format!(
                "{} nodes is more than the {MAX_NODES} a cluster may have",
                nodes.len()
            )));
        }
        for (i, n) in nodes.iter().enumerate() {
            check_node_name(n)?;
            if nodes[..i].contains(n) {
                return Err(LayoutError::BadNodes(format!("node {n} is given twice")));
            }
        }
        if nodes.len() > shards {
            return Err(LayoutError::BadNodes(format!(
                "{} nodes but only {shards} shard{}: every node must serve at least one shard \
                 (give more with --shards)",
                nodes.len(),
                if shards == 1 { "" } else { "s" }
            )));
        }
        Ok(ClusterLayout {
            nodes: nodes.to_vec(),
            serving: (0..shards).map(|s| s % nodes.len()).collect(),
        })
    }

    /// The nodes, in the order given to `init`.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// How many shards the layout places.
    pub fn shard_count(&self) -> usize {
        self.serving.len()
    }

    /// The node that serves `shard`.
    pub fn node_of(&self, shard: usize) -> Option<&str> {
        self.serving
            .get(shard)
            .and_then(|&n| self.nodes.get(n))
            .map(String::as_str)
    }

    /// Whether `node` is one of the cluster's nodes.
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }

    /// The shards `node` serves, lowest first (empty for a node not in the cluster).
    pub fn shards_of(&self, node: &str) -> Vec<usize> {
        (0..self.serving.len())
            .filter(|&s| self.node_of(s) == Some(node))
            .collect()
    }

    /// Checks the layout read from a store against its shard count (a hand-edited or damaged
    /// `meta.json`).
    pub fn check(&self, shards: usize) -> Result<(), LayoutError> {
        if self.serving.len() != shards {
            return Err(LayoutError::BadNodes(format!(
                "the cluster layout places {} shards, the pool has {shards}",
                self.serving.len()
            )));
        }
        if let Some(&n) = self.serving.iter().find(|&&n| n >= self.nodes.len()) {
            return Err(LayoutError::BadNodes(format!(
                "the cluster layout names node number {n} of {}",
                self.nodes.len()
            )));
        }
        for n in &self.nodes {
            check_node_name(n)?;
        }
        Ok(())
    }

    /// A short digest of `config` (which includes this layout): two nodes serve one cluster only
    /// if their digests agree. FNV-1a over the configuration's canonical JSON: stable across
    /// builds and platforms, unlike `std`'s hasher.
    pub fn fingerprint(config: &super::StoreConfig) -> String {
        let text = serde_json::to_string(config).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// A node name must be `name@host`, both parts non-empty, without spaces or control characters.
fn check_node_name(n: &str) -> Result<(), LayoutError> {
    let ok = match n.split_once('@') {
        Some((name, host)) => {
            !name.is_empty()
                && !host.is_empty()
                && !host.contains('@')
                && n.len() <= 255
                && !n
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(LayoutError::BadNodes(format!(
            "bad node name {n:?}: expected name@host, e.g. a@localhost"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shards_go_round_the_nodes() {
        let c = ClusterLayout::spread(&names(&["a@h", "b@h", "c@h"]), 6).unwrap();
        assert_eq!(c.shards_of("a@h"), vec![0, 3]);
        assert_eq!(c.shards_of("b@h"), vec![1, 4]);
        assert_eq!(c.shards_of("c@h"), vec![2, 5]);
        assert_eq!(c.node_of(4), Some("b@h"));
        assert_eq!(c.node_of(6), None);
        assert!(c.shards_of("d@h").is_empty());
        c.check(6).unwrap();
        assert!(c.check(5).is_err());
    }

    #[test]
    fn bad_node_lists_are_refused_with_the_reason() {
        let e = |v: &[&str], s| ClusterLayout::spread(&names(v), s).unwrap_err().to_string();
        assert!(e(&[], 2).contains("no node"));
        assert!(e(&["a@h", "a@h"], 2).contains("given twice"));
        assert!(e(&["a"], 2).contains("expected name@host"));
        assert!(e(&["a@"], 2).contains("expected name@host"));
        assert!(e(&["a@h", "b@h", "c@h"], 2).contains("at least one shard"));
    }
}
