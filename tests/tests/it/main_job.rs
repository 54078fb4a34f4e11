//! The main job as a user runs it: `hack/run --duration N --players M`, the script
//! itself, as a process. While it runs, the test watches the API server on its own:
//! Matches that were allocated, played (a `runningAt`) and finished, and the GameFleet's
//! desired servers going up and back down. At the end it reads the script's output (the
//! live lines and the summary) and checks the namespace is gone.
//!
//! Needs `hack/devenv up` and the workspace's binaries (`cargo test --workspace` builds
//! them; the script is told not to build, since this test runs inside cargo).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use serde_json::Value;
use tanks_operator::api::{GameFleet, Match, MatchPhase};
use tanks_testkit::process::{KillOnDrop, workspace_binary};

const DURATION: u64 = 100;
const PLAYERS: usize = 40;
/// Set-up (CRDs, nodes, operator, first server), the play, the clean-up.
const LIMIT: Duration = Duration::from_secs(DURATION + 300);

/// What the test saw on the API server.
#[derive(Default, Debug)]
struct Seen {
    allocated: BTreeSet<String>,
    played_and_finished: BTreeSet<String>,
    failed: BTreeSet<String>,
    desired_peak: i32,
    desired_last: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hack_run_plays_matches_and_the_fleet_scales_up_and_back_down() {
    tanks_testkit::require_rabbitmq();
    let kubeconfig = tanks_testkit::require_kube_apiserver();
    let client = tanks_testkit::kube_client(&kubeconfig)
        .await
        .expect("kube client");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/run");
    let bin_dir = workspace_binary("tanks-demo")
        .parent()
        .expect("the binaries' folder")
        .to_owned();
    let ns = tanks_testkit::unique("main-job");
    let log = std::env::temp_dir().join(format!("{ns}.stderr.log"));

    let mut child = Command::new(&script)
        .args([
            "--duration",
            &DURATION.to_string(),
            "--players",
            &PLAYERS.to_string(),
            "--namespace",
            &ns,
        ])
        .env("TANKS_RUN_NO_BUILD", "1")
        .env("TANKS_BIN_DIR", &bin_dir)
        .env("TANKS_KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("hack/run starts");
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };

    // Watch the API server until the script exits.
    let matches: Api<Match> = Api::namespaced(client.clone(), &ns);
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), &ns);
    let mut seen = Seen::default();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < LIMIT,
            "hack/run still running after {LIMIT:?}; stderr tail:\n{}",
            tail(&log)
        );
        if let Ok(list) = matches.list(&ListParams::default()).await {
            for m in list.items {
                let name = m.metadata.name.clone().unwrap_or_default();
                let st = m.status.clone().unwrap_or_default();
                if st.allocated_at.is_some() {
                    seen.allocated.insert(name.clone());
                }
                match m.phase() {
                    MatchPhase::Finished if st.running_at.is_some() => {
                        seen.played_and_finished.insert(name);
                    }
                    MatchPhase::Failed => {
                        seen.failed.insert(name);
                    }
                    _ => {}
                }
            }
        }
        if let Ok(Some(f)) = fleets.get_opt("arena").await {
            let desired = f.status.unwrap_or_default().desired_replicas;
            seen.desired_peak = seen.desired_peak.max(desired);
            seen.desired_last = desired;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    reader.join().unwrap();
    let lines = lines.lock().unwrap().clone();
    let stderr = tail(&log);
    assert!(
        status.success(),
        "hack/run failed ({status}); stderr tail:\n{stderr}"
    );

    // The live summary: a line a second.
    let live = lines
        .iter()
        .filter(|l| l.contains("fleet desired") && l.contains("logins/s"))
        .count();
    assert!(
        live as u64 >= DURATION * 8 / 10,
        "{live} live lines for a {DURATION} s run:\n{}",
        lines.join("\n")
    );

    // The summary the script printed.
    let summary: Value = lines
        .iter()
        .find_map(|l| l.strip_prefix("summary-json: "))
        .map(|j| serde_json::from_str(j).expect("summary JSON"))
        .unwrap_or_else(|| panic!("no summary in the output:\n{}\n{stderr}", lines.join("\n")));
    let n = |path: &str| {
        summary
            .pointer(path)
            .and_then(Value::as_f64)
            .unwrap_or(-1.0)
    };
    assert!(
        n("/players_stats/logins") >= PLAYERS as f64,
        "every bot logged in: {summary}"
    );
    assert!(
        n("/players_stats/games_over") >= 4.0,
        "bots played to the end: {summary}"
    );
    assert!(n("/matches/finished") >= 3.0, "{summary}");
    assert!(n("/matches/played") >= 3.0, "{summary}");
    assert!(n("/allocation_latency_seconds/samples") >= 3.0, "{summary}");
    let (peak, end) = (n("/fleet/desired_peak"), n("/fleet/desired_end"));
    assert!(
        peak >= 2.0 && end < peak,
        "the fleet scaled up (peak {peak}) and back (end {end}): {summary}"
    );

    // What the API server showed, seen independently of the script.
    assert!(
        seen.played_and_finished.len() >= 3,
        "Matches played and finished on the API server: {seen:?}"
    );
    assert!(seen.allocated.len() >= seen.played_and_finished.len());
    assert!(
        seen.failed.len() * 10 <= seen.allocated.len().max(1),
        "too many Failed Matches: {seen:?}"
    );
    assert!(
        seen.desired_peak >= 2 && seen.desired_last < seen.desired_peak,
        "the fleet's desired servers went up and back: {seen:?}"
    );

    // Nothing left behind.
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(
        namespaces.get_opt(&ns).await.expect("get").is_none(),
        "namespace {ns} left behind"
    );
    let _ = std::fs::remove_file(&log);
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(40)..].join("\n")
}
