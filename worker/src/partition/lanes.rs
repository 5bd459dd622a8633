//! Per-conversation lanes inside one partition: different conversations run concurrently,
//! one conversation strictly one event at a time, in the order the events were pulled
//! (stream order).

use std::collections::{HashMap, VecDeque};

/// Items keyed by conversation; at most one per conversation is out (running) at a time.
#[derive(Debug)]
pub struct Lanes<T> {
    /// Conversations with an item running, and what waits behind it.
    busy: HashMap<String, VecDeque<T>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
        }
    }
}

impl<T> Lanes<T> {
    /// `item` back when it may start now (its conversation is idle); else it waits in line.
    pub fn admit(&mut self, key: &str, item: T) -> Option<T> {
        match self.busy.get_mut(key) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.busy.insert(key.to_string(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running item of `key` finished: the next one of that conversation, if any.
    pub fn finish(&mut self, key: &str) -> Option<T> {
        let queue = self.busy.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => Some(next),
            None => {
                self.busy.remove(key);
                None
            }
        }
    }

    /// Everything waiting (not running), taken out; running items stay accounted for.
    pub fn take_waiting(&mut self) -> Vec<T> {
        self.busy.values_mut().flat_map(|q| q.drain(..)).collect()
    }

    pub fn waiting(&self) -> impl Iterator<Item = &T> {
        self.busy.values().flatten()
    }

    /// Conversations with an item running.
    pub fn running(&self) -> usize {
        self.busy.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_per_conversation_in_order() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("a", 1), Some(1));
        assert_eq!(
            lanes.admit("b", 2),
            Some(2),
            "another conversation runs alongside"
        );
        assert_eq!(lanes.admit("a", 3), None, "waits behind 1");
        assert_eq!(lanes.admit("a", 4), None);
        assert_eq!(lanes.running(), 2);
        assert_eq!(lanes.finish("a"), Some(3));
        assert_eq!(lanes.finish("a"), Some(4));
        assert_eq!(lanes.finish("a"), None);
        assert_eq!(lanes.admit("a", 5), Some(5), "idle again");
        assert_eq!(lanes.admit("b", 6), None);
        assert_eq!(lanes.take_waiting(), vec![6]);
        assert_eq!(lanes.running(), 2);
    }
}
