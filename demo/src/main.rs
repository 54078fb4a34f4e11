//! The main job on one machine: the system as users run it, watched live.
//!
//! On the local control plane (`hack/devenv up`), in a namespace of its own, the demo
//! starts the real `operator` (child process), a pod runner (in-process: the kubelet for
//! a few loopback nodes, one game server each) and the real `authserver` (embedded
//! store), all with a token key and control secret made for this run; creates a
//! GameFleet whose pods are real `gameserver` processes; then runs a small matchmaker
//! (RabbitMQ `new_match_created` out, `match_allocated` back) and waves of bots that
//! register, log in, wait for their match, join its endpoint over UDP with their token,
//! drive and shoot until the match ends, and log off. One line a second says how the
//! fleet, the matches and the players are doing; at the end (`--duration`, Ctrl-C) a
//! table sums the run up, and everything the demo made is removed.
//!
//! `hack/run` starts the services it needs, builds, and runs this.
#![forbid(unsafe_code)]

/// `eprintln!` that ignores a closed stderr.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that ignores a closed stdout (e.g. `hack/run | tee log`, where Ctrl-C
/// ends `tee` first): the demo must still print what it can and clean up.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

mod bots;
mod cluster;
mod matchmaker;
mod stats;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use rand::Rng;
use tanks_core::rabbit::Publisher;
use tanks_operator::api::{GameFleet, Match};
use tanks_testkit::pod_runner::{self, RunnerConfig};
use tanks_testkit::process::free_port;
use tokio::sync::{mpsc, watch};

use crate::bots::{Bots, Schedule};
use crate::cluster::{ChildProcess, FLEET, Plan};
use crate::matchmaker::Matchmaker;
use crate::stats::Stats;

#[derive(Parser, Debug)]
#[command(
    name = "tanks-demo",
    about = "Runs the whole system locally (operator, a GameFleet of real game servers, the auth server, a matchmaker, bots) and shows it at work"
)]
struct Args {
    /// Bots per wave (a few hundred at most on a small machine).
    #[arg(long, default_value_t = 120)]
    players: usize,
    /// Seconds of play before the summary and the clean-up (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Length of one wave: players arrive over its first 35%, play until 50%, then
    /// finish their match and log off; the fleet shrinks in the idle rest. Default: the
    /// duration, at most 180 s.
    #[arg(long)]
    cycle: Option<u64>,
    /// Seconds a match lasts (default: an eighth of the wave, 10 to 30 s).
    #[arg(long)]
    match_seconds: Option<u64>,
    /// Most game servers (one per loopback node).
    #[arg(long, default_value_t = 8)]
    servers: usize,
    #[arg(long, default_value_t = 4)]
    sessions_per_server: i32,
    #[arg(long, default_value_t = 4)]
    players_per_match: i32,
    /// Everything the demo creates lives here and is removed at exit.
    #[arg(long, default_value = "tanks-demo")]
    namespace: String,
    #[arg(long, env = "TANKS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[arg(
        long,
        env = "TANKS_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Where the `operator`, `authserver` and `gameserver` binaries are (default: beside
    /// this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Logs of every process (default: a folder in the temp dir, printed at start).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

/// Everything started so far, so teardown removes exactly that.
struct Running {
    client: Option<Client>,
    plan: Option<Plan>,
    namespace_created: bool,
    nodes_created: bool,
    runner: Option<(
        watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    auth: Option<ChildProcess>,
    operator: Option<ChildProcess>,
    queues: Vec<String>,
    publisher: Option<Publisher>,
    secrets: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANKS_DEMO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(demo(args))
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let (interrupt_tx, interrupted) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        say!("\n[demo] stopping (Ctrl-C)…");
        let _ = interrupt_tx.send(true);
    });

    let mut running = Running {
        client: None,
        plan: None,
        namespace_created: false,
        nodes_created: false,
        runner: None,
        auth: None,
        operator: None,
        queues: Vec::new(),
        publisher: None,
        secrets: Vec::new(),
    };
    // A Ctrl-C during set-up goes straight to the clean-up; once the bots play, `run`
    // itself stops them and prints the summary first.
    let (setup_done_tx, setup_done) = watch::channel(false);
    let mut stop_wait = interrupted.clone();
    let cancel_setup = async move {
        let _ = stop_wait.wait_for(|s| *s).await;
        if *setup_done.borrow() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        r = run(&args, &mut running, interrupted.clone(), setup_done_tx) => r,
        _ = cancel_setup => Ok(()),
    };
    if let Err(e) = &outcome {
        say!("[demo] FAILED: {e:#}");
        if let Some(plan) = &running.plan {
            say!("[demo] logs: {}", plan.run_dir.display());
        }
    }
    teardown(running).await;
    outcome
}

