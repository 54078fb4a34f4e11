//! Each reconcile decision against a `tower_test` API server: a [`Scenario`] names the
//! servers, the Match and the requests the reconcile must make, in order; the test
//! plays the API server's side, and every conversation ends in a timeout so a missing
//! or extra request fails the test.

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

/// A fleet's pod, with the safe-to-evict mark the GameFleet controller keeps: `"false"`
/// while it is busy.
fn pod(name: &str, host_ip: &str, port: u16, busy: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"tanks.dev/fleet": "tanks"},
                     "annotations": {"tanks.dev/game-port": port.to_string(),
                                     crate::api::labels::SAFE_TO_EVICT: (!busy).to_string()}},
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

fn allocated(server: &str) -> Value {
    json!({"phase": "Allocated", "gameServer": server, "sessionId": "s-m1",
           "endpoint": {"address": "10.0.0.1", "port": 7001, "protocol": "UDP"},
           "allocatedAt": Timestamp::now().to_string()})
}

const STATUS_PATH: &str = "/apis/tanks.dev/v1alpha1/namespaces/ns/matches/m1/status";
const MATCH_PATH: &str = "/apis/tanks.dev/v1alpha1/namespaces/ns/matches/m1";

type StatusCheck = Box<dyn FnOnce(&Value) + Send>;

/// A request the reconcile must make.
enum Expect {
    /// A status write; the check sees the status it writes.
    Status(StatusCheck),
    Delete,
    /// The safe-to-evict mark of this pod set to `"false"`.
    Protect(&'static str),
}

/// One reconcile of one Match: the game servers as (name, host IP, host port, load
/// report), those that refuse sessions, and the requests expected of it.
struct Scenario {
    servers: Vec<(&'static str, &'static str, u16, LoadReport)>,
    refuse: Vec<&'static str>,
    m: Match,
    requests: Vec<Expect>,
}

/// What a scenario left behind, for checks beyond the conversation.
struct Ran {
    result: Result<Action>,
    /// Servers asked for a session, in order.
    calls: Vec<String>,
    ctx: Arc<MatchContext>,
}

impl Scenario {
    fn of(m: Match) -> Self {
        Scenario {
            servers: Vec::new(),
            refuse: Vec::new(),
            m,
            requests: Vec::new(),
        }
    }

    fn server(mut self, name: &'static str, ip: &'static str, port: u16, r: LoadReport) -> Self {
        self.servers.push((name, ip, port, r));
        self
    }

    fn refusing(mut self, name: &'static str) -> Self {
        self.refuse.push(name);
        self
    }

    /// Expects a status write; `check` sees the status written.
    fn writes_status(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.requests.push(Expect::Status(Box::new(check)));
        self
    }

    fn protects(mut self, pod: &'static str) -> Self {
        self.requests.push(Expect::Protect(pod));
        self
    }

    fn deletes(mut self) -> Self {
        self.requests.push(Expect::Delete);
        self
    }

    async fn run(self) -> Ran {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ns");
        let (pods, mut writer) = kube::runtime::reflector::store();
        let loads = Arc::new(LoadIndex::default());
        for (name, ip, port, report) in self.servers {
            let busy = report.sessions > 0;
            writer.apply_watcher_event(&watcher::Event::Apply(pod(name, ip, port, busy)));
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
            refuse: self.refuse.iter().map(|s| (*s).to_owned()).collect(),
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
            edges: None,
        });
        let reply = serde_json::to_value(&self.m).unwrap();
        let api = tokio::spawn(play_api_server(handle, self.requests, reply));
        let result = reconcile(Arc::new(self.m), ctx.clone()).await;
        api.await.unwrap();
        let calls = sessions.calls.lock().unwrap().clone();
        Ran { result, calls, ctx }
    }
}

