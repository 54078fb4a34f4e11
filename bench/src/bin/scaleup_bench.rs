//! Scale-up benchmark against the real kube-apiserver of `hack/devenv` with kwok nodes.
//!
//! In one run: (1) raw pod creation, the ceiling: N plain pods (the fleet's template
//! without host port or affinity; with `--fleet-shape` also N pods of exactly the
//! fleet's shape), created directly at the same concurrency;
//! (2) a GameFleet scaled 0 -> N by the real `operator` binary (a child process). Both
//! time "created" and "Running" (kwok marks pods Running) at 100 and at N, then the
//! operator's reconcile cost per fleet event at N pods and its memory (RSS).
//!
//! `cargo run -p operator --bin scaleup-bench -- --pods 1000`
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tanks_operator::api::gamefleet::PortKind;
use tanks_operator::api::{GameFleet, labels};
use tanks_operator::domain::ports::PortAllocator;
use tanks_operator::reconcile::pods;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Concurrent creates, for the raw run and the operator alike.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator_bin: Option<std::path::PathBuf>,
    /// The operator's metrics address (default: a free loopback port).
    #[arg(long)]
    metrics_addr: Option<String>,
    #[arg(long)]
    skip_raw: bool,
    /// Also create raw pods of the fleet's own shape (host ports, affinity).
    #[arg(long)]
    fleet_shape: bool,
    /// `Packed` or `Distributed`.
    #[arg(long, default_value = "Packed")]
    scheduling: String,
}

#[derive(Default, Debug)]
struct Marks {
    created_100: Option<Duration>,
    created_all: Option<Duration>,
    running_100: Option<Duration>,
    running_all: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = tanks_testkit::kube_client(&tanks_testkit::kubeconfig())
        .await
        .context("start `hack/devenv up`")?;
    tanks_testkit::apply_crds(
        &client,
        tanks_operator::api::crds().into_iter().map(|(_, c)| c),
    )
    .await?;
    let ns = tanks_testkit::namespace::create(&client, "bench").await?;
    let node_api: Api<Node> = Api::all(client.clone());
    let per_node = args.pods.div_ceil(args.nodes) + 50;
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let name = format!("{ns}-n{i}");
        node_api
            .create(&PostParams::default(), &kwok_node(&name, &ns, per_node)?)
            .await?;
        nodes.push(name);
    }
    println!(
        "# scale-up bench: {} pods, {} kwok nodes, concurrency {}",
        args.pods, args.nodes, args.concurrency
    );

    let fleet = bench_fleet(&ns, args.pods, &args.scheduling)?;
    let result = run(&client, &ns, &fleet, &args).await;

    // Clean up whatever happened.
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), &ns);
    let _ = fleets
        .patch(
            "bench",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    tanks_testkit::namespace::delete(&client, &ns).await;
    for n in nodes {
        let _ = node_api.delete(&n, &DeleteParams::default()).await;
    }
    result
}

