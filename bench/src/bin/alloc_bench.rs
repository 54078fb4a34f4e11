//! Allocation benchmark: matchmaking events published to RabbitMQ → endpoint in the
//! Match status, against the real API server, with a fleet of game-server pods on a kwok
//! node whose control interfaces are served in-process (`FakeServers`). In the same run,
//! at the same concurrency, the API server's own ceiling for the same writes: create a
//! `Match` and patch its status, nothing else (as `api-ceiling` does).
//!
//! `alloc-bench --servers 1000 --events 3000 --concurrency 32 --rate 0,300`
//!
//! `--rate 0` publishes every event at once (throughput: allocations per second from the
//! first publish to the last endpoint); a positive rate publishes at that many events per
//! second (latency at a load the system sustains).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use tanks_core::protocol::matchmaking::MatchRequest;
use tanks_core::rabbit::Publisher;
use tanks_operator::api::Match;
use tanks_operator::api::matches::{MatchEndpoint, MatchPhase, MatchStatus};
use tanks_operator::matches::consumer::{ConsumerConfig, to_match};
use tanks_operator::matches::reconcile::{MANAGER, MatchSettings, status_patch};
use tanks_operator::matches::runtime::{MatchConfig, run_standalone};
use tanks_operator::metrics::Metrics;
use tanks_operator::runtime::tokio_runtime;
use tanks_operator::servers::LoadIndex;
use tanks_testkit::fake_servers::FakeServers;

/// Matchmaking events awaiting their publisher confirm at once.
const PUBLISH_WINDOW: usize = 256;

#[derive(Parser, Debug)]
#[command(about = "Match allocation rate and latency next to the API server's ceiling")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    /// Sessions per server.
    #[arg(long, default_value_t = 10)]
    capacity: u32,
    /// Events per measurement.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Consumer prefetch = Match reconciles at once = ceiling clients.
    #[arg(long, default_value_t = 32)]
    concurrency: u16,
    /// Events per second; 0 publishes them all at once. One measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "0,300")]
    rate: Vec<u32>,
    /// How often the operator polls each game server's load (its default: 2 s).
    #[arg(long, default_value_t = 2000)]
    poll_ms: u64,
    /// Publish each allocation for the matchmaker (as the operator does when it has a
    /// broker), waiting for the broker's confirm before the status write.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    publish_results: bool,
    /// Also watch the ceiling's Matches during its writes (as the operator watches its
    /// own): what a watch costs the API server.
    #[arg(long)]
    ceiling_watch: bool,
    /// Async worker threads of this process (the operator's default: 1; 0 is one per core).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    #[arg(
        long,
        env = "TANKS_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    /// Kubeconfig of the cluster (default: `TANKS_KUBECONFIG`, then hack/devenv's).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
}

/// How long a namespace may take to go after a run: its thousands of deletes must not
/// run during the next measurement.
const NAMESPACE_GONE: Duration = Duration::from_secs(300);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

struct Row {
    what: String,
    count: usize,
    secs: f64,
    p50: f64,
    p99: f64,
}

/// All the rows' matches over all their seconds.
fn combined_rate<'a>(rows: impl Iterator<Item = &'a Row>) -> f64 {
    let (count, secs) = rows.fold((0.0, 0.0), |(c, s), r| (c + r.count as f64, s + r.secs));
    count / secs
}

impl Row {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.secs
    }

    fn print(&self) {
        println!(
            "{},{},{:.2},{:.0},{:.1},{:.1}",
            self.what,
            self.count,
            self.secs,
            self.count as f64 / self.secs,
            self.p50,
            self.p99
        );
    }
}

/// What one allocation writes, and nothing else: the Match the consumer makes of event
/// `i`, then the status patch the operator makes. Returns how long both took.
async fn write_like_an_allocation(api: &Api<Match>, i: usize) -> anyhow::Result<Duration> {
    let id = format!("c-{i:06}");
    let event = MatchRequest::new(id.clone(), vec![format!("{id}-a"), format!("{id}-b")]);
    let m =
        to_match(&serde_json::to_vec(&event)?, None, Some("tanks")).map_err(anyhow::Error::msg)?;
    let name = m.name_any();
    let t = Instant::now();
    api.create(&PostParams::default(), &m).await?;
    let status = MatchStatus {
        phase: MatchPhase::Allocated,
        game_server: Some("tanks-00001".into()),
        endpoint: Some(MatchEndpoint {
            address: "127.0.0.2".into(),
            port: 7001,
            protocol: "UDP".into(),
        }),
        session_id: Some(format!("session-{i}")),
        allocated_at: Some(Timestamp::now().to_string()),
        observed_generation: Some(1),
        conditions: vec![Condition {
            type_: "Allocated".into(),
            status: "True".into(),
            reason: "SessionCreated".into(),
            message: "session on tanks-00001".into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::now()),
        }],
        ..Default::default()
    };
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(&name, &params, &Patch::<()>::Json(status_patch(&status)?))
        .await?;
    Ok(t.elapsed())
}

