//! Reconcile decisions against a `tower_test` API server: each [`Scenario`] names the
//! conversation a reconcile must have with the API server, request by request, and
//! every conversation ends in a timeout (no request beyond the scenario).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tanks_core::protocol::control::LoadReport;

use super::*;
use crate::api::labels;
use crate::servers::ServerError;
use tanks_core::protocol::control::{CreateSession, SessionCreated};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The control interface as a scripted double: every server answers its last report,
/// drains are recorded.
#[derive(Default)]
struct ScriptedControl {
    drained: Mutex<Vec<String>>,
    sessions: Mutex<std::collections::HashMap<String, u32>>,
}

impl ServerClient for ScriptedControl {
    fn load<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>> {
        Box::pin(async move { Ok(self.report(base, false)) })
    }
    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>> {
        self.drained.lock().unwrap().push(base.to_owned());
        Box::pin(async move { Ok(self.report(base, true)) })
    }
    fn create_session<'a>(
        &'a self,
        _: &'a str,
        _: &'a CreateSession,
    ) -> BoxFuture<'a, Result<SessionCreated, ServerError>> {
        unreachable!("a fleet reconcile opens no session")
    }
}

impl ScriptedControl {
    fn report(&self, base: &str, draining: bool) -> LoadReport {
        let sessions = self
            .sessions
            .lock()
            .unwrap()
            .get(base)
            .copied()
            .unwrap_or(0);
        LoadReport {
            server: base.into(),
            sessions,
            ready: true,
            draining,
            ..Default::default()
        }
    }
}

/// Fluent test objects: `GameFleet::test().with_min(3)`.
impl GameFleet {
    fn test() -> GameFleet {
        let mut f: GameFleet = serde_json::from_value(json!({
            "apiVersion": "tanks.dev/v1alpha1",
            "kind": "GameFleet",
            "metadata": {"name": "arena", "namespace": "games", "uid": "fleet-uid",
                         "generation": 1, "finalizers": [FINALIZER]},
            "spec": {
                "template": {"spec": {"containers": [{"name": "gs", "image": "gs:1"}]}},
                "capacity": {"sessionsPerServer": 2, "playersPerSession": 4},
                "scaling": {"minReplicas": 0, "maxReplicas": 10, "buffer": {"slots": 0}},
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
        }))
        .unwrap();
        f.meta_mut().resource_version = Some("1".into());
        f
    }
    fn with_min(mut self, n: i32) -> Self {
        self.spec.scaling.min_replicas = n;
        self
    }
    fn with_image(mut self, image: &str) -> Self {
        let spec = self.spec.template.spec.as_mut().unwrap();
        spec.containers[0].image = Some(image.into());
        self
    }
}

/// A running pod of `fleet` made from its current template (or an old one).
fn server(fleet: &GameFleet, name: &str, current: bool) -> Pod {
    let hash = if current {
        pods::template_hash(fleet)
    } else {
        "oldhash".into()
    };
    let mut pod = pods::build(fleet, &hash, Some(7000), "test").unwrap();
    pod.metadata.name = Some(name.into());
    pod.metadata.uid = Some(format!("uid-{name}"));
    pod.status =
        Some(serde_json::from_value(json!({"phase": "Running", "podIP": "10.0.0.1"})).unwrap());
    pod
}

enum Scenario {
    /// No pods yet: `n` pods are created, one Event, one status write.
    CreatesServers(usize),
    /// Failed pod deleted, a replacement created, Events, status.
    ReplacesFailed,
    /// Rollout with a busy old server: a new server created, the busy one drained (not
    /// deleted), Events, status.
    RollsWithoutDeletingBusy,
    /// Everything matches and the status is current: no request at all.
    NothingToDo,
}

async fn respond(handle: &mut Handle, check: impl FnOnce(&Request<Body>)) {
    let (req, send) = handle.next_request().await.expect("a request");
    check(&req);
    let body = match (req.method().as_str(), req.uri().path()) {
        ("POST", p) if p.ends_with("/pods") => {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("arena-{}", uuid::Uuid::new_v4()), "namespace": "games"}})
        }
        ("DELETE", _) => json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gone"}}),
        ("POST", p) if p.contains("/events") => {
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})
        }
        ("PATCH", p) if p.ends_with("/status") => serde_json::to_value(GameFleet::test()).unwrap(),
        ("PATCH", _) => json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
        other => panic!("unexpected request {other:?}"),
    };
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn is(method: &'static str, suffix: &'static str) -> impl FnOnce(&Request<Body>) {
    move |req| {
        assert_eq!(req.method().as_str(), method, "{}", req.uri());
        assert!(
            req.uri().path().contains(suffix),
            "{method} {} lacks {suffix}",
            req.uri()
        );
    }
}

