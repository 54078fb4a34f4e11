//! A GameFleet scaling up on kwok nodes, with the real `operator` binary (a child
//! process), while a fault strikes mid-way: the kube-apiserver restarted, etcd
//! restarted, or the operator SIGKILLed and a second one started. The fleet converges
//! to exactly its replicas: every pod ever seen (a watch kept through the fault, which
//! relists after it) is one of them, none was created twice or deleted as surplus; the
//! operator survives the restarts of the control plane.
//!
//! No game server answers at a kwok pod's address, so none reports ready; the fleet
//! waits a day before replacing such a server (`health.startupTimeoutSeconds`).
//!
//! `FAULTS_SCALE_REPLICAS` (default 300) sizes the fleet; 1,000 was run by hand
//! (docs/RELIABILITY.md).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tanks_operator::api::{GameFleet, labels};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

use crate::cluster::TestCluster;
use crate::outage::{self, wait_for};

const FLEET: &str = "arena";

fn replicas() -> usize {
    std::env::var("FAULTS_SCALE_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// The real operator binary, GameFleets only, watching one namespace.
pub struct OperatorProcess {
    pub child: KillOnDrop,
    pub metrics: String,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn start(ns: &str, name: &str) -> OperatorProcess {
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = std::env::temp_dir().join(format!("{ns}-{name}.log"));
        let out = std::fs::File::create(&log).expect("operator log");
        let child = Command::new(workspace_binary("operator"))
            .env("KUBECONFIG", tanks_testkit::kubeconfig())
            .env("RUST_LOG", "info")
            .args([
                "--namespace",
                ns,
                "--no-leader-election",
                "--identity",
                name,
            ])
            .args(["--no-matches", "--no-backups", "--metrics-addr", &metrics])
            .args(["--poll-interval-ms", "500"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start the operator binary");
        eprintln!("[faults] operator {name}: log in {}", log.display());
        OperatorProcess {
            child: KillOnDrop(child),
            metrics,
            log,
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.0.try_wait().expect("operator status").is_none()
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        self.child.0.kill().expect("SIGKILL the operator");
        self.child.0.wait().expect("reap the operator");
    }
}

pub fn fleet(ns: &str, replicas: usize) -> GameFleet {
    serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "GameFleet",
        "metadata": {"name": FLEET},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": "gameserver"}},
                "spec": {
                    "nodeSelector": {"tanks.dev/test-group": ns},
                    "tolerations": [{"key": "tanks.dev/test-group", "operator": "Equal", "value": ns, "effect": "NoSchedule"}],
                    "containers": [{"name": "gameserver", "image": "tanks/gameserver:test"}],
                },
            },
            "capacity": {"sessionsPerServer": 2, "playersPerSession": 4},
            "scaling": {"minReplicas": 0, "maxReplicas": replicas, "buffer": {"slots": 0}, "scaleDownDelaySeconds": 3},
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            // No game server answers at a kwok pod's address, so none ever reports:
            // the longest wait before such a server is replaced, so a long run (5,000
            // pods by hand) measures the fault, not replacements.
            "health": {"startupTimeoutSeconds": 86400},
        },
    }))
    .expect("fleet")
}

/// Every pod of the fleet ever seen, by uid, and how many deletions: a watch that
/// relists by itself after the API server comes back.
#[derive(Clone, Default)]
pub struct PodHistory {
    pub uids: Arc<Mutex<HashSet<String>>>,
    pub deleted: Arc<Mutex<HashSet<String>>>,
    /// Writes to pods already seen (a new resourceVersion), whoever made them.
    pub modified: Arc<std::sync::atomic::AtomicUsize>,
    versions: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

impl PodHistory {
    pub fn follow(pods: Api<Pod>) -> (PodHistory, tokio::task::JoinHandle<()>) {
        let history = PodHistory::default();
        let h = history.clone();
        let config = watcher::Config::default().labels(&format!("{}={FLEET}", labels::FLEET));
        let task = tokio::spawn(async move {
            let mut events = watcher(pods, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let version = p.resource_version().unwrap_or_default();
                        let mut versions = h.versions.lock().unwrap();
                        let uid = p.uid().unwrap_or_default();
                        if let Some(seen) = versions.insert(uid.clone(), version.clone())
                            && seen != version
                        {
                            h.modified
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        h.uids.lock().unwrap().insert(uid);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        h.deleted
                            .lock()
                            .unwrap()
                            .insert(p.uid().unwrap_or_default());
                    }
                    _ => {}
                }
            }
        });
        (history, task)
    }
}

