//! Where keys live: rendezvous (highest-random-weight) hashing.
//!
//! Every node gets a score for every key, `hash(node, key)`; a key's
//! replicas are the R nodes with the highest scores, best first. Adding a
//! node moves exactly the keys for which the new node now scores in the top
//! R, and only onto that node; removing a node moves only the keys it held.
//! Scores cost O(nodes) per key, which is nothing for the tens of nodes a
//! client-side cluster has, and need no virtual nodes or ring to rebalance.
//!
//! The hash is FNV-1a over the node's name and the key, finished with the
//! SplitMix64 mixer: stable across processes, machines and versions (every
//! client must agree on placement), and well spread.

/// A 64-bit score for `key` on the node named `node`.
pub fn score(node: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    // A separator that cannot occur in UTF-8 keeps ("ab","c") != ("a","bc").
    for &b in node.as_bytes().iter().chain(&[0xff]).chain(key.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64 finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The indices of `nodes` ranked for `key`, best first; the first R are
/// the key's replica set.
pub fn rank(nodes: &[impl AsRef<str>], key: &str) -> Vec<usize> {
    rank_by(nodes, |n| n.as_ref(), key)
}

/// [`rank`] for nodes named by `name`.
pub fn rank_by<T>(nodes: &[T], name: impl Fn(&T) -> &str, key: &str) -> Vec<usize> {
    let mut ranked: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(name(n), key), i))
        .collect();
    // Ties (vanishingly rare) break by index, so every client agrees.
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 100_000;

    fn owners(nodes: &[&str]) -> Vec<String> {
        (0..KEYS)
            .map(|i| nodes[rank(nodes, &format!("key:{i}"))[0]].to_string())
            .collect()
    }

    #[test]
    fn three_nodes_share_evenly() {
        let nodes = ["10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052"];
        let owners = owners(&nodes);
        for n in nodes {
            let share = owners.iter().filter(|o| *o == n).count() as f64 / KEYS as f64;
            assert!(
                (share - 1.0 / 3.0).abs() <= 0.05 / 3.0,
                "{n} holds {share:.4}"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_a_quarter_and_only_onto_it() {
        let three = ["a:1", "b:1", "c:1"];
        let four = ["a:1", "b:1", "c:1", "d:1"];
        let before = owners(&three);
        let after = owners(&four);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(
            moved.len() as f64 <= KEYS as f64 * (0.25 + 0.05),
            "{} moved",
            moved.len()
        );
        assert!(
            moved.iter().all(|(_, a)| *a == "d:1"),
            "keys only move onto the new node"
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let four = ["a:1", "b:1", "c:1", "d:1"];
        let three = ["a:1", "b:1", "d:1"];
        let before = owners(&four);
        let after = owners(&three);
        for (b, a) in before.iter().zip(&after) {
            if b != "c:1" {
                assert_eq!(b, a, "a key not on the removed node stayed put");
            }
        }
    }

    #[test]
    fn replica_sets_are_distinct_nodes_in_a_stable_order() {
        let nodes = ["a:1", "b:1", "c:1"];
        let r = rank(&nodes, "k");
        let mut sorted = r.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2]);
        assert_eq!(rank(&nodes, "k"), r, "deterministic");
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    /// Placement must never change between versions: a change would move
    /// every cached key of a deployed cluster. These are literal values;
    /// if this test fails, the hash changed.
    #[test]
    fn placement_is_pinned_to_known_values() {
        let scores = [
            score("a:1", "k"),
            score("10.0.0.1:50052", "emb:user:1"),
            score("10.0.0.2:50052", "layer0.weight"),
        ];
        assert_eq!(
            scores,
            [
                8214244249295832885,
                11997690471436406135,
                8258588777930329387
            ]
        );
        let nodes = ["10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052"];
        let ranks: Vec<Vec<usize>> = ["emb:user:1", "layer0.weight", "k", "batch/7"]
            .iter()
            .map(|k| rank(&nodes, k))
            .collect();
        assert_eq!(
            ranks,
            vec![vec![1, 0, 2], vec![2, 1, 0], vec![1, 0, 2], vec![2, 1, 0]]
        );
    }
}
