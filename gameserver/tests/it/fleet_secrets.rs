//! The real binary under the operator (`TANKS_FLEET` set) refuses the public development
//! token key and control secret, in one line on stderr, and starts on the install's own.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gameserver");
/// Variables that would hand the binary secrets (or a fleet) from the test's own
/// environment.
const SECRET_ENV: &[&str] = &[
    "TANKS_FLEET",
    "TANKS_TOKEN_KEY_FILE",
    "GAMESERVER_CONTROL_SECRET_FILE",
    "TANKS_CONTROL_TOKEN",
    "GAMESERVER_KAFKA_BROKERS",
    "GAMESERVER_AMQP_URL",
];

fn free_port() -> u16 {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    UdpSocket::bind(("127.0.0.1", port))
        .map(|_| port)
        .unwrap_or_else(|_| free_port())
}

/// The binary in a fleet named `arena`, on ports of its own; returns the control port.
fn in_a_fleet() -> (Command, u16) {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let events = std::env::temp_dir().join(format!(
        "{}.jsonl",
        tanks_testkit::unique("gameserver-fleet-secrets")
    ));
    let mut cmd = Command::new(BIN);
    for var in SECRET_ENV {
        cmd.env_remove(var);
    }
    cmd.env("TANKS_FLEET", "arena")
        .args(["--udp-addr", &addr(ports[0])])
        .args(["--tcp-addr", &addr(ports[1])])
        .args(["--control-addr", &addr(ports[2])])
        .args(["--metrics-addr", &addr(ports[3])])
        .args(["--events-file", events.to_str().unwrap()])
        .env("NO_COLOR", "1");
    (cmd, ports[2])
}

/// Runs `cmd` expecting a refusal: its exit code and stderr.
fn refused(cmd: &mut Command) -> (Option<i32>, String) {
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
    (status.code(), stderr)
}

fn own_key_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.key", tanks_testkit::unique("fleet-key")));
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, key).unwrap();
    path
}

fn own_secret() -> String {
    format!("control-{}", uuid::Uuid::new_v4().simple())
}

#[test]
fn under_the_operator_the_development_secrets_are_refused_in_one_line() {
    // Neither configured.
    let (mut cmd, _) = in_a_fleet();
    let (code, stderr) = refused(&mut cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    for hint in [
        "TANKS_FLEET",
        "development token key and control secret",
        "--token-key-file",
    ] {
        assert!(stderr.contains(hint), "{stderr}");
    }

    // Only the key is the install's own.
    let key = own_key_file();
    let (mut cmd, _) = in_a_fleet();
    let (code, stderr) = refused(cmd.arg("--token-key-file").arg(&key));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("development control secret"), "{stderr}");

    // Only the control secret is.
    let (mut cmd, _) = in_a_fleet();
    let (code, stderr) = refused(cmd.env("TANKS_CONTROL_TOKEN", own_secret()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("development token key"), "{stderr}");
    let _ = std::fs::remove_file(key);
}

#[test]
fn under_the_operator_the_installs_own_secrets_start_it() {
    let key = own_key_file();
    let (mut cmd, control) = in_a_fleet();
    let mut child = cmd
        .arg("--token-key-file")
        .arg(&key)
        .env("TANKS_CONTROL_TOKEN", own_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Instant::now();
    let listening = loop {
        if TcpStream::connect(("127.0.0.1", control)).is_ok() {
            break true;
        }
        if child.try_wait().unwrap().is_some() || up.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(key);
    assert!(listening, "the control interface came up");
}
