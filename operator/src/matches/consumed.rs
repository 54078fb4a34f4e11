//! The event keys the consumer has already turned into a Match, remembered for a while.
//!
//! A Match name is derived from its event id, so a second delivery of an event normally
//! meets `AlreadyExists`. That protection ends when the Match is deleted: a Finished
//! Match goes after its TTL, and an event redelivered later (its ack lost when RabbitMQ
//! restarted, or republished by a matchmaker whose confirm was lost) would start the
//! match again. The consumer therefore remembers every key it settled for longer than a
//! redelivery can take, and acks such a delivery without creating anything.
//!
//! The record lives in the consumer's memory: it covers a broker restart and a
//! republish while the operator runs. After an operator restart a redelivery finds the
//! Match itself (it cannot have been reaped: the reaper is the same, restarted process).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered for `retention`, at most `capacity` of them (the oldest go first, so
/// memory stays bounded whatever the event rate).
pub struct ConsumedEvents {
    retention: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// key → when it was recorded (the latest time, if recorded twice).
    at: HashMap<String, Instant>,
    /// Keys in the order recorded, for expiry; stale duplicates are skipped.
    order: VecDeque<(Instant, String)>,
}

impl ConsumedEvents {
    pub fn new(retention: Duration, capacity: usize) -> Self {
        ConsumedEvents {
            retention,
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Whether `key` was recorded less than the retention ago.
    pub fn contains(&self, key: &str) -> bool {
        self.contains_at(key, Instant::now())
    }

    pub fn record(&self, key: &str) {
        self.record_at(key, Instant::now());
    }

    pub fn len(&self) -> usize {
        self.lock().at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the maps half-updated in a way that matters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains_at(&self, key: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner.at.contains_key(key)
    }

    fn record_at(&self, key: &str, now: Instant) {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner.at.insert(key.to_owned(), now);
        inner.order.push_back((now, key.to_owned()));
        while inner.at.len() > self.capacity {
            let Some((at, oldest)) = inner.order.pop_front() else {
                break;
            };
            if inner.at.get(&oldest) == Some(&at) {
                inner.at.remove(&oldest);
            }
        }
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < self.retention {
                break;
            }
            let (at, key) = inner.order.pop_front().expect("front exists");
            if inner.at.get(&key) == Some(&at) {
                inner.at.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_remembered_for_the_retention_then_forgotten() {
        let record = ConsumedEvents::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        assert!(!record.contains_at("ev-1", t0));
        record.record_at("ev-1", t0);
        assert!(record.contains_at("ev-1", t0 + Duration::from_secs(59)));
        assert!(!record.contains_at("ev-1", t0 + Duration::from_secs(60)));
        assert!(record.is_empty());
    }

    #[test]
    fn recording_again_extends_the_retention() {
        let record = ConsumedEvents::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        record.record_at("ev-1", t0);
        record.record_at("ev-1", t0 + Duration::from_secs(30));
        assert!(record.contains_at("ev-1", t0 + Duration::from_secs(80)));
        assert!(!record.contains_at("ev-1", t0 + Duration::from_secs(90)));
    }

    #[test]
    fn the_oldest_keys_go_first_past_the_capacity() {
        let record = ConsumedEvents::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            record.record_at(key, t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(record.len(), 2);
        let t = t0 + Duration::from_secs(3);
        assert!(!record.contains_at("a", t));
        assert!(record.contains_at("b", t) && record.contains_at("c", t));
    }
}
