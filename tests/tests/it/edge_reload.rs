//! Players keep playing through the edge across reloads: the real Nginx on a config
//! rendered by the operator, in front of real `gameserver` processes. Players play on
//! server A through the edge; the fleet scales up (server C gets a listener) and then
//! down (server B loses its), each a re-render and a SIGHUP. A reload gives every
//! player's flow a new upstream socket, so the game server sees a new source address:
//! the player is told `not_in_game`, joins again with its token, and plays on.
//!
//! Measured over the whole run: the share of inputs reflected in a snapshot (an input
//! the server refused from the new address counts as lost), and each player's longest
//! wait between two snapshots reflecting new input. The figures are
//! printed (docs/PERFORMANCE.md, "Edge reloads").

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tanks_core::token::TokenSigner;
use tanks_operator::edge::net::Upstream;
use tanks_operator::edge::render::{EdgeConfig, GameRoute, Limits, NginxRuntime, UdpPolicy};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

use crate::edge_nginx::{Nginx, wait_for};

const PLAYERS: usize = 20;
const INPUTS_PER_SECOND: f64 = 30.0;

struct GameServer {
    udp: SocketAddr,
    _process: KillOnDrop,
}

fn game_server(key: &std::path::Path, events: &std::path::Path) -> GameServer {
    let [udp, tcp, control, metrics] = [(); 4].map(|_| free_port());
    let at = |p: u16| format!("127.0.0.1:{p}");
    let process = Command::new(workspace_binary("gameserver"))
        .args(["--udp-addr", &at(udp), "--tcp-addr", &at(tcp)])
        .args([
            "--control-addr",
            &at(control),
            "--metrics-addr",
            &at(metrics),
        ])
        .arg("--token-key-file")
        .arg(key)
        .args(["--require-token", "true", "--consume-matchmaking", "false"])
        .arg("--events-file")
        .arg(events)
        .env_remove("GAMESERVER_AMQP_URL")
        .env_remove("GAMESERVER_KAFKA_BROKERS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting gameserver");
    wait_for("a game server", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", tcp)).is_ok()
    });
    GameServer {
        udp: SocketAddr::from(([127, 0, 0, 1], udp)),
        _process: KillOnDrop(process),
    }
}

fn edge(routes: &[(&str, u16, &GameServer)]) -> EdgeConfig {
    EdgeConfig {
        runtime: NginxRuntime::default(),
        limits: Limits {
            worker_processes: 1,
            worker_connections: 1024,
        },
        access: Default::default(),
        auth: None,
        udp: UdpPolicy {
            idle_timeout_seconds: 30,
            proxy_responses: None,
            max_sessions_per_source: 8,
            proxy_protocol: false,
        },
        game: routes
            .iter()
            .map(|(name, port, server)| GameRoute {
                server: format!("tanks/{name}"),
                edge_port: *port,
                upstream: Upstream::new("127.0.0.1", server.udp.port()).unwrap(),
            })
            .collect(),
    }
}

/// One player: its own source address (127.0.1.x, under the edge's per-source cap),
/// its token, its inputs in flight.
struct Bot {
    id: String,
    socket: UdpSocket,
    join: String,
    tank: Option<String>,
    spawn: [f64; 2],
    seq: u64,
    acked: u64,
    /// Inputs sent, and reflected (seq ≤ an `ack` seen for this bot's tank).
    sent: u64,
    reflected: u64,
    last_reflection: Option<Instant>,
    longest_gap: Duration,
    rejoins: u64,
}

impl Bot {
    fn new(i: usize, edge: SocketAddr, signer: &TokenSigner) -> Bot {
        let id = format!("edge-bot-{}-{i}", std::process::id());
        let socket = UdpSocket::bind(("127.0.1.".to_owned() + &(i + 1).to_string(), 0)).unwrap();
        socket.connect(edge).unwrap();
        socket.set_nonblocking(true).unwrap();
        let (token, _) = signer.issue(&id, Duration::from_secs(600));
        let join = json!({"action":"join_game","player_id":id,"token":token}).to_string();
        socket.send(join.as_bytes()).unwrap();
        Bot {
            id,
            socket,
            join,
            tank: None,
            spawn: [0.0, 0.0],
            seq: 0,
            acked: 0,
            sent: 0,
            reflected: 0,
            last_reflection: None,
            longest_gap: Duration::ZERO,
            rejoins: 0,
        }
    }

    /// A small step back and forth around the spawn point (a move is one step).
    fn send_input(&mut self) {
        if self.tank.is_none() {
            // Not joined yet (or the answer got lost): ask again, every 10th input.
            self.seq += 1;
            if self.seq.is_multiple_of(10) {
                let _ = self.socket.send(self.join.as_bytes());
            }
            return;
        }
        self.seq += 1;
        let dx = if self.seq.is_multiple_of(2) {
            4.0
        } else {
            -4.0
        };
        let input = json!({"action":"move","player_id":self.id,
            "position":[self.spawn[0] + dx, self.spawn[1]],"seq":self.seq});
        if self.socket.send(input.to_string().as_bytes()).is_ok() {
            self.sent += 1;
        }
    }