async fn run(client: &Client, ns: &str, fleet: &GameFleet, args: &Args) -> anyhow::Result<()> {
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if !args.skip_raw {
        // The control plane's limit: plain pods, no host port, no affinity.
        raw_run(&pods_api, fleet, args, RawShape::Plain).await?;
        if args.fleet_shape {
            // The fleet's own shape (a host port each, the placement affinity): what
            // the shape itself costs the scheduler, without the operator.
            raw_run(&pods_api, fleet, args, RawShape::Fleet).await?;
        }
    }

    // The operator as its own process, as it runs in a cluster.
    let metrics_addr = match &args.metrics_addr {
        Some(a) => a.clone(),
        None => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string(),
    };
    let bin = args
        .operator_bin
        .clone()
        .unwrap_or_else(|| tanks_testkit::process::workspace_binary("operator"));
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--namespace",
            ns,
            "--no-leader-election",
            "--metrics-addr",
            &metrics_addr,
        ])
        .args(["--create-concurrency", &args.concurrency.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {}: build it with `cargo build -p operator`",
                bin.display()
            )
        })?;
    let pid = child.id().unwrap_or_default();
    eprintln!("operator pid {pid} metrics on {metrics_addr}");
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let ready_url = format!("http://{metrics_addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&ready_url).await.map(|(code, _)| code) != Some(200) {
        anyhow::ensure!(Instant::now() < deadline, "operator not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_idle = rss_mib(pid, "VmRSS:");

    let selector = format!("{}=bench", labels::FLEET);
    let marks = watch_pods(pods_api.clone(), &selector, args.pods);
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    fleets.create(&PostParams::default(), fleet).await?;
    let m = marks.await??;
    print_marks(
        "GameFleet 0 -> N (operator)",
        m.created_all.unwrap_or_default(),
        &m,
        args.pods,
    );

    // Reconcile cost per fleet event at N pods: annotate the fleet 20 times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = reconcile_sum_count(&metrics_url).await;
    let cpu_before = cpu_seconds(pid);
    for i in 0..20 {
        fleets
            .patch(
                "bench",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"bench/poke": i.to_string()}}})),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reconcile_sum_count(&metrics_url).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let (ds, dc) = (after.0 - before.0, after.1 - before.1);
    let per = |total: f64| {
        if dc > 0.0 {
            total / dc * 1000.0
        } else {
            f64::NAN
        }
    };
    // The wall time waits for a core on a loaded machine; the process's CPU time over
    // the same seconds (its poller and watches included) does not.
    println!(
        "| reconcile per fleet event at {} pods | {:.1} ms mean over {} reconciles; operator CPU {:.1} ms per reconcile |",
        args.pods,
        per(ds),
        dc,
        per(cpu),
    );
    println!(
        "| operator RSS | {rss_idle:.0} MiB idle, {:.0} MiB at {} pods, peak {:.0} MiB |",
        rss_mib(pid, "VmRSS:"),
        args.pods,
        rss_mib(pid, "VmHWM:"),
    );
    let _ = start;
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum RawShape {
    /// The fleet's template with neither host port nor affinity.
    Plain,
    /// Exactly the pods the operator makes (distinct host ports, placement affinity).
    Fleet,
}

