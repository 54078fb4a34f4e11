//! `gameload`: plays many bots against a game server over real UDP, one socket per
//! bot (a few plain threads share them, see [`BotThread`]), and reports input-to-snapshot latency, the share of inputs reflected within
//! two ticks, the server's tick duration (from its metrics) and CPU per player-second.
//!
//! `gameload echo` runs the "ideal echo server" baseline: it answers every `move` at
//! once with a `game_update` of the same size as a 14-tank snapshot, no game logic.
//! Measure both in the same run (see docs/PERFORMANCE.md).
//!
//! Every run is bounded: `--warmup` + `--duration` seconds, plus at most 10 s to
//! join and 2 s to leave.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use gameserver::batch::{Receiver, Sender};
use gameserver::outbox::Outbox;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "gameload",
    about = "Load bots for the game server, and an ideal echo server to compare with"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Play bots against a server.
    Run(RunArgs),
    /// Time the simulation tick alone (no network): N players in 7-vs-7 sessions,
    /// every player moving every tick, events to a bounded in-memory sink.
    Tickbench {
        #[arg(long, default_value_t = 5000)]
        players: usize,
        #[arg(long, default_value_t = 300)]
        ticks: u64,
        /// Publish tank coordinates every this many ticks (0: never).
        #[arg(long, default_value_t = 1)]
        coordinates_every: u64,
    },
    /// Print an edge nginx.conf (rendered by the operator's `edge::render`) with one
    /// UDP listener in front of one game server, for `bench/edge.sh`.
    EdgeConfig {
        /// The edge's UDP port (on 127.0.0.1).
        #[arg(long, default_value_t = 39997)]
        listen: u16,
        /// The game server's UDP address.
        #[arg(long, default_value = "127.0.0.1:39999")]
        upstream: SocketAddr,
        /// Folder for the pid file and error log.
        #[arg(long, default_value = "/tmp")]
        dir: String,
        /// `load_module` path of the stream module, when nginx does not build it in.
        #[arg(long)]
        stream_module: Option<String>,
    },
    /// Serve the ideal echo baseline.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9998")]
        addr: SocketAddr,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The server's UDP address.
    #[arg(long, default_value = "127.0.0.1:9999")]
    server: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    players: usize,
    /// Inputs per second per bot.
    #[arg(long, default_value_t = 30.0)]
    rate: f64,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The server's tick rate, for the "within two ticks" figure.
    #[arg(long, default_value_t = 30)]
    tick_rate: u32,
    /// The control interface: when given, bots play in 7-vs-7 matches created there.
    #[arg(long)]
    control: Option<SocketAddr>,
    #[arg(long, default_value = "tanks-development-control-secret")]
    secret: String,
    /// The server's metrics endpoint, for tick durations.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// The server's process id, for its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Processes between the bots and the server (the edge's nginx master and
    /// workers), comma-separated: their CPU is reported as `edge_cpu_cores`.
    #[arg(long, value_delimiter = ',')]
    edge_pids: Vec<u32>,
    /// Sign each bot's token with this key (the game server's --token-key-file), so
    /// bots join bound to their address and re-join after a `not_in_game` (an edge
    /// reload). Without it bots join without a token.
    #[arg(long)]
    token_key_file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 14)]
    per_session: usize,
    /// A label for the report line.
    #[arg(long, default_value = "gameserver")]
    label: String,
    /// Threads sharing the bots (one per core is enough: a bot costs a `send` and a
    /// `recv` per input, nothing else).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Each bot thread wakes every this many microseconds, sends the inputs due and
    /// takes every snapshot waiting. 0: block in `epoll_wait` instead, woken by each
    /// burst of snapshots (costlier: the waker pays for every wake-up). Latency is
    /// measured when a snapshot is taken, so polling can only overstate it.
    #[arg(long, default_value_t = 1000)]
    poll_us: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Echo { addr, seconds } => echo(addr, Duration::from_secs(seconds)),
        Cmd::EdgeConfig {
            listen,
            upstream,
            dir,
            stream_module,
        } => {
            print!("{}", edge_config(listen, upstream, &dir, stream_module)?);
            Ok(())
        }
        Cmd::Run(args) => run(args),
        Cmd::Tickbench {
            players,
            ticks,
            coordinates_every,
        } => {
            // The event publisher's pump is a tokio task.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(tickbench(players, ticks, coordinates_every))
        }
    }
}

