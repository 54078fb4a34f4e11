//! A newly allocated server is protected from the cluster autoscaler before its endpoint
//! is handed out. The real operator (GameFleet and Match controllers) against the real
//! API server, with kwok pods whose control interfaces are faked in-process and polled
//! at the production interval (2 s), so a mark that waited for the next load report
//! would come after the Match shows `Allocated`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tanks_operator::api::{Match, MatchPhase, labels};
use tanks_operator::matches::runtime::MatchConfig;
use tanks_operator::runtime::Config;
use tanks_testkit::fake_servers::FakeServers;

fn mark(p: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    p.annotations().get(labels::SAFE_TO_EVICT).cloned()
}

/// Follows `match_name`'s events until it reaches `phase`.
async fn until_phase(
    events: &mut (impl futures::Stream<Item = Result<Match, watcher::Error>> + Unpin),
    match_name: &str,
    phase: MatchPhase,
) -> Match {
    let wait = async {
        while let Some(m) = events.try_next().await.expect("match watch") {
            if m.name_any() == match_name && m.phase() == phase {
                return m;
            }
        }
        panic!("the match watch ended");
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("{match_name} never reached {phase:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocated_server_is_not_evictable_before_the_match_shows_allocated() {
    let env = TestEnv::new("op-evict", 1, 100).await;
    let fake = FakeServers::start(2).await.expect("fake servers");
    let mut config = Config {
        namespace: Some(env.ns.clone()),
        poll_interval: Duration::from_secs(2),
        resolver: fake.resolver(),
        ..Config::default()
    };
    config.reconciler.identity = "solo".into();
    config.reconciler.resync = Duration::from_secs(2);
    config.matches = Some(MatchConfig {
        namespace: Some(env.ns.clone()),
        follow_interval: Duration::from_millis(300),
        first_round_wait: Duration::from_secs(2),
        ..MatchConfig::default()
    });
    let op = launch(&env, config, "solo");
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns)
                .buffer_slots(0)
                .min(1)
                .max(1)
                .build(),
        )
        .await
        .unwrap();
    let server = eventually(60, "one empty server, marked evictable", || async {
        let pods = env.running_pods("arena").await;
        let [p] = pods.as_slice() else { return None };
        (mark(p).as_deref() == Some("true")).then(|| p.name_any())
    })
    .await;

    // Every value the server's mark takes from here on, in order.
    let marks = Arc::new(Mutex::new(Vec::<String>::new()));
    let pod_watch = {
        let (marks, server) = (marks.clone(), server.clone());
        let mut pods = watcher(env.pods(), watcher::Config::default())
            .applied_objects()
            .boxed();
        tokio::spawn(async move {
            while let Ok(Some(p)) = pods.try_next().await {
                let mut marks = marks.lock().unwrap();
                if p.name_any() == server
                    && let Some(m) = mark(&p)
                    && marks.last() != Some(&m)
                {
                    marks.push(m);
                }
            }
        })
    };
    eventually(10, "the pod watch has listed the server", || async {
        (!marks.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let matches: Api<Match> = Api::namespaced(env.client.clone(), &env.ns);
    let mut events = watcher(matches.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let m: Match = serde_json::from_value(serde_json::json!({
        "apiVersion": "tanks.dev/v1alpha1", "kind": "Match",
        "metadata": {"name": "m0"},
        "spec": {"fleet": "arena", "players": ["a", "b"], "sourceEventId": "e0"},
    }))
    .unwrap();
    matches.create(&PostParams::default(), &m).await.unwrap();

    let allocated = until_phase(&mut events, "m0", MatchPhase::Allocated).await;
    let at_allocation = env.pods().get(&server).await.expect("the server's pod");
    assert_eq!(
        allocated.status.and_then(|s| s.game_server).as_deref(),
        Some(server.as_str())
    );
    assert_eq!(
        mark(&at_allocation).as_deref(),
        Some("false"),
        "the Match shows Allocated while its server is still evictable"
    );

    // Players join: the next load report lists the session, the Match goes Running. Up
    // to then only the allocation knew of it; the mark must not have flipped back.
    fake.join("m0", 2);
    until_phase(&mut events, "m0", MatchPhase::Running).await;
    assert_eq!(
        marks.lock().unwrap().as_slice(),
        ["true", "false"],
        "the mark's values from before the allocation to Running"
    );

    // The session ends, the server is empty again: evictable again.
    fake.finish("m0");
    eventually(30, "the empty server marked evictable again", || async {
        let p = env.pods().get(&server).await.ok()?;
        (mark(&p).as_deref() == Some("true")).then_some(())
    })
    .await;
    pod_watch.abort();
    op.stop().await;
    env.cleanup().await;
}
