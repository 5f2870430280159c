//! What the replicas asked so far answered, during one get.

use std::sync::Arc;

use super::node::{is_node_failure, Node};
use crate::client::ClientError;
use crate::tensor::Tensor;

pub(super) type ReadResult = Result<Option<Tensor>, ClientError>;

/// What the replicas asked so far answered, during one get.
pub(super) struct Reads {
    /// When the get began ([`unix_micros`](crate::engine::unix_micros)): read
    /// repair writes only if the key was not deleted since.
    pub(super) began_us: u64,
    /// Replicas that answered `NotFound`: read repair targets.
    pub(super) missing_on: Vec<Arc<Node>>,
    last_failure: Option<ClientError>,
}

impl Reads {
    pub(super) fn new(began_us: u64) -> Reads {
        Reads {
            began_us,
            missing_on: Vec::new(),
            last_failure: None,
        }
    }

    /// Takes one replica's answer: the tensor if found, `None` to go on,
    /// or an error that ends the get (a refusal every node would give).
    pub(super) fn absorb(
        &mut self,
        node: &Arc<Node>,
        result: ReadResult,
    ) -> Result<Option<Tensor>, ClientError> {
        match result {
            Ok(Some(tensor)) => return Ok(Some(tensor)),
            Ok(None) => self.missing_on.push(Arc::clone(node)),
            Err(e) if is_node_failure(&e) => self.last_failure = Some(e),
            Err(e) => return Err(e),
        }
        Ok(None)
    }

    /// No replica had it: `None` if any answered, else the last failure.
    pub(super) fn finish(self) -> ReadResult {
        match self.last_failure {
            Some(e) if self.missing_on.is_empty() => Err(e),
            _ => Ok(None),
        }
    }
}
