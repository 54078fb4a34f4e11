//! The install played end to end (issue 16): `kubectl apply -k` of the shipped
//! manifests, with secrets generated for this install, on the real API server; the pod
//! runner starts the operator, the auth server and the fleet's game servers from the
//! images' binaries; a bot plays a match through that install.
//!
//! The overlay is `manifests/overlays/external-services`: Redis, RabbitMQ and Kafka are
//! the devenv's, not pods. Their images are not ours (the pod runner would have to map
//! `redis`, `rabbitmq` and `apache/kafka` to local servers, and RabbitMQ and Kafka
//! take tens of seconds and most of a gigabyte to start on this 2-core machine), and the
//! test is about our install: our Deployments, RBAC, Secrets and fleet. What this
//! test adds on top of the overlay is only what a cluster of one's own would: the
//! namespace, the services' URLs and per-test queue names, and a toleration plus a node
//! selector that keep the pods on this test's nodes (other tests share the cluster).
//!
//! Every pod runs on a node of its own (one pod per node): pods listen on fixed ports
//! (8888, 8890, ...) of their own IP, which on the runner is their node's address.
//!
//! The sample Edge (manifests/edge) is left out: its public address is a placeholder
//! this machine cannot resolve, and the edge is played end to end in edge_end_to_end.
//! Without an Edge serving the fleet, a Match hands out the game server's own endpoint.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tanks_core::protocol::matchmaking::MatchRequest;
use tanks_core::rabbit::Publisher;
use tanks_operator::api::{GameFleet, Match, MatchPhase};
use tanks_operator::matches::naming::match_name;
use tanks_testkit::pod_runner::{self, RunnerConfig, RunnerNode};
use tanks_testkit::process::workspace_binary;

use crate::manifests::{documents, gen_secrets, kind_of, kubectl_ok, relative, repo};
use crate::match_end_to_end::wait_for;

const FLEET: &str = "arena";
/// Deployment → pods that must be Ready before a bot plays.
const EXPECTED_PODS: [(&str, usize); 2] = [("tanks-operator", 2), ("tanks-auth", 2)];
const NODES: u8 = 8;

/// The test's kustomization over the shipped overlay.
fn overlay(ns: &str, events: &str, allocations: &str) -> String {
    let placement = format!(
        "\n      - op: add\n        path: /spec/template/spec/tolerations\n        value: [{{key: tanks.dev/test-group, operator: Equal, value: {ns}, effect: NoSchedule}}]\
         \n      - op: add\n        path: /spec/template/spec/nodeSelector\n        value: {{tanks.dev/test-group: {ns}}}"
    );
    let base = relative(
        &std::env::temp_dir().join(ns),
        &repo().join("manifests/overlays/external-services"),
    );
    format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {ns}
resources:
  - {base}
generatorOptions:
  disableNameSuffixHash: true
# This install's own secrets (hack/gen-secrets), and the devenv's services' URLs.
secretGenerator:
  - {{name: tanks-control, namespace: tanks-system, behavior: replace, files: [token=secrets/control-token]}}
  - {{name: tanks-token-key, namespace: tanks-system, behavior: replace, files: [key=secrets/token-key]}}
  - {{name: tanks-redis, namespace: tanks-system, behavior: replace, files: [password=secrets/redis-password, url=secrets/redis-url]}}
  - {{name: tanks-rabbitmq, namespace: tanks-system, behavior: replace, files: [password=secrets/rabbitmq-password, url=secrets/rabbitmq-url]}}
patches:
  - target: {{kind: Deployment}}
    patch: |-{placement}
  - target: {{kind: GameFleet}}
    patch: |-{placement}
      - op: replace
        path: /spec/scaling
        value: {{minReplicas: 1, maxReplicas: 3, buffer: {{slots: 4}}, scaleDownDelaySeconds: 30}}
  - target: {{kind: Deployment, name: tanks-auth}}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/env/4/value
        value: {kafka}
  - target: {{kind: Deployment, name: tanks-operator}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: OPERATOR_MATCHMAKING_QUEUE, value: {events}}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: OPERATOR_ALLOCATIONS_QUEUE, value: {allocations}}}