/// The edge as the operator renders it, one game server behind it, sized for the
/// bench: every bot comes from 127.0.0.1, so no per-source session cap.
fn edge_config(
    listen: u16,
    upstream: SocketAddr,
    dir: &str,
    stream_module: Option<String>,
) -> anyhow::Result<String> {
    use tanks_operator::edge::net::Upstream;
    use tanks_operator::edge::render::{
        EdgeConfig, GameRoute, Limits, NginxRuntime, UdpPolicy, render,
    };
    let cfg = EdgeConfig {
        runtime: NginxRuntime {
            load_modules: stream_module.into_iter().collect(),
            pid: format!("{dir}/nginx.pid"),
            error_log: format!("{dir}/error.log"),
            daemon_off: true,
            listen_address: Some([127, 0, 0, 1].into()),
        },
        limits: Limits {
            worker_processes: 1,
            worker_connections: 8192,
        },
        access: Default::default(),
        auth: None,
        udp: UdpPolicy {
            idle_timeout_seconds: 30,
            proxy_responses: None,
            max_sessions_per_source: 0,
            proxy_protocol: false,
        },
        game: vec![GameRoute {
            server: "bench/gameserver".into(),
            edge_port: listen,
            upstream: Upstream::new(&upstream.ip().to_string(), upstream.port())?,
        }],
    };
    Ok(render(&cfg)?.text)
}

/// The baseline: one reply per `move`, at once, with the game server's syscall
/// batching (`recvmmsg`, then the batch's replies in one `sendmmsg`), so the two
/// differ by the game and the wait for the tick only.
fn echo(addr: SocketAddr, seconds: Duration) -> anyhow::Result<()> {
    let socket = gameserver::udp::bind(addr, 4 << 20)?;
    let until = Instant::now() + seconds;
    let (mut receiver, mut sender) = (Receiver::default(), Sender::default());
    let mut out = Outbox::default();
    eprintln!("echo server on {addr} for {seconds:?}");
    while Instant::now() < until {
        out.clear();
        let _ = receiver.recv(&socket, |datagram, from| {
            echo_reply(datagram, from, &mut out)
        });
        sender.send(&socket, &out);
    }
    Ok(())
}

fn echo_reply(datagram: &[u8], from: SocketAddr, out: &mut Outbox) {
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(datagram) else {
        return;
    };
    match msg["action"].as_str() {
        Some("join_game") => {
            out.begin();
            let _ = out.writer().write_all(
                br#"{"status":"joined","session_id":"echo","tank_id":"tank_0","initial_state":{"id":"tank_0","position":[100,100],"health":100}}"#,
            );
        }
        Some("move") => {
            let seq = msg["seq"].as_u64().unwrap_or(0);
            out.begin();
            let w = out.writer();
            let _ = write!(
                w,
                r#"{{"action":"game_update","seq":{seq},"tanks":[{{"id":"tank_0","position":[100,100],"health":100,"ack":{seq}}}"#
            );
            // Filler to the size of a 14-tank snapshot.
            for i in 1..14 {
                let _ = write!(
                    w,
                    r#",{{"id":"tank_{i}","position":[523.71,181.44],"health":100,"ack":{seq}}}"#
                );
            }
            let _ = w.write_all(b"]}");
        }
        _ => return,
    }
    out.send_to(from);
}

