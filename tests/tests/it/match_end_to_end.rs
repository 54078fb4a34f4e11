//! Match allocation with real processes, end to end. There is no kubelet here: the pod
//! runner plays it for one node of its own (a loopback address of its own), so the
//! game-server pods of a `GameFleet` are real `gameserver` processes listening where
//! their pods say. The real `operator` binary (child process) scales the fleet and
//! allocates Matches; the real `authserver` (embedded store) signs tokens with a key the
//! game server shares; RabbitMQ and the kube-apiserver are the devenv's.
//!
//! A bot logs in; a `new_match_created` event naming it goes to RabbitMQ; the operator
//! makes the Match, asks the game server for the session, publishes `match_allocated`
//! and writes the endpoint. The test checks the endpoint is the pod's node address and
//! host port, and the message agrees with the status; then the bot joins at that
//! endpoint with its token (a forged one is refused first: tokens are mandatory),
//! receives `game_update`s carrying its tank, the Match goes `Running`, the bot leaves,
//! and the Match ends `Finished` once the server reports the empty session abandoned.
//!
//! Needs `hack/devenv up` and the workspace's binaries (`cargo build --workspace --bins`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};
use tanks_core::protocol::matchmaking::{MATCH_ALLOCATED, MatchAllocated, MatchRequest};
use tanks_core::rabbit::Publisher;
use tanks_core::token::TokenSigner;
use tanks_operator::api::{GameFleet, Match, MatchPhase};
use tanks_operator::matches::naming::match_name;
use tanks_testkit::pod_runner::{self, RunnerConfig, RunnerNode};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const FLEET: &str = "arena";
/// The game servers' control port (on the node's own address, so no clash).
const CONTROL_PORT: u16 = 8890;
/// Host ports the fleet gives its servers.
const PORT_RANGE: (u16, u16) = (7000, 7099);
/// The game server abandons a match session empty for 60 s (not configurable), so
/// `Finished` comes that long after the bot leaves.
const FINISH_WAIT: Duration = Duration::from_secs(100);

fn spawn(name: &str, args: &[String], envs: &[(&str, String)], log: &Path) -> KillOnDrop {
    let out = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(workspace_binary(name));
    cmd.args(args)
        // The services the test is told about are not the processes' business: each
        // gets exactly the brokers its flags name.
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("REDIS_URL")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    KillOnDrop(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}")),
    )
}

/// The last lines of a log, for failure messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `probe` every 100 ms until it yields a value; after `limit`, fails naming what
/// was awaited and the last thing seen.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn auth_request(addr: &str, request: Value) -> Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("auth server {addr}: {e}"));
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(read).read_line(&mut line),
    )
    .await
    .expect("auth server answered within 10 s")
    .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("auth answer {line:?}: {e}"))
}

/// Everything the test started, so it can be torn down whatever happened.
struct Setup {
    client: Client,
    ns: String,
    node: RunnerNode,
    dir: PathBuf,
    events: String,
    allocations: String,
    auth_addr: String,
    operator_log: PathBuf,
}

impl Setup {
    fn diagnostics(&self) -> String {
        let mut out = format!(
            "--- operator log (tail) ---\n{}\n",
            tail(&self.operator_log, 40)
        );
        for entry in std::fs::read_dir(self.dir.join("pods"))
            .into_iter()
            .flatten()
        {
            let path = entry.unwrap().path();
            out.push_str(&format!(
                "--- pod log {} (tail) ---\n{}\n",
                path.display(),
                tail(&path, 20)
            ));
        }
        out
    }
}

