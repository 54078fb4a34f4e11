//! `gameload`: plays many bots against a game server over real UDP, one socket per
//! bot, and reports input-to-snapshot latency, the share of inputs reflected within
//! two ticks, the server's tick duration (from its metrics) and CPU per player-second.
//!
//! `gameload echo` runs the "ideal echo server" baseline: it answers every `move` at
//! once with a `game_update` of the same size as a 14-tank snapshot, no game logic.
//! Measure both in the same run (see docs/PERFORMANCE.md).
//!
//! Every run is bounded: `--warmup` + `--duration` seconds, plus at most 10 s to
//! join and 2 s to leave.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::net::UdpSocket;

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
    #[arg(long, default_value_t = 14)]
    per_session: usize,
    /// A label for the report line.
    #[arg(long, default_value = "gameserver")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Echo { addr, seconds } => echo(addr, Duration::from_secs(seconds)),
        Cmd::Run(args) => runtime.block_on(run(args)),
        Cmd::Tickbench {
            players,
            ticks,
            coordinates_every,
        } => runtime.block_on(tickbench(players, ticks, coordinates_every)),
    }
}

/// The baseline: plain blocking `recv_from`/`send_to`, one reply per `move`.
fn echo(addr: SocketAddr, seconds: Duration) -> anyhow::Result<()> {
    let socket = gameserver::udp::bind(addr, 4 << 20)?;
    let until = Instant::now() + seconds;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(2048);
    eprintln!("echo server on {addr} for {seconds:?}");
    while Instant::now() < until {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&buf[..n]) else {
            continue;
        };
        out.clear();
        match msg["action"].as_str() {
            Some("join_game") => {
                out.extend_from_slice(
                    br#"{"status":"joined","session_id":"echo","tank_id":"tank_0","initial_state":{"id":"tank_0","position":[100,100],"health":100}}"#,
                );
            }
            Some("move") => {
                use std::io::Write;
                let seq = msg["seq"].as_u64().unwrap_or(0);
                let _ = write!(
                    out,
                    r#"{{"action":"game_update","seq":{seq},"tanks":[{{"id":"tank_0","position":[100,100],"health":100,"ack":{seq}}}"#
                );
                // Filler to the size of a 14-tank snapshot.
                for i in 1..14 {
                    let _ = write!(
                        out,
                        r#",{{"id":"tank_{i}","position":[523.71,181.44],"health":100,"ack":{seq}}}"#
                    );
                }
                out.extend_from_slice(b"]}");
            }
            _ => continue,
        }
        let _ = socket.send_to(&out, from);
    }
    Ok(())
}