async fn tickbench(players: usize, ticks: u64, coordinates_every: u64) -> anyhow::Result<()> {
    use gameserver::rules::Rules;
    use gameserver::sessions::{ManagerConfig, SessionManager};
    use tanks_core::events::{EventMetrics, EventPublisher, MemorySink, SinkConfig};
    let (events, _pump) = EventPublisher::start(
        SinkConfig::Memory(MemorySink::new(10_000)),
        EventMetrics::detached(),
    )?;
    let mut config = ManagerConfig::new("tickbench", Rules::default());
    config.max_sessions = players.div_ceil(14) + 1;
    config.player_timeout_ticks = u64::MAX / 2;
    config.coordinates_every = coordinates_every;
    let mut manager = SessionManager::new(config, events);
    let ids: Vec<String> = (0..players).map(|i| format!("bot-{i}")).collect();
    for (m, chunk) in ids.chunks(14).enumerate() {
        let request = tanks_core::protocol::control::CreateSession {
            match_id: format!("bench-{m}"),
            players: chunk.to_vec(),
            map: None,
            mode: None,
        };
        manager
            .create_match(&request)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (i, id) in ids.iter().enumerate() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + (i % 50_000) as u16));
        manager.join(id, addr, false, None);
    }
    let mut out = Outbox::default();
    let mut deferred = gameserver::moves::MoveBatches::default();
    let events = manager.events();
    let mut publish_ms = Vec::with_capacity(ticks as usize);
    let mut durations = Vec::with_capacity(ticks as usize);
    for t in 0..ticks {
        for (i, id) in ids.iter().enumerate() {
            let x = 100.0 + ((t as usize + i) % 700) as f64;
            let _ = manager.queue_move(id, None, [x, 500.0], Some(t));
        }
        let started = Instant::now();
        manager.step(&mut out);
        durations.push(started.elapsed().as_secs_f64() * 1000.0);
        // As the tick thread does: events are published after the lock is released.
        let publishing = Instant::now();
        manager.take_deferred(&mut deferred);
        deferred.drain_records(|record| {
            events.publish_raw(record);
        });
        publish_ms.push(publishing.elapsed().as_secs_f64() * 1000.0);
        tokio::task::yield_now().await; // let the event pump run
    }
    durations.sort_by(f64::total_cmp);
    publish_ms.sort_by(f64::total_cmp);
    let q = |p: f64| round3(durations[((durations.len() - 1) as f64 * p) as usize]);
    let qp = |p: f64| round3(publish_ms[((publish_ms.len() - 1) as f64 * p) as usize]);
    println!(
        "{}",
        json!({"players": players, "sessions": manager.sessions(), "ticks": ticks,
               "tick_ms": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0)},
               "publish_after_tick_ms": {"p50": qp(0.5), "p99": qp(0.99)},
               "snapshot_bytes_per_tick": out.bytes(), "datagrams_per_tick": out.len()})
    );
    Ok(())
}