async fn run(
    args: &Args,
    running: &mut Running,
    interrupted: watch::Receiver<bool>,
    setup_done: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow::anyhow!("no folder for this binary"))?,
    };
    for bin in ["operator", "authserver", "gameserver"] {
        anyhow::ensure!(
            bin_dir.join(bin).exists(),
            "{} is missing (build the workspace's binaries: cargo build --workspace --bins)",
            bin_dir.join(bin).display()
        );
    }
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(tanks_testkit::kubeconfig);
    anyhow::ensure!(
        kubeconfig.exists(),
        "no kubeconfig at {}: start the control plane with `hack/devenv up kube`",
        kubeconfig.display()
    );
    let cycle = Duration::from_secs(
        args.cycle
            .unwrap_or_else(|| args.duration.unwrap_or(180).min(180))
            .max(30),
    );
    let match_seconds = args
        .match_seconds
        .unwrap_or_else(|| (cycle.as_secs() / 8).clamp(10, 30));
    let scale_down_delay = (cycle.as_secs() / 12).clamp(8, 30);
    let ns = args.namespace.clone();

    let client = tanks_testkit::kube_client(&kubeconfig).await?;
    running.client = Some(client.clone());
    say(&format!("control plane: {}", kubeconfig.display()));
    tanks_testkit::apply_crds(
        &client,
        tanks_operator::api::crds().into_iter().map(|(_, c)| c),
    )
    .await?;
    cluster::clear_leftovers(&client, &ns).await?;

    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("{ns}-{}", std::process::id())));
    std::fs::create_dir_all(run_dir.join("pods"))?;
    let auth_addr = format!("127.0.0.1:{}", free_port());
    let plan = Plan {
        namespace: ns.clone(),
        nodes: cluster::nodes(&ns, args.servers.clamp(1, 200)),
        sessions_per_server: args.sessions_per_server.max(1),
        players_per_session: args.players_per_match.max(1),
        match_seconds,
        scale_down_delay,
        run_dir: run_dir.clone(),
        auth_addr: auth_addr.clone(),
    };
    say(&format!("logs: {}", run_dir.display()));

    // This run's secrets: never the development key or control secret.
    let token_key = random_hex(48);
    let control_secret = random_hex(24);
    write_secret(&plan.token_key_file(), &token_key)?;
    running.secrets.push(plan.token_key_file());
    running.plan = Some(plan);
    let plan = running.plan.as_ref().unwrap();

    cluster::create_namespace(&client, &ns).await?;
    running.namespace_created = true;
    cluster::create_control_secret(&client, &ns, &control_secret).await?;
    cluster::create_nodes(&client, plan).await?;
    running.nodes_created = true;
    let (stop_runner, runner_stopped) = watch::channel(false);
    let runner = tokio::spawn(pod_runner::run(
        client.clone(),
        RunnerConfig {
            nodes: plan.nodes.clone(),
            bin_dirs: vec![bin_dir.clone()],
            log_dir: run_dir.join("pods"),
            state_dir: run_dir.join("pod-state"),
            max_pods: 1,
            ..RunnerConfig::default()
        },
        runner_stopped,
    ));
    running.runner = Some((stop_runner, runner));
    say(&format!(
        "namespace {ns}: {} loopback nodes ({}…), one game server each",
        plan.nodes.len(),
        plan.nodes[0].address
    ));

    let auth_metrics = format!("127.0.0.1:{}", free_port());
    running.auth = Some(cluster::spawn(
        &bin_dir.join("authserver"),
        &[
            "--listen-addr".into(),
            auth_addr.clone(),
            "--metrics-addr".into(),
            auth_metrics.clone(),
            "--token-key-file".into(),
            plan.token_key_file().display().to_string(),
            "--events-file".into(),
            run_dir.join("auth-events.jsonl").display().to_string(),
            // All bots come from 127.0.0.1.
            "--registrations-per-ip".into(),
            "1000000".into(),
        ],
        &[("RUST_LOG", "warn".into())],
        &run_dir.join("authserver.log"),
    )?);
    cluster::wait_until("the auth server", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&auth_addr)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await?;
    say(&format!(
        "auth server: {auth_addr} (embedded store; metrics http://{auth_metrics}/metrics)"
    ));

    let publisher = Publisher::connect(&args.amqp_url).await.map_err(|e| {
        anyhow::anyhow!(
            "RabbitMQ ({}): {e}",
            tanks_core::rabbit::redact(&args.amqp_url)
        )
    })?;
    let events_queue = format!("{ns}.matchmaking_events");
    let allocations_queue = format!("{ns}.match_allocations");
    for q in [&events_queue, &allocations_queue] {
        publisher.declare(q).await?;
        running.queues.push(q.clone());
    }
    running.publisher = Some(publisher.clone());

    let operator_metrics = format!("127.0.0.1:{}", free_port());
    running.operator = Some(cluster::spawn(
        &bin_dir.join("operator"),
        &[
            "--namespace".into(),
            ns.clone(),
            "--no-leader-election".into(),
            "--metrics-addr".into(),
            operator_metrics.clone(),
            "--poll-interval-ms".into(),
            "1000".into(),
            "--matchmaking-queue".into(),
            events_queue.clone(),
            "--allocations-queue".into(),
            allocations_queue.clone(),
            "--default-fleet".into(),
            FLEET.into(),
            "--match-ttl-seconds".into(),
            "900".into(),
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            // Secrets by environment, not on the command line.
            ("TANKS_CONTROL_TOKEN", control_secret.clone()),
            ("OPERATOR_AMQP_URL", args.amqp_url.clone()),
            ("RUST_LOG", "info".into()),
        ],
        &run_dir.join("operator.log"),
    )?);
    let ready = cluster::wait_until("the operator's /readyz", Duration::from_secs(60), || {
        let addr = operator_metrics.clone();
        async move {
            match cluster::http_get(&addr, "/readyz", Duration::from_secs(2)).await {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    if let Err(e) = ready {
        let exited = running.operator.as_mut().and_then(|o| o.exited());
        anyhow::bail!(
            "{e} (operator exit status: {exited:?}; log {})",
            run_dir.join("operator.log").display()
        );
    }
    say(&format!(
        "operator: ready (metrics http://{operator_metrics}/metrics)"
    ));

    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), &ns);
    fleets
        .create(&PostParams::default(), &cluster::fleet(plan)?)
        .await?;
    cluster::wait_until(
        "a ready game server in the fleet",
        Duration::from_secs(90),
        || async {
            let f = fleets.get(FLEET).await.map_err(|e| e.to_string())?;
            let st = f.status.unwrap_or_default();
            (st.ready_replicas >= 1).then_some(()).ok_or(format!(
                "replicas {} ready {} ({:?})",
                st.replicas, st.ready_replicas, st.desired_reason
            ))
        },
    )
    .await?;
    say(&format!(
        "GameFleet {FLEET}: {} sessions × {} players per server, 1–{} servers, buffer {} sessions, scale-down delay {scale_down_delay} s; matches last {match_seconds} s",
        plan.sessions_per_server,
        plan.players_per_session,
        plan.nodes.len(),
        plan.sessions_per_server
    ));
    say(&format!(
        "bots: {} a wave of {} s (arrive over 35%, play until 50%, then finish and log off){}",
        args.players,
        cycle.as_secs(),
        args.duration
            .map_or(" — Ctrl-C to stop".to_owned(), |d| format!(
                "; stopping after {d} s"
            ))
    ));

    // Watching.
    let stats = Arc::new(Stats::default());
    let mut watchers = tokio::task::JoinSet::new();
    {
        let (stats, matches) = (stats.clone(), Api::<Match>::namespaced(client.clone(), &ns));
        watchers.spawn(async move {
            let mut events = watcher(matches, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                        stats.saw_match(&m)
                    }
                    Ok(watcher::Event::Delete(m)) => stats.match_gone(&m),
                    _ => {}
                }
            }
        });
    }
    {
        let (stats, fleets) = (stats.clone(), fleets.clone());
        watchers.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                if let Ok(f) = fleets.get(FLEET).await {
                    stats.saw_fleet(&f);
                }
            }
        });
    }
    {
        let (stats, pods) = (stats.clone(), Api::<Pod>::namespaced(client.clone(), &ns));
        watchers.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            loop {
                every.tick().await;
                let Ok(list) = pods
                    .list(&ListParams::default().labels(&format!("tanks.dev/fleet={FLEET}")))
                    .await
                else {
                    continue;
                };
                let scrapes = list.items.iter().filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.clone()?;
                    let name = p.name_any();
                    Some(async move {
                        let addr = format!("{ip}:{}", cluster::METRICS_PORT);
                        match cluster::http_get(&addr, "/metrics", Duration::from_secs(1)).await {
                            Ok((200, page)) => Some((name, stats::tick_buckets(&page))),
                            _ => None,
                        }
                    })
                });
                let scraped: Vec<_> = futures::future::join_all(scrapes)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                stats.saw_ticks(scraped);
            }
        });
    }

    // Playing.
    let (stop_tx, stop) = watch::channel(false);
    let prefix = format!("{}-{:x}", short(&ns), rand::rng().random::<u32>());
    let (tickets_tx, tickets) = mpsc::channel(4096);
    let matchmaker = Matchmaker {
        publisher: publisher.clone(),
        amqp_url: args.amqp_url.clone(),
        events_queue,
        allocations_queue,
        fleet: FLEET.into(),
        players_per_match: plan.players_per_session as usize,
        max_wait: Duration::from_secs(5),
        prefix: prefix.clone(),
        stats: stats.clone(),
    };
    let matchmaking = tokio::spawn(matchmaker.run(tickets, stop.clone()));
    let started = Instant::now();
    let bots = Arc::new(Bots {
        auth_addr: auth_addr.clone(),
        prefix,
        match_seconds,
        schedule: Schedule {
            start: started,
            cycle,
            players: args.players,
            until: args.duration.map(|d| started + Duration::from_secs(d)),
        },
        tickets: tickets_tx,
        stats: stats.clone(),
        stop: stop.clone(),
    });
    let playing = tokio::spawn(bots.run());

    let _ = setup_done.send(true);
    let end = args.duration.map(|d| started + Duration::from_secs(d));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut interrupted = interrupted;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = interrupted.wait_for(|s| *s) => break,
        }
        out!("{}", stats.line(started.elapsed()));
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        if let Some(op) = running.operator.as_mut()
            && let Some(status) = op.exited()
        {
            anyhow::bail!(
                "the operator exited ({status}); see {}",
                run_dir.join("operator.log").display()
            );
        }
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = playing.await;
    let _ = matchmaking.await;
    watchers.abort_all();
    let (json, table) = stats.summary(elapsed, args.players);
    out!("");
    out!(
        "== summary: {} s, {} players a wave, namespace {ns} ==",
        elapsed.as_secs(),
        args.players
    );
    out!("{}", table.trim_end());
    out!("summary-json: {json}");
    Ok(())
}

