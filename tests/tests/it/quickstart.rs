//! The README's main job, as a test: the real `authserver` and `gameserver` binaries,
//! started with no configuration beyond their ports (and the auth server's `--dev`, as
//! `hack/run` passes it), serve a player from registration to a move seen in a
//! `game_update` (the `demo-bot` binary plays it).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

/// `cargo test --workspace` builds every binary into the folder above the test's own.
fn start(name: &str, args: &[String]) -> KillOnDrop {
    let child = Command::new(workspace_binary(name))
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("REDIS_URL")
        .env(
            "EVENTS_FILE",
            std::env::temp_dir().join(format!("quickstart-{name}-{}.jsonl", std::process::id())),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    KillOnDrop(child)
}

fn wait_for_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {port} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_player_registers_logs_in_joins_moves_and_leaves() {
    let [auth, auth_metrics, udp, tcp, control, game_metrics] = [(); 6].map(|_| free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let _auth = start(
        "authserver",
        &[
            "--listen-addr".into(),
            addr(auth),
            "--metrics-addr".into(),
            addr(auth_metrics),
            "--dev".into(),
        ],
    );
    let _game = start(
        "gameserver",
        &[
            "--udp-addr".into(),
            addr(udp),
            "--tcp-addr".into(),
            addr(tcp),
            "--control-addr".into(),
            addr(control),
            "--metrics-addr".into(),
            addr(game_metrics),
        ],
    );
    wait_for_tcp(auth);
    wait_for_tcp(tcp);

    let out = Command::new(workspace_binary("demo-bot"))
        .args(["--auth", &addr(auth), "--game", &addr(udp)])
        .output()
        .expect("run demo-bot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo-bot failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "register ->",
        "login -> success",
        "join_game ->",
        "game_update -> my tank",
        "leave_game ->",
        "demo: ok",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}
