//! The Edge controller against the real kube-apiserver (and its garbage collector), the
//! operator in-process, game-server pods on kwok nodes and fake control interfaces:
//!
//! - the ConfigMap `<edge>-nginx` is created, owned by the Edge, with one UDP listener
//!   per server and the auth Service's cluster IP; the status carries its hash and the
//!   ports;
//! - a Match on the fleet gets the edge's address and its server's edge port;
//! - a spec change that does not change the config (publicAddress) writes no ConfigMap;
//!   one that does (a timeout) rewrites it, every server keeping its port;
//! - a server that goes leaves its port in quarantine, and an operator restarted after
//!   that still holds it (the port map came back from the ConfigMap): the next new
//!   server gets a never-used port, the live ones keep theirs;
//! - an Edge whose auth Service does not exist is a condition and an Event, no crash
//!   and no ConfigMap;
//! - the ConfigMap is garbage-collected with its Edge.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tanks_operator::api::{Edge, Match, MatchPhase};
use tanks_operator::edge::controller::{CONFIG_KEY, HASH_ANNOTATION, config_map_name};
use tanks_operator::matches::runtime::MatchConfig;
use tanks_operator::runtime::Config;
use tanks_testkit::fake_servers::FakeServers;

use crate::common::*;

const PUBLIC: &str = "203.0.113.10";

fn edge_config(env: &TestEnv, fake: &FakeServers, identity: &str) -> Config {
    let mut config = Config {
        namespace: Some(env.ns.clone()),
        poll_interval: Duration::from_millis(300),
        resolver: fake.resolver(),
        matches: Some(MatchConfig {
            namespace: Some(env.ns.clone()),
            resolver: fake.resolver(),
            ..MatchConfig::default()
        }),
        edges: true,
        ..Config::default()
    };
    config.reconciler.identity = identity.into();
    config.reconciler.resync = Duration::from_secs(2);
    config
}

/// Pins the fleet at `n` servers.
async fn scale(env: &TestEnv, n: i32) {
    env.fleets()
        .patch(
            "arena",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scaling": {"minReplicas": n, "maxReplicas": n}}})),
        )
        .await
        .expect("scale");
}

/// The Edge's status ports once they are exactly the fleet's `n` running pods.
async fn ports_of(env: &TestEnv, edges: &Api<Edge>, n: usize) -> BTreeMap<String, i32> {
    eventually(60, &format!("{n} servers behind the edge"), || async {
        let running: Vec<String> = env
            .running_pods("arena")
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        let edge = edges.get("front").await.ok()?;
        let ports = edge.status?.ports;
        (running.len() == n
            && ports.keys().cloned().collect::<Vec<_>>() == {
                let mut r = running.clone();
                r.sort();
                r
            })
        .then_some(ports)
    })
    .await
}

/// Like [`ports_of`], once `gone` is no longer among them.
async fn ports_of_without(
    env: &TestEnv,
    edges: &Api<Edge>,
    n: usize,
    gone: &str,
) -> BTreeMap<String, i32> {
    eventually(60, &format!("{gone} replaced behind the edge"), || async {
        let ports = ports_of(env, edges, n).await;
        (!ports.contains_key(gone)).then_some(ports)
    })
    .await
}

async fn delete_pod(env: &TestEnv, name: &str) {
    env.pods()
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
}

