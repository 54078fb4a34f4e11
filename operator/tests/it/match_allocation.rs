//! Match allocation end to end against the real kube-apiserver and real RabbitMQ, with
//! 50 game-server pods on a kwok node whose control interfaces are served in-process
//! ([`FakeServers`], 10 sessions each: 500 slots). The fake servers accept sessions
//! past their capacity and count them, so only the operator keeps within capacity.
//! 500 events, published in two bursts of 250, all end `Allocated`, no session past a
//! server's capacity, no match on two servers, although the operator is killed while
//! allocating the first burst (shown: part of it allocated, part not) and a new one
//! takes over. Then: a 501st match waits `Pending`, with its reason, until a session ends;
//! players in make a match `Running`; ended matches go `Finished` and are deleted after
//! the TTL.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use lapin::options::BasicGetOptions;
use tanks_core::protocol::matchmaking::{MatchAllocated, MatchRequest};
use tanks_core::rabbit::Publisher;
use tanks_operator::api::{Match, MatchPhase};
use tanks_operator::matches::consumer::ConsumerConfig;
use tanks_operator::matches::reconcile::MatchSettings;
use tanks_operator::matches::runtime::{MatchConfig, run_standalone};
use tanks_operator::servers::LoadIndex;
use tanks_testkit::fake_servers::FakeServers;

const SERVERS: usize = 50;
const CAPACITY: u32 = 10;
const EVENTS: usize = 500;

struct Setup {
    client: kube::Client,
    ns: String,
    amqp: String,
    events: String,
    allocations: String,
    fake: FakeServers,
}