/// Answers each expected request with `reply`, then checks nothing else is asked.
async fn play_api_server(mut handle: ApiHandle, requests: Vec<Expect>, reply: Value) {
    for expected in requests {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("the reconcile made no further request")
            .expect("service dropped");
        let (method, path) = match &expected {
            Expect::Status(_) => (Method::PATCH, STATUS_PATH.to_owned()),
            Expect::Delete => (Method::DELETE, MATCH_PATH.to_owned()),
            Expect::Protect(pod) => (Method::PATCH, format!("/api/v1/namespaces/ns/pods/{pod}")),
        };
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().path(), path);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        if let Expect::Protect(pod) = expected {
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                body["metadata"]["annotations"][crate::api::labels::SAFE_TO_EVICT],
                "false"
            );
            let patched = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod}});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&patched).unwrap()))
                    .unwrap(),
            );
            continue;
        }
        if let Expect::Status(check) = expected {
            // A status write is a JSON Patch replacing /status: check the status it makes.
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let ops = body.as_array().expect("a JSON Patch");
            assert_eq!(ops.len(), 1, "one operation: {body}");
            assert_eq!(ops[0]["op"], "add");
            assert_eq!(ops[0]["path"], "/status");
            check(&ops[0]["value"]);
        }
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    let extra = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(extra.is_err(), "unexpected extra request");
}

#[tokio::test]
async fn a_pending_match_goes_to_the_busiest_server_with_room() {
    let ran = Scenario::of(a_match("m1", 1, None))
        .server("empty", "10.0.0.1", 7001, report(&[], 2, false))
        .server("busy", "10.0.0.2", 7002, report(&["x"], 2, false))
        .server("full", "10.0.0.3", 7003, report(&["y", "z"], 2, false))
        .server("draining", "10.0.0.4", 7004, report(&["w"], 4, true))
        .writes_status(|status| {
            assert_eq!(status["phase"], "Allocated");
            assert_eq!(status["gameServer"], "busy");
            assert_eq!(
                status["endpoint"],
                json!({"address": "10.0.0.2", "port": 7002, "protocol": "UDP"})
            );
            assert_eq!(status["sessionId"], "session-on-busy");
            assert_eq!(status["conditions"][0]["type"], "Allocated");
            assert_eq!(status["observedGeneration"], 1);
        })
        .run()
        .await;
    assert_eq!(
        ran.result.unwrap(),
        Action::requeue(MatchSettings::default().resync)
    );
    assert_eq!(ran.calls, ["busy"]);
    assert_eq!(ran.ctx.view.used("ns", "tanks", "ns/busy"), Some(2));
    // Each step of the allocation is timed once; there is no publisher here.
    let steps = &ran.ctx.match_metrics.allocation_step;
    for (step, count) in [("session", 1), ("status", 1), ("publish", 0)] {
        assert_eq!(
            steps.with_label_values(&[step]).get_sample_count(),
            count,
            "{step}"
        );
    }
}

#[tokio::test]
async fn an_empty_server_is_marked_not_evictable_before_the_status_says_allocated() {
    // The request order is the test: the pod's mark, then the status.
    let ran = Scenario::of(a_match("m1", 1, None))
        .server("empty", "10.0.0.1", 7001, report(&[], 2, false))
        .protects("empty")
        .writes_status(|status| assert_eq!(status["phase"], "Allocated"))
        .run()
        .await;
    ran.result.unwrap();
    let steps = &ran.ctx.match_metrics.allocation_step;
    assert_eq!(steps.with_label_values(&["protect"]).get_sample_count(), 1);
}

#[tokio::test]
async fn a_refusing_server_is_skipped_for_the_next() {
    let ran = Scenario::of(a_match("m1", 1, None))
        .server("a", "10.0.0.1", 7001, report(&["x"], 4, false))
        .server("b", "10.0.0.2", 7002, report(&[], 4, false))
        .refusing("a")
        .protects("b")
        .writes_status(|status| assert_eq!(status["gameServer"], "b"))
        .run()
        .await;
    ran.result.unwrap();
    assert_eq!(ran.calls, ["a", "b"]);
}

#[tokio::test]
async fn no_room_keeps_the_match_pending_with_a_reason_and_counts_it() {
    let ran = Scenario::of(a_match("m1", 1, None))
        .server("a", "10.0.0.1", 7001, report(&["x"], 1, false))
        .writes_status(|status| {
            assert_eq!(status["phase"], "Pending");
            assert!(
                status["reason"]
                    .as_str()
                    .unwrap()
                    .contains("waiting for a game server of fleet tanks")
            );
            assert_eq!(status["conditions"][0]["reason"], "NoCapacity");
        })
        .run()
        .await;
    assert_eq!(ran.result.unwrap(), Action::requeue(Duration::from_secs(1)));
    assert!(ran.calls.is_empty());
    assert_eq!(ran.ctx.view.pending("ns", "tanks"), 1);
}

