//! The Nginx edge end to end, every piece real: the `operator` binary renders the
//! Edge's config into its ConfigMap; `tanks-edge` (the edge pod's supervisor) reads it
//! through the API server and runs the real nginx on loopback; the real `authserver`
//! stands behind the edge's TCP port; the pod runner runs the fleet's pods as real
//! `gameserver` processes.
//!
//! A player registers and logs in through the edge, a Match on the fleet hands out the
//! edge's address and that server's edge port, and the player joins there and plays:
//! its moves come back in `game_update`s. The fleet scales up: the ConfigMap changes,
//! the supervisor reloads nginx (SIGHUP: the master's pid stays the same) and the player
//! keeps playing on the same endpoint.
//!
//! What a reload does to a UDP flow: nginx's new workers take the player's next
//! datagram as a new session with a new upstream source port; the game server, which
//! binds a player to the address it joined from, answers `not_in_game`, and the player
//! joins again with its token (docs/gameserver.md, "Tokens"). The test counts the moves
//! seen reflected, the longest gap and the re-joins. (The reload's effect on many
//! players, scale-up and scale-down, is measured in `edge_reload.rs`, on configs
//! rendered directly; this test is the control side: operator, ConfigMap, supervisor.)
//!
//! Needs `hack/devenv up`, nginx with the stream module, and the workspace's binaries
//! (`cargo build --workspace --bins`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tanks_operator::api::{Edge, GameFleet, Match, MatchPhase};
use tanks_testkit::pod_runner::{self, RunnerConfig, RunnerNode};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const FLEET: &str = "arena";
const EDGE: &str = "front";
const CONTROL_PORT: u16 = 8890;
/// Host ports of the fleet's servers (on the runner node's own address).
const HOST_PORTS: (u16, u16) = (7100, 7199);
/// Edge ports in the range.
const EDGE_PORTS: u16 = 8;

fn spawn(name: &str, args: &[String], envs: &[(&str, String)], log: &Path) -> KillOnDrop {
    let out = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(workspace_binary(name));
    cmd.args(args)
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

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `probe` every 100 ms until it yields a value; after `limit`, fails naming what
/// was awaited and the last thing seen.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
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
        .unwrap_or_else(|e| panic!("the edge's auth port {addr}: {e}"));
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
    .expect("an answer through the edge within 10 s")
    .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("auth answer {line:?}: {e}"))
}

/// A plain HTTP GET on loopback (the operator's probes, the supervisor's status).
async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    if !(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")) {
        return Err(text.lines().next().unwrap_or_default().to_owned());
    }
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// `load_module` for this host's nginx: none when stream is built in (the official
/// image), Debian's dynamic module otherwise.
fn stream_module() -> Option<PathBuf> {
    let out = Command::new("nginx")
        .arg("-V")
        .output()
        .unwrap_or_else(|e| {
            panic!("nginx is not installed ({e}); this test runs the real nginx and does not skip")
        });
    let version = String::from_utf8_lossy(&out.stderr);
    if version.contains("--with-stream ") || version.ends_with("--with-stream") {
        return None;
    }
    let found = [
        "/usr/lib/nginx/modules",
        "/usr/lib64/nginx/modules",
        "/usr/share/nginx/modules",
    ]
    .iter()
    .map(|d| Path::new(d).join("ngx_stream_module.so"))
    .find(|p| p.exists());
    Some(found.expect("nginx has no stream module (Debian: apt-get install libnginx-mod-stream)"))
}

/// `EDGE_PORTS` consecutive ports free for UDP on every address (nginx listens on all).
fn free_udp_range() -> u16 {
    let seed = (std::process::id() % 1000) as u16;
    (0..200u16)
        .map(|i| 30000 + (seed * 17 + i * 41) % 20000)
        .find(|start| {
            (0..EDGE_PORTS).all(|p| std::net::UdpSocket::bind(("0.0.0.0", start + p)).is_ok())
        })
        .expect("a free UDP port range")
}

struct Setup {
    client: Client,
    ns: String,
    node: RunnerNode,
    dir: PathBuf,
    auth_port: u16,
    edge_auth: String,
    edge_range: u16,
    edge_status: String,
    operator_metrics: String,
}

