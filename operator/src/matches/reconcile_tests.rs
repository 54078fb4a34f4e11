//! Each reconcile decision against a `tower_test` API server: the test plays the API
//! server's side of every request the reconcile makes, and every conversation ends in a
//! timeout so a missing or extra request fails the test.

use std::sync::Mutex;

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tanks_core::protocol::control::{FinishedSession, LoadReport, MatchSession, SessionCreated};
use tower_test::mock::{self, Handle};

use super::*;
use crate::matches::cluster::PodLoadSource;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// The game servers' side: refuses the servers listed, creates sessions on the others.
#[derive(Default)]
struct Sessions {
    refuse: Vec<String>,
    calls: Mutex<Vec<String>>,
}

impl ServerClient for Sessions {
    fn load<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>> {
        unreachable!("the Match controller reads reports from the load index")
    }
    fn drain<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>> {
        unreachable!("the Match controller drains no server")
    }
    fn create_session<'a>(
        &'a self,
        base: &'a str,
        request: &'a CreateSession,
    ) -> BoxFuture<'a, Result<SessionCreated, ServerError>> {
        Box::pin(async move {
            let server = base.rsplit('/').next().unwrap_or_default().to_owned();
            self.calls.lock().unwrap().push(server.clone());
            if self.refuse.contains(&server) {
                return Err(ServerError::Refused("full".into(), "full".into()));
            }
            Ok(SessionCreated {
                match_id: request.match_id.clone(),
                session_id: format!("session-on-{server}"),
                created: true,
            })
        })
    }
}

struct Fixture {
    ctx: Arc<MatchContext>,
    sessions: Arc<Sessions>,
    handle: ApiHandle,
}

fn pod(name: &str, host_ip: &str, port: u16) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"tanks.dev/fleet": "tanks"},
                     "annotations": {"tanks.dev/game-port": port.to_string()}},
        "spec": {"containers": [{"name": "game"}]},
        "status": {"phase": "Running", "hostIP": host_ip, "podIP": "10.1.0.1"},
    }))
    .unwrap()
}

fn report(sessions: &[&str], capacity: u32, draining: bool) -> LoadReport {
    LoadReport {
        sessions: sessions.len() as u32,
        session_capacity: capacity,
        ready: true,
        draining,
        matches: sessions
            .iter()
            .map(|m| MatchSession {
                match_id: (*m).into(),
                session_id: format!("s-{m}"),
                players: 0,
                created_at: 0,
            })
            .collect(),
        ..Default::default()
    }
}

/// Servers as (name, host IP, host port, load report).
fn fixture(servers: Vec<(&str, &str, u16, LoadReport)>, refuse: &[&str]) -> Fixture {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "ns");
    let (pods, mut writer) = kube::runtime::reflector::store();
    let loads = Arc::new(LoadIndex::default());
    for (name, ip, port, report) in servers {
        writer.apply_watcher_event(&watcher::Event::Apply(pod(name, ip, port)));
        loads.set(&format!("ns/{name}"), report);
    }
    let (fleets, _) = kube::runtime::reflector::store();
    let view = Arc::new(AllocationView::new(
        Box::new(PodLoadSource {
            pods: pods.clone(),
            loads: loads.clone(),
        }),
        Duration::ZERO,
        Duration::from_secs(60),
    ));
    let sessions = Arc::new(Sessions {
        refuse: refuse.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    });
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(MatchContext {
        client,
        pods,
        fleets,
        loads,
        view,
        server_client: sessions.clone(),
        resolver: Arc::new(|p: &Pod| Some(format!("http://fake/s/{}", p.name_any()))),
        publisher: None,
        match_metrics: Arc::new(MatchMetrics::new(&metrics.registry)),
        metrics,
        settings: MatchSettings::default(),
        rebuild: None,
        rebuilt: Default::default(),
    });
    Fixture {
        ctx,
        sessions,
        handle,
    }
}

fn a_match(name: &str, age_secs: i64, status: Option<Value>) -> Match {
    let created = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(age_secs);
    let mut m = json!({
        "apiVersion": "tanks.dev/v1alpha1", "kind": "Match",
        "metadata": {"name": name, "namespace": "ns", "generation": 1,
                     "creationTimestamp": created.to_string()},
        "spec": {"fleet": "tanks", "players": ["a", "b"], "sourceEventId": name},
    });
    if let Some(s) = status {
        m["status"] = s;
    }
    serde_json::from_value(m).unwrap()
}

