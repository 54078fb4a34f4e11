//! The bots: each registers and logs in at the auth server, asks the matchmaker for a
//! game, joins the endpoint its Match got (UDP `join_game` with its token), drives and
//! shoots at a modest rate until the server says `game_over`, then asks again or logs
//! off, as the wave schedule says.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};

use crate::matchmaker::{Allocation, Ticket};
use crate::stats::Stats;

/// The load over time, in cycles: players arrive over the first 35% of a cycle, play
/// until 50%, then finish their match and log off; the rest of the cycle is idle, so
/// the fleet scales up and back down in every cycle.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub cycle: Duration,
    pub players: usize,
    /// No player arrives after this (the end of the run, when it has one).
    pub until: Option<Instant>,
}

const RAMP_END: f64 = 0.35;
const HOLD_END: f64 = 0.5;

impl Schedule {
    /// `(cycle number, fraction of the cycle gone)`.
    pub fn position(&self) -> (u64, f64) {
        let t = self.start.elapsed().as_secs_f64();
        let c = self.cycle.as_secs_f64().max(1.0);
        ((t / c) as u64, (t % c) / c)
    }

    /// Players that should have arrived by this point of a cycle.
    pub fn arrived(&self, fraction: f64) -> usize {
        if fraction >= RAMP_END {
            self.players
        } else {
            ((self.players as f64) * fraction / RAMP_END).ceil() as usize
        }
    }

    /// Whether a player of `cycle` asks for another match now.
    pub fn keep_playing(&self, cycle: u64) -> bool {
        let (now, fraction) = self.position();
        now == cycle && fraction < HOLD_END
    }
}

pub struct Bots {
    pub auth_addr: String,
    pub prefix: String,
    pub match_seconds: u64,
    pub schedule: Schedule,
    pub tickets: mpsc::Sender<Ticket>,
    pub stats: Arc<Stats>,
    pub stop: watch::Receiver<bool>,
}

