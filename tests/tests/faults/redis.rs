//! Redis restarted under login load on the real `authserver` binary: while it is down,
//! every login is answered at once with a clear `unavailable` error (no hang); after it
//! returns, logins succeed again and every account registered before is still there.
//!
//! Accounts survive a restart only when Redis persists them: `hack/devenv` runs it with
//! an append-only file. A Redis started by an older devenv (no AOF) is restarted once
//! first, under the fault lock, so the accounts of this test are on disk.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tanks_core::protocol::auth::{Request, Response, Status, reason};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::outage::{self, wait_for};

const USERS: usize = 200;
const WORKERS: usize = 16;
const PASSWORD: &str = "correct horse battery staple 7";
/// How long Redis stays down once stopped.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// The slowest answer allowed while Redis is down: a clear error, not a hang.
const FAIL_FAST: Duration = Duration::from_secs(2);

/// One login, on a connection of its own: the answer and how long it took.
async fn call(addr: &str, request: &Request) -> (Result<Response, String>, Duration) {
    let started = Instant::now();
    let answer = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(request.to_line().as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        BufReader::new(read)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        serde_json::from_str::<Response>(&line).map_err(|e| format!("answer {line:?}: {e}"))
    };
    let result = tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .unwrap_or_else(|_| Err("no answer within 15 s".into()));
    (result, started.elapsed())
}

fn login(user: &str) -> Request {
    Request::Login {
        username: user.into(),
        password: PASSWORD.into(),
    }
}

async fn redis_persists(url: &str) -> bool {
    let client = redis::Client::open(url).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis connection");
    let (_, value): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .expect("CONFIG GET appendonly");
    value == "yes"
}

