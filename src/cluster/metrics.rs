//! The cluster client's metrics, for the application to expose: per node
//! requests, failures and marked-down events; read repairs; hedged reads;
//! writes that missed their quorum.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    }
}