impl Bots {
    /// Starts bots as the schedule says until `stop`; returns when every bot is done.
    pub async fn run(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut cycle_seen = u64::MAX;
        let mut arrived = 0usize;
        let mut next_id = 0u64;
        let mut stop = self.stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tick.tick() => {}
            }
            while tasks.try_join_next().is_some() {}
            let (cycle, fraction) = self.schedule.position();
            if cycle != cycle_seen {
                cycle_seen = cycle;
                arrived = 0;
            }
            if fraction >= HOLD_END || self.schedule.until.is_some_and(|u| Instant::now() >= u) {
                continue;
            }
            while arrived < self.schedule.arrived(fraction) {
                arrived += 1;
                next_id += 1;
                let me = self.clone();
                let name = format!("{}-p{next_id}", self.prefix);
                tasks.spawn(async move { me.bot(name, cycle).await });
            }
        }
        // Bots see the stop too: each leaves its game; give them a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }

    async fn bot(self: Arc<Self>, user: String, cycle: u64) {
        let password = format!("{user}-Secret-1");
        let stats = &self.stats;
        let registered = auth_request(
            &self.auth_addr,
            json!({"action": "register", "username": user, "password": password}),
        )
        .await;
        match registered {
            Ok(r) if r["status"] == "success" => {
                stats.registered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => return stats.error("register refused", r),
            Err(e) => return stats.error("register failed", e),
        }
        let login = auth_request(
            &self.auth_addr,
            json!({"action": "login", "username": user, "password": password}),
        )
        .await;
        let token = match login {
            Ok(r) if r["status"] == "success" => match r["session_id"].as_str() {
                Some(t) => t.to_owned(),
                None => return stats.error("login without a token", r),
            },
            Ok(r) => return stats.error("login refused", r),
            Err(e) => return stats.error("login failed", e),
        };
        stats.login();
        let mut stop = self.stop.clone();
        while self.schedule.keep_playing(cycle) && !*stop.borrow() {
            let (reply, allocated) = oneshot::channel();
            if self
                .tickets
                .send(Ticket {
                    player: user.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                break;
            }
            let allocation = tokio::select! {
                _ = stopped(&mut stop) => break,
                a = tokio::time::timeout(Duration::from_secs(90), allocated) => a,
            };
            let allocation = match allocation {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => break,
                Err(_) => {
                    stats.error("no match within 90 s", &user);
                    break;
                }
            };
            stats.in_game.fetch_add(1, Ordering::Relaxed);
            let played = self.play(&user, &token, &allocation).await;
            stats.in_game.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = played {
                stats.error("game", format!("{user}: {e:#}"));
                break;
            }
        }
        let _ = auth_request(&self.auth_addr, json!({"action": "logout", "token": token})).await;
        stats.online.fetch_sub(1, Ordering::Relaxed);
    }

    /// One game: join, drive and shoot until `game_over` (or the match's time and a
    /// margin are up, or the demo stops), leave.
    async fn play(&self, user: &str, token: &str, at: &Allocation) -> anyhow::Result<()> {
        let stats = &self.stats;
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect((at.address.as_str(), at.port)).await?;
        let join = json!({"action": "join_game", "player_id": user, "token": token, "session_id": at.session_id}).to_string();
        let mut buf = vec![0u8; 65_536];
        // UDP: the join (or its answer) may be lost; ask up to three times.
        let mut joined = None;
        'tries: for _ in 0..3 {
            socket.send(join.as_bytes()).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(n) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                let n = n?;
                let Ok(v) = serde_json::from_slice::<Value>(&buf[..n]) else {
                    continue;
                };
                if v.get("status").is_some() {
                    joined = Some(v);
                    break 'tries;
                }
            }
        }
        let joined = joined.ok_or_else(|| anyhow::anyhow!("no answer to join_game"))?;
        anyhow::ensure!(joined["status"] == "joined", "join refused: {joined}");
        stats.joined.fetch_add(1, Ordering::Relaxed);
        let tank = joined["tank_id"].as_str().unwrap_or_default().to_owned();
        let start = &joined["initial_state"]["position"];
        let mut position = [
            start[0].as_f64().unwrap_or(500.0),
            start[1].as_f64().unwrap_or(500.0),
        ];

        let until = tokio::time::Instant::now() + Duration::from_secs(self.match_seconds + 30);
        let mut act = tokio::time::interval(Duration::from_millis(200));
        let mut stop = self.stop.clone();
        let mut step = 0u64;
        let mut heading: f64 = rand::rng().random_range(0.0..std::f64::consts::TAU);
        let over = loop {
            tokio::select! {
                _ = stopped(&mut stop) => break false,
                _ = tokio::time::sleep_until(until) => break false,
                _ = act.tick() => {
                    step += 1;
                    // A wandering drive, 8 units per step (the server allows 10 a tick).
                    heading += rand::rng().random_range(-0.6..0.6);
                    position = [
                        (position[0] + 8.0 * heading.cos()).clamp(0.0, 1000.0),
                        (position[1] + 8.0 * heading.sin()).clamp(0.0, 1000.0),
                    ];
                    let m = json!({"action": "move", "player_id": user, "position": position, "seq": step});
                    socket.send(m.to_string().as_bytes()).await?;
                    stats.moves.fetch_add(1, Ordering::Relaxed);
                    if step.is_multiple_of(5) {
                        let s = json!({"action": "shoot", "player_id": user, "seq": step});
                        socket.send(s.to_string().as_bytes()).await?;
                        stats.shots.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n = socket.recv(&mut buf) => {
                    let bytes = &buf[..n?];
                    // Snapshots come 30 times a second: only `game_over`, and now and
                    // then our own position, are worth parsing.
                    if contains(bytes, b"\"game_over\"") {
                        break true;
                    }
                    // The server took an input from an address it no longer knows us
                    // by (an edge reload moved our flow): join again with the token;
                    // its `joined` answer is just another datagram here.
                    if bytes.starts_with(br#"{"status":"not_in_game""#) {
                        socket.send(join.as_bytes()).await?;
                        continue;
                    }
                    if step.is_multiple_of(10) && contains(bytes, b"\"game_update\"")
                        && let Ok(v) = serde_json::from_slice::<Value>(bytes)
                        && let Some(me) = v["tanks"].as_array().into_iter().flatten().find(|t| t["id"] == tank.as_str())
                        && let (Some(x), Some(y)) = (me["position"][0].as_f64(), me["position"][1].as_f64())
                    {
                        position = [x, y];
                    }
                }
            }
        };
        if over {
            stats.games_over.fetch_add(1, Ordering::Relaxed);
        } else {
            let leave = json!({"action": "leave_game", "player_id": user});
            let _ = socket.send(leave.to_string().as_bytes()).await;
            if !*stop.borrow() {
                anyhow::bail!("no game_over within {} s", self.match_seconds + 30);
            }
        }
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn auth_request(addr: &str, request: Value) -> anyhow::Result<Value> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        anyhow::Ok(serde_json::from_str(&line)?)
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("auth server {addr}: no answer within 30 s"))?
}

/// Resolves once `stop` is true (without holding the watch's lock across an await).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
