//! A client written for the prototype, unchanged: one request per connection, and it
//! matches on the answers' texts (the prototype's Russian login message). It works
//! against the default server; `--messages english` is the opt-in for English texts.

use std::net::SocketAddr;
use std::time::Duration;

use authserver::config::MessageTexts;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{config, start, username};

const PASSWORD: &str = "correct horse battery";

/// The prototype client's exchange: connect, send one JSON line, read one, close.
async fn ask(addr: SocketAddr, request: Value) -> Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(&mut stream).read_line(&mut line),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// What the prototype's client does with a login answer: success only if the text says
/// so, the token from `session_id`.
enum Outcome {
    LoggedIn(String),
    Refused(String),
}

fn prototype_client_reads(username: &str, answer: &Value) -> Outcome {
    let message = answer["message"].as_str().unwrap_or_default();
    if message == format!("Пользователь {username} успешно аутентифицирован.")
    {
        Outcome::LoggedIn(answer["session_id"].as_str().unwrap().to_owned())
    } else if message.starts_with("Authentication failed: ") {
        Outcome::Refused(message.to_owned())
    } else {
        panic!("the prototype's client does not understand {answer}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prototype_client_logs_in_on_the_default_server() {
    let cfg = config();
    assert_eq!(cfg.messages, MessageTexts::Prototype, "the default texts");
    let server = start(cfg).await;
    let name = username("Proto");
    let registered = ask(
        server.addr,
        json!({"action": "register", "username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(registered["status"], "success", "{registered}");

    let answer = ask(
        server.addr,
        json!({"action": "login", "username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(answer["status"], "success", "{answer}");
    let Outcome::LoggedIn(token) = prototype_client_reads(&name, &answer) else {
        panic!("not logged in: {answer}");
    };
    assert!(!token.is_empty());

    // Wrong password and unknown user: one answer, in the prototype's words, that does
    // not tell them apart.
    let wrong = ask(
        server.addr,
        json!({"action": "login", "username": name, "password": "wrong-password"}),
    )
    .await;
    let ghost = username("ghost");
    let unknown = ask(
        server.addr,
        json!({"action": "login", "username": ghost, "password": "wrong-password"}),
    )
    .await;
    assert_eq!(wrong, unknown, "no user enumeration");
    assert_eq!(wrong["status"], "failure");
    let Outcome::Refused(text) = prototype_client_reads(&name, &wrong) else {
        panic!("a wrong password logged in: {wrong}");
    };
    assert!(text.contains("Неверный пароль"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn english_texts_are_an_opt_in() {
    let mut cfg = config();
    cfg.messages = MessageTexts::English;
    let server = start(cfg).await;
    let name = username("English");
    let registered = ask(
        server.addr,
        json!({"action": "register", "username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(registered["status"], "success", "{registered}");
    let answer = ask(
        server.addr,
        json!({"action": "login", "username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(answer["message"], "Authentication successful", "{answer}");
    assert_eq!(answer["status"], "success");
    let wrong = ask(
        server.addr,
        json!({"action": "login", "username": name, "password": "wrong-password"}),
    )
    .await;
    let unknown = ask(
        server.addr,
        json!({"action": "login", "username": username("ghost"), "password": "wrong-password"}),
    )
    .await;
    assert_eq!(wrong, unknown, "no user enumeration");
    assert_eq!(
        wrong["message"],
        "Authentication failed: invalid username or password"
    );
    server.shutdown().await;
}