/// What the bot threads share with the main thread.
#[derive(Default)]
struct Shared {
    joined: AtomicU64,
    /// Inputs sent while set are measured.
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// One bot thread's counts and latency samples (microseconds), summed at the end.
#[derive(Default)]
struct Counts {
    sent: u64,
    acked: u64,
    within_two_ticks: u64,
    updates: u64,
    /// `not_in_game` answers that sent a bot back to joining.
    rejoins: u64,
    samples: Vec<u32>,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.within_two_ticks += other.within_two_ticks;
        self.updates += other.updates;
        self.rejoins += other.rejoins;
        self.samples.extend(other.samples);
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let players = args.players;
    let per_session = args.per_session.max(1);
    let run_id = format!("{:x}", std::process::id());
    let ids: Vec<String> = (0..players).map(|i| format!("bot-{run_id}-{i}")).collect();
    if let Some(control) = args.control {
        for (m, chunk) in ids.chunks(per_session).enumerate() {
            let body = json!({"match_id": format!("load-{run_id}-{m}"), "players": chunk});
            let status = post(control, &args.secret, "/v1/sessions", &body.to_string())?;
            anyhow::ensure!(status == 200, "creating match {m}: HTTP {status}");
        }
        eprintln!(
            "created {} matches of {per_session}",
            players.div_ceil(per_session)
        );
    }
    let shared = Arc::new(Shared::default());
    let threads = args.threads.clamp(1, players.max(1));
    let plan = Plan {
        server: args.server,
        period: Duration::from_secs_f64(1.0 / args.rate),
        two_ticks: Duration::from_secs_f64(2.0 / f64::from(args.tick_rate)),
        // Joins spread as 200 per 20 ms in all, shared between the threads.
        joins_per_20ms: (200 / threads).max(1),
        poll: Duration::from_micros(args.poll_us),
        signer: match &args.token_key_file {
            Some(path) => Some(tanks_core::token::TokenSigner::from_key_file(Some(path))?.0),
            None => None,
        },
    };
    // Bot i goes to thread i % threads, keeping its index for its send offset.
    let mut shares: Vec<Vec<(usize, String)>> = vec![Vec::new(); threads];
    for (i, id) in ids.into_iter().enumerate() {
        shares[i % threads].push((i, id));
    }
    let handles = shares
        .into_iter()
        .enumerate()
        .map(|(t, share)| {
            let (plan, shared) = (plan.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("bots-{t}"))
                .spawn(move || BotThread::new(share, plan).map(|b| b.run(&shared)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let join_deadline = Instant::now() + Duration::from_secs(10);
    while (shared.joined.load(Ordering::Relaxed) as usize) < players
        && Instant::now() < join_deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let joined = shared.joined.load(Ordering::Relaxed);
    eprintln!(
        "{joined}/{players} bots joined on {threads} threads; warming up {} s",
        args.warmup
    );
    std::thread::sleep(Duration::from_secs(args.warmup));

    let server_cpu0 = args.server_pid.and_then(process_cpu);
    let edge_cpu0 = processes_cpu(&args.edge_pids);
    let self_cpu0 = process_cpu(std::process::id());
    let ticks0 = args.metrics.and_then(|m| tick_histogram(m).ok());
    let events0 = args.metrics.and_then(|m| event_counts(m).ok());
    shared.measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.duration));
    shared.measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = args
        .server_pid
        .and_then(process_cpu)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);
    let edge_cpu = processes_cpu(&args.edge_pids)
        .zip(edge_cpu0)
        .map(|(b, a)| b - a);
    let self_cpu = process_cpu(std::process::id())
        .zip(self_cpu0)
        .map(|(b, a)| b - a);
    let ticks = match (args.metrics, ticks0) {
        (Some(m), Some(before)) => tick_histogram(m).ok().map(|after| after.minus(&before)),
        _ => None,
    };
    let events = match (args.metrics, events0) {
        (Some(m), Some(before)) => event_counts(m).ok().map(|after| {
            json!({
                "produced_per_second": ((after.0 - before.0) / elapsed).round(),
                "dropped": after.1 - before.1,
                "pending_at_end": after.2,
            })
        }),
        _ => None,
    };
    shared.stop.store(true, Ordering::SeqCst);
    let mut counts = Counts::default();
    for handle in handles {
        match handle.join() {
            Ok(Ok(c)) => counts.add(c),
            Ok(Err(e)) => eprintln!("a bot thread could not start: {e}"),
            Err(_) => eprintln!("a bot thread panicked"),
        }
    }
    let latencies = &mut counts.samples;
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        f64::from(latencies[i]) / 1000.0
    };
    let (sent, acked, within) = (counts.sent, counts.acked, counts.within_two_ticks);
    let player_seconds = joined as f64 * elapsed;
    let report = json!({
        "label": args.label,
        "players": players,
        "joined": joined,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "inputs_sent": sent,
        "inputs_per_second": (sent as f64 / elapsed).round(),
        "inputs_reflected_share": ratio(acked, sent),
        "within_two_ticks_share": ratio(within, sent),
        "updates_per_second": (counts.updates as f64 / elapsed).round(),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "tick_ms": ticks.as_ref().map(|t| json!({"p50": t.quantile(0.5) * 1000.0, "p99": t.quantile(0.99) * 1000.0, "ticks": t.count})),
        "events": events,
        "server_cpu_cores": server_cpu.map(|c| round3(c / elapsed)),
        "server_cpu_ms_per_player_second": server_cpu.map(|c| round3(c * 1000.0 / player_seconds)),
        "edge_cpu_cores": edge_cpu.map(|c| round3(c / elapsed)),
        "load_tool_cpu_cores": self_cpu.map(|c| round3(c / elapsed)),
        "rejoins": counts.rejoins,
    });
    println!("{report}");
    Ok(())
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        round3(a as f64 / b as f64).min(1.0)
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What every bot thread is told.
#[derive(Clone)]
struct Plan {
    server: SocketAddr,
    period: Duration,
    two_ticks: Duration,
    joins_per_20ms: usize,
    /// Zero: block in `epoll_wait`.
    poll: Duration,
    /// Signs the bots' tokens, when the server wants them.
    signer: Option<tanks_core::token::TokenSigner>,
}

/// Inputs remembered for latency: a ring indexed by seq.
const RING: usize = 128;
/// Join attempts per bot, two seconds apart.
const JOIN_TRIES: u8 = 3;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;

enum Phase {
    /// Not asked yet.
    Waiting,
    /// Asked `tries` times, the last at `at`.
    Joining {
        tries: u8,
        at: Instant,
    },
    Playing,
    GaveUp,
}

struct Bot {
    id: String,
    index: usize,
    socket: UdpSocket,
    phase: Phase,
    /// Its inputs are on the timer heap (from its first `joined` on).
    scheduled: bool,
    /// `{"id":"tank_7",`: where this bot's own tank starts in a snapshot.
    needle: Vec<u8>,
    x: f64,
    y: f64,
    dir: f64,
    seq: u64,
    last_ack: u64,
    /// When each input in the ring was sent, and whether it is measured.
    sent_at: Box<[Option<(Instant, bool)>; RING]>,
}

/// A share of the bots, played by one plain thread: every bot has its own
/// non-blocking socket (its own source address, like a real client), all registered
/// in one level-triggered epoll, so a readable socket costs one `recv` and nothing
/// else; inputs go out on a timer heap. This replaced a tokio task per bot, whose
/// wake-ups cost more CPU than the game server it measured.
struct BotThread {
    bots: Vec<Bot>,
    epoll: Epoll,
    plan: Plan,
    /// (next input due, bot), earliest first.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Bots not yet asked to join are `bots[next_join..]`.
    next_join: usize,
    counts: Counts,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl BotThread {
    fn new(share: Vec<(usize, String)>, plan: Plan) -> anyhow::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let mut bots = Vec::with_capacity(share.len());
        for (slot, (index, id)) in share.into_iter().enumerate() {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            // Connected: the kernel keeps the route, and `send` skips the lookup.
            socket.connect(plan.server)?;
            socket.set_nonblocking(true)?;
            epoll.add(&socket, EpollEvent::new(EpollFlags::EPOLLIN, slot as u64))?;
            bots.push(Bot {
                id,
                index,
                socket,
                phase: Phase::Waiting,
                scheduled: false,
                needle: Vec::new(),
                x: 100.0,
                y: 100.0,
                dir: 1.0,
                seq: 0,
                last_ack: 0,
                sent_at: Box::new([None; RING]),
            });
        }
        Ok(Self {
            bots,
            epoll,
            plan,
            due: BinaryHeap::new(),
            next_join: 0,
            counts: Counts::default(),
            out: Vec::with_capacity(160),
            buf: vec![0; 8192],
        })
    }