async fn tickbench(players: usize, ticks: u64, coordinates_every: u64) -> anyhow::Result<()> {
    use gameserver::outbox::Outbox;
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
    let mut deferred = Vec::new();
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
        for record in deferred.drain(..) {
            events.publish_raw(record);
        }
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

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    within_two_ticks: AtomicU64,
    updates: AtomicU64,
    joined: AtomicU64,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let players = args.players;
    let per_session = args.per_session.max(1);
    let run_id = format!("{:x}", std::process::id());
    let ids: Vec<String> = (0..players).map(|i| format!("bot-{run_id}-{i}")).collect();
    if let Some(control) = args.control {
        for (m, chunk) in ids.chunks(per_session).enumerate() {
            let body = json!({"match_id": format!("load-{run_id}-{m}"), "players": chunk});
            let status = post(control, &args.secret, "/v1/sessions", &body.to_string()).await?;
            anyhow::ensure!(status == 200, "creating match {m}: HTTP {status}");
        }
        eprintln!(
            "created {} matches of {per_session}",
            players.div_ceil(per_session)
        );
    }
    let totals = Arc::new(Totals::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let two_ticks = Duration::from_secs_f64(2.0 / f64::from(args.tick_rate));
    let mut bots = Vec::with_capacity(players);
    for (i, id) in ids.into_iter().enumerate() {
        let bot = Bot {
            id,
            server: args.server,
            rate: args.rate,
            two_ticks,
            index: i,
        };
        bots.push(tokio::spawn(bot.play(
            totals.clone(),
            measuring.clone(),
            stop.clone(),
        )));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await; // spread the joins
        }
    }
    let join_deadline = Instant::now() + Duration::from_secs(10);
    while (totals.joined.load(Ordering::Relaxed) as usize) < players
        && Instant::now() < join_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = totals.joined.load(Ordering::Relaxed);
    eprintln!(
        "{joined}/{players} bots joined; warming up {} s",
        args.warmup
    );
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let server_cpu0 = args.server_pid.and_then(process_cpu);
    let self_cpu0 = process_cpu(std::process::id());
    let ticks0 = match args.metrics {
        Some(m) => tick_histogram(m).await.ok(),
        None => None,
    };
    let events0 = match args.metrics {
        Some(m) => event_counts(m).await.ok(),
        None => None,
    };
    for t in [
        &totals.sent,
        &totals.acked,
        &totals.within_two_ticks,
        &totals.updates,
    ] {
        t.store(0, Ordering::Relaxed);
    }
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = args
        .server_pid
        .and_then(process_cpu)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);
    let self_cpu = process_cpu(std::process::id())
        .zip(self_cpu0)
        .map(|(b, a)| b - a);
    let ticks = match (args.metrics, ticks0) {
        (Some(m), Some(before)) => tick_histogram(m)
            .await
            .ok()
            .map(|after| after.minus(&before)),
        _ => None,
    };
    let events = match (args.metrics, events0) {
        (Some(m), Some(before)) => event_counts(m).await.ok().map(|after| {
            json!({
                "produced_per_second": ((after.0 - before.0) / elapsed).round(),
                "dropped": after.1 - before.1,
                "pending_at_end": after.2,
            })
        }),
        _ => None,
    };
    stop.store(true, Ordering::SeqCst);
    let mut latencies: Vec<u32> = Vec::new();
    for bot in bots {
        if let Ok(Ok(mut samples)) = tokio::time::timeout(Duration::from_secs(2), bot).await {
            latencies.append(&mut samples);
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        f64::from(latencies[i]) / 1000.0
    };
    let sent = totals.sent.load(Ordering::Relaxed);
    let acked = totals.acked.load(Ordering::Relaxed);
    let within = totals.within_two_ticks.load(Ordering::Relaxed);
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
        "updates_per_second": (totals.updates.load(Ordering::Relaxed) as f64 / elapsed).round(),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "tick_ms": ticks.as_ref().map(|t| json!({"p50": t.quantile(0.5) * 1000.0, "p99": t.quantile(0.99) * 1000.0, "ticks": t.count})),
        "events": events,
        "server_cpu_cores": server_cpu.map(|c| round3(c / elapsed)),
        "server_cpu_ms_per_player_second": server_cpu.map(|c| round3(c * 1000.0 / player_seconds)),
        "load_tool_cpu_cores": self_cpu.map(|c| round3(c / elapsed)),
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

struct Bot {
    id: String,
    server: SocketAddr,
    rate: f64,
    two_ticks: Duration,
    index: usize,
}

/// Inputs remembered for latency: a ring indexed by seq.
const RING: usize = 128;

impl Bot {
    async fn play(
        self,
        totals: Arc<Totals>,
        measuring: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> Vec<u32> {
        let mut samples = Vec::new();
        let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
            return samples;
        };
        let mut buf = vec![0u8; 8192];
        // Join (three tries).
        let join = json!({"action":"join_game","player_id":self.id}).to_string();
        let mut tank: Option<(String, f64, f64)> = None;
        for _ in 0..3 {
            let _ = socket.send_to(join.as_bytes(), self.server).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf[..n])
                    && let (Some(id), Some(p)) = (
                        v["tank_id"].as_str(),
                        v["initial_state"]["position"].as_array(),
                    )
                {
                    let xy = |i: usize| p.get(i).and_then(|x| x.as_f64()).unwrap_or(100.0);
                    tank = Some((id.to_owned(), xy(0), xy(1)));
                    break;
                }
            }
            if tank.is_some() {
                break;
            }
        }
        let Some((tank_id, mut x, y)) = tank else {
            return samples;
        };
        totals.joined.fetch_add(1, Ordering::Relaxed);
        let needle = format!(r#"{{"id":"{tank_id}","#);
        let period = Duration::from_secs_f64(1.0 / self.rate);
        // Spread bots over the period so their inputs do not all land at once.
        let offset = period.mul_f64((self.index % 97) as f64 / 97.0);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sent_at: [Option<(Instant, bool)>; RING] = [None; RING];
        let (mut seq, mut last_ack, mut dir) = (0u64, 0u64, 1.0);
        let mut out = Vec::with_capacity(160);
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = ticker.tick() => {
                    seq += 1;
                    x += 2.0 * dir;
                    if !(60.0..=940.0).contains(&x) { dir = -dir; }
                    out.clear();
                    use std::io::Write;
                    let _ = write!(out, r#"{{"action":"move","player_id":"{}","position":[{x},{y}],"seq":{seq}}}"#, self.id);
                    let measured = measuring.load(Ordering::Relaxed);
                    sent_at[seq as usize % RING] = Some((Instant::now(), measured));
                    if measured { totals.sent.fetch_add(1, Ordering::Relaxed); }
                    let _ = socket.send_to(&out, self.server).await;
                }
                got = socket.recv(&mut buf) => {
                    let Ok(n) = got else { continue };
                    let now = Instant::now();
                    if measuring.load(Ordering::Relaxed) { totals.updates.fetch_add(1, Ordering::Relaxed); }
                    let Some(ack) = find_ack(&buf[..n], needle.as_bytes()) else { continue };
                    // Every input up to `ack` is now reflected (later ones in a tick supersede earlier ones).
                    let first = last_ack.max(ack.saturating_sub(RING as u64 - 1)) + 1;
                    for s in first..=ack.min(seq) {
                        if let Some((at, measured)) = sent_at[s as usize % RING].take()
                            && measured {
                                let latency = now.duration_since(at);
                                totals.acked.fetch_add(1, Ordering::Relaxed);
                                if latency <= self.two_ticks { totals.within_two_ticks.fetch_add(1, Ordering::Relaxed); }
                                samples.push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
                            }
                    }
                    last_ack = last_ack.max(ack);
                }
            }
        }
        let leave = json!({"action":"leave_game","player_id":self.id}).to_string();
        let _ = socket.send_to(leave.as_bytes(), self.server).await;
        samples
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

async fn tick_histogram(metrics: SocketAddr) -> anyhow::Result<Buckets> {
    let text = http_get(metrics, "/metrics").await?;
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
async fn event_counts(metrics: SocketAddr) -> anyhow::Result<(f64, f64, f64)> {
    let text = http_get(metrics, "/metrics").await?;
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

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
    .map(|(_, b)| b)
}

async fn post(addr: SocketAddr, secret: &str, path: &str, body: &str) -> anyhow::Result<u16> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(addr, &request).await.map(|(s, _)| s)
}

async fn http(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
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
