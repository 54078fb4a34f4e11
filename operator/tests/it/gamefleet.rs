//! The GameFleet operator against the real kube-apiserver of `hack/devenv`, with kwok
//! nodes (pods go Running) and fake game servers speaking the control interface over
//! HTTP. Each test has its own namespace, nodes and operator (watching that namespace).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tanks_operator::api::{Match, MatchPhase, labels};
use tanks_operator::matches::runtime::MatchConfig;

fn host_port(p: &Pod) -> Option<i32> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find_map(|port| {
            (port.name.as_deref() == Some(labels::GAME_PORT_NAME))
                .then_some(port.host_port)
                .flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_creates_running_pods_with_distinct_host_ports_and_replaces_failed_ones() {
    let env = TestEnv::new("op-create", 2, 100).await;
    let fake = FakeServers::start().await;
    let op = start_operator(&env, &fake, "solo", false);
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns).min(8).build(),
        )
        .await
        .unwrap();

    let pods = eventually(60, "8 running pods", || async {
        let p = env.running_pods("arena").await;
        (p.len() == 8).then_some(p)
    })
    .await;
    let mut per_node: HashMap<String, HashSet<i32>> = HashMap::new();
    for p in &pods {
        assert_eq!(p.owner_references()[0].kind, "GameFleet");
        assert!(p.labels().contains_key(labels::TEMPLATE_HASH));
        let port = host_port(p).expect("dynamic host port");
        assert!((7000..=8999).contains(&port));
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(
            per_node.entry(node).or_default().insert(port),
            "host port {port} twice on a node"
        );
    }
    let fleet = eventually(30, "status shows 8 ready", || async {
        let f = env.fleets().get("arena").await.ok()?;
        (f.status.as_ref()?.ready_replicas == 8).then_some(f)
    })
    .await;
    let status = fleet.status.unwrap();
    assert_eq!(status.desired_replicas, 8);
    assert_eq!(status.selector.as_deref(), Some("tanks.dev/fleet=arena"));
    assert_eq!(status.observed_generation, fleet.metadata.generation);

    // A failed pod (as after an eviction) is replaced.
    let victim = pods[0].name_any();
    let failed = json!({"status": {"phase": "Failed", "reason": "Evicted"}});
    env.pods()
        .patch_status(&victim, &PatchParams::default(), &Patch::Merge(failed))
        .await
        .unwrap();
    eventually(30, "failed pod replaced", || async {
        let p = env.running_pods("arena").await;
        (p.len() == 8 && p.iter().all(|p| p.name_any() != victim)).then_some(())
    })
    .await;
    op.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_drive_scale_up_and_down_and_busy_servers_stay() {
    let env = TestEnv::new("op-scale", 2, 100).await;
    let fake = FakeServers::start().await;
    let op = start_operator(&env, &fake, "solo", false);
    // 2 sessions per server, 4 free slots wanted: 2 servers when idle.
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns).buffer_slots(4).max(10).build(),
        )
        .await
        .unwrap();
    let first = eventually(60, "2 idle servers", || async {
        let p = env.running_pods("arena").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    // Both fill up: 4 sessions + 4 free = 4 servers.
    for p in &first {
        fake.set_sessions(&p.name_any(), 2);
    }
    eventually(60, "scale up to 4", || async {
        (env.running_pods("arena").await.len() == 4).then_some(())
    })
    .await;
    let busy = first[0].name_any();
    fake.set_sessions(&first[1].name_any(), 0);
    // 2 sessions + 4 free = 3 servers; after the 3 s delay one empty server goes, never
    // the busy one.
    let pods = eventually(60, "scale down to 3", || async {
        let p = env.live_pods("arena").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    assert!(
        pods.iter().any(|p| p.name_any() == busy),
        "the busy server was removed"
    );
    let busy_pod = pods.iter().find(|p| p.name_any() == busy).unwrap();
    eventually(20, "busy pod marked not evictable", || async {
        let p = env.pods().get(&busy).await.ok()?;
        (p.annotations()
            .get(labels::SAFE_TO_EVICT)
            .map(String::as_str)
            == Some("false"))
        .then_some(())
    })
    .await;
    let _ = busy_pod;
    // Steady load: no change for a while (no oscillation).
    let before: HashSet<String> = env
        .live_pods("arena")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after: HashSet<String> = env
        .live_pods("arena")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(before, after, "a steady load changed the fleet");
    let f = env.fleets().get("arena").await.unwrap();
    let s = f.status.unwrap();
    assert_eq!((s.sessions, s.players, s.allocated_replicas), (2, 8, 1));
    op.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_matches_scale_the_fleet_up() {
    let env = TestEnv::new("op-pending", 1, 100).await;
    let fake = FakeServers::start().await;
    // No server ever has room: every Match stays Pending and counts as demand.
    fake.all_unready();
    let mut config = operator_config(&env, &fake, "solo", false);
    config.matches = Some(MatchConfig {
        namespace: Some(env.ns.clone()),
        follow_interval: Duration::from_millis(300),
        first_round_wait: Duration::from_secs(2),
        ..MatchConfig::default()
    });
    let op = launch(&env, config, "solo");
    // 2 sessions per server, no free slots wanted: the minimum of 1 server when idle.
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns)
                .buffer_slots(0)
                .min(1)
                .max(10)
                .build(),
        )
        .await
        .unwrap();
    eventually(60, "1 idle server", || async {
        (env.running_pods("arena").await.len() == 1).then_some(())
    })
    .await;
    let matches: Api<Match> = Api::namespaced(env.client.clone(), &env.ns);
    for i in 0..5 {
        let m: Match = serde_json::from_value(serde_json::json!({
            "apiVersion": "tanks.dev/v1alpha1", "kind": "Match",
            "metadata": {"name": format!("m{i}")},
            "spec": {"fleet": "arena", "players": [format!("p{i}")], "sourceEventId": format!("e{i}")},
        }))
        .unwrap();
        matches.create(&PostParams::default(), &m).await.unwrap();
    }
    // 5 pending sessions, 2 per server: 3 servers.
    eventually(60, "3 servers for 5 pending matches", || async {
        (env.running_pods("arena").await.len() == 3).then_some(())
    })
    .await;
    // The reason is read until it names the 5 sessions: between a Match's allocation and
    // the next load poll, the session is neither pending nor reported yet, so one read
    // can land in that window (seen once on a loaded machine).
    eventually(
        10,
        "the scaling reason counts the pending matches",
        || async {
            let status = env.fleets().get("arena").await.ok()?.status?;
            status
                .desired_reason
                .filter(|why| why.contains("5 sessions"))
                .map(|_| ())
        },
    )
    .await;
    for m in matches.list(&Default::default()).await.unwrap() {
        let name = m.name_any();
        let s = m.status.expect("a status");
        assert_eq!(s.phase, MatchPhase::Pending, "{name}");
        assert!(
            s.reason
                .unwrap_or_default()
                .contains("waiting for a game server")
        );
    }
    op.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_rolls_and_a_busy_pod_is_never_deleted() {
    let env = TestEnv::new("op-roll", 2, 100).await;
    let fake = FakeServers::start().await;
    let op = start_operator(&env, &fake, "solo", false);
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns).min(3).build(),
        )
        .await
        .unwrap();
    let old = eventually(60, "3 ready servers", || async {
        let f = env.fleets().get("arena").await.ok()?;
        let p = env.running_pods("arena").await;
        (f.status?.ready_replicas == 3 && p.len() == 3).then_some(p)
    })
    .await;
    let busy = old[0].name_any();
    fake.set_sessions(&busy, 1);

    // Watch every deletion: the busy pod must not be deleted while it has a session.
    let violated = Arc::new(AtomicBool::new(false));
    let watch = {
        let (violated, fake, busy, pods) =
            (violated.clone(), fake.clone(), busy.clone(), env.pods());
        tokio::spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(p)) = stream.next().await {
                if p.name_any() == busy
                    && p.metadata.deletion_timestamp.is_some()
                    && fake.sessions(&busy) > 0
                {
                    violated.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    eventually(20, "busy pod seen busy", || async {
        let s = env.fleets().get("arena").await.ok()?.status?;
        (s.allocated_replicas == 1).then_some(())
    })
    .await;

    let change = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "gameserver", "image": "tanks/gameserver:test", "env": [{"name": "VERSION", "value": "2"}]}
    ]}}}});
    env.fleets()
        .patch("arena", &PatchParams::default(), &Patch::Merge(change))
        .await
        .unwrap();
    let new_hash = eventually(10, "new template hash", || async {
        let s = env.fleets().get("arena").await.ok()?.status?;
        let h = s.template_hash?;
        (h != old[0].labels()[labels::TEMPLATE_HASH]).then_some(h)
    })
    .await;
    // Empty old servers are replaced; the busy one is drained and stays.
    eventually(
        60,
        "two empty old servers replaced, busy one drained",
        || async {
            let p = env.live_pods("arena").await;
            let new = p
                .iter()
                .filter(|p| p.labels()[labels::TEMPLATE_HASH] == new_hash)
                .count();
            let old_left: Vec<String> = p
                .iter()
                .filter(|p| p.labels()[labels::TEMPLATE_HASH] != new_hash)
                .map(|p| p.name_any())
                .collect();
            (new == 3 && old_left == [busy.clone()] && fake.drained(&busy)).then_some(())
        },
    )
    .await;
    // The operator has reconciled the drained state (its status says so), and the busy
    // server is still there.
    eventually(30, "status: 3 updated, 1 draining", || async {
        let f = env.fleets().get("arena").await.ok()?;
        let st = f.status?;
        (st.updated_replicas == 3
            && st.draining_replicas == 1
            && st.observed_generation == f.metadata.generation)
            .then_some(())
    })
    .await;
    assert!(
        env.pods()
            .get(&busy)
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    // The match ends: the drained server goes.
    fake.set_sessions(&busy, 0);
    eventually(30, "drained server deleted once empty", || async {
        let p = env.live_pods("arena").await;
        (p.len() == 3 && p.iter().all(|p| p.name_any() != busy)).then_some(())
    })
    .await;
    assert!(!violated.load(Ordering::SeqCst), "a busy pod was deleted");
    watch.abort();
    op.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarted_mid_scale_converges_without_duplicates() {
    let env = TestEnv::new("op-restart", 4, 200).await;
    let fake = FakeServers::start().await;
    let op = start_operator(&env, &fake, "first", false);
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns).max(400).replicas(300).build(),
        )
        .await
        .unwrap();
    eventually(60, "scale-up under way", || async {
        let n = env.live_pods("arena").await.len();
        (n >= 30).then_some(())
    })
    .await;
    op.kill();
    let at_kill = env.live_pods("arena").await.len();
    let op = start_operator(&env, &fake, "second", false);
    let max_seen = std::sync::atomic::AtomicUsize::new(0);
    eventually(120, "300 running pods", || {
        let env = &env;
        let max_seen = &max_seen;
        async move {
            let live = env.live_pods("arena").await;
            max_seen.fetch_max(live.len(), Ordering::SeqCst);
            let running = live
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == 300).then_some(())
        }
    })
    .await;
    // The new operator has seen all 300 and wants no more (its status says so): any
    // duplicate it was going to create is created by now.
    eventually(30, "status: 300 of 300", || async {
        let f = env.fleets().get("arena").await.ok()?;
        let st = f.status?;
        (st.replicas == 300
            && st.desired_replicas == 300
            && st.observed_generation == f.metadata.generation)
            .then_some(())
    })
    .await;
    max_seen.fetch_max(env.live_pods("arena").await.len(), Ordering::SeqCst);
    let live = env.live_pods("arena").await.len();
    assert_eq!(live, 300, "duplicates after restart (killed at {at_kill})");
    let max_seen = max_seen.load(Ordering::SeqCst);
    assert!(max_seen <= 300, "saw {max_seen} pods at once");
    op.stop().await;
    env.cleanup().await;
}

