//! Kafka's broker stopped (the devenv's `down kafka`, the real process) while bots play
//! on the real `gameserver` binary: its tick does not notice (p99 of the window before
//! against the window of the outage, from its own histogram), events wait in its
//! bounded buffers and are all delivered once the broker is back, and none are lost
//! (`gameserver_events_dropped_total` for a full buffer stays 0, and is exported).
//!
//! `FAULTS_KAFKA_OUTAGE_SECS` (default 10) is how long the broker stays down once
//! stopped: the 60 s was measured by hand (docs/RELIABILITY.md).
//! `FAULTS_KAFKA_PLAYERS` (default 200) bots play.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

use crate::metrics::{buckets, p99_between, scrape, sum};
use crate::outage::{self, wait_for};

const TICK: &str = "gameserver_tick_duration_seconds";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stopped_while_players_play_moves_no_tick_and_loses_no_event() {
    let _serial = outage::serialized();
    let brokers = tanks_testkit::require_kafka();
    let hold = Duration::from_secs(env_number("FAULTS_KAFKA_OUTAGE_SECS", 10));
    let players = env_number("FAULTS_KAFKA_PLAYERS", 200);
    let dir = std::env::temp_dir().join(tanks_testkit::unique("fault-kafka"));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("token.key");
    std::fs::write(&key, uuid::Uuid::new_v4().simple().to_string().repeat(2)).expect("key");
    let secret = dir.join("control.secret");
    std::fs::write(&secret, uuid::Uuid::new_v4().simple().to_string()).expect("secret");

    let udp = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("gameserver.log")).expect("log");
    let mut server = KillOnDrop(
        Command::new(workspace_binary("gameserver"))
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("GAMESERVER_EVENTS_FILE")
            .env("RUST_LOG", "info")
            .args(["--udp-addr", &udp, "--metrics-addr", &metrics])
            .args(["--tcp-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--control-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--server-name", &tanks_testkit::unique("fault-kafka")])
            .args(["--kafka-brokers", &brokers])
            .arg("--token-key-file")
            .arg(&key)
            .arg("--control-secret-file")
            .arg(&secret)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the gameserver binary"),
    );
    wait_for("the game server's metrics", Duration::from_secs(20), || {
        scrape(&metrics)
    })
    .await;
    let bots_log = std::fs::File::create(dir.join("gameload.log")).expect("log");
    let _bots = KillOnDrop(
        Command::new(workspace_binary("gameload"))
            .args(["run", "--server", &udp, "--players", &players.to_string()])
            .args(["--rate", "10", "--warmup", "1", "--duration", "600"])
            .args(["--threads", "1", "--label", "faults"])
            .stdin(Stdio::null())
            .stdout(bots_log.try_clone().expect("log"))
            .stderr(bots_log)
            .spawn()
            .expect("start gameload"),
    );
    wait_for("every bot in game", Duration::from_secs(30), || async {
        let text = scrape(&metrics).await?;
        let n = sum(&text, "gameserver_players", &[]);
        (n >= players as f64)
            .then_some(())
            .ok_or(format!("{n} players"))
    })
    .await;

    // The window before: 10 s of play with the broker up.
    let start = scrape(&metrics).await.expect("metrics");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = scrape(&metrics).await.expect("metrics");
    let produced_before = sum(&before, "gameserver_events_produced_total", &[]);

    let outage = outage::stop("kafka").await;
    let stopped_at = Instant::now();
    let pending_peak = wait_for(
        "events waiting for the broker",
        Duration::from_secs(10),
        || async {
            let text = scrape(&metrics).await?;
            let pending = sum(&text, "gameserver_events_pending", &[]);
            (pending > 0.0)
                .then_some(pending)
                .ok_or("none pending".to_string())
        },
    )
    .await;
    tokio::time::sleep(hold.saturating_sub(stopped_at.elapsed())).await;
    let at_return = scrape(&metrics).await.expect("metrics");
    let pending_at_return = sum(&at_return, "gameserver_events_pending", &[]);
    let away = outage.end_async().await;
    let during = scrape(&metrics).await.expect("metrics");
    let back_at = Instant::now();

    // Everything buffered is delivered once the broker is back.
    let delivered_in = wait_for("the buffer drained", Duration::from_secs(120), || async {
        let text = scrape(&metrics).await?;
        let pending = sum(&text, "gameserver_events_pending", &[]);
        (pending == 0.0)
            .then(|| back_at.elapsed())
            .ok_or(format!("{pending} pending"))
    })
    .await;
    let end = scrape(&metrics).await.expect("metrics");
    assert!(
        server.0.try_wait().expect("gameserver status").is_none(),
        "the game server exited"
    );
    let still_playing = sum(&end, "gameserver_players", &[]);
    assert!(
        still_playing >= players as f64,
        "{still_playing} players left"
    );

    // Loss: only a full buffer can drop an event in an outage, and it is exported.
    let full = sum(
        &end,
        "gameserver_events_dropped_total",
        &["reason=\"queue_full\""],
    ) + sum(
        &end,
        "gameserver_events_dropped_total",
        &["reason=\"refused\""],
    );
    assert!(
        end.contains("gameserver_events_dropped_total{"),
        "the loss counter is not exported"
    );
    let lost = sum(&end, "gameserver_events_dropped_total", &[]);
    assert_eq!(lost, 0.0, "events lost (of which {full} to a full buffer)");
    let produced = sum(&end, "gameserver_events_produced_total", &[]) - produced_before;
    assert!(
        produced >= pending_at_return,
        "{produced} delivered after the outage began, {pending_at_return} were waiting"
    );

    // The tick did not notice: p99 during the outage within one bucket of p99 before.
    let bounds: Vec<f64> = buckets(&end, TICK).iter().map(|(le, _)| *le).collect();
    let (p99_before, ticks_before) = p99_between(&buckets(&start, TICK), &buckets(&before, TICK));
    let (p99_during, ticks_during) = p99_between(&buckets(&before, TICK), &buckets(&during, TICK));
    let allowed = bounds
        .iter()
        .copied()
        .find(|b| *b > p99_before)
        .unwrap_or(f64::INFINITY);
    println!(
        "kafka stop: {players} players, broker away {away:.1?} (held {hold:?}); tick p99 \
         <= {:.2} ms before ({ticks_before} ticks), <= {:.2} ms during ({ticks_during} ticks); \
         {pending_peak} pending at first check, {pending_at_return} at the return, all \
         delivered {delivered_in:.1?} after it; lost {lost}",
        p99_before * 1e3,
        p99_during * 1e3
    );
    assert!(
        p99_during <= allowed,
        "tick p99 moved: <= {p99_before} s before, <= {p99_during} s during the outage"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
