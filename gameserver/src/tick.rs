//! The fixed-rate tick: a dedicated thread that, every period, advances the
//! simulation under the session lock, then sends the tick's snapshots with the lock
//! released, so inputs keep flowing while the kernel copies datagrams. Snapshots
//! leave [`crate::batch::SEND_BATCH`] per `sendmmsg`, split between
//! [`Ticker::send_threads`] threads.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::batch::{SendStats, Sender};
use crate::metrics::Metrics;
use crate::moves::MoveBatches;
use crate::outbox::Outbox;
use crate::udp::SharedManager;

/// Below this many datagrams per share, one more sending thread costs more than it saves.
const PARALLEL_SEND_MIN: usize = 512;

/// What the tick thread should do next, set by the server's shutdown sequence.
#[derive(Clone, Default)]
pub struct TickControl(Arc<AtomicU8>);

const RUN: u8 = 0;
/// End every session (telling the players), then stop.
const END_ALL_AND_STOP: u8 = 1;

impl TickControl {
    pub fn end_all_and_stop(&self) {
        self.0.store(END_ALL_AND_STOP, Ordering::SeqCst);
    }

    fn running(&self) -> bool {
        self.0.load(Ordering::SeqCst) == RUN
    }
}

pub struct Ticker {
    pub manager: SharedManager,
    pub socket: Arc<UdpSocket>,
    pub metrics: Metrics,
    /// The number of the last completed tick, for consumers that ack once their
    /// command has been applied.
    pub completed: watch::Sender<u64>,
    pub control: TickControl,
    /// Threads sending a tick's snapshots, each its own contiguous share.
    pub send_threads: usize,
}

impl Ticker {
    pub fn run(self) {
        let rate = self.lock().config().rules.tick_rate.max(1);
        let period = Duration::from_secs(1) / rate;
        let mut outbox = Outbox::default();
        let mut sender = Sender::default();
        let mut deferred = MoveBatches::default();
        let events = self.lock().events();
        let mut next = Instant::now() + period;
        while self.control.running() {
            let (tick, started) = {
                let mut manager = self.lock();
                // Timed from the lock on: the tick's own work, not the wait for a
                // datagram being handled on the receive thread.
                let started = Instant::now();
                manager.step(&mut outbox);
                manager.take_deferred(&mut deferred);
                self.metrics.sessions.set(manager.sessions() as i64);
                self.metrics.players.set(manager.player_count() as i64);
                self.metrics.tanks_in_use.set(manager.tanks_in_use() as i64);
                (manager.tick(), started)
            };
            self.metrics
                .tick_seconds
                .observe(started.elapsed().as_secs_f64());
            self.send(&mut sender, &outbox);
            // Written here, after the snapshots left and without the lock.
            deferred.drain_records(|record| {
                events.publish_raw(record);
            });
            self.completed.send_replace(tick);
            let now = Instant::now();
            if now > next + period {
                // Too far behind to catch up without a burst of ticks: skip ahead.
                self.metrics.ticks_late.inc();
                next = now + period;
            } else {
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += period;
            }
        }
        let ended = self.lock().end_all("server_shutdown", &mut outbox);
        self.send(&mut sender, &outbox);
        if ended > 0 {
            tracing::info!(sessions = ended, "ended the remaining sessions");
        }
        self.completed.send_replace(u64::MAX);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, crate::sessions::SessionManager> {
        self.manager
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends the outbox, in parallel shares when there are several senders and
    /// enough datagrams to be worth a thread. The helpers are scoped threads spawned
    /// per tick: tens of microseconds, 30 times a second, for no shared queue or
    /// lifecycle to get wrong. (Each helper makes its own [`Sender`]: its syscall
    /// headers hold raw pointers and may not cross threads.)
    fn send(&self, sender: &mut Sender, outbox: &Outbox) {
        if outbox.is_empty() {
            return;
        }
        let started = Instant::now();
        let shares = crate::batch::shares(outbox.len(), self.send_threads, PARALLEL_SEND_MIN);
        let socket = &*self.socket;
        let stats = std::thread::scope(|scope| {
            let mut stats = SendStats::default();
            let mut helpers = Vec::with_capacity(shares.len());
            for range in &shares[1..] {
                let range = range.clone();
                let spawned = std::thread::Builder::new()
                    .name("tick-send".into())
                    .spawn_scoped(scope, {
                        let range = range.clone();
                        move || Sender::default().send_range(socket, outbox, range)
                    });
                match spawned {
                    Ok(helper) => helpers.push((helper, range)),
                    // No thread to be had: send that share here, later but sent.
                    Err(_) => stats.add(sender.send_range(socket, outbox, range)),
                }
            }
            stats.add(sender.send_range(socket, outbox, shares[0].clone()));
            for (helper, range) in helpers {
                match helper.join() {
                    Ok(s) => stats.add(s),
                    // Only a panic in the kernel interface's wrapper gets here.
                    Err(_) => stats.failed += range.len() as u64,
                }
            }
            stats
        });
        self.metrics.datagrams_out.inc_by(stats.sent);
        self.metrics.send_errors.inc_by(stats.failed);
        self.metrics
            .send_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}