/// Creates `args.pods` pods directly at the operator's concurrency, times them to
/// Running, then deletes them.
async fn raw_run(
    pods_api: &Api<Pod>,
    fleet: &GameFleet,
    args: &Args,
    shape: RawShape,
) -> anyhow::Result<()> {
    let marks = watch_pods(pods_api.clone(), "bench=raw", args.pods);
    let start = Instant::now();
    let mut alloc = PortAllocator::new(7000, 8999, []);
    let hash = pods::template_hash(fleet);
    let shapes: Vec<Pod> = (0..args.pods)
        .map(|_| {
            let port = (shape == RawShape::Fleet).then(|| alloc.allocate());
            let mut f = fleet.clone();
            if shape == RawShape::Plain {
                f.spec.ports.policy = PortKind::PodIp;
            }
            let mut p = pods::build(&f, &hash, port, "raw").expect("pod");
            if shape == RawShape::Plain
                && let Some(spec) = p.spec.as_mut()
            {
                spec.affinity = None;
                spec.topology_spread_constraints = None;
            }
            let labels = p.meta_mut().labels.get_or_insert_with(Default::default);
            labels.remove(labels::FLEET);
            labels.insert("bench".into(), "raw".into());
            p.metadata.generate_name = Some("raw-".into());
            p
        })
        .collect();
    futures::stream::iter(shapes)
        .for_each_concurrent(args.concurrency, |pod| {
            let api = pods_api.clone();
            async move {
                if let Err(e) = api.create(&PostParams::default(), &pod).await {
                    eprintln!("raw create: {e}");
                }
            }
        })
        .await;
    let created = start.elapsed();
    let m = marks.await??;
    let what = match shape {
        RawShape::Plain => "raw plain pods",
        RawShape::Fleet => "raw pods of the fleet's shape",
    };
    print_marks(what, created, &m, args.pods);
    eprintln!("deleting raw pods");
    // A delete-collection of thousands of pods can outlive the HTTP request: retry
    // until the list is empty.
    let raw = ListParams::default().labels("bench=raw");
    loop {
        let left = pods_api
            .list(&raw.clone().limit(1))
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
        if left == 0 {
            break;
        }
        let dp = DeleteParams::default().grace_period(0);
        if let Err(e) = pods_api.delete_collection(&dp, &raw).await {
            eprintln!("delete raw pods (retrying): {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

fn print_marks(what: &str, created: Duration, m: &Marks, n: usize) {
    let s = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or("-".into())
    };
    println!(
        "| {what} | created 100: {} | created {n}: {} | Running 100: {} | Running {n}: {} | ({:.0} pods/s to Running) |",
        s(m.created_100),
        s(m.created_all.or(Some(created))),
        s(m.running_100),
        s(m.running_all),
        m.running_all
            .map(|d| n as f64 / d.as_secs_f64())
            .unwrap_or(0.0)
    );
}

/// Watches pods matching `selector` and returns when `n` of them are Running.
fn watch_pods(
    api: Api<Pod>,
    selector: &str,
    n: usize,
) -> tokio::task::JoinHandle<anyhow::Result<Marks>> {
    let cfg = watcher::Config::default().labels(selector);
    let start = Instant::now();
    tokio::spawn(async move {
        let seen = Arc::new(Mutex::new((
            HashSet::<String>::new(),
            HashSet::<String>::new(),
        )));
        let mut marks = Marks::default();
        let mut stream = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        let deadline = Duration::from_secs(600);
        while let Ok(Some(ev)) =
            tokio::time::timeout(deadline.saturating_sub(start.elapsed()), stream.next()).await
        {
            let pod = ev?;
            let mut g = seen.lock().await;
            g.0.insert(pod.name_any());
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                g.1.insert(pod.name_any());
            }
            let t = start.elapsed();
            if g.0.len() >= 100.min(n) && marks.created_100.is_none() {
                marks.created_100 = Some(t);
            }
            if g.0.len() >= n && marks.created_all.is_none() {
                marks.created_all = Some(t);
            }
            if g.1.len() >= 100.min(n) && marks.running_100.is_none() {
                marks.running_100 = Some(t);
            }
            if g.1.len() >= n {
                marks.running_all = Some(t);
                return Ok(marks);
            }
        }
        anyhow::bail!("timed out: {marks:?}")
    })
}

fn bench_fleet(ns: &str, n: usize, scheduling: &str) -> anyhow::Result<GameFleet> {
    let mut f: GameFleet = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "GameFleet",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {
            "replicas": n,
            "template": {"spec": {
                "nodeSelector": {"tanks.dev/test-group": ns},
                "tolerations": [{"key": "tanks.dev/test-group", "operator": "Equal", "value": ns, "effect": "NoSchedule"}],
                "containers": [{"name": "gameserver", "image": "tanks/gameserver:bench"}],
            }},
            "capacity": {"sessionsPerServer": 4, "playersPerSession": 8},
            "scaling": {"minReplicas": 0, "maxReplicas": n, "buffer": {"slots": 0}},
            "scheduling": scheduling,
        },
    }))?;
    f.meta_mut().uid = None;
    Ok(f)
}

fn kwok_node(name: &str, group: &str, pods: usize) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "tanks.dev/test-group": group},
        },
        "spec": {"taints": [{"key": "tanks.dev/test-group", "value": group, "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": pods.to_string()},
            "capacity": {"cpu": "1000", "memory": "4Ti", "pods": pods.to_string()},
        },
    }))?)
}

/// The process's user + system CPU time so far.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(f64::NAN);
    // USER_HZ: 100 on Linux.
    ticks / 100.0
}

/// A memory line of the process's status in MiB: `VmRSS:` now, `VmHWM:` its peak.
fn rss_mib(pid: u32, line: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(line)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.authority()?.as_str().to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        uri.path()
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf))
}

/// (sum, count) of the operator's GameFleet reconcile histogram.
async fn reconcile_sum_count(url: &str) -> (f64, f64) {
    let Some((_, text)) = http_get(url).await else {
        return (0.0, 0.0);
    };
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("operator_reconcile_duration_seconds_sum{kind=\"GameFleet\"}"),
        value("operator_reconcile_duration_seconds_count{kind=\"GameFleet\"}"),
    )
}