    fn run(mut self, shared: &Shared) -> Counts {
        let mut events = vec![EpollEvent::empty(); EVENTS];
        let mut next_join_burst = Instant::now();
        let mut next_retry_scan = Instant::now();
        while !shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_join_burst && self.next_join < self.bots.len() {
                self.ask_to_join(now);
                next_join_burst = now + Duration::from_millis(20);
            }
            if now >= next_retry_scan {
                self.retry_joins(now);
                next_retry_scan = now + Duration::from_millis(100);
            }
            let measuring = shared.measuring.load(Ordering::Relaxed);
            self.send_due_inputs(now, measuring);
            if self.plan.poll.is_zero() {
                let timeout = self.wait_timeout();
                self.take_ready(&mut events, timeout, shared);
            } else {
                std::thread::sleep(self.plan.poll);
                // Level-triggered: a full list may leave more ready sockets.
                while self.take_ready(&mut events, EpollTimeout::ZERO, shared) == EVENTS {}
            }
        }
        self.leave();
        self.counts
    }

    /// Waits for readable sockets as long as `timeout` and takes one datagram from
    /// each; returns how many were ready.
    fn take_ready(
        &mut self,
        events: &mut [EpollEvent],
        timeout: EpollTimeout,
        shared: &Shared,
    ) -> usize {
        let ready = self.epoll.wait(events, timeout).unwrap_or(0);
        let measuring = shared.measuring.load(Ordering::Relaxed);
        for event in &events[..ready] {
            self.receive(event.data() as usize, measuring, &shared.joined);
        }
        ready
    }

