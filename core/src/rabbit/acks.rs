//! Acks in batches. `basic_ack` with `multiple` settles every outstanding delivery of a
//! channel up to a tag in one frame, so it may only name a tag below which every
//! delivery has been decided: taken effect (to be acked), or already nacked. Handlers
//! finish out of order, so [`AckWindow`] tracks which deliveries are still being
//! handled and which took effect, and says what one flush may send.

use std::collections::BTreeSet;

/// The deliveries of one channel, from delivery to ack.
#[derive(Debug, Default)]
pub struct AckWindow {
    /// Delivered, no outcome yet.
    handling: BTreeSet<u64>,
    /// Took effect, not acked yet.
    done: BTreeSet<u64>,
}

/// What one flush sends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acks {
    /// `basic_ack(tag, multiple)`: every delivery up to this tag has been decided.
    pub up_to: Option<u64>,
    /// `basic_ack(tag)` one by one: deliveries that took effect behind a slow one.
    pub each: Vec<u64>,
}

impl Acks {
    pub fn is_empty(&self) -> bool {
        self.up_to.is_none() && self.each.is_empty()
    }
}

impl AckWindow {
    /// A delivery arrived and goes to its handler.
    pub fn delivered(&mut self, tag: u64) {
        self.handling.insert(tag);
    }

    /// Its handler's work took effect: it may be acked.
    pub fn took_effect(&mut self, tag: u64) {
        if self.handling.remove(&tag) {
            self.done.insert(tag);
        }
    }

    /// It was settled another way (nacked, requeued), and that frame has been sent: a
    /// later multiple ack passes over it.
    pub fn settled(&mut self, tag: u64) {
        self.handling.remove(&tag);
    }

    /// The acks to send now, forgotten here. Deliveries that took effect above one still
    /// being handled wait for it, unless more than `max_held` wait: then they are acked
    /// one by one, so a slow message does not hold the broker's prefetch window shut.
    pub fn take(&mut self, max_held: usize) -> Acks {
        let mut acks = Acks::default();
        let below = match self.handling.first() {
            Some(&oldest) => self.done.range(..oldest).next_back().copied(),
            None => self.done.last().copied(),
        };
        if let Some(tag) = below {
            acks.up_to = Some(tag);
            self.done = self.done.split_off(&(tag + 1));
        }
        if self.done.len() > max_held {
            acks.each = std::mem::take(&mut self.done).into_iter().collect();
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: impl IntoIterator<Item = u64>) -> AckWindow {
        let mut w = AckWindow::default();
        for t in tags {
            w.delivered(t);
        }
        w
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_being_handled() {
        let mut w = window(1..=5);
        for t in [1, 2, 4, 5] {
            w.took_effect(t);
        }
        // 3 is still being handled: only 1 and 2 may go.
        assert_eq!(
            w.take(10),
            Acks {
                up_to: Some(2),
                each: vec![]
            }
        );
        assert!(w.take(10).is_empty());
        w.took_effect(3);
        assert_eq!(w.take(10).up_to, Some(5));
        assert!(w.take(10).is_empty());
    }

    #[test]
    fn nacked_deliveries_are_passed_over_once_settled() {
        let mut w = window(1..=3);
        w.took_effect(1);
        w.took_effect(3);
        // 2 is being nacked: nothing above it may be acked yet.
        assert_eq!(w.take(10).up_to, Some(1));
        w.settled(2);
        assert_eq!(w.take(10).up_to, Some(3));
    }

    #[test]
    fn a_slow_delivery_holds_back_only_so_many_acks() {
        let mut w = window(1..=6);
        for t in 2..=6 {
            w.took_effect(t);
        }
        assert!(w.take(5).is_empty());
        w.delivered(7);
        w.took_effect(7);
        assert_eq!(
            w.take(5),
            Acks {
                up_to: None,
                each: vec![2, 3, 4, 5, 6, 7]
            }
        );
        // They are acked: the slow one's multiple ack later covers nothing twice.
        w.took_effect(1);
        assert_eq!(w.take(5).up_to, Some(1));
    }

    #[test]
    fn an_outcome_for_an_unknown_delivery_is_ignored() {
        let mut w = AckWindow::default();
        w.took_effect(9);
        assert!(w.take(0).is_empty());
    }
}
