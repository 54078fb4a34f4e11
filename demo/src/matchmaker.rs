//! A small matchmaker: groups the players that asked for a game into matches of
//! `players_per_match` (or fewer, once the oldest has waited `max_wait`), publishes each
//! as a `new_match_created` event to RabbitMQ, and hands every player the endpoint and
//! session of its match when the operator's `match_allocated` comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tanks_core::protocol::matchmaking::{MATCH_ALLOCATED, MatchAllocated, MatchRequest};
use tanks_core::rabbit::{self, ConsumerSpec, Outcome, Publisher};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bots::stopped;
use crate::stats::Stats;

/// A player waiting for a match.
pub struct Ticket {
    pub player: String,
    pub reply: oneshot::Sender<Allocation>,
}

/// Where a player's match is.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub address: String,
    pub port: u16,
    pub session_id: String,
}

pub struct Matchmaker {
    pub publisher: Publisher,
    pub amqp_url: String,
    pub events_queue: String,
    pub allocations_queue: String,
    pub fleet: String,
    pub players_per_match: usize,
    pub max_wait: Duration,
    /// Prefix of event ids (and so of Match names): unique to this run.
    pub prefix: String,
    pub stats: Arc<Stats>,
}

impl Matchmaker {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut tickets: mpsc::Receiver<Ticket>, mut stop: watch::Receiver<bool>) {
        let (heard_tx, mut heard) = mpsc::unbounded_channel::<MatchAllocated>();
        let consumer = {
            let spec = ConsumerSpec {
                uri: self.amqp_url.clone(),
                queue: self.allocations_queue.clone(),
                prefetch: 64,
                tag: format!("{}-matchmaker", self.prefix),
            };
            let mut stop = stop.clone();
            tokio::spawn(rabbit::consume(
                spec,
                move |delivery| {
                    let heard_tx = heard_tx.clone();
                    async move {
                        match serde_json::from_slice::<MatchAllocated>(&delivery.data) {
                            Ok(m) if m.event_type == MATCH_ALLOCATED => {
                                let _ = heard_tx.send(m);
                                Outcome::Ack
                            }
                            Ok(m) => Outcome::DeadLetter(format!("event_type {}", m.event_type)),
                            Err(e) => Outcome::DeadLetter(e.to_string()),
                        }
                    }
                },
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ))
        };

        let mut waiting: Vec<(Ticket, Instant)> = Vec::new();
        let mut pending: HashMap<String, Vec<oneshot::Sender<Allocation>>> = HashMap::new();
        let mut next = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                ticket = tickets.recv() => match ticket {
                    Some(t) => waiting.push((t, Instant::now())),
                    None => break,
                },
                Some(alloc) = heard.recv() => {
                    self.stats.allocations_heard.fetch_add(1, Ordering::Relaxed);
                    if let Some(players) = pending.remove(&alloc.event_id) {
                        let a = Allocation {
                            address: alloc.endpoint.address.clone(),
                            port: alloc.endpoint.port,
                            session_id: alloc.session_id.clone(),
                        };
                        for p in players {
                            let _ = p.send(a.clone());
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            // Players who gave up (their receiver is gone) leave the queue.
            waiting.retain(|(t, _)| !t.reply.is_closed());
            while waiting.len() >= self.players_per_match
                || waiting
                    .first()
                    .is_some_and(|(_, since)| since.elapsed() >= self.max_wait)
            {
                let take = waiting.len().min(self.players_per_match);
                let group: Vec<Ticket> = waiting.drain(..take).map(|(t, _)| t).collect();
                next += 1;
                let event_id = format!("{}-m{next}", self.prefix);
                let players: Vec<String> = group.iter().map(|t| t.player.clone()).collect();
                let mut request = MatchRequest::new(event_id.clone(), players);
                request.match_details.match_id = Some(event_id.clone());
                request.match_details.fleet = Some(self.fleet.clone());
                match self
                    .publisher
                    .publish_json(&self.events_queue, &request)
                    .await
                {
                    Ok(()) => {
                        // Event ids are DNS labels, so the Match is named after the id.
                        self.stats.published(&event_id);
                        pending.insert(event_id, group.into_iter().map(|t| t.reply).collect());
                    }
                    Err(e) => self.stats.error("publish new_match_created", e),
                }
            }
            pending.retain(|_, players| players.iter().any(|p| !p.is_closed()));
        }
        let _ = consumer.await;
    }
}