fn operator(s: &Setup) -> tokio::task::JoinHandle<()> {
    let config = MatchConfig {
        namespace: Some(s.ns.clone()),
        settings: MatchSettings {
            pending_timeout: Duration::from_secs(120),
            pending_retry: Duration::from_millis(300),
            finished_ttl: Duration::from_secs(2),
            ..Default::default()
        },
        consumer: Some(ConsumerConfig {
            amqp_uri: s.amqp.clone(),
            queue: s.events.clone(),
            namespace: s.ns.clone(),
            default_fleet: Some("tanks".into()),
            ..Default::default()
        }),
        publish: Some((s.amqp.clone(), s.allocations.clone())),
        resolver: s.fake.resolver(),
        follow_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let client = s.client.clone();
    tokio::spawn(async move {
        run_standalone(
            client,
            config,
            Arc::new(LoadIndex::default()),
            Duration::from_millis(250),
            std::future::pending(),
        )
        .await
        .expect("operator");
    })
}

async fn phases(api: &Api<Match>) -> (Vec<Match>, HashMap<MatchPhase, usize>) {
    let list = api.list(&ListParams::default()).await.expect("list").items;
    let mut by: HashMap<MatchPhase, usize> = HashMap::new();
    for m in &list {
        *by.entry(m.phase()).or_default() += 1;
    }
    (list, by)
}

async fn wait_for(
    api: &Api<Match>,
    what: &str,
    secs: u64,
    done: impl Fn(&[Match], &HashMap<MatchPhase, usize>) -> bool,
) -> Vec<Match> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (list, by) = phases(api).await;
        if done(&list, &by) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {by:?} of {}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_events_allocate_within_capacity_across_an_operator_restart() {
    tanks_core::telemetry::init_tracing();
    let amqp = tanks_testkit::require_rabbitmq();
    let client = common::client().await;
    common::apply_crds(&client).await;
    let ns = common::namespace(&client, "match-alloc").await;
    let node = format!("{ns}-node");
    common::create_kwok_node(&client, &node, &ns, 200).await;
    common::game_server_pods(&client, &ns, "tanks", &node, SERVERS).await;
    let s = Setup {
        client: client.clone(),
        ns: ns.clone(),
        amqp: amqp.clone(),
        events: tanks_testkit::unique("matchmaking-events"),
        allocations: tanks_testkit::unique("match-allocations"),
        fake: FakeServers::start(CAPACITY).await.expect("fake servers"),
    };
    // A full server takes the session anyway and records it: the operator's own
    // bookkeeping is what keeps every server within capacity.
    s.fake.accept_past_capacity();
    let publisher = Publisher::connect(&amqp).await.expect("publisher");
    publisher.declare(&s.events).await.expect("declare");
    publisher.declare(&s.allocations).await.expect("declare");

    let first = operator(&s);
    let publish = |range: std::ops::Range<usize>| {
        let (publisher, queue) = (&publisher, &s.events);
        async move {
            for i in range {
                let event = MatchRequest::new(
                    format!("ev-{i:04}"),
                    vec![format!("p{i}a"), format!("p{i}b")],
                );
                publisher
                    .publish_json(queue, &event)
                    .await
                    .expect("publish");
            }
        }
    };
    // Half the events, then kill the operator while it is allocating them (no graceful
    // shutdown: in-flight reconciles are dropped between reservation, session call and
    // status write), publish the rest at once, and start another operator.
    publish(0..EVENTS / 2).await;
    let api: Api<Match> = Api::namespaced(client.clone(), &ns);
    // The kill lands the moment the fake servers have created a tenth of the sessions,
    // not a poll interval later.
    tokio::time::timeout(
        Duration::from_secs(120),
        s.fake.sessions_created(EVENTS / 10),
    )
    .await
    .expect("allocations under way");
    first.abort();
    let _ = first.await;
    let sessions_at_kill = s.fake.live_sessions();
    // The kill landed mid-way: some of the first burst allocated, some not (still
    // Pending, or not even a Match yet).
    let (at_kill, by) = phases(&api).await;
    let allocated_at_kill = by.get(&MatchPhase::Allocated).copied().unwrap_or(0);
    println!(
        "at the kill: {} Matches {by:?}, {sessions_at_kill} sessions",
        at_kill.len()
    );
    assert!(
        allocated_at_kill < EVENTS / 2,
        "the kill did not land mid-way: {allocated_at_kill} of {} allocated",
        EVENTS / 2
    );
    assert!(
        (EVENTS / 10..EVENTS / 2).contains(&sessions_at_kill),
        "the kill did not land mid-way: {sessions_at_kill} sessions"
    );
    publish(EVENTS / 2..EVENTS).await;
    let second = operator(&s);

    let list = wait_for(&api, "all allocated", 180, |list, by| {
        list.len() == EVENTS && by.get(&MatchPhase::Allocated) == Some(&EVENTS)
    })
    .await;
    assert_eq!(
        s.fake.over_capacity_acceptances(),
        [],
        "sessions placed on full servers"
    );
    assert_eq!(
        s.fake.peak_over_capacity(),
        [],
        "a server went over capacity"
    );
    assert_eq!(
        s.fake.doubly_placed(),
        [],
        "a match got sessions on two servers"
    );
    assert_eq!(s.fake.live_sessions(), EVENTS);
    let mut per_server: HashMap<String, u32> = HashMap::new();
    for m in &list {
        let st = m.status.as_ref().unwrap();
        let endpoint = st.endpoint.as_ref().expect("endpoint");
        assert!(
            endpoint.port >= 7000 && endpoint.protocol == "UDP",
            "{endpoint:?}"
        );
        assert!(st.session_id.is_some());
        *per_server
            .entry(st.game_server.clone().unwrap())
            .or_default() += 1;
    }
    assert!(
        per_server.values().all(|n| *n <= CAPACITY),
        "{per_server:?}"
    );
    assert_eq!(per_server.len(), SERVERS, "every slot of every server used");

    // The matchmaker heard of every allocation (at least once).
    let channel = publisher.channel();
    let mut heard = HashSet::new();
    while let Some(msg) = channel
        .basic_get(
            s.allocations.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic_get")
    {
        let a: MatchAllocated =
            serde_json::from_slice(&msg.delivery.data).expect("allocation message");
        let m = list
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(a.name.as_str()))
            .expect("known match");
        let st = m.status.as_ref().unwrap();
        assert_eq!(Some(&a.session_id), st.session_id.as_ref());
        assert_eq!(
            i32::from(a.endpoint.port),
            st.endpoint.as_ref().unwrap().port
        );
        heard.insert(a.name);
    }
    assert_eq!(heard.len(), EVENTS);

    // Full fleet: one more match waits, with a reason.
    publisher
        .publish_json(
            &s.events,
            &MatchRequest::new("ev-late", vec!["late".into()]),
        )
        .await
        .expect("publish");
    let waiting = wait_for(&api, "a pending match with a reason", 30, |list, _| {
        list.iter().any(|m| {
            m.metadata.name.as_deref() == Some("ev-late")
                && m.status.as_ref().is_some_and(|s| s.reason.is_some())
        })
    })
    .await;
    let late = waiting
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some("ev-late"))
        .unwrap();
    assert_eq!(late.phase(), MatchPhase::Pending);

    // Players join one match, another ends: Running, Finished (then deleted), and the
    // freed slot goes to the waiting match.
    s.fake.join("ev-0001", 2);
    s.fake.finish("ev-0000");
    wait_for(
        &api,
        "running, finished and the late match allocated",
        30,
        |list, _| {
            let phase = |n: &str| {
                list.iter()
                    .find(|m| m.metadata.name.as_deref() == Some(n))
                    .map(|m| m.phase())
            };
            phase("ev-0001") == Some(MatchPhase::Running)
                && matches!(phase("ev-0000"), Some(MatchPhase::Finished) | None)
                && phase("ev-late") == Some(MatchPhase::Allocated)
        },
    )
    .await;
    wait_for(
        &api,
        "the finished match deleted after its TTL",
        30,
        |list, _| {
            list.iter()
                .all(|m| m.metadata.name.as_deref() != Some("ev-0000"))
        },
    )
    .await;
    assert_eq!(s.fake.over_capacity_acceptances(), []);
    assert_eq!(s.fake.peak_over_capacity(), []);
    assert_eq!(s.fake.doubly_placed(), []);

    second.abort();
    for q in [&s.events, &s.allocations] {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
        let _ = channel
            .queue_delete(format!("{q}.dead").as_str().into(), Default::default())
            .await;
    }
    common::delete_namespace(&client, &ns).await;
    common::delete_node(&client, &node).await;
}