    /// Until the next input is due, in whole milliseconds (epoll's unit), rounded up
    /// so the thread does not spin; at most 20 ms, so joins and `stop` are seen.
    fn wait_timeout(&self) -> EpollTimeout {
        let Some(Reverse((at, _))) = self.due.peek() else {
            return EpollTimeout::from(20u8);
        };
        let wait = at.saturating_duration_since(Instant::now());
        let ms = wait.as_micros().div_ceil(1000).min(20);
        EpollTimeout::from(ms as u8)
    }

    fn ask_to_join(&mut self, now: Instant) {
        let end = self
            .bots
            .len()
            .min(self.next_join + self.plan.joins_per_20ms);
        for slot in self.next_join..end {
            self.send_join(slot, 1, now);
        }
        self.next_join = end;
    }

    /// A bot unanswered for two seconds asks again, up to [`JOIN_TRIES`] in all.
    fn retry_joins(&mut self, now: Instant) {
        for slot in 0..self.next_join {
            if let Phase::Joining { tries, at } = self.bots[slot].phase
                && now.duration_since(at) >= Duration::from_secs(2)
            {
                if tries < JOIN_TRIES {
                    self.send_join(slot, tries + 1, now);
                } else {
                    self.bots[slot].phase = Phase::GaveUp;
                }
            }
        }
    }

    fn send_join(&mut self, slot: usize, tries: u8, now: Instant) {
        let bot = &mut self.bots[slot];
        let join = match &self.plan.signer {
            Some(signer) => {
                let (token, _) = signer.issue(&bot.id, Duration::from_secs(3600));
                json!({"action":"join_game","player_id":bot.id,"token":token})
            }
            None => json!({"action":"join_game","player_id":bot.id}),
        };
        let _ = bot.socket.send(join.to_string().as_bytes());
        bot.phase = Phase::Joining { tries, at: now };
    }

    fn send_due_inputs(&mut self, now: Instant, measuring: bool) {
        while let Some(&Reverse((at, slot))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            self.send_input(slot, measuring);
            // Like a timer that skips missed ticks: a late bot does not burst.
            let mut next = at + self.plan.period;
            while next <= now {
                next += self.plan.period;
            }
            self.due.push(Reverse((next, slot)));
        }
    }

