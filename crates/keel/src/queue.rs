//! The per-pool request queue: a bounded FIFO of requests waiting for a worker.
//!
//! A plain data structure (no async, no clock of its own): the pool locks it, pushes and
//! pops, and each waiting request keeps its own queue timer. Invariants:
//! - `push_back` refuses a new request once `len() >= capacity` (HTTP.sys `QueueFull`);
//! - `push_front` never refuses: a request going back to the head of the queue was already
//!   accepted (its worker died before running it), and accepted work is never dropped, so the
//!   queue may briefly hold more than `capacity`;
//! - every entry has a unique key, so a request whose client went away can leave the queue.

use std::collections::VecDeque;

/// Identifies one queued request, to remove it when its client disconnects or it times out.
pub type QueueKey = u64;

#[derive(Debug)]
pub struct RequestQueue<T> {
    entries: VecDeque<(QueueKey, T)>,
    capacity: usize,
}

/// The queue held `capacity` requests already; the rejected item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull<T>(pub T);

impl<T> RequestQueue<T> {
    pub fn new(capacity: usize) -> Self {
        RequestQueue {
            entries: VecDeque::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends a new request, or refuses it when the queue is full.
    pub fn push_back(&mut self, key: QueueKey, item: T) -> Result<(), QueueFull<T>> {
        if self.entries.len() >= self.capacity {
            return Err(QueueFull(item));
        }
        self.entries.push_back((key, item));
        Ok(())
    }

    /// Puts an already accepted request back at the head: it is the next one dispatched.
    pub fn push_front(&mut self, key: QueueKey, item: T) {
        self.entries.push_front((key, item));
    }

    /// The oldest waiting request.
    pub fn pop_front(&mut self) -> Option<(QueueKey, T)> {
        self.entries.pop_front()
    }

    /// Takes a request out wherever it stands; `None` if it is no longer queued (it was
    /// dispatched in the meantime).
    pub fn remove(&mut self, key: QueueKey) -> Option<T> {
        let pos = self.entries.iter().position(|(k, _)| *k == key)?;
        self.entries.remove(pos).map(|(_, item)| item)
    }

    /// Takes every waiting request out (the pool is shutting down or offline).
    pub fn drain_all(&mut self) -> Vec<T> {
        self.entries.drain(..).map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order() {
        let mut q = RequestQueue::new(10);
        for k in 1..=3 {
            q.push_back(k, k * 10).unwrap();
        }
        assert_eq!(q.pop_front(), Some((1, 10)));
        assert_eq!(q.pop_front(), Some((2, 20)));
        assert_eq!(q.pop_front(), Some((3, 30)));
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn full_queue_refuses_new_requests_and_hands_them_back() {
        let mut q = RequestQueue::new(2);
        q.push_back(1, "a").unwrap();
        q.push_back(2, "b").unwrap();
        assert_eq!(q.push_back(3, "c"), Err(QueueFull("c")));
        assert_eq!(q.len(), 2);
        q.pop_front();
        q.push_back(3, "c").unwrap();
    }

    #[test]
    fn requeued_request_goes_to_the_head_even_when_full() {
        let mut q = RequestQueue::new(2);
        q.push_back(1, "a").unwrap();
        q.push_back(2, "b").unwrap();
        q.push_front(9, "replayed");
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_front(), Some((9, "replayed")));
        assert_eq!(q.pop_front(), Some((1, "a")));
        // Over capacity until it drains below it again.
        q.push_front(8, "again");
        assert!(q.push_back(3, "c").is_err());
    }

    #[test]
    fn remove_takes_a_request_out_from_the_middle() {
        let mut q = RequestQueue::new(5);
        for k in 1..=4 {
            q.push_back(k, k).unwrap();
        }
        assert_eq!(q.remove(3), Some(3));
        assert_eq!(q.remove(3), None);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_front())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(order, vec![1, 2, 4]);
    }

    #[test]
    fn zero_capacity_refuses_everything_but_requeues() {
        let mut q = RequestQueue::new(0);
        assert!(q.push_back(1, ()).is_err());
        q.push_front(2, ());
        assert_eq!(q.len(), 1);
        assert_eq!(q.drain_all().len(), 1);
        assert!(q.is_empty());
    }
}