"#,
        base = base.display(),
        kafka = tanks_testkit::kafka_brokers(),
    )
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items.into_iter().filter(ready).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_plays_a_match_through_the_installed_manifests() {
    let amqp = tanks_testkit::require_rabbitmq();
    let kubeconfig = tanks_testkit::require_kube_apiserver();
    let client = tanks_testkit::require_kube_client().await;
    // CRDs are cluster-wide and shared: applied from the types, not by this install.
    tanks_testkit::apply_crds(
        &client,
        tanks_operator::api::crds().into_iter().map(|(_, c)| c),
    )
    .await
    .expect("CRDs applied");
    gen_secrets();
    let ns = tanks_testkit::namespace::create(&client, "install")
        .await
        .expect("namespace");
    let dir = std::env::temp_dir().join(&ns);
    let secrets = dir.join("secrets");
    let status = Command::new(repo().join("hack/gen-secrets"))
        .arg(&secrets)
        .status()
        .expect("hack/gen-secrets runs");
    assert!(status.success());
    std::fs::write(secrets.join("redis-url"), tanks_testkit::redis_url()).unwrap();
    std::fs::write(secrets.join("rabbitmq-url"), &amqp).unwrap();
    let events = tanks_testkit::unique("install-mm");
    let allocations = tanks_testkit::unique("install-alloc");
    std::fs::write(
        dir.join("kustomization.yaml"),
        overlay(&ns, &events, &allocations),
    )
    .unwrap();
    let publisher = Publisher::connect(&amqp).await.expect("RabbitMQ");
    for queue in [&events, &allocations] {
        publisher.declare(queue).await.expect("declare");
    }

    // The pod runner: the images' binaries are the workspace's (tanks/<name> → <name>).
    let group = ns.clone();
    let third = (std::process::id() % 200 + 20) as u8;
    let nodes: Vec<RunnerNode> = (1..=NODES)
        .map(|i| RunnerNode {
            name: format!("{ns}-n{i}"),
            address: std::net::Ipv4Addr::new(127, 0, third, 100 + i),
        })
        .collect();
    let bin_dir = workspace_binary("operator").parent().unwrap().to_owned();
    let (stop_runner, runner_stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(pod_runner::run(
        client.clone(),
        RunnerConfig {
            nodes: nodes.clone(),
            bin_dirs: vec![bin_dir],
            log_dir: dir.join("pods"),
            state_dir: dir.join("runner"),
            max_pods: 1,
            node_labels: [("tanks.dev/test-group".to_owned(), group.clone())].into(),
            node_taints: vec![
                format!("tanks.dev/test-group={group}:NoSchedule")
                    .parse()
                    .unwrap(),
            ],
            api: Some(tanks_testkit::pod_api_access(&kubeconfig).await.unwrap()),
            ..RunnerConfig::default()
        },
        runner_stopped,
    ));

    let outcome =
        std::panic::AssertUnwindSafe(install_and_play(&client, &ns, &dir, &publisher, &events))
            .catch_unwind()
            .await;
    if outcome.is_err() {
        eprintln!("{}", diagnostics(&dir));
    }

    // Teardown, also after a failure: the fleet first, while the operator still runs
    // its finalizer; then the runner (stopping every process), nodes, namespace, queues.
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), &ns);
    let _ = fleets.delete(FLEET, &DeleteParams::default()).await;
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while fleets.get_opt(FLEET).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if gone.is_err() {
        let _ = fleets
            .patch(
                FLEET,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
            )
            .await;
    }
    let _ = stop_runner.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(40), runner).await;
    let node_api: Api<Node> = Api::all(client.clone());
    for node in &nodes {
        let _ = node_api.delete(&node.name, &DeleteParams::default()).await;
    }
    tanks_testkit::namespace::delete(&client, &ns).await;
    for queue in [events.clone(), allocations, format!("{events}.dead")] {
        let _ = publisher
            .channel()
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn install_and_play(
    client: &Client,
    ns: &str,
    dir: &Path,
    publisher: &Publisher,
    events: &str,
) {
    // All of it but the CRDs, server-side, as `kubectl apply -k` does.
    let built = kubectl_ok(&["kustomize", dir.to_str().unwrap()]);
    let objects: Vec<&str> = documents(&built)
        .into_iter()
        .filter(|d| !matches!(kind_of(d), "CustomResourceDefinition" | "Edge"))
        .collect();
    let file = dir.join("objects.yaml");
    std::fs::write(&file, objects.join("\n---\n")).unwrap();
    kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (name, count) in EXPECTED_PODS {
        let selector = format!("app.kubernetes.io/name={name}");
        wait_for(
            &format!("{count} Ready pods of {name}"),
            Duration::from_secs(120),
            || async {
                let n = ready_pods(&pods, &selector).await.len();
                if n >= count {
                    Ok(())
                } else {
                    Err(format!("{n} ready"))
                }
            },
        )
        .await;
    }
    // The operator in its pod acts as its service account (the runner's kubeconfig
    // for the pod), not as the runner: its Lease names one of its pods.
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder = wait_for("the operator's Lease", Duration::from_secs(60), || async {
        leases
            .get_opt("tanks-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .ok_or_else(|| "no Lease yet".to_owned())
    })
    .await;
    assert!(
        holder.starts_with("tanks-operator-"),
        "lease holder {holder}"
    );
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), ns);
    wait_for("a Ready game server", Duration::from_secs(120), || async {
        let ready = fleets
            .get(FLEET)
            .await
            .ok()
            .and_then(|f| f.status)
            .map(|s| s.ready_replicas)
            .unwrap_or_default();
        if ready >= 1 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await;

    // The auth server, at a pod's IP (no Services on the runner).
    let auth_pod = ready_pods(&pods, "app.kubernetes.io/name=tanks-auth")
        .await
        .remove(0);
    let auth_addr = format!("{}:8888", auth_pod.status.unwrap().pod_ip.unwrap());

    // The matchmaker's event names the player; the operator allocates the Match.
    let user = format!("inst{}", std::process::id());
    let event_id = tanks_testkit::unique("ev");
    let mut request = MatchRequest::new(event_id.clone(), vec![user.clone()]);
    request.match_details.match_id = Some(format!("mm-{event_id}"));
    request.match_details.fleet = Some(FLEET.into());
    publisher
        .publish_json(events, &request)
        .await
        .expect("publish new_match_created");
    let matches: Api<Match> = Api::namespaced(client.clone(), ns);
    let name = match_name(&event_id);
    let allocated = wait_for("the Match Allocated", Duration::from_secs(60), || async {
        match matches.get_opt(&name).await {
            Ok(Some(m)) if m.phase() == MatchPhase::Allocated => Ok(m),
            Ok(Some(m)) => Err(format!("phase {:?}, status {:?}", m.phase(), m.status)),
            Ok(None) => Err(format!("no Match {name} yet")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let status = allocated.status.unwrap();
    let endpoint = status.endpoint.expect("an endpoint");
    let session = status.session_id.expect("a session id");

    // The bot: register and log in at the installed auth server, join the endpoint
    // with its token, see its move in a game_update, leave.
    let out = Command::new(workspace_binary("demo-bot"))
        .args(["--auth", &auth_addr])
        .args(["--game", &format!("{}:{}", endpoint.address, endpoint.port)])
        .args(["--user", &user, "--session", &session])
        .output()
        .expect("demo-bot runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("demo: ok"),
        "the bot's game through the install: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("join_game ->") && said.contains("my tank at"),
        "{said}"
    );
}

/// The tail of every pod's log, for a failure's report.
fn diagnostics(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        out.push_str(&format!(
            "--- {} ---\n{}\n",
            entry.path().display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    out
}