    fn send_input(&mut self, slot: usize, measuring: bool) {
        let bot = &mut self.bots[slot];
        bot.seq += 1;
        bot.x += 2.0 * bot.dir;
        if !(60.0..=940.0).contains(&bot.x) {
            bot.dir = -bot.dir;
        }
        self.out.clear();
        let _ = write!(
            self.out,
            r#"{{"action":"move","player_id":"{}","position":[{},{}],"seq":{}}}"#,
            bot.id, bot.x, bot.y, bot.seq
        );
        bot.sent_at[bot.seq as usize % RING] = Some((Instant::now(), measuring));
        if measuring {
            self.counts.sent += 1;
        }
        let _ = bot.socket.send(&self.out);
    }

    /// Takes one datagram from a readable socket (level-triggered: if more are
    /// queued, the next wait reports it again).
    fn receive(&mut self, slot: usize, measuring: bool, joined: &AtomicU64) {
        let Some(bot) = self.bots.get_mut(slot) else {
            return;
        };
        let Ok(n) = bot.socket.recv(&mut self.buf) else {
            return;
        };
        let now = Instant::now();
        let datagram = &self.buf[..n];
        match bot.phase {
            Phase::Joining { .. } => {
                // A bot joining again after `not_in_game` keeps its input schedule.
                if bot.joined(datagram) && !std::mem::replace(&mut bot.scheduled, true) {
                    joined.fetch_add(1, Ordering::Relaxed);
                    // Spread bots over the period so their inputs do not all land at once.
                    let offset = self.plan.period.mul_f64((bot.index % 97) as f64 / 97.0);
                    self.due.push(Reverse((now + offset, slot)));
                }
            }
            // The server no longer takes this bot's inputs from this address (an
            // edge reload moved its flow): join again, with the token.
            Phase::Playing if datagram.starts_with(br#"{"status":"not_in_game""#) => {
                self.counts.rejoins += 1;
                self.send_join(slot, 1, now);
            }
            Phase::Playing => {
                if measuring {
                    self.counts.updates += 1;
                }
                bot.snapshot(datagram, now, self.plan.two_ticks, &mut self.counts);
            }
            Phase::Waiting | Phase::GaveUp => {}
        }
    }

