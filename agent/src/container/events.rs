//! Events for the host (process exits, OOM kills), collected by long polls (`GetEvents`).

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

/// Events kept when nobody polls; the oldest are dropped past this.
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
pub struct EventQueue {
    queue: Mutex<VecDeque<Event>>,
    cond: Condvar,
}

impl EventQueue {
    pub fn push(&self, event: Event) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(event);
        self.cond.notify_all();
    }

    /// Everything queued, waiting up to `timeout` for the first event.
    pub fn take(&self, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while q.is_empty() {
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
        q.drain(..).collect()
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

    #[test]
    fn take_waits_for_an_event() {
        let q = Arc::new(EventQueue::default());
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q2.push(oom("a"));
        });
        assert_eq!(q.take(Duration::from_secs(5)), vec![oom("a")]);
        t.join().unwrap();
        assert!(q.take(Duration::from_millis(10)).is_empty());
    }

    #[test]
    fn queue_is_bounded() {
        let q = EventQueue::default();
        for i in 0..MAX_QUEUED + 10 {
            q.push(oom(&i.to_string()));
        }
        let all = q.take(Duration::ZERO);
        assert_eq!(all.len(), MAX_QUEUED);
        assert_eq!(all[0].container_id, "10");
    }
}
