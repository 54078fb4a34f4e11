//! A real dependency restarted (the devenv's stop and start: RabbitMQ, the
//! kube-apiserver, etcd) in the middle of a burst of 500 matchmaking events, with the
//! Match controller and consumer running in-process against the real kube-apiserver and
//! 50 fake game servers of 10 sessions (500 slots) that accept sessions past capacity
//! and count them. Every event ends as exactly one Match, allocated once, on a server
//! with room; the operator never stops (its task ends only when told to).
//!
//! The matchmaker here publishes at least once, as a real one must: a publish whose
//! confirm is lost in the outage is sent again. Before the burst one match is played to
//! its end and its Match deleted after the TTL; its event comes back once the broker is
//! up again (a redelivery, from the matchmaker's point of view), and must start nothing.
//! Without the consumer's record of consumed events it started a second match.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::ListParams;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tanks_core::protocol::matchmaking::{MatchAllocated, MatchRequest};
use tanks_core::rabbit::Publisher;
use tanks_operator::api::{Match, MatchPhase};
use tanks_operator::matches::consumer::ConsumerConfig;
use tanks_operator::matches::reconcile::MatchSettings;
use tanks_operator::matches::runtime::{MatchConfig, run_standalone};
use tanks_operator::servers::LoadIndex;
use tanks_testkit::fake_servers::FakeServers;

use crate::cluster::TestCluster;
use crate::outage::{self, wait_for};

const SERVERS: usize = 50;
const CAPACITY: u32 = 10;
const EVENTS: usize = 500;
/// The outage starts once this many sessions of the burst exist.
const RESTART_AT: usize = 100;

/// A matchmaker's publisher: at least once, reconnecting until the broker confirms.
struct AtLeastOnce {
    uri: String,
    queue: String,
    publisher: Option<Publisher>,
    /// Publishes that failed and were sent again.
    retries: usize,
}

impl AtLeastOnce {
    async fn publish(&mut self, event: &MatchRequest) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.publisher.is_none() {
                self.publisher = match Publisher::connect(&self.uri).await {
                    Ok(p) if p.declare(&self.queue).await.is_ok() => Some(p),
                    _ => None,
                };
            }
            if let Some(p) = &self.publisher {
                match p.publish_json(&self.queue, event).await {
                    Ok(()) => return,
                    Err(_) => self.publisher = None,
                }
            }
            self.retries += 1;
            assert!(
                Instant::now() < deadline,
                "RabbitMQ took no message for 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn event(id: &str) -> MatchRequest {
    MatchRequest::new(id, vec![format!("{id}-a"), format!("{id}-b")])
}

async fn matches_by_phase(api: &Api<Match>) -> Result<Vec<Match>, String> {
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| e.to_string())
}

fn count(list: &[Match], phase: MatchPhase) -> usize {
    list.iter().filter(|m| m.phase() == phase).count()
}