/// The fleet: one server of 2 sessions × 2 players, pinned to the runner's node (and
/// tolerating its taint, which keeps other tests' pods off it). The game server takes
/// what the operator injects (`TANKS_GAME_PORT`, `TANKS_SERVER_NAME`, capacity) through
/// `$(VAR)` arguments, and listens on the pod IP, which is the node's address.
fn fleet(s: &Setup) -> GameFleet {
    let file = |name: &str| s.dir.join(name).display().to_string();
    let args = [
        "--udp-addr",
        "$(POD_IP):$(TANKS_GAME_PORT)",
        "--tcp-addr",
        "$(POD_IP):8889",
        "--control-addr",
        &format!("$(POD_IP):{CONTROL_PORT}"),
        "--metrics-addr",
        "$(POD_IP):8001",
        "--server-name",
        "$(TANKS_SERVER_NAME)",
        "--max-sessions",
        "$(TANKS_SESSIONS_PER_SERVER)",
        "--players-per-session",
        "$(TANKS_PLAYERS_PER_SESSION)",
        "--require-token",
        "true",
        "--open-sessions",
        "false",
        "--token-key-file",
        &file("token.key"),
        "--control-secret-file",
        &file("control.secret"),
        "--events-file",
        &file("gameserver-events.jsonl"),
        "--auth-addr",
        &s.auth_addr,
        "--drain-seconds",
        "1",
    ];
    serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "GameFleet",
        "metadata": { "name": FLEET, "namespace": s.ns },
        "spec": {
            "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": "gameserver" } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": s.node.name },
                    "tolerations": [{ "key": "tanks.dev/e2e", "operator": "Exists" }],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "gameserver",
                        // No command: the runner maps the image to the `gameserver` binary.
                        "image": "tanks/gameserver:e2e",
                        "args": args,
                        "env": [{ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }],
                        "ports": [{ "name": "control", "containerPort": CONTROL_PORT }],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "control" } },
                    }],
                },
            },
            "capacity": { "sessionsPerServer": 2, "playersPerSession": 2 },
            "scaling": { "minReplicas": 1, "maxReplicas": 2, "buffer": { "slots": 1 } },
            "ports": { "policy": "Dynamic", "rangeStart": PORT_RANGE.0, "rangeEnd": PORT_RANGE.1 },
        },
    }))
    .expect("fleet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_plays_a_match_the_operator_allocated_on_a_real_game_server() {
    let amqp = tanks_testkit::require_rabbitmq();
    let kubeconfig = tanks_testkit::require_kube_apiserver();
    let client = tanks_testkit::require_kube_client().await;
    tanks_testkit::apply_crds(
        &client,
        tanks_operator::api::crds().into_iter().map(|(_, c)| c),
    )
    .await
    .expect("CRDs applied");

    let ns = tanks_testkit::namespace::create(&client, "e2e-match")
        .await
        .expect("namespace");
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    // A key of our own, not the development key, so a join only passes if the game
    // server really verifies with the auth server's key.
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(dir.join("token.key"), &key).unwrap();
    let control_secret = format!("control-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.join("control.secret"), &control_secret).unwrap();

    // The runner's node, created tainted before the runner registers it, so the
    // scheduler never places another test's pod on it.
    let node = RunnerNode {
        name: format!("{ns}-node"),
        address: Ipv4Addr::new(127, 0, 3, (std::process::id() % 200 + 20) as u8),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let tainted: Node = serde_json::from_value(json!({
        "metadata": { "name": node.name, "labels": { "tanks.dev/test": "true" } },
        "spec": { "taints": [{ "key": "tanks.dev/e2e", "value": "match", "effect": "NoSchedule" }] },
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &tainted)
        .await
        .expect("node");
    let (stop_runner, runner_stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(pod_runner::run(
        client.clone(),
        RunnerConfig {
            nodes: vec![node.clone()],
            bin_dirs: vec![
                workspace_binary("gameserver")
                    .parent()
                    .expect("the binaries' folder")
                    .to_owned(),
            ],
            log_dir: dir.join("pods"),
            state_dir: dir.join("pod-state"),
            max_pods: 10,
            ..RunnerConfig::default()
        },
        runner_stopped,
    ));

    let auth_addr = format!("127.0.0.1:{}", free_port());
    let auth = spawn(
        "authserver",
        &[
            "--listen-addr".into(),
            auth_addr.clone(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--token-key-file".into(),
            dir.join("token.key").display().to_string(),
            "--events-file".into(),
            dir.join("auth-events.jsonl").display().to_string(),
        ],
        &[],
        &dir.join("authserver.log"),
    );

    let s = Setup {
        client: client.clone(),
        node,
        events: tanks_testkit::unique("matchmaking-events"),
        allocations: tanks_testkit::unique("match-allocations"),
        auth_addr,
        operator_log: dir.join("operator.log"),
        dir,
        ns,
    };
    let publisher = Publisher::connect(&amqp).await.expect("RabbitMQ");
    publisher.declare(&s.events).await.expect("declare events");
    publisher
        .declare(&s.allocations)
        .await
        .expect("declare allocations");

    let operator_metrics = format!("127.0.0.1:{}", free_port());
    let operator = spawn(
        "operator",
        &[
            "--namespace".into(),
            s.ns.clone(),
            "--no-leader-election".into(),
            "--metrics-addr".into(),
            operator_metrics.clone(),
            "--control-token".into(),
            control_secret,
            "--poll-interval-ms".into(),
            "500".into(),
            "--amqp-url".into(),
            amqp.clone(),
            "--matchmaking-queue".into(),
            s.events.clone(),
            "--allocations-queue".into(),
            s.allocations.clone(),
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info,tanks_operator=debug".into()),
        ],
        &s.operator_log,
    );

    let outcome = std::panic::AssertUnwindSafe(play(&s, &publisher, &operator_metrics))
        .catch_unwind()
        .await;
    if outcome.is_err() {
        eprintln!("{}", s.diagnostics());
    }

    // Teardown, also after a failure. The fleet goes first, while the operator still
    // runs its finalizer; then the processes, the node and the namespace.
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), &s.ns);
    let _ = fleets.delete(FLEET, &DeleteParams::default()).await;
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while fleets.get_opt(FLEET).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if gone.is_err() {
        eprintln!("the fleet's finalizer did not finish within 30 s; removing it");
        let _ = fleets
            .patch(
                FLEET,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
            )
            .await;
    }
    drop(operator);
    drop(auth);
    let _ = stop_runner.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), runner).await;
    let _ = nodes.delete(&s.node.name, &DeleteParams::default()).await;
    tanks_testkit::namespace::delete(&s.client, &s.ns).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// The scenario proper; any panic here still gets the teardown.
async fn play(s: &Setup, publisher: &Publisher, operator_metrics: &str) {
    wait_for(
        "the operator's /readyz",
        Duration::from_secs(30),
        || async {
            let mut stream = tokio::net::TcpStream::connect(operator_metrics)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut head = String::new();
            stream
                .read_to_string(&mut head)
                .await
                .map_err(|e| e.to_string())?;
            (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
                .then_some(())
                .ok_or_else(|| head.lines().next().unwrap_or_default().to_owned())
        },
    )
    .await;

    let fleets: Api<GameFleet> = Api::namespaced(s.client.clone(), &s.ns);
    fleets
        .create(&PostParams::default(), &fleet(s))
        .await
        .expect("create the fleet");

    // A ready server: its process answers `/readyz` (the runner's probe) and the
    // operator's load poll (the fleet's readyReplicas).
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for(
        "a ready game server in the fleet's status",
        Duration::from_secs(60),
        || async {
            let f = fleets.get(FLEET).await.map_err(|e| e.to_string())?;
            let st = f.status.unwrap_or_default();
            let phases: Vec<String> = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .map(|p| {
                    format!(
                        "{}:{:?}@{:?}",
                        p.name_any(),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.spec.as_ref().and_then(|s| s.node_name.clone())
                    )
                })
                .collect();
            (st.ready_replicas >= 1).then_some(()).ok_or(format!(
                "replicas {} ready {} reason {:?}, pods {phases:?}",
                st.replicas, st.ready_replicas, st.desired_reason
            ))
        },
    )
    .await;

    // The bot logs in at the auth server.
    let user = format!("bot{}", std::process::id());
    let password = format!("{user}-Secret-1");
    let registered = auth_request(
        &s.auth_addr,
        json!({"action": "register", "username": user, "password": password}),
    )
    .await;
    assert_eq!(registered["status"], "success", "register: {registered}");
    let login = auth_request(
        &s.auth_addr,
        json!({"action": "login", "username": user, "password": password}),
    )
    .await;
    assert_eq!(login["status"], "success", "login: {login}");
    let token = login["session_id"]
        .as_str()
        .expect("a token in the login answer")
        .to_owned();

    // The matchmaker's event.
    let event_id = tanks_testkit::unique("ev");
    let mut request = MatchRequest::new(event_id.clone(), vec![user.clone()]);
    request.match_details.match_id = Some(format!("mm-{event_id}"));
    request.match_details.fleet = Some(FLEET.into());
    publisher
        .publish_json(&s.events, &request)
        .await
        .expect("publish new_match_created");
    let name = match_name(&event_id);

    // The Match, allocated. Every phase seen on the way is recorded.
    let matches: Api<Match> = Api::namespaced(s.client.clone(), &s.ns);
    let phases = Arc::new(std::sync::Mutex::new(Vec::<MatchPhase>::new()));
    let watch_phases = {
        let (matches, name, phases) = (matches.clone(), name.clone(), phases.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(Some(m)) = matches.get_opt(&name).await {
                    let mut seen = phases.lock().unwrap();
                    if seen.last() != Some(&m.phase()) {
                        seen.push(m.phase());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let phase_is = |wanted: MatchPhase| {
        let (matches, name) = (matches.clone(), name.clone());
        move || {
            let (matches, name) = (matches.clone(), name.clone());
            async move {
                match matches.get_opt(&name).await {
                    Ok(Some(m)) if m.phase() == wanted => Ok(m),
                    Ok(Some(m)) => Err(format!("phase {:?}, status {:?}", m.phase(), m.status)),
                    Ok(None) => Err(format!("no Match {name} yet")),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    let allocated = wait_for(
        "the Match Allocated",
        Duration::from_secs(30),
        phase_is(MatchPhase::Allocated),
    )
    .await;
    assert_eq!(allocated.spec.players, std::slice::from_ref(&user));
    assert_eq!(allocated.spec.source_event_id, event_id);
    let status = allocated.status.clone().unwrap();
    let server = status.game_server.clone().expect("a game server");
    let endpoint = status.endpoint.clone().expect("an endpoint");
    let session_id = status.session_id.clone().expect("a session id");

    // The endpoint is the pod's node address and its host port.
    let pod = pods.get(&server).await.expect("the game-server pod");
    assert_eq!(
        pod.labels().get("tanks.dev/fleet").map(String::as_str),
        Some(FLEET)
    );
    let game_port = pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("game"))
        .and_then(|p| p.host_port)
        .expect("a host port on the game port");
    assert_eq!(endpoint.address, s.node.address.to_string(), "{endpoint:?}");
    assert_eq!(endpoint.port, game_port, "{endpoint:?}");
    assert_eq!(endpoint.protocol, "UDP");
    assert!(
        (i32::from(PORT_RANGE.0)..=i32::from(PORT_RANGE.1)).contains(&endpoint.port),
        "{endpoint:?} outside the fleet's range"
    );

    // What the matchmaker heard: the same match, endpoint and session.
    let channel = publisher.channel();
    let heard: MatchAllocated = wait_for(
        "a match_allocated message",
        Duration::from_secs(10),
        || async {
            match channel
                .basic_get(
                    s.allocations.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
            {
                Ok(Some(msg)) => serde_json::from_slice(&msg.delivery.data)
                    .map_err(|e| format!("not a MatchAllocated: {e}")),
                Ok(None) => Err(format!("queue {} empty", s.allocations)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(heard.event_type, MATCH_ALLOCATED);
    assert_eq!(heard.event_id, event_id);
    assert_eq!(
        heard.match_id.as_deref(),
        Some(format!("mm-{event_id}").as_str())
    );
    assert_eq!(
        (heard.namespace.as_str(), heard.name.as_str()),
        (s.ns.as_str(), name.as_str())
    );
    assert_eq!(heard.endpoint.address, endpoint.address);
    assert_eq!(i32::from(heard.endpoint.port), endpoint.port);
    assert_eq!(heard.endpoint.protocol, "UDP");
    assert_eq!(heard.session_id, session_id);
    assert_eq!(heard.game_server, server);
    assert_eq!(heard.players, std::slice::from_ref(&user));

    // The bot at the endpoint. Everything it receives goes through one channel.
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    socket
        .connect((endpoint.address.as_str(), endpoint.port as u16))
        .await
        .unwrap();
    let (tx, mut inbox) = mpsc::unbounded_channel::<Value>();
    let reader = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = socket.recv(&mut buf).await {
                if let Ok(v) = serde_json::from_slice::<Value>(&buf[..n])
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        })
    };
    let send = |v: Value| {
        let socket = socket.clone();
        async move { socket.send(v.to_string().as_bytes()).await.expect("send") }
    };
    // The next reply with a `status`, skipping snapshots.
    async fn reply(inbox: &mut mpsc::UnboundedReceiver<Value>, to: &str) -> Value {
        let wait = async {
            loop {
                let v = inbox.recv().await.expect("reader alive");
                if v.get("status").is_some() {
                    return v;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("no answer to {to} from the game server within 5 s"))
    }

    // Tokens are mandatory and verified: one signed with another key is refused.
    let forger = TokenSigner::new(&[7u8; 48]).unwrap();
    let (forged, _) = forger.issue(&user, Duration::from_secs(60));
    send(json!({"action": "join_game", "player_id": user, "token": forged, "session_id": session_id}))
        .await;
    let refused = reply(&mut inbox, "the forged join").await;
    assert_eq!(refused["status"], "join_failed", "forged token: {refused}");

    send(
        json!({"action": "join_game", "player_id": user, "token": token, "session_id": session_id}),
    )
    .await;
    let joined = reply(&mut inbox, "join_game").await;
    assert_eq!(joined["status"], "joined", "join: {joined}");
    assert_eq!(
        joined["session_id"],
        session_id.as_str(),
        "joined the Match's session"
    );
    let tank = joined["tank_id"].as_str().expect("a tank id").to_owned();

    // Snapshots of the session carry the bot's tank, in order.
    let mut seqs = Vec::new();
    let updates = async {
        while seqs.len() < 3 {
            let v = inbox.recv().await.expect("reader alive");
            if v["action"] != "game_update" {
                continue;
            }
            let mine = v["tanks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["id"] == tank.as_str());
            assert!(mine, "a game_update without the bot's tank {tank}: {v}");
            seqs.push(v["seq"].as_u64().expect("a seq"));
        }
    };
    tokio::time::timeout(Duration::from_secs(5), updates)
        .await
        .unwrap_or_else(|_| panic!("fewer than 3 game_updates within 5 s: seqs {seqs:?}"));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs {seqs:?}");

    // Players in: Running.
    let running = wait_for(
        "the Match Running (players in)",
        Duration::from_secs(15),
        phase_is(MatchPhase::Running),
    )
    .await;
    assert!(running.status.unwrap().running_at.is_some());

    send(json!({"action": "leave_game", "player_id": user})).await;
    let left = reply(&mut inbox, "leave_game").await;
    assert_eq!(left["status"], "left_game", "leave: {left}");

    let finished = wait_for(
        "the Match Finished after the bot left",
        FINISH_WAIT,
        phase_is(MatchPhase::Finished),
    )
    .await;
    let done = finished.status.unwrap();
    assert_eq!(done.reason.as_deref(), Some("session ended: abandoned"));
    assert!(done.finished_at.is_some());
    assert_eq!(
        done.endpoint.as_ref(),
        Some(&endpoint),
        "the endpoint stays"
    );

    // The phase recorder polls every 50 ms: let it see the Finished the probe just saw
    // before stopping it (aborting at once raced with its next poll).
    let recorded = wait_for(
        "the phase recorder to see Finished",
        Duration::from_secs(5),
        || async {
            let seen = phases.lock().unwrap().clone();
            if seen.last() == Some(&MatchPhase::Finished) {
                Ok(seen)
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    watch_phases.abort();
    reader.abort();
    let seen = recorded;
    let order: Vec<MatchPhase> = seen
        .into_iter()
        .filter(|p| *p != MatchPhase::Pending)
        .collect();
    assert_eq!(
        order,
        [
            MatchPhase::Allocated,
            MatchPhase::Running,
            MatchPhase::Finished
        ],
        "phases after Pending"
    );
}