impl Setup {
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for name in ["operator.log", "edge.log", "authserver.log"] {
            out.push_str(&format!(
                "--- {name} (tail) ---\n{}\n",
                tail(&self.dir.join(name), 40)
            ));
        }
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
        &format!("127.0.0.1:{}", s.auth_port),
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
                        "image": "tanks/gameserver:e2e",
                        "args": args,
                        "env": [{ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }],
                        "ports": [{ "name": "control", "containerPort": CONTROL_PORT }],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "control" } },
                    }],
                },
            },
            "capacity": { "sessionsPerServer": 2, "playersPerSession": 2 },
            "scaling": { "minReplicas": 1, "maxReplicas": 1, "buffer": { "slots": 0 } },
            "ports": { "policy": "Dynamic", "rangeStart": HOST_PORTS.0, "rangeEnd": HOST_PORTS.1 },
        },
    }))
    .expect("fleet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_log_in_and_play_through_the_edge_across_a_reload() {
    let kubeconfig = tanks_testkit::require_kube_apiserver();
    let client = tanks_testkit::require_kube_client().await;
    tanks_testkit::apply_crds(
        &client,
        tanks_operator::api::crds().into_iter().map(|(_, c)| c),
    )
    .await
    .expect("CRDs applied");
    let load_module = stream_module();

    let ns = tanks_testkit::namespace::create(&client, "e2e-edge")
        .await
        .expect("namespace");
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(dir.join("token.key"), &key).unwrap();
    let control_secret = format!("control-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.join("control.secret"), &control_secret).unwrap();

    let node = RunnerNode {
        name: format!("{ns}-node"),
        address: Ipv4Addr::new(127, 0, 4, (std::process::id() % 200 + 20) as u8),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let tainted: Node = serde_json::from_value(json!({
        "metadata": { "name": node.name, "labels": { "tanks.dev/test": "true" } },
        "spec": { "taints": [{ "key": "tanks.dev/e2e", "value": "edge", "effect": "NoSchedule" }] },
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

    let auth_port = free_port();
    let auth = spawn(
        "authserver",
        &[
            "--listen-addr".into(),
            format!("127.0.0.1:{auth_port}"),
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
        auth_port,
        edge_auth: format!("127.0.0.1:{}", free_port()),
        edge_range: free_udp_range(),
        edge_status: format!("127.0.0.1:{}", free_port()),
        operator_metrics: format!("127.0.0.1:{}", free_port()),
        dir,
        ns,
    };
    let operator = spawn(
        "operator",
        &[
            "--namespace".into(),
            s.ns.clone(),
            "--no-leader-election".into(),
            "--metrics-addr".into(),
            s.operator_metrics.clone(),
            "--control-token".into(),
            control_secret,
            "--poll-interval-ms".into(),
            "500".into(),
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info,tanks_operator=debug".into()),
        ],
        &s.dir.join("operator.log"),
    );
    let mut edge_args = vec![
        "--namespace".into(),
        s.ns.clone(),
        "--config-map".into(),
        format!("{EDGE}-nginx"),
        "--dir".into(),
        s.dir.join("nginx").display().to_string(),
        "--health-addr".into(),
        s.edge_status.clone(),
    ];
    if let Some(module) = &load_module {
        edge_args.extend(["--load-module".into(), module.display().to_string()]);
    }
    let edge = spawn(
        "tanks-edge",
        &edge_args,
        &[("KUBECONFIG", kubeconfig.display().to_string())],
        &s.dir.join("edge.log"),
    );

    let outcome = std::panic::AssertUnwindSafe(play(&s)).catch_unwind().await;
    if outcome.is_err() {
        eprintln!("{}", s.diagnostics());
    }

    // Teardown, also after a failure. The supervisor stops nginx gracefully on SIGTERM;
    // nginx is killed by its pid as well in case the supervisor could not.
    let nginx_pid = http_get(&s.edge_status, "/status")
        .await
        .ok()
        .and_then(|body| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["pid"].as_i64());
    terminate(edge);
    if let Some(pid) = nginx_pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), &s.ns);
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

/// SIGTERM, a few seconds to stop nginx, then the kill of `KillOnDrop`.
fn terminate(mut child: KillOnDrop) {
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The supervisor's `/status`.
async fn edge_status(s: &Setup) -> Result<Value, String> {
    let body = http_get(&s.edge_status, "/status").await?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// Waits until nginx runs the config the Edge's status names; returns the status.
async fn nginx_runs_the_edge_config(s: &Setup, edges: &Api<Edge>, what: &str) -> Value {
    wait_for(what, Duration::from_secs(60), || async {
        let edge = edges.get(EDGE).await.map_err(|e| e.to_string())?;
        let hash = edge
            .status
            .and_then(|st| st.config_hash)
            .ok_or("no configHash yet")?;
        let status = edge_status(s).await?;
        (status["loaded_hash"] == hash.as_str() && status["pid"].is_u64())
            .then_some(status.clone())
            .ok_or(format!("edge status {status}, wanted {hash}"))
    })
    .await
}

async fn play(s: &Setup) {
    wait_for("the operator's /readyz", Duration::from_secs(30), || {
        http_get(&s.operator_metrics, "/readyz")
    })
    .await;

    // The auth server as the edge's upstream: a Service naming its loopback address
    // (a cluster IP cannot be loopback; the controller takes an ExternalName as is).
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "auth"},
        "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
    }))
    .unwrap();
    Api::<Service>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("auth service");

    let fleets: Api<GameFleet> = Api::namespaced(s.client.clone(), &s.ns);
    fleets
        .create(&PostParams::default(), &fleet(s))
        .await
        .expect("create the fleet");
    let edge_port = |p: u16| s.edge_range + p;
    let edges: Api<Edge> = Api::namespaced(s.client.clone(), &s.ns);
    let auth_listen: u16 = s.edge_auth.rsplit_once(':').unwrap().1.parse().unwrap();
    let edge: Edge = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Edge",
        "metadata": {"name": EDGE},
        "spec": {
            "publicAddress": "127.0.0.1",
            "auth": {"service": "auth", "port": s.auth_port, "listenPort": auth_listen, "proxyProtocol": false},
            "fleets": [FLEET],
            "ports": {"rangeStart": edge_port(0), "rangeEnd": edge_port(EDGE_PORTS - 1), "quarantineSeconds": 60},
        },
    }))
    .unwrap();
    edges
        .create(&PostParams::default(), &edge)
        .await
        .expect("create the edge");

    // A ready server behind a running nginx.
    wait_for(
        "a ready game server with an edge port",
        Duration::from_secs(60),
        || async {
            let f = fleets.get(FLEET).await.map_err(|e| e.to_string())?;
            let ready = f.status.map_or(0, |st| st.ready_replicas);
            let e = edges.get(EDGE).await.map_err(|e| e.to_string())?;
            let servers = e.status.map_or(0, |st| st.servers);
            (ready >= 1 && servers == 1)
                .then_some(())
                .ok_or(format!("ready {ready}, servers behind the edge {servers}"))
        },
    )
    .await;
    let first = nginx_runs_the_edge_config(s, &edges, "nginx on the first config").await;
    let pid = first["pid"].as_u64().unwrap();

    // Register and log in through the edge.
    let user = format!("edge{}", std::process::id());
    let password = format!("{user}-Secret-1");
    let registered = auth_request(
        &s.edge_auth,
        json!({"action": "register", "username": user, "password": password}),
    )
    .await;
    assert_eq!(registered["status"], "success", "register: {registered}");
    let login = auth_request(
        &s.edge_auth,
        json!({"action": "login", "username": user, "password": password}),
    )
    .await;
    assert_eq!(login["status"], "success", "login: {login}");
    let token = login["session_id"].as_str().expect("a token").to_owned();

    // A Match on the fleet: the endpoint is the edge's.
    let matches: Api<Match> = Api::namespaced(s.client.clone(), &s.ns);
    let m: Match = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Match",
        "metadata": {"name": "m1"},
        "spec": {"fleet": FLEET, "sourceEventId": "ev-1", "players": [user]},
    }))
    .unwrap();
    matches
        .create(&PostParams::default(), &m)
        .await
        .expect("match");
    let allocated = wait_for("the Match Allocated", Duration::from_secs(30), || async {
        let m = matches.get("m1").await.map_err(|e| e.to_string())?;
        (m.phase() == MatchPhase::Allocated)
            .then_some(m.clone())
            .ok_or(format!("{:?}", m.status))
    })
    .await;
    let status = allocated.status.unwrap();
    let endpoint = status.endpoint.unwrap();
    let server = status.game_server.unwrap();
    let session_id = status.session_id.unwrap();
    let ports = edges.get(EDGE).await.unwrap().status.unwrap().ports;
    assert_eq!(endpoint.address, "127.0.0.1");
    assert_eq!(
        Some(&endpoint.port),
        ports.get(&server),
        "the server's edge port"
    );

    // Join at the edge and play.
    let mut player = Player::join(
        &endpoint.address,
        endpoint.port as u16,
        &user,
        &token,
        &session_id,
    )
    .await;
    let before = player.play(Duration::from_secs(2)).await;
    assert!(
        before.reflected >= 20,
        "moves reflected before the reload: {before:?}"
    );

    // Scale up: a new server, a new listener, a reload of the same nginx.
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let old_text = cms
        .get(&format!("{EDGE}-nginx"))
        .await
        .unwrap()
        .data
        .unwrap()["nginx.conf"]
        .clone();
    fleets
        .patch(
            FLEET,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scaling": {"minReplicas": 2, "maxReplicas": 2}}})),
        )
        .await
        .unwrap();
    // Playing while it happens.
    let playing = player.play(Duration::from_secs(1));
    let reloaded = async {
        wait_for(
            "the ConfigMap with two servers",
            Duration::from_secs(60),
            || async {
                let e = edges.get(EDGE).await.map_err(|e| e.to_string())?;
                let n = e.status.map_or(0, |st| st.servers);
                (n == 2).then_some(()).ok_or(format!("{n} servers"))
            },
        )
        .await;
        nginx_runs_the_edge_config(s, &edges, "nginx reloaded with two servers").await
    };
    let (during, after_reload) = tokio::join!(playing, reloaded);
    let new_text = cms
        .get(&format!("{EDGE}-nginx"))
        .await
        .unwrap()
        .data
        .unwrap()["nginx.conf"]
        .clone();
    assert_ne!(new_text, old_text, "the ConfigMap changed");
    assert_eq!(new_text.matches(" udp reuseport;").count(), 2);
    assert_eq!(
        after_reload["pid"].as_u64(),
        Some(pid),
        "a reload, not a restart"
    );
    assert!(
        after_reload["reloads"].as_u64() >= Some(1),
        "{after_reload}"
    );
    let ports_after = edges.get(EDGE).await.unwrap().status.unwrap().ports;
    assert_eq!(
        ports_after.get(&server),
        Some(&endpoint.port),
        "the port stays"
    );

    // Keep playing on the same endpoint.
    let after = player.play(Duration::from_secs(4)).await;
    eprintln!("edge reload: before {before:?}, during {during:?}, after {after:?}");
    assert!(
        after.reflected >= 30,
        "moves reflected after the reload: {after:?}"
    );
    assert!(
        after
            .last_reflected_at
            .is_some_and(|t| t > Duration::from_secs(3)),
        "still playing at the end: {after:?}"
    );
}