async fn live_pods(pods: &Api<Pod>) -> Result<(usize, usize), String> {
    let lp = ListParams::default().labels(&format!("{}={FLEET}", labels::FLEET));
    let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
    let live: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let running = live
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    Ok((live.len(), running))
}

enum Fault {
    Restart(&'static str),
    KillOperator,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_restarted_mid_scale_up_the_fleet_converges_without_duplicates() {
    scale_up_through(Fault::Restart("kube-apiserver")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_mid_scale_up_the_fleet_converges_without_duplicates() {
    scale_up_through(Fault::Restart("etcd")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sigkilled_mid_scale_up_a_second_run_finishes_without_duplicates() {
    scale_up_through(Fault::KillOperator).await;
}

async fn scale_up_through(fault: Fault) {
    let _serial = outage::serialized();
    let n = replicas();
    let label = match fault {
        Fault::Restart(s) => s,
        Fault::KillOperator => "operator",
    };
    let cluster = TestCluster::new(&format!("fault-scale-{label}"), n as u32 + 50).await;
    let pods = cluster.pods();
    let (history, watch) = PodHistory::follow(pods.clone());
    let mut operator = OperatorProcess::start(&cluster.ns, "first");
    let fleets: Api<GameFleet> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let started = Instant::now();
    fleets
        .create(&PostParams::default(), &fleet(&cluster.ns, n))
        .await
        .expect("fleet");

    wait_for(
        "a quarter of the fleet created",
        Duration::from_secs(120),
        || async {
            let (live, _) = live_pods(&pods).await?;
            (live >= n / 4).then_some(()).ok_or(format!("{live} pods"))
        },
    )
    .await;
    let (at_fault, _) = live_pods(&pods).await.expect("pods");
    let mut second = None;
    let away = match fault {
        Fault::Restart(service) => outage::stop(service).await.end_async().await,
        Fault::KillOperator => {
            let t = Instant::now();
            operator.kill();
            second = Some(OperatorProcess::start(&cluster.ns, "second"));
            t.elapsed()
        }
    };
    let back = Instant::now();
    assert!(
        at_fault < n,
        "the fault did not land mid-way: {at_fault} of {n} pods"
    );

    wait_for("the fleet converged", Duration::from_secs(300), || async {
        let (live, running) = live_pods(&pods).await?;
        let status = fleets
            .get(FLEET)
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        // Counted, not ready: nothing answers at a kwok pod's address, so no
        // server reports ready (the test ends long before unready servers are
        // replaced).
        (live == n && running == n && status.replicas == n as i32)
            .then_some(())
            .ok_or(format!(
                "{live} live, {running} Running, status.replicas {}",
                status.replicas
            ))
    })
    .await;
    let recovered = back.elapsed();
    let total = started.elapsed();
    // The watch has seen every pod that exists now (they were listed Running above).
    wait_for("the watch caught up", Duration::from_secs(30), || async {
        let seen = history.uids.lock().unwrap().len();
        (seen >= n).then_some(()).ok_or(format!("{seen} seen"))
    })
    .await;
    let seen = history.uids.lock().unwrap().len();
    let deleted = history.deleted.lock().unwrap().len();
    assert_eq!(seen, n, "pods created in all (duplicates beyond {n})");
    assert_eq!(deleted, 0, "pods deleted (surplus removed)");
    match (&fault, second.as_mut()) {
        (Fault::Restart(service), _) => assert!(
            operator.running(),
            "the operator exited after the {service} restart (log: {})",
            operator.log.display()
        ),
        (Fault::KillOperator, Some(second)) => {
            assert!(second.running(), "the second operator exited")
        }
        (Fault::KillOperator, None) => unreachable!(),
    }
    println!(
        "{label} fault mid scale-up to {n}: struck at {at_fault} pods, away {away:.1?}; \
         converged {recovered:.1?} after it ({total:.1?} in all); {seen} pods created, \
         0 duplicates, {deleted} deleted"
    );
    watch.abort();
    drop(second);
    drop(operator);
    // The operator is gone: its finalizer goes by hand.
    let _ = fleets
        .patch(
            FLEET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = fleets.delete(FLEET, &Default::default()).await;
    let _ = tanks_testkit::namespace::delete_and_wait(
        &cluster.client,
        &cluster.ns,
        Duration::from_secs(60),
    )
    .await;
    cluster.cleanup().await;
}

/// API writes so far by verb, for pods and GameFleets, from the API server's own
/// `apiserver_request_total`. Cluster-wide: other clients' writes count too.
async fn api_writes(client: &kube::Client) -> Result<(f64, f64), String> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client
        .request_text(request)
        .await
        .map_err(|e| e.to_string())?;
    let writes = |resource: &str| {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|verb| {
                crate::metrics::sum(
                    &text,
                    "apiserver_request_total",
                    &[
                        &format!("resource=\"{resource}\""),
                        &format!("verb=\"{verb}\""),
                    ],
                )
            })
            .sum::<f64>()
    };
    Ok((writes("pods"), writes("gamefleets")))
}

async fn ready(metrics: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(metrics).await else {
        return false;
    };
    let mut answer = String::new();
    conn.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
        .await
        .is_ok()
        && conn.read_to_string(&mut answer).await.is_ok()
        && answer.split_whitespace().nth(1) == Some("200")
}

/// `FAULTS_STEADY_REPLICAS` (default 300) pods at steady state; 5,000 was run by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restarted_at_steady_state_rewrites_nothing() {
    let _serial = outage::serialized();
    let n: usize = std::env::var("FAULTS_STEADY_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let cluster = TestCluster::new("fault-steady", n as u32 + 50).await;
    let pods = cluster.pods();
    let (history, watch) = PodHistory::follow(pods.clone());
    let fleets: Api<GameFleet> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let mut first = OperatorProcess::start(&cluster.ns, "first");
    fleets
        .create(&PostParams::default(), &fleet(&cluster.ns, n))
        .await
        .expect("fleet");
    let converge = |limit: u64| {
        let (pods, fleets) = (pods.clone(), fleets.clone());
        async move {
            wait_for("the fleet steady", Duration::from_secs(limit), || async {
                let (live, running) = live_pods(&pods).await?;
                let status = fleets
                    .get(FLEET)
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .unwrap_or_default();
                (live == n && running == n && status.replicas == n as i32)
                    .then_some(())
                    .ok_or(format!("{live} live, {running} Running"))
            })
            .await
        }
    };
    converge(600).await;
    // The first operator's last status writes settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.kill();
    let (pods_before, fleets_before) = api_writes(&cluster.client).await.expect("metrics");
    let modified_before = history.modified.load(std::sync::atomic::Ordering::Relaxed);
    let fleet_version = fleets.get(FLEET).await.expect("fleet").resource_version();
    let restarted = Instant::now();
    let second = OperatorProcess::start(&cluster.ns, "second");
    wait_for(
        "the second operator ready",
        Duration::from_secs(60),
        || async {
            ready(&second.metrics)
                .await
                .then_some(())
                .ok_or("not ready".to_string())
        },
    )
    .await;
    converge(120).await;
    // A measurement window: two of the operator's resyncs after it is ready.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (pods_after, fleets_after) = api_writes(&cluster.client).await.expect("metrics");
    let (pod_writes, fleet_writes) = (pods_after - pods_before, fleets_after - fleets_before);
    let ours = history.modified.load(std::sync::atomic::Ordering::Relaxed) - modified_before;
    let fleet_written = fleets.get(FLEET).await.expect("fleet").resource_version() != fleet_version;
    let created = history.uids.lock().unwrap().len() - n;
    let deleted = history.deleted.lock().unwrap().len();
    println!(
        "operator restarted at {n} pods: in the {:.1?} after, {ours} writes to this \
         fleet's pods, {created} created, {deleted} deleted, fleet written: {fleet_written}; \
         API server (cluster-wide, other clients included): {pod_writes} pod writes, \
         {fleet_writes} GameFleet writes",
        restarted.elapsed()
    );
    // Nothing changed, so no pod is written (whether the fleet was is printed: a
    // status that did change may be written once). The API server's counters are cluster-wide (the shared control plane serves
    // other engineers' tests, and namespaces being deleted), so the exact count comes
    // from this namespace's watch: every write to a pod shows as a new version.
    assert_eq!(ours, 0, "pod writes after a restart with nothing to change");
    assert_eq!((created, deleted), (0, 0), "pods created or deleted");
    watch.abort();
    drop(second);
    let _ = fleets
        .patch(
            FLEET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = fleets.delete(FLEET, &Default::default()).await;
    let _ = tanks_testkit::namespace::delete_and_wait(
        &cluster.client,
        &cluster.ns,
        Duration::from_secs(120),
    )
    .await;
    cluster.cleanup().await;
}
