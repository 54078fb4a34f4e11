//! One player, end to end, speaking only the wire protocols: register and log in at
//! the auth server (TCP, JSON lines), join a game with the token (UDP), move, see the
//! move in a `game_update`, leave. Exits non-zero, saying where, if any step fails.
//!
//! `demo-bot --auth 127.0.0.1:8888 --game 127.0.0.1:9999`
#![forbid(unsafe_code)]

use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

#[derive(Parser, Debug)]
#[command(about = "Plays one short game against a running auth server and game server")]
struct Args {
    /// Auth server TCP address.
    #[arg(long, env = "DEMO_AUTH_ADDR", default_value = "127.0.0.1:8888")]
    auth: String,
    /// Game server UDP address (a Match's endpoint).
    #[arg(long, env = "DEMO_GAME_ADDR", default_value = "127.0.0.1:9999")]
    game: String,
    /// Player name; a fresh one by default.
    #[arg(long)]
    user: Option<String>,
    /// Session to join (a Match's session id), if the server needs one.
    #[arg(long)]
    session: Option<String>,
}

async fn auth_request(addr: &str, request: Value) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("auth server {addr}: {e}"))?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{request}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    Ok(serde_json::from_str(&line)?)
}

async fn recv_json(socket: &UdpSocket, buf: &mut [u8]) -> anyhow::Result<Value> {
    let n = tokio::time::timeout(Duration::from_secs(3), socket.recv(buf))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the game server within 3 s"))??;
    Ok(serde_json::from_slice(&buf[..n])?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let user = args
        .user
        .unwrap_or_else(|| format!("bot{}", std::process::id()));
    let password = format!("{user}-Secret-1");

    let registered = auth_request(
        &args.auth,
        json!({"action": "register", "username": user, "password": password}),
    )
    .await?;
    println!("register -> {registered}");
    let login = auth_request(
        &args.auth,
        json!({"action": "login", "username": user, "password": password}),
    )
    .await?;
    anyhow::ensure!(login["status"] == "success", "login failed: {login}");
    let token = login["session_id"].as_str().unwrap_or_default().to_owned();
    println!(
        "login -> success ({}), token {}…",
        login["message"].as_str().unwrap_or_default(),
        &token[..token.len().min(16)]
    );

    let socket = UdpSocket::bind("0.0.0.0:0").await?;
    socket
        .connect(&args.game)
        .await
        .map_err(|e| anyhow::anyhow!("game server {}: {e}", args.game))?;
    let mut buf = vec![0u8; 65_536];
    let mut join = json!({"action": "join_game", "player_id": user, "token": token});
    if let Some(session) = &args.session {
        join["session_id"] = json!(session);
    }
    socket.send(join.to_string().as_bytes()).await?;
    let joined = loop {
        let reply = recv_json(&socket, &mut buf).await?;
        if reply.get("status").is_some() {
            break reply;
        }
    };
    anyhow::ensure!(joined["status"] == "joined", "join failed: {joined}");
    let tank = joined["tank_id"].clone();
    println!("join_game -> {joined}");

    let start = joined["initial_state"]["position"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (x, y) = (
        start.first().and_then(Value::as_f64).unwrap_or(0.0),
        start.get(1).and_then(Value::as_f64).unwrap_or(0.0),
    );
    let target = [x + 1.0, y + 1.0];
    socket
        .send(
            json!({"action": "move", "player_id": user, "position": target})
                .to_string()
                .as_bytes(),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the move never showed in a game_update"
        );
        let update = recv_json(&socket, &mut buf).await?;
        if update["action"] != "game_update" {
            continue;
        }
        let mine = update["tanks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["id"] == tank);
        if let Some(me) = mine
            && me["position"][0].as_f64() != Some(x)
        {
            println!("game_update -> my tank at {}", me["position"]);
            break;
        }
    }
    socket
        .send(
            json!({"action": "leave_game", "player_id": user})
                .to_string()
                .as_bytes(),
        )
        .await?;
    loop {
        let reply = recv_json(&socket, &mut buf).await?;
        if reply.get("status").is_some() {
            anyhow::ensure!(reply["status"] == "left_game", "leave failed: {reply}");
            println!("leave_game -> {reply}");
            break;
        }
    }
    println!("demo: ok");
    Ok(())
}
