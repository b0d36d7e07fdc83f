//! Events for the host (process exits, OOM kills), collected by long polls (`GetEvents`).
//!
//! Delivery is at least once: every event gets a sequence number (1, 2, …) and stays queued until
//! the host acknowledges it (`GetEventsRequest.ack`: the highest sequence number it has handled).
//! A poll whose answer never reached the host (its call timed out, the connection broke) loses
//! nothing: the next poll, with the old `ack`, gets the same events again.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

/// Unacknowledged events kept; past this the oldest are dropped (a host that stopped polling).
const MAX_QUEUED: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Exited {
        pid: i32,
        exit_status: i32,
        exited_at_ns: i64,
    },
    Oom,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub container_id: String,
    pub exec_id: String,
    pub kind: EventKind,
}

#[derive(Default)]
struct Queue {
    /// Unacknowledged events with their sequence numbers, oldest first.
    events: VecDeque<(u64, Event)>,
    /// Sequence number of the last event queued (0: none yet).
    last: u64,
}

#[derive(Default)]
pub struct EventQueue {
    queue: Mutex<Queue>,
    cond: Condvar,
}

impl EventQueue {
    pub fn push(&self, event: Event) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.events.len() >= MAX_QUEUED {
            q.events.pop_front();
        }
        q.last += 1;
        let seq = q.last;
        q.events.push_back((seq, event));
        self.cond.notify_all();
    }

    /// Forgets the events up to `ack` (the host handled them), then returns every event still
    /// unacknowledged, waiting up to `timeout` for one if there is none.
    pub fn take(&self, ack: u64, timeout: Duration) -> Vec<(u64, Event)> {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while q.events.front().is_some_and(|(seq, _)| *seq <= ack) {
            q.events.pop_front();
        }
        while q.events.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self
                .cond
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        q.events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn oom(id: &str) -> Event {
        Event {
            container_id: id.into(),
            exec_id: String::new(),
            kind: EventKind::Oom,
        }
    }

    fn ids(events: &[(u64, Event)]) -> Vec<(u64, &str)> {
        events
            .iter()
            .map(|(seq, e)| (*seq, e.container_id.as_str()))
            .collect()
    }

    #[test]
    fn take_waits_for_an_event() {
        let q = Arc::new(EventQueue::default());
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q2.push(oom("a"));
        });
        assert_eq!(q.take(0, Duration::from_secs(5)), vec![(1, oom("a"))]);
        t.join().unwrap();
        // Acknowledged: gone, and the poll waits its whole timeout.
        let t0 = Instant::now();
        assert!(q.take(1, Duration::from_millis(50)).is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn unacknowledged_events_are_delivered_again() {
        let q = EventQueue::default();
        q.push(oom("a"));
        q.push(oom("b"));
        // The answer to this poll is lost (the host never saw it)…
        assert_eq!(ids(&q.take(0, Duration::ZERO)), [(1, "a"), (2, "b")]);
        // …so the host polls again with its old ack, and gets them again, at once.
        q.push(oom("c"));
        assert_eq!(
            ids(&q.take(0, Duration::from_secs(5))),
            [(1, "a"), (2, "b"), (3, "c")]
        );
        // Handled up to 2: only 3 is left.
        assert_eq!(ids(&q.take(2, Duration::ZERO)), [(3, "c")]);
        // An old ack does not bring back what a newer one dropped.
        assert_eq!(ids(&q.take(1, Duration::ZERO)), [(3, "c")]);
        assert!(q.take(3, Duration::ZERO).is_empty());
        q.push(oom("d"));
        assert_eq!(ids(&q.take(3, Duration::ZERO)), [(4, "d")]);
    }

    #[test]
    fn queue_is_bounded() {
        let q = EventQueue::default();
        for i in 0..MAX_QUEUED + 10 {
            q.push(oom(&i.to_string()));
        }
        let all = q.take(0, Duration::ZERO);
        assert_eq!(all.len(), MAX_QUEUED);
        assert_eq!(all[0], (11, oom("10")));
    }
}