fn named<'a>(list: &'a [Match], name: &str) -> Option<&'a Match> {
    list.iter()
        .find(|m| m.metadata.name.as_deref() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_burst_every_event_is_one_match_allocated_once() {
    five_hundred_events_through("rabbitmq", How::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_restarted_mid_burst_every_event_is_one_match_allocated_once() {
    five_hundred_events_through("kube-apiserver", How::Stop).await;
}

/// etcd SIGKILLed, not stopped: it gets no chance to finish anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_mid_burst_every_event_is_one_match_allocated_once() {
    five_hundred_events_through("etcd", How::Kill).await;
}

/// How a service is taken down.
#[derive(Clone, Copy)]
enum How {
    /// `hack/devenv down`: SIGTERM, then SIGKILL after 10 s.
    Stop,
    /// SIGKILL of its process group at once.
    Kill,
}

/// The burst, with `service` taken down and started again once a fifth of it is
/// allocated.
async fn five_hundred_events_through(service: &'static str, how: How) {
    let _serial = outage::serialized();
    tanks_core::telemetry::init_tracing();
    let amqp = tanks_testkit::require_rabbitmq();
    let cluster = TestCluster::new(&format!("fault-burst-{service}"), 200).await;
    cluster.game_server_pods("tanks", SERVERS).await;
    let fake = FakeServers::start(CAPACITY).await.expect("fake servers");
    fake.accept_past_capacity();
    let events = tanks_testkit::unique("matchmaking-events");
    let allocations = tanks_testkit::unique("match-allocations");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = MatchConfig {
        namespace: Some(cluster.ns.clone()),
        settings: MatchSettings {
            pending_timeout: Duration::from_secs(300),
            pending_retry: Duration::from_millis(300),
            finished_ttl: Duration::from_secs(2),
            ..Default::default()
        },
        consumer: Some(ConsumerConfig {
            amqp_uri: amqp.clone(),
            queue: events.clone(),
            namespace: cluster.ns.clone(),
            default_fleet: Some("tanks".into()),
            ..Default::default()
        }),
        publish: Some((amqp.clone(), allocations.clone())),
        resolver: fake.resolver(),
        follow_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let operator = tokio::spawn(run_standalone(
        cluster.client.clone(),
        config,
        Arc::new(LoadIndex::default()),
        Duration::from_millis(250),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let api: Api<Match> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let mut matchmaker = AtLeastOnce {
        uri: amqp.clone(),
        queue: events.clone(),
        publisher: None,
        retries: 0,
    };

    // One match played to its end, its Match deleted after the TTL.
    matchmaker.publish(&event("ev-old")).await;
    wait_for("ev-old allocated", Duration::from_secs(60), || async {
        let list = matches_by_phase(&api).await?;
        (named(&list, "ev-old").map(|m| m.phase()) == Some(MatchPhase::Allocated))
            .then_some(())
            .ok_or(format!("{} Matches", list.len()))
    })
    .await;
    fake.finish("ev-old");
    wait_for(
        "ev-old deleted after its TTL",
        Duration::from_secs(60),
        || async {
            let list = matches_by_phase(&api).await?;
            named(&list, "ev-old")
                .is_none()
                .then_some(())
                .ok_or(format!("{:?}", named(&list, "ev-old").map(|m| m.phase())))
        },
    )
    .await;
    let before_burst = fake.sessions_created_total();

    // The burst, paced (about 100 a second) so the outage lands while it is published
    // and allocated.
    let burst = tokio::spawn(async move {
        for i in 0..EVENTS {
            matchmaker.publish(&event(&format!("ev-{i:04}"))).await;
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        matchmaker
    });
    tokio::time::timeout(
        Duration::from_secs(120),
        fake.sessions_created(before_burst + RESTART_AT),
    )
    .await
    .expect("the burst is being allocated");
    let at_stop = api.list(&ListParams::default()).await.expect("list").items;
    let outage = match how {
        How::Stop => outage::stop(service).await,
        How::Kill => outage::kill(service).await,
    };
    let away = outage.end_async().await;
    let back = Instant::now();
    assert!(
        !operator.is_finished(),
        "the operator stopped in the outage"
    );
    println!(
        "{service} stopped with {} Matches ({} Allocated) and {} sessions; back after {away:.1?}",
        at_stop.len(),
        count(&at_stop, MatchPhase::Allocated),
        fake.sessions_created_total() - before_burst,
    );
    assert!(
        count(&at_stop, MatchPhase::Allocated) < EVENTS,
        "the outage did not land mid-burst"
    );

    let mut matchmaker = burst.await.expect("burst published");
    // The old event again, after its Match is gone.
    matchmaker.publish(&event("ev-old")).await;

    let list = wait_for(
        "every event of the burst Allocated",
        Duration::from_secs(240),
        || async {
            assert!(!operator.is_finished(), "the operator stopped");
            let list = matches_by_phase(&api).await?;
            let allocated = count(&list, MatchPhase::Allocated);
            (allocated == EVENTS)
                .then_some(list.clone())
                .ok_or(format!("{allocated} of {} Allocated", list.len()))
        },
    )
    .await;
    let recovered = back.elapsed();

    // Stop the consumer: unsettled deliveries go back to the queue, so an empty queue
    // after it means every delivery, the old event's included, was settled.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), operator)
        .await
        .expect("the operator stops")
        .expect("operator task")
        .expect("the operator ran without an error");
    let publisher = Publisher::connect(&amqp).await.expect("publisher");
    let channel = publisher.channel();
    let waiting = channel
        .queue_declare(
            events.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count();
    assert_eq!(waiting, 0, "events left unconsumed");

    let names: HashSet<&str> = list
        .iter()
        .filter_map(|m| m.metadata.name.as_deref())
        .collect();
    let lost: Vec<String> = (0..EVENTS)
        .map(|i| format!("ev-{i:04}"))
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert_eq!(lost, Vec::<String>::new(), "events without a Match");
    assert_eq!(
        list.len(),
        EVENTS,
        "Matches beyond one per event: {names:?}"
    );
    assert!(
        named(&list, "ev-old").is_none(),
        "the old event started again"
    );
    assert_eq!(fake.doubly_placed(), [], "a match got two sessions");
    assert_eq!(
        fake.sessions_created_total() - before_burst,
        EVENTS,
        "sessions created for the burst"
    );
    assert_eq!(
        fake.over_capacity_acceptances(),
        [],
        "sessions past capacity"
    );
    assert_eq!(fake.peak_over_capacity(), []);

    // The matchmaker heard of every allocation.
    let mut heard = HashSet::new();
    while let Some(msg) = channel
        .basic_get(
            allocations.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic_get")
    {
        let a: MatchAllocated = serde_json::from_slice(&msg.delivery.data).expect("allocation");
        heard.insert(a.name);
    }
    heard.remove("ev-old");
    assert_eq!(heard.len(), EVENTS, "allocations the matchmaker heard of");
    println!(
        "{service} restart: {EVENTS} events, {} republished, 0 lost, 0 duplicated, 0 over capacity; \
         {service} away {away:.1?}, all allocated {recovered:.1?} after it returned",
        matchmaker.retries
    );

    for q in [&events, &allocations] {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
        let dead = format!("{q}.dead");
        let _ = channel
            .queue_delete(dead.as_str().into(), Default::default())
            .await;
    }
    cluster.cleanup().await;
}
