//! The cluster client's metrics, for the application to expose: per node
//! requests, failures and marked-down events; read repairs; hedged reads;
//! writes that missed their quorum; with a `dns:` name, membership changes,
//! failed resolutions and reads served by a previous placement.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChangeLabels {
    change: &'static str,
}

/// The counters of one [`ClusterClient`](super::ClusterClient) (shared by
/// its clones).
#[derive(Debug, Clone, Default)]
pub(super) struct ClusterMetrics {
    requests: Family<NodeLabels, Counter>,
    failures: Family<NodeLabels, Counter>,
    marked_down: Family<NodeLabels, Counter>,
    repairs: Family<OutcomeLabels, Counter>,
    hedges: Counter,
    quorum_failures: Family<OpLabels, Counter>,
    nodes: Gauge,
    membership_changes: Family<ChangeLabels, Counter>,
    resolve_failures: Counter,
    previous_placement_reads: Counter,
}

/// One node's counters, resolved once so that a request pays an atomic
/// add, not a label lookup.
#[derive(Debug, Clone)]
pub(super) struct NodeCounters {
    pub(super) requests: Counter,
    pub(super) failures: Counter,
    pub(super) marked_down: Counter,
}

impl ClusterMetrics {
    pub(super) fn node(&self, addr: &str) -> NodeCounters {
        let labels = NodeLabels {
            node: addr.to_owned(),
        };
        NodeCounters {
            requests: self.requests.get_or_create(&labels).clone(),
            failures: self.failures.get_or_create(&labels).clone(),
            marked_down: self.marked_down.get_or_create(&labels).clone(),
        }
    }

    /// Drops the series of a node that left the cluster for good.
    pub(super) fn forget(&self, addr: &str) {
        let labels = NodeLabels {
            node: addr.to_owned(),
        };
        self.requests.remove(&labels);
        self.failures.remove(&labels);
        self.marked_down.remove(&labels);
    }

    /// A read repair ended: `ok` (written back) or `failed`.
    pub(super) fn repair(&self, outcome: &'static str) {
        self.repairs.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A hedged read asked a second replica.
    pub(super) fn hedge(&self) {
        self.hedges.inc();
    }

    /// A `put` or `delete` missed its quorum.
    pub(super) fn quorum_failure(&self, op: &'static str) {
        self.quorum_failures.get_or_create(&OpLabels { op }).inc();
    }

    /// The node set changed: `added` and `removed` nodes, `nodes` now.
    pub(super) fn membership_change(&self, added: usize, removed: usize, nodes: usize) {
        for (change, n) in [("added", added), ("removed", removed)] {
            let counter = self
                .membership_changes
                .get_or_create(&ChangeLabels { change });
            counter.inc_by(n as u64);
        }
        self.set_nodes(nodes);
    }

    /// The number of nodes in the cluster now.
    pub(super) fn set_nodes(&self, nodes: usize) {
        self.nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }

    /// Resolving the cluster's name failed (the last good set is kept).
    pub(super) fn resolve_failure(&self) {
        self.resolve_failures.inc();
    }

    /// A get found its tensor on a replica of an earlier node set.
    pub(super) fn previous_placement_read(&self) {
        self.previous_placement_reads.inc();
    }

    /// Registers every metric in `registry`, named `redstone_cluster_…`
    /// under the registry's own prefix.
    pub(super) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("redstone_cluster");
        r.register(
            "node_requests",
            "Requests sent to a node, by node",
            self.requests.clone(),
        );
        r.register(
            "node_failures",
            "Requests to a node that failed (timeout, connection lost, unavailable), by node",
            self.failures.clone(),
        );
        r.register(
            "node_marked_down",
            "Times a node was marked down (skipped for a backoff), by node",
            self.marked_down.clone(),
        );
        r.register(
            "read_repairs",
            "Read repairs (a tensor written back to a replica that missed it), by outcome: ok, superseded (written or deleted meanwhile), failed",
            self.repairs.clone(),
        );
        r.register(
            "hedged_reads",
            "Gets that asked a second replica because the first was slow",
            self.hedges.clone(),
        );
        r.register(
            "quorum_failures",
            "Puts and deletes that did not reach their quorum, by op",
            self.quorum_failures.clone(),
        );
        r.register("nodes", "Nodes in the cluster now", self.nodes.clone());
        r.register(
            "membership_changes",
            "Nodes added to or removed from the cluster by resolving its dns: name, by change",
            self.membership_changes.clone(),
        );
        r.register(
            "resolve_failures",
            "Resolutions of the cluster's dns: name that failed or found no address (the last node set is kept)",
            self.resolve_failures.clone(),
        );
        r.register(
            "previous_placement_reads",
            "Gets that missed on a key's replicas and found it on its replicas under an earlier node set (within the grace period)",
            self.previous_placement_reads.clone(),
        );
    }
}