/// A player's UDP flow to the edge, sending a move every 1/30 s.
struct Player {
    socket: Arc<UdpSocket>,
    inbox: mpsc::UnboundedReceiver<Value>,
    user: String,
    token: String,
    session_id: String,
    tank: String,
    /// Where the server last showed the tank, and where it started: moves go a little
    /// further from the last shown position each time (within the server's maximum
    /// step), back and forth around the start.
    shown_x: f64,
    start_x: f64,
    direction: f64,
    y: f64,
}

/// What one stretch of play saw.
#[derive(Debug, Default)]
struct Played {
    sent: u32,
    /// Moves seen in a later `game_update` (the tank at the position sent).
    reflected: u32,
    /// Longest time without a reflected move.
    longest_gap: Duration,
    /// When, from the start of the stretch, the last reflected move was seen.
    last_reflected_at: Option<Duration>,
    /// `join_game` sent again (after `not_in_game`, or a stall).
    rejoins: u32,
}

impl Player {
    async fn join(host: &str, port: u16, user: &str, token: &str, session_id: &str) -> Player {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let target: SocketAddr = format!("{host}:{port}").parse().unwrap();
        socket.connect(target).await.unwrap();
        let (tx, inbox) = mpsc::unbounded_channel::<Value>();
        let reader = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = reader.recv(&mut buf).await {
                if let Ok(v) = serde_json::from_slice::<Value>(&buf[..n])
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let mut player = Player {
            socket,
            inbox,
            user: user.into(),
            token: token.into(),
            session_id: session_id.into(),
            tank: String::new(),
            shown_x: 0.0,
            start_x: 0.0,
            direction: 1.0,
            y: 0.0,
        };
        let joined = player.send_join().await;
        assert_eq!(
            joined["status"], "joined",
            "join through the edge: {joined}"
        );
        player.tank = joined["tank_id"].as_str().expect("a tank id").to_owned();
        let start = &joined["initial_state"]["position"];
        player.shown_x = start[0].as_f64().unwrap_or(0.0);
        player.start_x = player.shown_x;
        player.y = start[1].as_f64().unwrap_or(0.0);
        player
    }

    /// Sends `join_game` (until answered: the first datagram may race nginx's listener)
    /// and returns the answer.
    async fn send_join(&mut self) -> Value {
        let join = json!({"action": "join_game", "player_id": self.user, "token": self.token, "session_id": self.session_id});
        for _ in 0..20 {
            self.socket
                .send(join.to_string().as_bytes())
                .await
                .expect("send");
            let answer = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    let v = self.inbox.recv().await.expect("reader alive");
                    if v.get("status").is_some() {
                        return v;
                    }
                }
            })
            .await;
            if let Ok(v) = answer {
                return v;
            }
        }
        panic!("no answer to join_game through the edge in 10 s");
    }

    /// Moves at 30/s for `length`, and joins again with its token as clients do: when
    /// the server answers a move `not_in_game` (it came from an address the player is
    /// not bound to: the edge's new upstream socket after a reload), and, in case that
    /// answer is lost, when no move has come back for half a second. The server then
    /// follows the token to the new address.
    async fn play(&mut self, length: Duration) -> Played {
        const STALL: Duration = Duration::from_millis(500);
        let mut played = Played::default();
        let start = tokio::time::Instant::now();
        let mut last = start;
        let mut last_join = start;
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let mut pending: Vec<f64> = Vec::new();
        let join = json!({"action": "join_game", "player_id": self.user, "token": self.token, "session_id": self.session_id});
        while start.elapsed() < length {
            tokio::select! {
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    if now - last > STALL && now - last_join > STALL {
                        self.socket.send(join.to_string().as_bytes()).await.expect("send");
                        played.rejoins += 1;
                        last_join = now;
                    }
                    if (self.shown_x - self.start_x).abs() > 60.0 {
                        self.direction = (self.start_x - self.shown_x).signum();
                    }
                    // Distinct targets while a few moves are in flight, so an update says
                    // which it reflects; never more than 5 units from the shown position.
                    let ahead = (pending.len() + 1).min(5) as f64;
                    let x = self.shown_x + self.direction * ahead;
                    let mv = json!({"action": "move", "player_id": self.user, "position": [x, self.y]});
                    self.socket.send(mv.to_string().as_bytes()).await.expect("send");
                    pending.push(x);
                    played.sent += 1;
                }
                Some(v) = self.inbox.recv() => {
                    if v["action"] == "game_update" {
                        let me = v["tanks"].as_array().into_iter().flatten().find(|t| t["id"] == self.tank.as_str());
                        if let Some(x) = me.and_then(|t| t["position"][0].as_f64())
                            && let Some(i) = pending.iter().position(|p| (p - x).abs() < 1e-6)
                        {
                            played.reflected += 1;
                            pending.drain(..=i);
                            self.shown_x = x;
                            let now = tokio::time::Instant::now();
                            played.longest_gap = played.longest_gap.max(now - last);
                            played.last_reflected_at = Some(now - start);
                            last = now;
                        }
                    } else if let Some(status) = v["status"].as_str() {
                        match status {
                            // The server saw this input from a new address (the edge's
                            // new upstream socket): join again with the token.
                            "not_in_game" => {
                                let now = tokio::time::Instant::now();
                                if now - last_join > Duration::from_millis(100) {
                                    self.socket.send(join.to_string().as_bytes()).await.expect("send");
                                    played.rejoins += 1;
                                    last_join = now;
                                }
                            }
                            "joined" | "already_in_session" => {}
                            other => panic!("unexpected answer through the edge ({other}): {v}"),
                        }
                    }
                }
            }
        }
        played.longest_gap = played.longest_gap.max(tokio::time::Instant::now() - last);
        played
    }
}