    fn leave(&mut self) {
        for bot in &self.bots {
            if matches!(bot.phase, Phase::Playing) {
                let leave = json!({"action":"leave_game","player_id":bot.id}).to_string();
                let _ = bot.socket.send(leave.as_bytes());
            }
        }
    }
}

impl Bot {
    /// Whether `datagram` is this bot's join answer; if so it now plays that tank.
    fn joined(&mut self, datagram: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(datagram) else {
            return false;
        };
        let (Some(id), Some(p)) = (
            v["tank_id"].as_str(),
            v["initial_state"]["position"].as_array(),
        ) else {
            return false;
        };
        let xy = |i: usize| p.get(i).and_then(|x| x.as_f64()).unwrap_or(100.0);
        (self.x, self.y) = (xy(0), xy(1));
        self.needle = format!(r#"{{"id":"{id}","#).into_bytes();
        self.phase = Phase::Playing;
        true
    }

    /// Every input up to the snapshot's `ack` for this bot's tank is now reflected
    /// (later inputs in a tick supersede earlier ones).
    fn snapshot(
        &mut self,
        datagram: &[u8],
        now: Instant,
        two_ticks: Duration,
        counts: &mut Counts,
    ) {
        let Some(ack) = find_ack(datagram, &self.needle) else {
            return;
        };
        let first = self.last_ack.max(ack.saturating_sub(RING as u64 - 1)) + 1;
        for s in first..=ack.min(self.seq) {
            if let Some((at, true)) = self.sent_at[s as usize % RING].take() {
                let latency = now.duration_since(at);
                counts.acked += 1;
                if latency <= two_ticks {
                    counts.within_two_ticks += 1;
                }
                counts
                    .samples
                    .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
            }
        }
        self.last_ack = self.last_ack.max(ack);
    }
}

/// The `ack` of the tank entry starting with `needle` (`{"id":"tank_7",`), found by
/// a byte scan: parsing every snapshot as JSON would make the bots, not the server,
/// the bottleneck.
fn find_ack(snapshot: &[u8], needle: &[u8]) -> Option<u64> {
    let start = (0..snapshot.len().saturating_sub(needle.len()))
        .find(|&i| snapshot[i] == b'{' && snapshot[i..].starts_with(needle))?;
    let entry = &snapshot[start..];
    let end = entry.iter().position(|&b| b == b'}')?;
    let entry = &entry[..end];
    let key = b"\"ack\":";
    let at = (0..entry.len().saturating_sub(key.len())).find(|&i| entry[i..].starts_with(key))?
        + key.len();
    let digits: &[u8] = &entry[at..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

/// The summed CPU time of `pids`, or None without any.
fn processes_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    Some(pids.iter().filter_map(|&p| process_cpu(p)).sum())
}

/// utime + stime of a process, in seconds.
fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // CLK_TCK is 100 on Linux
}

/// A Prometheus histogram's cumulative buckets.
struct Buckets {
    bounds: Vec<(f64, u64)>,
    count: u64,
}

impl Buckets {
    fn minus(&self, before: &Buckets) -> Buckets {
        let bounds = self
            .bounds
            .iter()
            .zip(&before.bounds)
            .map(|((le, a), (_, b))| (*le, a.saturating_sub(*b)))
            .collect();
        Buckets {
            bounds,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The upper bound of the bucket holding the quantile (a conservative estimate).
    fn quantile(&self, q: f64) -> f64 {
        let rank = (self.count as f64 * q).ceil() as u64;
        self.bounds
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(le, _)| *le)
            .unwrap_or(f64::INFINITY)
    }
}

fn tick_histogram(metrics: SocketAddr) -> anyhow::Result<Buckets> {
    let text = http_get(metrics, "/metrics")?;
    let mut bounds = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("gameserver_tick_duration_seconds_bucket{le=\"") {
            let (le, value) = rest.split_once("\"} ").unwrap_or(("+Inf", "0"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            bounds.push((le, value.trim().parse().unwrap_or(0)));
        } else if let Some(value) = line.strip_prefix("gameserver_tick_duration_seconds_count ") {
            count = value.trim().parse().unwrap_or(0);
        }
    }
    Ok(Buckets { bounds, count })
}

/// Events produced, dropped (totals over topics) and pending, from the server's metrics.
fn event_counts(metrics: SocketAddr) -> anyhow::Result<(f64, f64, f64)> {
    let text = http_get(metrics, "/metrics")?;
    let (mut produced, mut dropped, mut pending) = (0.0, 0.0, 0.0);
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("gameserver_events_produced_total") {
            produced += value();
        } else if line.starts_with("gameserver_events_dropped_total") {
            dropped += value();
        } else if line.starts_with("gameserver_events_pending ") {
            pending = value();
        }
    }
    Ok((produced, dropped, pending))
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .map(|(_, b)| b)
}

fn post(addr: SocketAddr, secret: &str, path: &str, body: &str) -> anyhow::Result<u16> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(addr, &request).map(|(s, _)| s)
}

/// One HTTP/1.1 exchange, `Connection: close`; bounded so a stuck server cannot hang
/// the run.
fn http(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ack_of_its_own_tank() {
        let snapshot = br#"{"action":"game_update","seq":3,"tanks":[{"id":"tank_1","position":[1,2],"health":100,"ack":9},{"id":"tank_12","position":[1,2],"health":100,"ack":41}]}"#;
        assert_eq!(find_ack(snapshot, br#"{"id":"tank_12","#), Some(41));
        assert_eq!(find_ack(snapshot, br#"{"id":"tank_1","#), Some(9));
        assert_eq!(find_ack(snapshot, br#"{"id":"tank_2","#), None);
    }
}