impl Scenario {
    async fn run(self, mut handle: Handle, control: Arc<ScriptedControl>) {
        match self {
            Scenario::CreatesServers(n) => {
                for _ in 0..n {
                    respond(&mut handle, is("POST", "/namespaces/games/pods")).await;
                }
                respond(&mut handle, is("POST", "/events")).await;
                respond(&mut handle, is("PATCH", "/gamefleets/arena/status")).await;
            }
            Scenario::ReplacesFailed => {
                respond(&mut handle, is("DELETE", "/pods/failed")).await;
                respond(&mut handle, is("POST", "/pods")).await;
                respond(&mut handle, is("POST", "/events")).await; // scaled up
                respond(&mut handle, is("POST", "/events")).await; // replaced
                respond(&mut handle, is("PATCH", "/gamefleets/arena/status")).await;
            }
            Scenario::RollsWithoutDeletingBusy => {
                // Only the busy old server is left; maxSurge 1 allows one new server,
                // maxUnavailable 0 keeps the busy one serving: drain comes later.
                respond(&mut handle, is("POST", "/pods")).await;
                respond(&mut handle, is("POST", "/events")).await;
                respond(&mut handle, is("PATCH", "/gamefleets/arena/status")).await;
                assert!(control.drained.lock().unwrap().is_empty());
            }
            Scenario::NothingToDo => {}
        }
        // Nothing more may be asked.
        // (None: the reconcile finished and dropped its client.)
        let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        if let Ok(Some((req, _))) = more {
            panic!("unexpected extra request: {} {}", req.method(), req.uri());
        }
    }
}

fn context(pods: Vec<Pod>) -> (Arc<Context>, Handle, Arc<ScriptedControl>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, mut writer): (_, Writer<Pod>) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (_tx, ready) = tokio::sync::watch::channel(true);
    let control = Arc::new(ScriptedControl::default());
    let resolver: EndpointResolver = Arc::new(|p: &Pod| Some(p.name_any()));
    let ctx = Context::new(
        client,
        Arc::default(),
        store,
        ready,
        Arc::default(),
        control.clone(),
        resolver,
        Settings::default(),
    );
    (Arc::new(ctx), handle, control)
}

async fn reconcile_with(
    fleet: GameFleet,
    pods: Vec<Pod>,
    scenario: Scenario,
    setup: impl FnOnce(&Context, &ScriptedControl),
) {
    let (ctx, handle, control) = context(pods);
    setup(&ctx, &control);
    let server = tokio::spawn(scenario.run(handle, control));
    reconcile(Arc::new(fleet), ctx).await.expect("reconcile");
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("scenario finished")
        .expect("scenario");
}

fn report(ctx: &Context, pod: &str, sessions: u32) {
    ctx.loads.set(
        &format!("games/{pod}"),
        LoadReport {
            sessions,
            ready: true,
            ..Default::default()
        },
    );
}

#[tokio::test]
async fn an_empty_fleet_creates_its_minimum() {
    reconcile_with(
        GameFleet::test().with_min(3),
        vec![],
        Scenario::CreatesServers(3),
        |_, _| {},
    )
    .await;
}

#[tokio::test]
async fn a_failed_server_is_deleted_and_replaced() {
    let fleet = GameFleet::test().with_min(2);
    let ok = server(&fleet, "ok", true);
    let mut failed = server(&fleet, "failed", true);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    reconcile_with(
        fleet,
        vec![ok, failed],
        Scenario::ReplacesFailed,
        |ctx, _| report(ctx, "ok", 0),
    )
    .await;
}

#[tokio::test]
async fn a_template_change_surges_and_never_deletes_the_busy_server() {
    let old = GameFleet::test().with_min(1);
    let mut busy = server(&old, "busy", false);
    busy.annotations_mut()
        .insert(labels::SAFE_TO_EVICT.into(), "false".into());
    let fleet = old.with_image("gs:2");
    reconcile_with(
        fleet,
        vec![busy],
        Scenario::RollsWithoutDeletingBusy,
        |ctx, _| report(ctx, "busy", 1),
    )
    .await;
}

#[tokio::test]
async fn a_settled_fleet_makes_no_request() {
    let fleet = GameFleet::test().with_min(1);
    let pod = server(&fleet, "only", true);
    // Compute the status it would write and give it to the fleet first.
    let (ctx, _handle, _) = context(vec![pod.clone()]);
    report(&ctx, "only", 0);
    let health = observe::policies(&fleet).health;
    let servers = vec![observe::classify(
        &pod,
        &pods::template_hash(&fleet),
        &health,
        &ctx.loads,
    )];
    let mut settled = fleet.clone();
    let facts = status::Facts {
        servers: &servers,
        desired: 1,
        reason: "minReplicas 1",
        hash: &pods::template_hash(&fleet),
        scaled: false,
        at_max: false,
        create_error: None,
    };
    settled.status = Some(status::compute(&fleet, &facts));
    let evictable = {
        let mut p = pod;
        p.annotations_mut()
            .insert(labels::SAFE_TO_EVICT.into(), "true".into());
        p
    };
    reconcile_with(settled, vec![evictable], Scenario::NothingToDo, |ctx, _| {
        report(ctx, "only", 0)
    })
    .await;
}
