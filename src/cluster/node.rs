//! One node as the client sees it: its connection and its health.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::metrics::{ClusterMetrics, NodeCounters};
use super::ClusterConfig;
use crate::client::ClientError;
use crate::fast::FastClient;

/// One node as the client sees it.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) addr: String,
    pub(super) state: Mutex<NodeState>,
    pub(super) counters: NodeCounters,
}

#[derive(Debug, Default)]
pub(super) struct NodeState {
    /// The connection, once made; dropped when the node fails.
    pub(super) client: Option<FastClient>,
    /// The last few connections dropped when the node failed, which may
    /// still hold queued requests (see `ClusterClient::reset_failed`).
    pub(super) failed: Vec<FastClient>,
    /// Consecutive failures, for the backoff.
    pub(super) failures: u32,
    /// Hedged reads this node lost in a row (another replica found the
    /// tensor first); at [`HEDGE_LOSSES_TO_DOWN`] it is marked slow.
    pub(super) hedge_losses: u32,
    /// Read last, after the other replicas, until then: the node answers,
    /// but slower than the hedge delay. Unlike `down_until`, an answer does
    /// not clear it.
    pub(super) slow_until: Option<Instant>,
    /// Skipped until then.
    pub(super) down_until: Option<Instant>,
    /// Not read from as a key's replica under an earlier node set until
    /// then: a delete could not reach it after it left the set (see
    /// `ClusterClient::delete`).
    pub(super) struck_until: Option<Instant>,
}

impl Node {
    pub(super) fn new(addr: String, metrics: &ClusterMetrics) -> Node {
        Node {
            counters: metrics.node(&addr),
            addr,
            state: Mutex::new(NodeState::default()),
        }
    }

    /// Whether a get may ask this node as a key's replica under an
    /// earlier node set.
    pub(super) fn is_struck(&self) -> bool {
        self.state()
            .struck_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// A delete missed this node after it left the set: gets do not fall
    /// back to it, nor puts ask it, until `until` (the end of the grace
    /// period), so neither finds what was deleted.
    pub(super) fn strike(&self, until: Instant) {
        let mut s = self.state();
        if s.struck_until.is_none_or(|t| t < until) {
            s.struck_until = Some(until);
            tracing::warn!(node = %self.addr, "a delete missed this former replica; reads do not fall back to it");
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_up(&self) -> bool {
        self.state().down_until.is_none_or(|t| Instant::now() >= t)
    }

    pub(super) fn mark_down(&self, config: &ClusterConfig) {
        let mut s = self.state();
        // Counted once per fall from up, not per failure while down.
        if s.failures == 0 {
            self.counters.marked_down.inc();
        }
        // Let go of, not ended: other calls in flight on it finish or fail
        // by themselves. Kept aside for `ClusterClient::reset_failed`.
        if let Some(client) = s.client.take() {
            s.failed.push(client);
            if s.failed.len() > 4 {
                s.failed.remove(0);
            }
        }
        s.failures = s.failures.saturating_add(1);
        let factor = 1u32 << (s.failures - 1).min(16);
        let backoff = config
            .backoff_min
            .saturating_mul(factor)
            .min(config.backoff_max);
        s.down_until = Some(Instant::now() + backoff);
        tracing::warn!(node = %self.addr, ?backoff, "node marked down");
    }

    /// A hedged read of this node lost the race: another replica found the
    /// tensor first. A node that keeps losing is read last for a while, so
    /// that gets stop paying the hedge delay.
    pub(super) fn lost_race(&self, config: &ClusterConfig) {
        let mut s = self.state();
        s.hedge_losses = s.hedge_losses.saturating_add(1);
        if s.hedge_losses >= HEDGE_LOSSES_TO_DOWN {
            s.hedge_losses = 0;
            s.slow_until = Some(Instant::now() + config.backoff_max);
            tracing::warn!(node = %self.addr, "node keeps losing hedged reads; reading it last");
        }
    }

    /// Whether reads should try this node after the others.
    pub(super) fn is_slow(&self) -> bool {
        self.state().slow_until.is_some_and(|t| Instant::now() < t)
    }

    /// A hedged read of this node answered first.
    pub(super) fn won_race(&self) {
        self.state().hedge_losses = 0;
    }

    pub(super) fn mark_up(&self) {
        let mut s = self.state();
        if s.failures > 0 {
            tracing::info!(node = %self.addr, "node is back");
        }
        s.failures = 0;
        s.down_until = None;
    }
}

/// Hedge races a node may lose in a row before it is read last.
pub(super) const HEDGE_LOSSES_TO_DOWN: u32 = 3;

/// Errors that say the node, not the request, is the problem: the client
/// marks the node down and, for reads, tries the next replica.
pub(super) fn is_node_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::Unavailable(_)
            | ClientError::Timeout(_)
            | ClientError::Protocol(_)
            | ClientError::Rpc(_)
    )
}