#[tokio::test]
async fn a_pending_match_with_its_reason_written_waits_without_writing() {
    let reason = "waiting for a game server of fleet tanks with room";
    let m = a_match("m1", 1, Some(json!({"phase": "Pending", "reason": reason})));
    Scenario::of(m).run().await.result.unwrap();
}

#[tokio::test]
async fn a_match_pending_past_the_timeout_fails_with_the_reason() {
    let ran = Scenario::of(a_match("m1", 301, None))
        .writes_status(|status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(
                status["reason"],
                "no game server of fleet tanks had room within 300s"
            );
            assert_eq!(status["conditions"][0]["reason"], "AllocationTimeout");
        })
        .run()
        .await;
    assert_eq!(
        ran.result.unwrap(),
        Action::requeue(MatchSettings::default().finished_ttl)
    );
}

#[tokio::test]
async fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    // Pending with Allocated=False since long ago, then failed: Allocated is still False.
    let since = "2020-01-01T00:00:00Z";
    let pending = json!({"phase": "Pending", "reason": "waiting",
        "conditions": [{"type": "Allocated", "status": "False", "reason": "NoCapacity",
                        "message": "waiting", "lastTransitionTime": since}]});
    Scenario::of(a_match("m1", 301, Some(pending)))
        .writes_status(move |status| {
            assert_eq!(status["conditions"][0]["reason"], "AllocationTimeout");
            assert_eq!(status["conditions"][0]["lastTransitionTime"], since);
        })
        .run()
        .await
        .result
        .unwrap();
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
    let ran = Scenario::of(a_match("m1", 10, Some(allocated("a"))))
        .server("a", "10.0.0.1", 7001, r)
        .writes_status(|status| {
            assert_eq!(status["phase"], "Finished");
            assert_eq!(status["reason"], "session ended: completed");
            assert_eq!(status["endpoint"]["port"], 7001, "the endpoint stays");
            assert!(status["finishedAt"].is_string());
        })
        .run()
        .await;
    ran.result.unwrap();
    assert!(ran.ctx.view.assignments().is_empty());
}

#[tokio::test]
async fn players_in_make_it_running_and_a_live_session_is_left_alone() {
    let mut r = report(&["m1"], 2, false);
    r.matches[0].players = 2;
    let ran = Scenario::of(a_match("m1", 10, Some(allocated("a"))))
        .server("a", "10.0.0.1", 7001, r)
        .writes_status(|status| assert_eq!(status["phase"], "Running"))
        .run()
        .await;
    ran.result.unwrap();
    assert_eq!(
        ran.ctx.view.assignments(),
        [("ns/m1".to_owned(), "ns/a".to_owned())]
    );

    Scenario::of(a_match("m1", 10, Some(allocated("a"))))
        .server("a", "10.0.0.1", 7001, report(&["m1"], 2, false))
        .run()
        .await
        .result
        .unwrap();
}

#[tokio::test]
async fn a_match_whose_server_is_gone_fails() {
    Scenario::of(a_match("m1", 10, Some(allocated("vanished"))))
        .writes_status(|status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["reason"], "game server vanished is gone");
        })
        .run()
        .await
        .result
        .unwrap();
}

#[tokio::test]
async fn ended_matches_are_deleted_after_the_ttl() {
    let long_ago =
        (Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(301)).to_string();
    let finished = json!({"phase": "Finished", "finishedAt": long_ago});
    let ran = Scenario::of(a_match("m1", 400, Some(finished)))
        .deletes()
        .run()
        .await;
    assert_eq!(ran.result.unwrap(), Action::await_change());

    let recent = json!({"phase": "Failed", "finishedAt": Timestamp::now().to_string()});
    Scenario::of(a_match("m1", 400, Some(recent)))
        .run()
        .await
        .result
        .unwrap();
}