async fn teardown(running: Running) {
    say("cleaning up…");
    let Running {
        client,
        plan,
        namespace_created,
        nodes_created,
        runner,
        auth,
        operator,
        queues,
        publisher,
        secrets,
    } = running;
    if let (Some(client), Some(plan)) = (&client, &plan)
        && namespace_created
    {
        // The fleet first, while the operator runs its finalizer and the runner stops
        // the pods it deletes.
        cluster::remove_fleet(client, &plan.namespace, Duration::from_secs(30)).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &plan.namespace);
        let _ = cluster::wait_until("the fleet's pods gone", Duration::from_secs(20), || async {
            match pods.list(&ListParams::default()).await {
                Ok(l) if l.items.is_empty() => Ok(()),
                Ok(l) => Err(format!("{} pods", l.items.len())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }
    if let Some(op) = operator {
        op.stop(Duration::from_secs(5)).await;
    }
    if let Some((stop, task)) = runner {
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    if let Some(auth) = auth {
        auth.stop(Duration::from_secs(5)).await;
    }
    if let (Some(client), Some(plan)) = (&client, &plan) {
        if namespace_created {
            // No kubelet is left to finish a pod's graceful deletion.
            let pods: Api<Pod> = Api::namespaced(client.clone(), &plan.namespace);
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items {
                    let _ = pods
                        .delete(
                            &p.name_any(),
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..DeleteParams::default()
                            },
                        )
                        .await;
                }
            }
        }
        if nodes_created {
            cluster::delete_nodes(client, plan).await;
        }
        if namespace_created {
            match cluster::delete_namespace(client, &plan.namespace, Duration::from_secs(60)).await
            {
                Ok(()) => say(&format!("namespace {} removed", plan.namespace)),
                Err(e) => say(&format!("{e}")),
            }
        }
    }
    if let Some(publisher) = publisher {
        for q in queues {
            for name in [tanks_core::rabbit::dead_letter_queue(&q), q] {
                let _ = publisher
                    .channel()
                    .queue_delete(name.as_str().into(), Default::default())
                    .await;
            }
        }
    }
    for file in secrets {
        let _ = std::fs::remove_file(file);
    }
    say("done");
}

fn say(line: &str) {
    say!("[demo] {line}");
}

/// At most 12 characters of the namespace: with the run's random suffix and the bot's
/// number a username stays within the auth server's 32 characters.
fn short(ns: &str) -> String {
    ns.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(12)
        .collect::<String>()
        .trim_end_matches('-')
        .to_lowercase()
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Writes a secret readable by this user only.
fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value.as_bytes())?;
    Ok(())
}