    fn receive(&mut self, now: Instant) {
        let mut buf = [0u8; 8192];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let Ok(msg) = serde_json::from_slice::<Value>(&buf[..n]) else {
                continue;
            };
            match (msg["status"].as_str(), msg["action"].as_str()) {
                (Some("joined"), _) => {
                    self.tank = msg["tank_id"].as_str().map(str::to_owned);
                    let p = &msg["initial_state"]["position"];
                    if self.acked == 0 {
                        self.spawn = [
                            p[0].as_f64().unwrap_or(100.0),
                            p[1].as_f64().unwrap_or(100.0),
                        ];
                    }
                }
                // The server saw this player from a new address: join again.
                (Some("not_in_game"), _) => {
                    self.rejoins += 1;
                    let _ = self.socket.send(self.join.as_bytes());
                }
                (_, Some("game_update")) => self.update(&msg, now),
                _ => {}
            }
        }
    }

    fn update(&mut self, msg: &Value, now: Instant) {
        let Some(tank) = &self.tank else { return };
        let ack = msg["tanks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["id"] == tank.as_str()))
            .and_then(|t| t["ack"].as_u64())
            .unwrap_or(0);
        if ack <= self.acked {
            return;
        }
        // Every input up to the ack is reflected (a later input in a tick supersedes).
        self.reflected += ack.min(self.seq) - self.acked.min(self.seq);
        self.acked = ack;
        if let Some(last) = self.last_reflection {
            self.longest_gap = self.longest_gap.max(now - last);
        }
        self.last_reflection = Some(now);
    }
}

/// Plays every bot for `time`, inputs at their rate.
fn play(bots: &mut [Bot], time: Duration, next_input: &mut Instant) {
    let until = Instant::now() + time;
    let period = Duration::from_secs_f64(1.0 / INPUTS_PER_SECOND);
    while Instant::now() < until {
        let now = Instant::now();
        if now >= *next_input {
            bots.iter_mut().for_each(Bot::send_input);
            *next_input += period;
        }
        bots.iter_mut().for_each(|b| b.receive(now));
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn players_keep_playing_across_reloads_for_a_scale_up_and_a_scale_down() {
    let dir = std::env::temp_dir().join(format!("tanks-edge-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("token.key");
    std::fs::write(&key, "r".repeat(48)).unwrap();
    let signer = TokenSigner::new(&[b'r'; 48]).unwrap();
    let events = dir.join("events.jsonl");
    let (a, b, c) = (
        game_server(&key, &events),
        game_server(&key, &events),
        game_server(&key, &events),
    );
    let [port_a, port_b, port_c] = [(); 3].map(|_| free_port());
    let nginx = Nginx::start("reload", &edge(&[("a", port_a, &a), ("b", port_b, &b)]));
    let edge_a = SocketAddr::from(([127, 0, 0, 1], port_a));

    let mut bots: Vec<Bot> = (0..PLAYERS).map(|i| Bot::new(i, edge_a, &signer)).collect();
    let mut next_input = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bots.iter().any(|b| b.tank.is_none()) {
        assert!(
            Instant::now() < deadline,
            "not every bot joined through the edge"
        );
        play(&mut bots, Duration::from_millis(50), &mut next_input);
    }
    play(&mut bots, Duration::from_secs(1), &mut next_input);
    // Measured from here: steady play, a scale-up, steady play, a scale-down.
    for bot in &mut bots {
        (bot.sent, bot.reflected, bot.longest_gap) = (0, 0, Duration::ZERO);
        bot.acked = bot.seq;
        bot.last_reflection = Some(Instant::now());
    }
    play(&mut bots, Duration::from_secs(2), &mut next_input);
    nginx.reload(&edge(&[
        ("a", port_a, &a),
        ("b", port_b, &b),
        ("c", port_c, &c),
    ]));
    play(&mut bots, Duration::from_secs(3), &mut next_input);
    nginx.reload(&edge(&[("a", port_a, &a), ("c", port_c, &c)]));
    play(&mut bots, Duration::from_secs(3), &mut next_input);
    // Inputs of the last 100 ms may still be on their way: stop sending, keep reading.
    let period = Duration::from_secs(3600);
    let mut never = Instant::now() + period;
    play(&mut bots, Duration::from_millis(300), &mut never);

    let sent: u64 = bots.iter().map(|b| b.sent).sum();
    let reflected: u64 = bots.iter().map(|b| b.reflected).sum();
    let rejoins: u64 = bots.iter().map(|b| b.rejoins).sum();
    let longest = bots.iter().map(|b| b.longest_gap).max().unwrap_or_default();
    // An input answered `not_in_game` changed nothing, even if a later input's ack
    // covers its seq: count each such answer as one input lost.
    let share = reflected.saturating_sub(rejoins) as f64 / sent.max(1) as f64;
    println!(
        "{}",
        json!({"players": PLAYERS, "inputs_per_second": INPUTS_PER_SECOND, "reloads": 2,
               "inputs_sent": sent, "inputs_reflected_share": (share * 1000.0).round() / 1000.0,
               "longest_gap_ms": longest.as_millis(), "not_in_game_answers": rejoins})
    );
    assert!(
        share >= 0.95,
        "{reflected} of {sent} inputs reflected across the reloads, {rejoins} of them refused"
    );
    assert!(
        longest < Duration::from_secs(1),
        "a player waited {longest:?} between two reflected inputs"
    );
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}
