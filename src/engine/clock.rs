//! The eviction order: an intrusive doubly linked list over a slab.
//!
//! The front holds the newest (or most recently re-admitted) entries, the
//! back the oldest. Nodes are addressed by stable slab indices, so the
//! engine's index can name a node in O(1) and a node never moves when others
//! are added or removed. The list is only touched under the engine's
//! eviction lock; gets never see it.

use std::sync::Arc;

/// The index of a node in the slab.
pub(crate) type NodeId = usize;

const NIL: NodeId = usize::MAX;

#[derive(Debug)]
struct Node {
    /// The cached key; `None` while the slot is free.
    key: Option<Arc<str>>,
    prev: NodeId,
    next: NodeId,
}

/// A list of keys in eviction order; see the module docs.
#[derive(Debug)]
pub(crate) struct ClockList {
    nodes: Vec<Node>,
    /// Free slots, reused before the slab grows.
    free: Vec<NodeId>,
    head: NodeId,
    tail: NodeId,
    len: usize,
}

impl ClockList {
    pub(crate) fn new() -> ClockList {
        ClockList {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `key` at the front and returns its node.
    pub(crate) fn push_front(&mut self, key: Arc<str>) -> NodeId {
        let node = Node {
            key: Some(key),
            prev: NIL,
            next: NIL,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id] = node;
                id
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.link_front(id);
        self.len += 1;
        id
    }

    /// The oldest node, if any.
    pub(crate) fn back(&self) -> Option<NodeId> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// The key stored at `id`.
    pub(crate) fn key(&self, id: NodeId) -> Option<&Arc<str>> {
        self.nodes.get(id).and_then(|n| n.key.as_ref())
    }

    /// Moves a live node to the front.
    pub(crate) fn move_to_front(&mut self, id: NodeId) {
        if self.head != id {
            self.unlink(id);
            self.link_front(id);
        }
    }

    /// Removes a live node and frees its slot.
    pub(crate) fn remove(&mut self, id: NodeId) -> Option<Arc<str>> {
        let key = self.nodes.get_mut(id)?.key.take()?;
        self.unlink(id);
        self.free.push(id);
        self.len -= 1;
        Some(key)
    }

    fn link_front(&mut self, id: NodeId) {
        self.nodes[id].prev = NIL;
        self.nodes[id].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = id;
        } else {
            self.tail = id;
        }
        self.head = id;
    }

    fn unlink(&mut self, id: NodeId) {
        let (prev, next) = (self.nodes[id].prev, self.nodes[id].next);
        if prev != NIL {
            self.nodes[prev].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next].prev = prev;
        } else {
            self.tail = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(list: &mut ClockList) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(id) = list.back() {
            out.push(list.remove(id).unwrap().to_string());
        }
        out
    }

    #[test]
    fn oldest_comes_out_first_and_slots_are_reused() {
        let mut list = ClockList::new();
        let a = list.push_front("a".into());
        let b = list.push_front("b".into());
        let _c = list.push_front("c".into());
        list.move_to_front(a);
        assert_eq!(list.remove(b).as_deref(), Some("b"));
        assert_eq!(list.remove(b), None, "a freed slot is not live");
        let d = list.push_front("d".into());
        assert_eq!(d, b, "the freed slot is reused");
        assert_eq!(list.len(), 3);
        assert_eq!(drain(&mut list), ["c", "a", "d"]);
        assert_eq!(list.len(), 0);
        assert_eq!(list.back(), None);
    }
}
