//! The `authserver` binary itself: its help, its first log line on a fresh machine, and
//! a graceful exit on SIGTERM; and its refusal of the development token key without
//! `--dev`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_authserver");
/// Variables that would point the binary at real services.
const SERVICE_ENV: &[&str] = &[
    "REDIS_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "AUTH_EVENTS_FILE",
    "TOKEN_KEY_FILE",
    "AUTH_TOKEN_KEY",
    "AUTH_LISTEN_ADDR",
    "METRICS_ADDR",
    "AUTH_DEV",
    "AUTH_MESSAGES",
];

/// The binary with none of [`SERVICE_ENV`], on ephemeral ports of its own.
fn command() -> (Command, u16) {
    let (port, metrics_port) = (free_port(), free_port());
    let mut cmd = Command::new(BIN);
    for var in SERVICE_ENV {
        cmd.env_remove(var);
    }
    cmd.args(["--listen-addr", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    (cmd, port)
}

/// Runs `cmd` expecting it to refuse to start: its exit status and its stderr.
fn refused(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 10 s later: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// Starts `cmd`, returns its first log line once it listens, and stops it.
fn first_line_then_stop(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = log.next().expect("a first log line").unwrap();
    for line in log.by_ref() {
        if line.unwrap().contains("authserver listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    first
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--listen-addr", "AUTH_LISTEN_ADDR"),
        ("--metrics-addr", "METRICS_ADDR"),
        ("--redis-url", "REDIS_URL"),
        ("--redis-prefix", "AUTH_REDIS_PREFIX"),
        ("--kafka-brokers", "KAFKA_BOOTSTRAP_SERVERS"),
        ("--events-file", "AUTH_EVENTS_FILE"),
        ("--token-key-file", "TOKEN_KEY_FILE"),
        ("--token-ttl-secs", "AUTH_TOKEN_TTL_SECS"),
        ("--max-connections", "AUTH_MAX_CONNECTIONS"),
        (
            "--max-connections-per-source",
            "AUTH_MAX_CONNECTIONS_PER_SOURCE",
        ),
        ("--idle-timeout-secs", "AUTH_IDLE_TIMEOUT_SECS"),
        ("--read-timeout-secs", "AUTH_READ_TIMEOUT_SECS"),
        ("--max-line-bytes", "AUTH_MAX_LINE_BYTES"),
        ("--hash-concurrency", "AUTH_HASH_CONCURRENCY"),
        ("--argon2-memory-kib", "AUTH_ARGON2_MEMORY_KIB"),
        ("--failures-per-user", "AUTH_FAILURES_PER_USER"),
        ("--failures-per-ip", "AUTH_FAILURES_PER_IP"),
        ("--registrations-per-ip", "AUTH_REGISTRATIONS_PER_IP"),
        ("--shutdown-grace-secs", "AUTH_SHUTDOWN_GRACE_SECS"),
        ("--dev", "AUTH_DEV"),
        ("--messages", "AUTH_MESSAGES"),
        ("--proxy-protocol", "AUTH_PROXY_PROTOCOL"),
        ("--trusted-proxies", "AUTH_TRUSTED_PROXIES"),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(&format!("[env: {env}")),
            "--help lacks env {env}:\n{help}"
        );
    }
    assert!(
        help.contains("AUTH_TOKEN_KEY"),
        "the key variable is documented"
    );
}

#[test]
fn refuses_the_development_key_without_dev_in_one_line() {
    let (mut cmd, port) = command();
    let (status, stderr) = refused(&mut cmd);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    for hint in ["development token key", "--token-key-file", "--dev"] {
        assert!(stderr.contains(hint), "{stderr}");
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );

    // The development key's bytes given as if they were a real key: refused the same.
    let dev = String::from_utf8(tanks_core::token::DEVELOPMENT_KEY.to_vec()).unwrap();
    let (mut cmd, _) = command();
    let (status, stderr) = refused(cmd.env("AUTH_TOKEN_KEY", dev));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("development token key"), "{stderr}");

    // A key that does not load is one line too.
    let (mut cmd, _) = command();
    let (status, stderr) = refused(cmd.args(["--token-key-file", "/nonexistent/token-key"]));
    assert!(!status.success());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains("/nonexistent/token-key"), "{stderr}");
}

#[test]
fn starts_on_a_real_key_or_with_the_dev_flag() {
    // A key of the install's own, in the environment or in a file: no flag needed.
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let (mut cmd, _) = command();
    let first = first_line_then_stop(cmd.env("AUTH_TOKEN_KEY", &key));
    assert!(first.contains("token key=AUTH_TOKEN_KEY"), "{first}");
    let file = std::env::temp_dir().join(format!("{}.key", tanks_testkit::unique("authkey")));
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let (mut cmd, _) = command();
    let first = first_line_then_stop(cmd.env("TOKEN_KEY_FILE", &file));
    assert!(first.contains("token key=file"), "{first}");
    let _ = std::fs::remove_file(&file);
    // The development key with the flag, or its variable.
    let (mut cmd, _) = command();
    let first = first_line_then_stop(cmd.env("AUTH_DEV", "1"));
    assert!(
        first.contains("token key=embedded development key"),
        "{first}"
    );
}

#[test]
fn runs_on_embedded_defaults_and_exits_cleanly_on_sigterm() {
    let (mut cmd, port) = command();
    let mut child = cmd
        .arg("--dev")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = log.next().expect("a first log line").unwrap();
    assert!(first.contains("authserver starting"), "{first}");
    for embedded in [
        "users=embedded",
        "events=embedded",
        "token key=embedded development key",
    ] {
        assert!(
            first.contains(embedded),
            "first line names {embedded:?}: {first}"
        );
    }
    // Ready once it logs that it listens.
    for line in log.by_ref() {
        if line.unwrap().contains("authserver listening") {
            break;
        }
    }

    // A seed-style exchange, then a login in flight while SIGTERM arrives.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut answer = String::new();
    stream
        .write_all(
            b"{\"action\":\"register\",\"username\":\"sigterm\",\"password\":\"correct horse\"}\n",
        )
        .unwrap();
    reader.read_line(&mut answer).unwrap();
    assert!(answer.contains("\"success\""), "{answer}");
    stream
        .write_all(
            b"{\"action\":\"login\",\"username\":\"sigterm\",\"password\":\"correct horse\"}\n",
        )
        .unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    answer.clear();
    reader.read_line(&mut answer).unwrap();
    assert!(
        answer.contains("session_id"),
        "the in-flight login finished: {answer}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let rest: Vec<String> = log.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("authserver stopped")),
        "{rest:#?}"
    );
}