/// The API server alone: [`write_like_an_allocation`] `count` times, either with
/// `concurrency` clients back to back (`rate` 0: its throughput), or one write started
/// every 1/`rate` s (its latency at that load, as the allocation run sees it).
async fn ceiling(
    client: &Client,
    concurrency: usize,
    count: usize,
    rate: u32,
    watched: bool,
) -> anyhow::Result<Row> {
    let ns = tanks_testkit::namespace::create(client, "alloc-ceiling").await?;
    let api: Api<Match> = Api::namespaced(client.clone(), &ns);
    let watch = watched.then(|| {
        let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
        tokio::spawn(stream.for_each(|_| async {}))
    });
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    if rate == 0 {
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (api, next) = (api.clone(), next.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        latencies.push(write_like_an_allocation(&api, i).await?);
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        for w in workers {
            latencies.extend(w.await??);
        }
    } else {
        let mut writes = Vec::with_capacity(count);
        for i in 0..count {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let api = api.clone();
            writes.push(tokio::spawn(async move {
                write_like_an_allocation(&api, i).await
            }));
        }
        for w in writes {
            latencies.push(w.await??);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(watch) = watch {
        watch.abort();
    }
    latencies.sort();
    tanks_testkit::namespace::delete_and_wait(client, &ns, NAMESPACE_GONE).await?;
    Ok(Row {
        what: if rate == 0 {
            format!("api-ceiling c={concurrency}")
        } else {
            format!("api-ceiling at {rate}/s")
        },
        count: latencies.len(),
        secs,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}

/// Publishes `events` matchmaking events (at `rate`/s, or at once) and times each until
/// its Match shows an endpoint.
async fn allocations(
    client: &Client,
    ns: &str,
    rabbit: (&Publisher, &str),
    round: usize,
    events: usize,
    rate: u32,
) -> anyhow::Result<Row> {
    let (publisher, queue) = rabbit;
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // Each Match is timed to the watch event showing its endpoint, as a client watching
    // would see it. The operator offers no hook of its own: what the benchmark measures
    // is what any client of the API server can observe. This second watch of every Match
    // (the operator's is the first) costs the API server and this process their share.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = {
        let api: Api<Match> = Api::namespaced(client.clone(), ns);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(m)) = stream.next().await {
                if m.status
                    .as_ref()
                    .and_then(|s| s.endpoint.as_ref())
                    .is_some()
                {
                    let _ = done_tx.send((m.name_any(), Instant::now()));
                }
            }
        })
    };
    // Let the watch list and start following before the first publish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let prefix = format!("r{round}-");
    // Publishes are pipelined (up to PUBLISH_WINDOW awaiting their confirm), as a
    // matchmaker serving many players would: one confirmed publish at a time would make
    // the publisher, not the allocator, the bottleneck.
    let window = Arc::new(tokio::sync::Semaphore::new(PUBLISH_WINDOW));
    let mut sends = Vec::with_capacity(events);
    let started = Instant::now();
    for i in 0..events {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let id = format!("{prefix}{i:06}");
        let event = MatchRequest::new(id.clone(), vec![format!("{id}-a"), format!("{id}-b")]);
        published.lock().unwrap().insert(id, Instant::now());
        let permit = window.clone().acquire_owned().await?;
        let (publisher, queue) = (publisher.clone(), queue.to_owned());
        sends.push(tokio::spawn(async move {
            let sent = publisher.publish_json(&queue, &event).await;
            drop(permit);
            sent
        }));
    }
    for send in sends {
        send.await??;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(events);
    let mut timeline = Vec::with_capacity(events);
    let mut seen = std::collections::HashSet::new();
    let mut last = started;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < events {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((name, at))) = tokio::time::timeout(left, done_rx.recv()).await else {
            anyhow::bail!("only {} of {events} allocated", seen.len());
        };
        if !name.starts_with(&prefix) || !seen.insert(name.clone()) {
            continue;
        }
        let sent = published.lock().unwrap()[&name];
        latencies.push(at.saturating_duration_since(sent));
        timeline.push((
            sent.duration_since(started),
            at.saturating_duration_since(sent),
        ));
        last = last.max(at);
    }
    watch.abort();
    latencies.sort();
    eprintln!("published {events} events in {publish_secs:.2}s");
    if let Some(dir) = std::env::var_os("ALLOC_BENCH_TIMELINE") {
        // Each allocation's publish time and latency, to see when the slow ones happen.
        timeline.sort();
        let path = std::path::Path::new(&dir).join(format!("timeline-{round}.csv"));
        let lines: String = timeline
            .iter()
            .map(|(sent, took)| {
                format!(
                    "{:.4},{:.2}\n",
                    sent.as_secs_f64(),
                    took.as_secs_f64() * 1e3
                )
            })
            .collect();
        std::fs::write(&path, format!("sent_s,latency_ms\n{lines}"))?;
    }
    Ok(Row {
        what: if rate == 0 {
            "allocation burst".to_owned()
        } else {
            format!("allocation at {rate}/s")
        },
        count: events,
        secs: last.duration_since(started).as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio_runtime(args.worker_threads)?.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Allocated sessions stay for the whole run: every round needs room of its own.
    let slots = args.servers * args.capacity as usize;
    let wanted = args.events * args.rate.len();
    anyhow::ensure!(
        slots >= wanted,
        "{} servers x {} sessions = {slots} slots, fewer than the {wanted} matches of {} rounds: raise --capacity",
        args.servers,
        args.capacity,
        args.rate.len()
    );
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(tanks_testkit::kubeconfig);
    let client = tanks_testkit::kube_client(&kubeconfig).await?;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        Match::crd_name(),
        &PatchParams::apply("alloc-bench").force(),
        &Patch::Apply(Match::crd()),
    )
    .await?;

    // The fleet: pods on a kwok node, their control interfaces in-process.
    let ns = tanks_testkit::namespace::create(&client, "alloc-bench").await?;
    let node = format!("{ns}-node");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods_per_node = (args.servers + 10).to_string();
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": node, "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "spec": {"taints": [{"key": "tanks.dev/bench", "value": "alloc", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "1000", "memory": "1Ti", "pods": pods_per_node},
                           "capacity": {"cpu": "1000", "memory": "1Ti", "pods": pods_per_node}},
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..args.servers)
        .map(|i| {
            let pods = pods.clone();
            let node = node.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("tanks-{i:05}"), "labels": {"tanks.dev/fleet": "tanks"},
                                 "annotations": {"tanks.dev/game-port": (7000 + i % 2000).to_string()}},
                    "spec": {"nodeName": node, "tolerations": [{"key": "tanks.dev/bench", "operator": "Exists"}],
                             "containers": [{"name": "game", "image": "tanks/gameserver"}]},
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    loop {
        let running = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == args.servers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{} servers Running in {:.1}s",
        args.servers,
        t.elapsed().as_secs_f64()
    );

    let fake = FakeServers::start(args.capacity).await?;
    let queue = tanks_testkit::unique("bench-matchmaking-events");
    let results = tanks_testkit::unique("bench-match-allocations");
    let publisher = Publisher::connect(&args.amqp).await?;
    publisher.declare(&queue).await?;
    let loads = Arc::new(LoadIndex::default());
    let metrics = Arc::new(Metrics::default());
    let config = MatchConfig {
        metrics: metrics.clone(),
        namespace: Some(ns.clone()),
        concurrency: args.concurrency,
        settings: MatchSettings {
            pending_timeout: Duration::from_secs(600),
            ..Default::default()
        },
        consumer: Some(ConsumerConfig {
            amqp_uri: args.amqp.clone(),
            queue: queue.clone(),
            namespace: ns.clone(),
            prefetch: args.concurrency,
            default_fleet: Some("tanks".into()),
            ..Default::default()
        }),
        resolver: fake.resolver(),
        publish: args
            .publish_results
            .then(|| (args.amqp.clone(), results.clone())),
        ..Default::default()
    };
    let poll_ms = args.poll_ms;
    let operator = tokio::spawn({
        let (client, loads) = (client.clone(), loads.clone());
        async move {
            run_standalone(
                client,
                config,
                loads,
                Duration::from_millis(poll_ms),
                std::future::pending(),
            )
            .await
        }
    });
    // Ready when every server has reported once.
    let keys: Vec<String> = (0..args.servers)
        .map(|i| format!("{ns}/tanks-{i:05}"))
        .collect();
    while keys
        .iter()
        .any(|k| loads.get(k).and_then(|e| e.report).is_none())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("every server reported; measuring");

    // Cleanup runs whatever the measurement's outcome: a failed run must not leave a
    // thousand pods behind to slow down the next one.
    let measured = async {
        println!("what,count,seconds,per_second,p50_ms,p99_ms");
        println!("step NAME,mean_ms,p99_at_most_ms");
        let raw_phase = |rate| {
            ceiling(
                &client,
                args.concurrency as usize,
                args.events,
                rate,
                args.ceiling_watch,
            )
        };
        // Closed-loop raw phases, and each round's allocation row.
        let (mut raws, mut rounds): (Vec<Row>, Vec<Row>) = (Vec::new(), Vec::new());
        for (round, &rate) in args.rate.iter().enumerate() {
            let raw = raw_phase(0).await?;
            raw.print();
            if rate > 0 {
                // The API server's own latency at this load: the floor under the allocation's.
                raw_phase(rate).await?.print();
            }
            let steps_before = step_totals(&metrics);
            let row =
                allocations(&client, &ns, (&publisher, &queue), round, args.events, rate).await?;
            row.print();
            print_steps(&steps_before, &step_totals(&metrics));
            raws.push(raw);
            rounds.push(row);
        }
        // The raw writes slow down as the run goes on (allocated Matches stay, the API
        // server's heap grows), so each allocation phase is set against the mean of the
        // raw phases on both sides of it, not only the one before.
        let closing = raw_phase(0).await?;
        closing.print();
        raws.push(closing);
        println!("ratio,round,to_raw_before,to_raw_before_and_after");
        let bursts: Vec<usize> = (0..rounds.len()).filter(|&r| args.rate[r] == 0).collect();
        for &round in &bursts {
            let allocated = rounds[round].per_second();
            let (before, after) = (raws[round].per_second(), raws[round + 1].per_second());
            println!(
                "ratio,{round},{:.2},{:.2}",
                allocated / before,
                2.0 * allocated / (before + after)
            );
        }
        // Over the whole run: allocation bursts and raw phases alike, all their matches
        // over all their seconds (each burst's ratio scatters with the raw writes' own
        // cost, which varies by a fifth between phases of one run).
        if !bursts.is_empty() {
            let allocated = combined_rate(bursts.iter().map(|&r| &rounds[r]));
            let raw = combined_rate(raws.iter());
            println!(
                "ratio,all,{allocated:.0}/s of {raw:.0}/s,{:.2}",
                allocated / raw
            );
        }
        let over = fake.peak_over_capacity();
        let doubled = fake.doubly_placed();
        eprintln!(
            "servers over capacity: {}; matches on two servers: {}",
            over.len(),
            doubled.len()
        );
        if args.publish_results {
            // Every allocation is published at least once (a retried step may repeat one).
            let published = queue_length(&publisher, &results).await?;
            let allocated = args.events * args.rate.len();
            eprintln!("allocations published for the matchmaker: {published} of {allocated}");
            anyhow::ensure!(published >= allocated, "allocations went unpublished");
        }
        anyhow::Ok(())
    }
    .await;

    operator.abort();
    tanks_testkit::namespace::delete_and_wait(&client, &ns, NAMESPACE_GONE).await?;
    nodes.delete(&node, &DeleteParams::background()).await?;
    let _ = publisher
        .channel()
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    for q in [
        queue.clone(),
        format!("{queue}.dead"),
        results.clone(),
        format!("{results}.dead"),
    ] {
        let _ = publisher
            .channel()
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
    measured
}

/// One allocation step's histogram so far, from the operator's registry.
struct StepTotal {
    step: String,
    count: u64,
    seconds: f64,
    /// Cumulative (upper bound in seconds, count) pairs.
    buckets: Vec<(f64, u64)>,
}

fn step_totals(metrics: &Metrics) -> Vec<StepTotal> {
    let mut totals = Vec::new();
    for family in metrics.registry.gather() {
        if !family.name().ends_with("match_allocation_step_seconds") {
            continue;
        }
        for metric in family.get_metric() {
            let step = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "step")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let h = metric.get_histogram();
            totals.push(StepTotal {
                step,
                count: h.get_sample_count(),
                seconds: h.get_sample_sum(),
                buckets: h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect(),
            });
        }
    }
    totals
}

/// Each step's mean over one phase, and the histogram bucket its 99th percentile falls
/// in, as `step NAME,mean_ms,p99_at_most_ms` lines.
fn print_steps(before: &[StepTotal], after: &[StepTotal]) {
    for now in after {
        let earlier = before.iter().find(|b| b.step == now.step);
        let (count0, seconds0) = earlier.map_or((0, 0.0), |b| (b.count, b.seconds));
        let count = now.count - count0;
        if count == 0 {
            continue;
        }
        let in_phase = |i: usize| now.buckets[i].1 - earlier.map_or(0, |b| b.buckets[i].1);
        let p99 = (0..now.buckets.len())
            .find(|&i| in_phase(i) as f64 >= 0.99 * count as f64)
            .map_or("more".to_owned(), |i| {
                format!("{:.1}", now.buckets[i].0 * 1e3)
            });
        println!(
            "step {},{:.1},{p99}",
            now.step,
            (now.seconds - seconds0) * 1e3 / count as f64
        );
    }
}

/// Messages waiting in `queue` (a passive declare: fails if it does not exist).
async fn queue_length(publisher: &Publisher, queue: &str) -> anyhow::Result<usize> {
    let declared = publisher
        .channel()
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    Ok(declared.message_count() as usize)
}