/// The operator binary as a child process of this test, with a 4 s Lease in the test's
/// namespace; killed (SIGKILL) when dropped. Its log goes to a file in the temp folder.
struct OperatorProcess {
    child: tanks_testkit::process::KillOnDrop,
    metrics: String,
}

const LEASE: Duration = Duration::from_secs(4);

fn operator_process(env: &TestEnv, identity: &str) -> OperatorProcess {
    let metrics = format!("127.0.0.1:{}", tanks_testkit::process::free_port());
    let log_path = std::env::temp_dir().join(format!("{}-{identity}.log", env.ns));
    let log = std::fs::File::create(&log_path).expect("operator log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_operator"))
        .env("KUBECONFIG", tanks_testkit::kubeconfig())
        .env("RUST_LOG", "info")
        .args(["--namespace", &env.ns, "--lease-namespace", &env.ns])
        .args(["--lease-seconds", &LEASE.as_secs().to_string()])
        .args(["--identity", identity, "--metrics-addr", &metrics])
        .args(["--no-matches", "--poll-interval-ms", "500"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the operator binary");
    eprintln!("operator {identity}: log in {}", log_path.display());
    OperatorProcess {
        child: tanks_testkit::process::KillOnDrop(child),
        metrics,
    }
}

impl OperatorProcess {
    /// `/readyz` answers 200: it leads, or stands by for the Lease.
    async fn ready(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut conn) = tokio::net::TcpStream::connect(&self.metrics).await else {
            return false;
        };
        let mut answer = String::new();
        conn.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
            .await
            .is_ok()
            && conn.read_to_string(&mut answer).await.is_ok()
            && answer.split_whitespace().nth(1) == Some("200")
    }

    /// SIGKILL: no shutdown, no Lease release.
    fn kill(&mut self) {
        self.child.0.kill().expect("SIGKILL the operator");
        self.child.0.wait().expect("reap the operator");
    }
}