async fn listeners(cms: &Api<ConfigMap>) -> usize {
    let cm = cms.get(&config_map_name("front")).await.expect("configmap");
    cm.data.unwrap_or_default()[CONFIG_KEY]
        .matches(" udp reuseport;")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_config_follows_the_fleet_survives_a_restart_and_goes_with_its_edge() {
    let env = TestEnv::new("op-edge", 1, 20).await;
    let fake = FakeServers::start(2).await.expect("fake servers");
    let edges: Api<Edge> = Api::namespaced(env.client.clone(), &env.ns);
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    let matches: Api<Match> = Api::namespaced(env.client.clone(), &env.ns);

    // The auth Service: a cluster IP is all the edge needs of it.
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "auth"},
        "spec": {"ports": [{"port": 8888, "protocol": "TCP"}]},
    }))
    .unwrap();
    let service = Api::<Service>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("service");
    let cluster_ip = service.spec.unwrap().cluster_ip.expect("a cluster IP");

    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns).min(2).max(2).build(),
        )
        .await
        .expect("fleet");
    let operator = launch(&env, edge_config(&env, &fake, "edge-1"), "edge-1");

    let edge: Edge = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Edge",
        "metadata": {"name": "front"},
        "spec": {
            "publicAddress": PUBLIC,
            "auth": {"service": "auth", "proxyProtocol": false},
            "fleets": ["arena"],
            "ports": {"rangeStart": 21000, "rangeEnd": 21009, "quarantineSeconds": 300},
        },
    }))
    .unwrap();
    let edge = edges
        .create(&PostParams::default(), &edge)
        .await
        .expect("edge");

    // Created, owned, one listener per server, the hash in the status.
    let two = ports_of(&env, &edges, 2).await;
    let mut used: Vec<i32> = two.values().copied().collect();
    used.sort();
    assert_eq!(used, [21000, 21001]);
    let cm = cms.get(&config_map_name("front")).await.expect("configmap");
    let owner = &cm.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Edge", edge.uid().unwrap().as_str(), Some(true))
    );
    let text = cm.data.clone().unwrap_or_default()[CONFIG_KEY].clone();
    assert!(
        text.contains(&format!("server {cluster_ip}:8888;")),
        "the auth upstream is the Service's cluster IP:\n{text}"
    );
    assert_eq!(listeners(&cms).await, 2);
    let status = eventually(30, "the hash in the status", || async {
        let s = edges.get("front").await.ok()?.status?;
        (s.config_hash.as_deref() == cm.annotations().get(HASH_ANNOTATION).map(String::as_str))
            .then_some(s)
    })
    .await;
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "ConfigRendered")
    );
    assert_eq!(status.observed_generation, edge.meta().generation);

    // A Match on the fleet: the edge's address and its server's edge port.
    let m: Match = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Match",
        "metadata": {"name": "m1"},
        "spec": {"fleet": "arena", "sourceEventId": "ev-1", "players": ["a", "b"]},
    }))
    .unwrap();
    matches
        .create(&PostParams::default(), &m)
        .await
        .expect("match");
    let allocated = eventually(60, "the Match allocated", || async {
        let m = matches.get("m1").await.ok()?;
        (m.phase() == MatchPhase::Allocated).then_some(m)
    })
    .await;
    let st = allocated.status.unwrap();
    let endpoint = st.endpoint.unwrap();
    let server = st.game_server.unwrap();
    assert_eq!(endpoint.address, PUBLIC);
    assert_eq!(
        Some(&endpoint.port),
        two.get(&server),
        "the server's edge port"
    );

    // A change the config does not show (the public address): no write.
    let version = cm.resource_version();
    let patched = edges
        .patch(
            "front",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"publicAddress": "203.0.113.11"}})),
        )
        .await
        .unwrap();
    eventually(30, "the new generation observed", || async {
        let s = edges.get("front").await.ok()?.status?;
        (s.observed_generation == patched.meta().generation).then_some(())
    })
    .await;
    let cm = cms.get(&config_map_name("front")).await.unwrap();
    assert_eq!(cm.resource_version(), version, "same bytes, no write");

    // A change it does show: rewritten, every server on its port.
    edges
        .patch(
            "front",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"udp": {"idleTimeoutSeconds": 45}}})),
        )
        .await
        .unwrap();
    eventually(30, "the new timeout in the ConfigMap", || async {
        let cm = cms.get(&config_map_name("front")).await.ok()?;
        cm.data?[CONFIG_KEY]
            .contains("proxy_timeout 45s;")
            .then_some(())
    })
    .await;
    assert_eq!(ports_of(&env, &edges, 2).await, two);

    // Scale-up: the newcomer gets the next port, nobody moves.
    scale(&env, 3).await;
    let three = ports_of(&env, &edges, 3).await;
    for (server, port) in &two {
        assert_eq!(three.get(server), Some(port), "{server} moved");
    }
    assert_eq!(listeners(&cms).await, 3);

    // A server goes (its pod deleted; the fleet replaces it): its port is held in
    // quarantine, the replacement gets a never-used one.
    let gone = three.keys().find(|p| **p != server).unwrap().clone();
    delete_pod(&env, &gone).await;
    let replaced = ports_of_without(&env, &edges, 3, &gone).await;
    let newcomer = replaced
        .iter()
        .find(|(p, _)| !three.contains_key(*p))
        .unwrap();
    assert_eq!(*newcomer.1, 21003, "{} is in quarantine", three[&gone]);

    // A new operator: it reads the map back, so nobody moves and the quarantine holds.
    operator.stop().await;
    let operator = launch(&env, edge_config(&env, &fake, "edge-2"), "edge-2");
    let second = replaced
        .keys()
        .find(|p| **p != server && **p != *newcomer.0)
        .unwrap()
        .clone();
    delete_pod(&env, &second).await;
    let after = ports_of_without(&env, &edges, 3, &second).await;
    for (pod, port) in &after {
        if let Some(before) = replaced.get(pod) {
            assert_eq!(port, before, "{pod} moved across the restart");
        }
    }
    let last = after
        .iter()
        .find(|(p, _)| !replaced.contains_key(*p))
        .unwrap();
    assert_eq!(
        *last.1, 21004,
        "21000-21003 are live or in quarantine: the restarted operator read the map back"
    );

    // A Service that does not exist: a condition and an Event, no ConfigMap.
    let broken: Edge = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Edge",
        "metadata": {"name": "broken"},
        "spec": {"publicAddress": PUBLIC, "auth": {"service": "missing"}},
    }))
    .unwrap();
    edges.create(&PostParams::default(), &broken).await.unwrap();
    eventually(30, "broken: Ready False, AuthServiceMissing", || async {
        let s = edges.get("broken").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "AuthServiceMissing")
            .then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(30, "a Warning Event for broken", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                    && e.reason.as_deref() == Some("AuthServiceMissing")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
    assert!(
        cms.get_opt(&config_map_name("broken"))
            .await
            .unwrap()
            .is_none()
    );

    // Garbage-collected with its Edge (the controller-manager's collector).
    edges.delete("front", &Default::default()).await.unwrap();
    eventually(60, "the ConfigMap collected with its Edge", || async {
        cms.get_opt(&config_map_name("front"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    operator.stop().await;
    env.cleanup().await;
}