/// Expects one request, checks it, answers with `reply`, returns its JSON body.
async fn expect(handle: &mut ApiHandle, method: Method, path: &str, reply: Value) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the reconcile made no further request")
        .expect("service dropped");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().path(), path);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let mut body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // A status write is a JSON Patch replacing /status: show it as the object it makes.
    if let Value::Array(ops) = &body {
        assert_eq!(ops.len(), 1, "one operation: {body}");
        assert_eq!(ops[0]["op"], "add");
        assert_eq!(ops[0]["path"], "/status");
        body = json!({"status": ops[0]["value"]});
    }
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

const STATUS_PATH: &str = "/apis/tanks.dev/v1alpha1/namespaces/ns/matches/m1/status";

/// Runs the reconcile while the test plays the API server, then checks nothing else was asked.
async fn run_with<F>(
    fx: Fixture,
    m: Match,
    api: impl FnOnce(ApiHandle) -> F,
) -> (Result<Action>, Arc<Sessions>, Arc<MatchContext>)
where
    F: std::future::Future<Output = ApiHandle> + Send + 'static,
{
    let Fixture {
        ctx,
        sessions,
        handle,
    } = fx;
    let server = tokio::spawn(api(handle));
    let result = reconcile(Arc::new(m), ctx.clone()).await;
    let mut handle = server.await.unwrap();
    let extra = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(extra.is_err(), "unexpected extra request");
    (result, sessions, ctx)
}

#[tokio::test]
async fn a_pending_match_goes_to_the_busiest_server_with_room() {
    let fx = fixture(
        vec![
            ("empty", "10.0.0.1", 7001, report(&[], 2, false)),
            ("busy", "10.0.0.2", 7002, report(&["x"], 2, false)),
            ("full", "10.0.0.3", 7003, report(&["y", "z"], 2, false)),
            ("draining", "10.0.0.4", 7004, report(&["w"], 4, true)),
        ],
        &[],
    );
    let m = a_match("m1", 1, None);
    let (result, sessions, ctx) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        let status = &body["status"];
        assert_eq!(status["phase"], "Allocated");
        assert_eq!(status["gameServer"], "busy");
        assert_eq!(
            status["endpoint"],
            json!({"address": "10.0.0.2", "port": 7002, "protocol": "UDP"})
        );
        assert_eq!(status["sessionId"], "session-on-busy");
        assert_eq!(status["conditions"][0]["type"], "Allocated");
        assert_eq!(status["observedGeneration"], 1);
        h
    })
    .await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(MatchSettings::default().resync)
    );
    assert_eq!(*sessions.calls.lock().unwrap(), ["busy"]);
    assert_eq!(ctx.view.used("ns", "tanks", "ns/busy"), Some(2));
    // Each step of the allocation is timed once; there is no publisher here.
    let steps = &ctx.match_metrics.allocation_step;
    for (step, count) in [("session", 1), ("status", 1), ("publish", 0)] {
        assert_eq!(
            steps.with_label_values(&[step]).get_sample_count(),
            count,
            "{step}"
        );
    }
}

#[tokio::test]
async fn a_refusing_server_is_skipped_for_the_next() {
    let fx = fixture(
        vec![
            ("a", "10.0.0.1", 7001, report(&["x"], 4, false)),
            ("b", "10.0.0.2", 7002, report(&[], 4, false)),
        ],
        &["a"],
    );
    let m = a_match("m1", 1, None);
    let (result, sessions, _) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        assert_eq!(body["status"]["gameServer"], "b");
        h
    })
    .await;
    result.unwrap();
    assert_eq!(*sessions.calls.lock().unwrap(), ["a", "b"]);
}

#[tokio::test]
async fn no_room_keeps_the_match_pending_with_a_reason_and_counts_it() {
    let fx = fixture(vec![("a", "10.0.0.1", 7001, report(&["x"], 1, false))], &[]);
    let m = a_match("m1", 1, None);
    let (result, sessions, ctx) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        assert_eq!(body["status"]["phase"], "Pending");
        assert!(
            body["status"]["reason"]
                .as_str()
                .unwrap()
                .contains("waiting for a game server of fleet tanks")
        );
        assert_eq!(body["status"]["conditions"][0]["reason"], "NoCapacity");
        h
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(1)));
    assert!(sessions.calls.lock().unwrap().is_empty());
    assert_eq!(ctx.view.pending("ns", "tanks"), 1);
}

