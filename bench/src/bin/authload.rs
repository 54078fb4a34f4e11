//! `authload`: the auth server's load tool. Figures in docs/PERFORMANCE.md come from it.
//!
//! - `login`: login throughput and latency at N concurrent clients, and the raw Argon2id
//!   rate at the same parameters on the same cores, measured in the same run.
//! - `verify`: token verifications per second on one core.
//! - `users`: register then log in N users, on the embedded store or on Redis.
//!
//! Each starts a server in this process on the given store (or targets `--target`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use authserver::password::{Hasher, Memory};
use authserver::{Config, Server};
use clap::{Parser, Subcommand};
use tanks_core::protocol::auth::{Request, Response};
use tanks_core::token::TokenSigner;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const PASSWORD: &str = "load-test password";

#[derive(Parser)]
#[command(about = "Load tool for the auth server")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Login throughput and latency, against the raw Argon2id rate on the same cores.
    Login {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Hashing threads (and server hash concurrency); default one per core.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Token verifications per second on one core (in process, no network).
    Verify {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Register then log in `count` users through the server.
    Users {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Use this Redis (keys under a fresh prefix, deleted afterwards) instead of the
        /// embedded store.
        #[arg(long)]
        redis_url: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Login {
            clients,
            seconds,
            threads,
        } => login(clients, Duration::from_secs(seconds), threads).await,
        Command::Verify { seconds } => {
            verify(Duration::from_secs(seconds));
            Ok(())
        }
        Command::Users {
            count,
            clients,
            redis_url,
        } => users(count, clients, redis_url).await,
    }
}

/// A server on ephemeral ports with limits out of the benchmark's way.
fn bench_config(threads: usize) -> Config {
    let mut config = Config::parse_from([
        "authserver",
        "--listen-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    config.redis_url = None;
    config.kafka_brokers = None;
    config.events_file = None;
    config.hash_concurrency = threads;
    config.failures_per_ip = u32::MAX;
    config.failures_per_user = u32::MAX;
    config.registrations_per_ip = u32::MAX;
    config
}

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
        })
    }

    async fn call(&mut self, request: &Request) -> anyhow::Result<Response> {
        self.writer.write_all(request.to_line().as_bytes()).await?;
        self.line.clear();
        if self.reader.read_line(&mut self.line).await? == 0 {
            anyhow::bail!("server closed the connection");
        }
        Ok(serde_json::from_str(&self.line)?)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Hashes per second with `threads` OS threads hashing flat out for `duration`.
fn raw_argon2_rate(hasher: &Hasher, threads: usize, duration: Duration) -> f64 {
    let count = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let count = count.clone();
            scope.spawn(move || {
                let mut memory = Memory::default();
                while started.elapsed() < duration {
                    hasher
                        .hash_blocking(PASSWORD.as_bytes(), &mut memory)
                        .expect("hash");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn login(clients: usize, duration: Duration, threads: usize) -> anyhow::Result<()> {
    let threads = if threads == 0 {
        bench_config(0).hash_concurrency()
    } else {
        threads
    };
    let server = Server::start(bench_config(threads)).await?;
    let addr = server.addr;
    println!(
        "login benchmark: {clients} clients, {threads} hashing threads, {}s per phase",
        duration.as_secs()
    );
    let p = bench_config(threads).hash_params();
    println!(
        "argon2id m={} KiB t={} p={}",
        p.memory_kib, p.iterations, p.parallelism
    );

    // One account per client, registered before timing starts.
    let names: Vec<String> = (0..clients).map(|i| format!("load{i}")).collect();
    let mut setup = Client::connect(addr).await?;
    for name in &names {
        let r = setup
            .call(&Request::Register {
                username: name.clone(),
                password: PASSWORD.into(),
            })
            .await?;
        anyhow::ensure!(r.is_success(), "register {name}: {}", r.message);
    }

    let hasher = server.service.hasher.clone();
    let raw_before = tokio::task::block_in_place(|| raw_argon2_rate(&hasher, threads, duration));
    println!("raw argon2id ({threads} threads, before): {raw_before:.1} hashes/s");

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for name in names {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await?;
            let request = Request::Login {
                username: name,
                password: PASSWORD.into(),
            };
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = client.call(&request).await?.is_success();
                latencies.push(t.elapsed());
                errors += usize::from(!ok);
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();

    let raw_after = tokio::task::block_in_place(|| raw_argon2_rate(&hasher, threads, duration));
    println!("raw argon2id ({threads} threads, after): {raw_after:.1} hashes/s");
    let raw = (raw_before + raw_after) / 2.0;
    println!(
        "logins: {} in {:.1}s = {rate:.1}/s, errors {errors}; p50 {} p90 {} p99 {} max {}",
        latencies.len(),
        elapsed.as_secs_f64(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!(
        "login rate / raw argon2id rate = {:.1}%",
        100.0 * rate / raw
    );
    server.shutdown().await;
    Ok(())
}

fn verify(duration: Duration) {
    let (signer, _) = TokenSigner::from_key_file(None).expect("development key");
    let (token, _) = signer.issue("some_player_name", Duration::from_secs(3600));
    println!(
        "token verification on one thread, {}s, token of {} bytes",
        duration.as_secs(),
        token.len()
    );
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        // Check the clock every 4096 verifications so it does not dominate.
        for _ in 0..4096 {
            std::hint::black_box(signer.verify(std::hint::black_box(&token)).is_ok());
        }
        n += 4096;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "verifications: {n} = {:.0}/s ({:.0} ns each)",
        rate,
        1e9 / rate
    );
}

async fn users(count: usize, clients: usize, redis_url: Option<String>) -> anyhow::Result<()> {
    let mut config = bench_config(0);
    let prefix = format!("authload-{}:", std::process::id());
    let store = if let Some(url) = &redis_url {
        config.redis_url = Some(url.clone());
        config.redis_prefix = prefix.clone();
        "redis"
    } else {
        "embedded"
    };
    let server = Server::start(config).await?;
    let addr = server.addr;
    println!("{count} users on the {store} store, {clients} clients");
    let clients = clients.clamp(1, count.max(1));

    let phase = |register: bool| async move {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(addr).await?;
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let (username, password) = (format!("user{i:06}"), PASSWORD.to_owned());
                    let request = if register {
                        Request::Register { username, password }
                    } else {
                        Request::Login { username, password }
                    };
                    let t = Instant::now();
                    let reply = client.call(&request).await?;
                    anyhow::ensure!(reply.is_success(), "user {i}: {}", reply.message);
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        latencies.sort_unstable();
        let elapsed = started.elapsed();
        println!(
            "{}: {} in {:.1}s = {:.1}/s; p50 {} p99 {}",
            if register { "register" } else { "login" },
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
        );
        anyhow::Ok(elapsed)
    };
    let total = phase(true).await? + phase(false).await?;
    println!(
        "register + login of {count} users: {:.1}s",
        total.as_secs_f64()
    );
    server.shutdown().await;

    if let Some(url) = redis_url {
        let deleted = delete_prefix(&url, &prefix).await?;
        println!("removed {deleted} benchmark keys under {prefix}");
    }
    Ok(())
}

async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<usize> {
    let mut conn = tanks_core::redis_store::connect(url).await?;
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