fn authserver(dir: &Path, redis_url: &str, prefix: &str) -> (KillOnDrop, String) {
    let key = dir.join("token.key");
    std::fs::write(&key, uuid::Uuid::new_v4().simple().to_string().repeat(2)).expect("key");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("authserver.log")).expect("log");
    let child = Command::new(workspace_binary("authserver"))
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("AUTH_EVENTS_FILE")
        .env("RUST_LOG", "info")
        .args(["--listen-addr", &addr])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--redis-url", redis_url, "--redis-prefix", prefix])
        .arg("--token-key-file")
        .arg(&key)
        // Cheap hashes: the load is on Redis here, not on Argon2.
        .args(["--allow-weak-hash", "--argon2-memory-kib", "1024"])
        .args(["--argon2-iterations", "1"])
        .args([
            "--registrations-per-ip",
            "100000",
            "--failures-per-ip",
            "100000",
        ])
        .args(["--failures-per-user", "100000"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the authserver binary");
    (KillOnDrop(child), addr)
}

#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    took: Duration,
    ok: bool,
    /// `reason` of an error answer, or what went wrong on the wire.
    why: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_login_load_fails_fast_then_loses_no_user() {
    let _serial = outage::serialized();
    let redis_url = tanks_testkit::require_redis();
    if !redis_persists(&redis_url).await {
        eprintln!("[faults] Redis runs without its append-only file: restarting it once");
        outage::stop("redis").await.end_async().await;
    }
    assert!(
        redis_persists(&redis_url).await,
        "Redis still runs without persistence after a restart by hack/devenv"
    );
    let dir = std::env::temp_dir().join(tanks_testkit::unique("fault-redis"));
    std::fs::create_dir_all(&dir).expect("dir");
    let prefix = format!("{}:", tanks_testkit::unique("fault-redis"));
    let (mut server, addr) = authserver(&dir, &redis_url, &prefix);
    wait_for(
        "the authserver listening",
        Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(&addr)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;

    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let users: Vec<String> = (0..USERS).map(|i| format!("fault_{i:04}_{run}")).collect();
    let registered = futures::stream::iter(users.clone())
        .map(|u| {
            let addr = addr.clone();
            async move {
                let request = Request::Register {
                    username: u.clone(),
                    password: PASSWORD.into(),
                };
                (u, call(&addr, &request).await.0)
            }
        })
        .buffer_unordered(WORKERS)
        .collect::<Vec<_>>()
        .await;
    for (u, r) in registered {
        let r = r.unwrap_or_else(|e| panic!("registering {u}: {e}"));
        assert_eq!(r.status, Status::Success, "registering {u}: {r:?}");
    }

    // Login load: WORKERS clients logging in one after the other, round the accounts.
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (addr, users, answers, stop) =
                (addr.clone(), users.clone(), answers.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = Instant::now();
                    let (result, took) = call(&addr, &login(&users[i % USERS])).await;
                    let (ok, why) = match result {
                        Ok(r) if r.status == Status::Success => (true, String::new()),
                        Ok(r) => (false, r.reason.unwrap_or(r.message)),
                        Err(e) => (false, e),
                    };
                    answers.lock().unwrap().push(Answer { at, took, ok, why });
                    i += WORKERS;
                    // Not a busy loop: about 20 logins a second per client.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    let count_ok =
        |answers: &Mutex<Vec<Answer>>| answers.lock().unwrap().iter().filter(|a| a.ok).count();
    wait_for("logins under way", Duration::from_secs(20), || async {
        let n = count_ok(&answers);
        (n >= 100).then_some(()).ok_or(format!("{n} logins"))
    })
    .await;

    let outage = outage::stop("redis").await;
    let down_at = Instant::now();
    tokio::time::sleep(DOWN_FOR).await;
    let up_at = Instant::now();
    let away = outage.end_async().await;
    let back_at = Instant::now();
    let ok_at_return = count_ok(&answers);
    let recovered = wait_for(
        "logins succeeding again",
        Duration::from_secs(30),
        || async {
            let list = answers.lock().unwrap();
            list.iter()
                .find(|a| a.ok && a.at >= back_at)
                .map(|a| a.at + a.took - back_at)
                .ok_or(format!(
                    "{} answers, {} ok at the return",
                    list.len(),
                    ok_at_return
                ))
        },
    )
    .await;
    // A little more load after the recovery, then stop it.
    let settled_from = Instant::now();
    wait_for(
        "100 logins after the return",
        Duration::from_secs(30),
        || async {
            let n = answers
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.ok && a.at >= settled_from)
                .count();
            (n >= 100).then_some(()).ok_or(format!("{n}"))
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load client");
    }
    let answers = answers.lock().unwrap().clone();

    // While Redis was surely down (asked after the stop, answered before the start):
    // every login failed with `unavailable`, quickly.
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at >= down_at && a.at + a.took <= up_at)
        .collect();
    assert!(
        during.len() >= 20,
        "too few logins while Redis was down: {}",
        during.len()
    );
    let wrong: Vec<&&Answer> = during
        .iter()
        .filter(|a| a.ok || a.why != reason::UNAVAILABLE)
        .collect();
    assert!(wrong.is_empty(), "answers while Redis was down: {wrong:?}");
    let slowest_down = during.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(
        slowest_down <= FAIL_FAST,
        "a login waited {slowest_down:?} while Redis was down"
    );
    // No login anywhere in the run hung.
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(
        slowest <= Duration::from_secs(5),
        "a login took {slowest:?}"
    );
    // After the recovery, everything succeeds.
    let after: Vec<&Answer> = answers.iter().filter(|a| a.at >= settled_from).collect();
    assert!(
        after.iter().all(|a| a.ok),
        "failures after the recovery: {:?}",
        after.iter().filter(|a| !a.ok).take(5).collect::<Vec<_>>()
    );
    assert!(
        server.0.try_wait().expect("authserver status").is_none(),
        "the authserver exited"
    );

    // No account lost: every user logs in.
    let lost: Vec<String> = futures::stream::iter(users.clone())
        .map(|u| {
            let addr = addr.clone();
            async move { (call(&addr, &login(&u)).await.0, u) }
        })
        .buffer_unordered(WORKERS)
        .filter_map(|(r, u)| async move {
            (!matches!(r, Ok(ref r) if r.status == Status::Success)).then_some(u)
        })
        .collect()
        .await;
    assert_eq!(lost, Vec::<String>::new(), "accounts lost in the restart");
    println!(
        "redis restart: {} logins while down, all `unavailable`, slowest {slowest_down:?}; \
         Redis away {away:.1?} (held down {DOWN_FOR:?}); logins back {recovered:.1?} after it \
         returned; {USERS} of {USERS} accounts kept",
        during.len()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