#[tokio::test]
async fn a_pending_match_with_its_reason_written_waits_without_writing() {
    let fx = fixture(vec![], &[]);
    let reason = "waiting for a game server of fleet tanks with room";
    let m = a_match("m1", 1, Some(json!({"phase": "Pending", "reason": reason})));
    let (result, _, _) = run_with(fx, m, |h| async move { h }).await;
    result.unwrap();
}

#[tokio::test]
async fn a_match_pending_past_the_timeout_fails_with_the_reason() {
    let fx = fixture(vec![], &[]);
    let m = a_match("m1", 301, None);
    let (result, _, _) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        assert_eq!(body["status"]["phase"], "Failed");
        assert_eq!(
            body["status"]["reason"],
            "no game server of fleet tanks had room within 300s"
        );
        assert_eq!(
            body["status"]["conditions"][0]["reason"],
            "AllocationTimeout"
        );
        h
    })
    .await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(MatchSettings::default().finished_ttl)
    );
}

fn allocated(server: &str) -> Value {
    json!({"phase": "Allocated", "gameServer": server, "sessionId": "s-m1",
           "endpoint": {"address": "10.0.0.1", "port": 7001, "protocol": "UDP"},
           "allocatedAt": Timestamp::now().to_string()})
}

#[tokio::test]
async fn a_finished_session_finishes_the_match_and_frees_the_slot() {
    let mut r = report(&[], 1, false);
    r.finished.push(FinishedSession {
        match_id: "m1".into(),
        session_id: "s-m1".into(),
        finished_at: 1,
        reason: "completed".into(),
    });
    let fx = fixture(vec![("a", "10.0.0.1", 7001, r)], &[]);
    let m = a_match("m1", 10, Some(allocated("a")));
    let (result, _, ctx) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        assert_eq!(body["status"]["phase"], "Finished");
        assert_eq!(body["status"]["reason"], "session ended: completed");
        assert_eq!(
            body["status"]["endpoint"]["port"], 7001,
            "the endpoint stays"
        );
        assert!(body["status"]["finishedAt"].is_string());
        h
    })
    .await;
    result.unwrap();
    assert!(ctx.view.assignments().is_empty());
}

#[tokio::test]
async fn players_in_make_it_running_and_a_live_session_is_left_alone() {
    let mut r = report(&["m1"], 2, false);
    r.matches[0].players = 2;
    let fx = fixture(vec![("a", "10.0.0.1", 7001, r)], &[]);
    let m = a_match("m1", 10, Some(allocated("a")));
    let (result, _, ctx) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        assert_eq!(body["status"]["phase"], "Running");
        h
    })
    .await;
    result.unwrap();
    assert_eq!(
        ctx.view.assignments(),
        [("ns/m1".to_owned(), "ns/a".to_owned())]
    );

    let fx = fixture(
        vec![("a", "10.0.0.1", 7001, report(&["m1"], 2, false))],
        &[],
    );
    let m = a_match("m1", 10, Some(allocated("a")));
    let (result, _, _) = run_with(fx, m, |h| async move { h }).await;
    result.unwrap();
}

#[tokio::test]
async fn a_match_whose_server_is_gone_fails() {
    let fx = fixture(vec![], &[]);
    let m = a_match("m1", 10, Some(allocated("vanished")));
    let (result, _, _) = run_with(fx, m.clone(), |mut h| async move {
        let body = expect(
            &mut h,
            Method::PATCH,
            STATUS_PATH,
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        assert_eq!(body["status"]["phase"], "Failed");
        assert_eq!(body["status"]["reason"], "game server vanished is gone");
        h
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn ended_matches_are_deleted_after_the_ttl() {
    let long_ago =
        (Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(301)).to_string();
    let fx = fixture(vec![], &[]);
    let m = a_match(
        "m1",
        400,
        Some(json!({"phase": "Finished", "finishedAt": long_ago})),
    );
    let (result, _, _) = run_with(fx, m.clone(), |mut h| async move {
        expect(
            &mut h,
            Method::DELETE,
            "/apis/tanks.dev/v1alpha1/namespaces/ns/matches/m1",
            serde_json::to_value(&m).unwrap(),
        )
        .await;
        h
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());

    let recent = Timestamp::now().to_string();
    let fx = fixture(vec![], &[]);
    let m = a_match(
        "m1",
        400,
        Some(json!({"phase": "Failed", "finishedAt": recent})),
    );
    let (result, _, _) = run_with(fx, m, |h| async move { h }).await;
    result.unwrap();
}