async fn lease_holder(env: &TestEnv) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), &env.ns);
    leases
        .get_opt("tanks-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operator_replicas_never_both_act_and_the_standby_takes_over_from_a_killed_leader() {
    let env = TestEnv::new("op-lease", 2, 100).await;
    let mut a = operator_process(&env, "replica-a");
    eventually(30, "replica-a holds the Lease", || async {
        (lease_holder(&env).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = operator_process(&env, "replica-b");
    eventually(30, "replica-b up, standing by", || async {
        b.ready().await.then_some(())
    })
    .await;
    env.fleets()
        .create(
            &PostParams::default(),
            &fleet("arena", &env.ns).max(40).replicas(10).build(),
        )
        .await
        .unwrap();
    let pods = eventually(60, "10 pods", || async {
        let p = env.live_pods("arena").await;
        (p.len() == 10).then_some(p)
    })
    .await;
    let creators: HashSet<String> = pods
        .iter()
        .map(|p| p.annotations()[labels::CREATED_BY].clone())
        .collect();
    assert_eq!(
        creators,
        HashSet::from(["replica-a".to_owned()]),
        "only the leader acts"
    );
    // A negative with no event to wait for: the standby does nothing for a while
    // (several of its Lease rounds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.live_pods("arena").await.len(),
        10,
        "the standby acted too"
    );

    // The leader is SIGKILLed: the Lease is not released, it expires, and the standby
    // takes over within the Lease time (plus a Lease round and an API call).
    a.kill();
    let killed = tokio::time::Instant::now();
    assert_eq!(
        lease_holder(&env).await.as_deref(),
        Some("replica-a"),
        "the killed leader released its Lease"
    );
    env.fleets()
        .patch(
            "arena",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 15}})),
        )
        .await
        .unwrap();
    eventually(30, "replica-b holds the Lease", || async {
        (lease_holder(&env).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    let renew = LEASE / 5;
    assert!(
        took >= LEASE - renew && took <= LEASE + 2 * renew + Duration::from_secs(1),
        "took over after {took:?} (Lease {LEASE:?})"
    );
    let max_seen = std::sync::atomic::AtomicUsize::new(0);
    let pods = eventually(60, "15 pods after failover", || async {
        let p = env.live_pods("arena").await;
        max_seen.fetch_max(p.len(), Ordering::SeqCst);
        (p.len() == 15).then_some(p)
    })
    .await;
    let by_b = pods
        .iter()
        .filter(|p| p.annotations()[labels::CREATED_BY] == "replica-b")
        .count();
    assert_eq!(by_b, 5);
    assert!(max_seen.load(Ordering::SeqCst) <= 15, "pods created twice");
    drop(b);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_are_accepted_by_the_api_server() {
    let env = TestEnv::new("op-manifests", 0, 0).await;
    let kubeconfig = tanks_testkit::require_kube_apiserver();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/operator");
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .output()
            .expect("kubectl on PATH");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Namespace, RBAC and the sample fleet for real; the Deployment through server-side
    // dry run (its pods would need the image on a kubelet).
    for file in [
        "00-namespace.yaml",
        "10-rbac.yaml",
        "30-sample-gamefleet.yaml",
    ] {
        kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=tanks-tests",
            "-f",
            &format!("{dir}/{file}"),
        ]);
    }
    kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        &format!("{dir}/20-deployment.yaml"),
    ]);
    // The RBAC is enough for what the operator does (checked by impersonation). A
    // subresource goes in `--subresource`: `kubectl auth can-i patch x/status` asks about
    // an object named `status`, not the subresource.
    for (verb, resource, subresource) in [
        ("watch", "gamefleets.tanks.dev", ""),
        ("patch", "gamefleets.tanks.dev", "status"),
        ("watch", "matches.tanks.dev", ""),
        ("create", "matches.tanks.dev", ""),
        ("delete", "matches.tanks.dev", ""),
        ("patch", "matches.tanks.dev", "status"),
        ("create", "pods", ""),
        ("delete", "pods", ""),
        ("patch", "pods", ""),
        ("create", "events.events.k8s.io", ""),
    ] {
        let subresource = format!("--subresource={subresource}");
        let mut args = vec![
            "auth",
            "can-i",
            verb,
            resource,
            "--all-namespaces",
            "--as=system:serviceaccount:tanks-system:tanks-operator",
        ];
        if subresource.len() > "--subresource=".len() {
            args.push(&subresource);
        }
        kubectl(&args);
    }
    kubectl(&[
        "auth",
        "can-i",
        "update",
        "leases.coordination.k8s.io",
        "-n",
        "tanks-system",
        "--as=system:serviceaccount:tanks-system:tanks-operator",
    ]);
    kubectl(&[
        "delete",
        "gamefleet",
        "arena",
        "-n",
        "tanks-system",
        "--wait=false",
    ]);
    env.cleanup().await;
}
