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
    /// Per shard, with `--replicas 2`: the index of the node that holds its backup (the next
    /// node round). Empty without replicas (and in stores written before replicas existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backup: Vec<usize>,
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
            backup: Vec::new(),
        })
    }

    /// As [`ClusterLayout::spread`], and with `replicas` 2 each shard's backup on the next node
    /// round (shard `i` on node `i mod N`, its backup on node `(i + 1) mod N`), so losing one
    /// node leaves a replica of every shard. A backup needs a second node.
    pub fn spread_replicated(
        nodes: &[String],
        shards: usize,
        replicas: usize,
    ) -> Result<Self, LayoutError> {
        let mut layout = ClusterLayout::spread(nodes, shards)?;
        match replicas {
            1 => {}
            2 if nodes.len() < 2 => {
                return Err(LayoutError::BadNodes(
                    "--replicas 2 over a cluster needs at least two nodes: a shard's backup \
                     lives on another node than its primary"
                        .into(),
                ))
            }
            2 => layout.backup = (0..shards).map(|s| (s + 1) % nodes.len()).collect(),
            n => {
                return Err(LayoutError::BadNodes(format!(
                    "{n} replicas: a cluster shard has 1 or 2"
                )))
            }
        }
        Ok(layout)
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

    /// The node that holds `shard`'s backup (with `--replicas 2`).
    pub fn backup_of(&self, shard: usize) -> Option<&str> {
        self.backup
            .get(shard)
            .and_then(|&n| self.nodes.get(n))
            .map(String::as_str)
    }

    /// Whether every shard has a backup on another node.
    pub fn is_replicated(&self) -> bool {
        !self.backup.is_empty()
    }

    /// Which of `shard`'s replicas `node` holds: 0 on the node that serves it first, 1 on its
    /// backup's node, `None` if neither. Without replicas, 0 on its node.
    pub fn replica_on(&self, shard: usize, node: &str) -> Option<usize> {
        if self.node_of(shard) == Some(node) {
            Some(0)
        } else if self.backup_of(shard) == Some(node) {
            Some(1)
        } else {
            None
        }
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

    /// The shards `node` holds a replica of (served or backed up), lowest first.
    pub fn replicas_of(&self, node: &str) -> Vec<usize> {
        (0..self.serving.len())
            .filter(|&s| self.replica_on(s, node).is_some())
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
        if !self.backup.is_empty() {
            if self.backup.len() != shards {
                return Err(LayoutError::BadNodes(format!(
                    "the cluster layout places {} backups, the pool has {shards} shards",
                    self.backup.len()
                )));
            }
            for (s, (&b, &p)) in self.backup.iter().zip(&self.serving).enumerate() {
                if b >= self.nodes.len() || b == p {
                    return Err(LayoutError::BadNodes(format!(
                        "the cluster layout puts shard {s}'s backup on node number {b} (its \
                         primary is number {p}, of {})",
                        self.nodes.len()
                    )));
                }
            }
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
    fn each_backup_is_on_the_next_node() {
        let n = names(&["a@h", "b@h", "c@h"]);
        let c = ClusterLayout::spread_replicated(&n, 6, 2).unwrap();
        assert!(c.is_replicated());
        assert_eq!(c.backup_of(0), Some("b@h"));
        assert_eq!(c.backup_of(2), Some("a@h"));
        assert_eq!(c.replica_on(2, "a@h"), Some(1));
        assert_eq!(c.replica_on(2, "c@h"), Some(0));
        assert_eq!(c.replica_on(2, "b@h"), None);
        assert_eq!(c.replicas_of("a@h"), vec![0, 2, 3, 5]);
        c.check(6).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ClusterLayout>(&json).unwrap(), c);
        let plain = ClusterLayout::spread(&n, 6).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("backup"));
        let one = ClusterLayout::spread_replicated(&names(&["a@h"]), 2, 2).unwrap_err();
        assert!(one.to_string().contains("at least two nodes"));
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
