//! Every CEL rule (`x-kubernetes-validations`) of the operator's CRDs, against the real
//! kube-apiserver of `hack/devenv`: for each rule one minimal object that breaks exactly
//! that rule is refused with HTTP 422, at the rule's field, with the rule's message and
//! no other rule's. The rules are read from the CRDs themselves, so a new rule without a
//! case here fails the test. Creates are server-side dry runs; the transition rules
//! (`oldSelf`) patch, again as a dry run, an object created for real in a temporary
//! namespace. Valid objects are accepted.

use std::collections::BTreeSet;

use crate::common::*;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tanks_operator::api::{Edge, GameFleet, Match, RedisBackup};

/// `(kind, field path, message)` of every CEL rule in the CRDs.
fn rules_in_crds() -> BTreeSet<(String, String, String)> {
    fn walk(kind: &str, path: &str, schema: &Value, out: &mut BTreeSet<(String, String, String)>) {
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let message = rule["message"]
                .as_str()
                .unwrap_or_else(|| panic!("a rule at {path} without a message: {rule}"));
            out.insert((kind.into(), path.into(), message.into()));
        }
        for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
            let sub_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk(kind, &sub_path, sub, out);
        }
        if let Some(items) = schema.get("items") {
            walk(kind, &format!("{path}[*]"), items, out);
        }
    }
    let mut out = BTreeSet::new();
    for (_, crd) in tanks_operator::api::crds() {
        let crd = serde_json::to_value(crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            walk(&kind, "", &version["schema"]["openAPIV3Schema"], &mut out);
        }
    }
    out
}

enum Violation {
    /// Create this object (dry run).
    Create(Value),
    /// Merge-patch this into the valid object of the kind (dry run).
    Update(Value),
}

struct Case {
    kind: &'static str,
    field: &'static str,
    message: &'static str,
    violation: Violation,
}

fn valid_match(name: &str) -> Value {
    json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Match",
        "metadata": {"name": name},
        "spec": {"fleet": "arena", "sourceEventId": "ev-1", "players": ["a", "b"]},
    })
}

fn valid_backup(name: &str) -> Value {
    json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "RedisBackup",
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 3 * * *",
            "retention": 7,
            "volumeClaim": "redis-backups",
            "redis": {"host": "redis"},
        },
    })
}

fn valid_edge(name: &str) -> Value {
    json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Edge",
        "metadata": {"name": name},
        "spec": {
            "publicAddress": "play.example.com",
            "auth": {"service": "authserver"},
            "fleets": ["arena"],
        },
    })
}

fn cases() -> Vec<Case> {
    use Violation::*;
    let f = |pointer: &str, value: Value| Create(fleet("bad", "x").set(pointer, value).0);
    let b = |pointer: &str, value: Value| {
        let mut obj = valid_backup("bad");
        *obj.pointer_mut(pointer)
            .expect("a field of the valid backup") = value;
        Create(obj)
    };
    let e = |pointer: &str, value: Value| {
        let mut obj = valid_edge("bad");
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        obj.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("an object of the valid edge")
            .insert(key.into(), value);
        Create(obj)
    };
    let case = |kind, field, message, violation| Case {
        kind,
        field,
        message,
        violation,
    };
    vec![
        case(
            "GameFleet",
            "spec",
            "scaling.minReplicas must not exceed scaling.maxReplicas",
            Create(fleet("bad", "x").min(5).max(2).0),
        ),
        case(
            "GameFleet",
            "spec",
            "replicas must not exceed scaling.maxReplicas",
            Create(fleet("bad", "x").max(2).replicas(3).0),
        ),
        case(
            "GameFleet",
            "spec",
            "scaling.buffer.slots must fit in maxReplicas * capacity.sessionsPerServer",
            // 2 servers of 2 sessions: 5 free slots cannot exist.
            Create(fleet("bad", "x").max(2).buffer_slots(5).0),
        ),
        case(
            "GameFleet",
            "spec",
            "scaling.scaleToZero needs scaling.minReplicas 0",
            Create(
                fleet("bad", "x")
                    .min(1)
                    .set("/spec/scaling/scaleToZero", json!(true))
                    .0,
            ),
        ),
        case(
            "GameFleet",
            "spec.scaling.buffer",
            "scaling.buffer needs exactly one of slots or percent",
            f("/spec/scaling/buffer", json!({"slots": 1, "percent": 10})),
        ),
        case(
            "GameFleet",
            "spec.rollingUpdate",
            "rollingUpdate.maxSurge and rollingUpdate.maxUnavailable must not both be zero",
            f(
                "/spec/rollingUpdate",
                json!({"maxSurge": 0, "maxUnavailable": "0%"}),
            ),
        ),
        case(
            "GameFleet",
            "spec.rollingUpdate.maxSurge",
            "must be a non-negative count or a percentage such as 25%",
            f(
                "/spec/rollingUpdate",
                json!({"maxSurge": "lots", "maxUnavailable": 0}),
            ),
        ),
        case(
            "GameFleet",
            "spec.rollingUpdate.maxUnavailable",
            "must be a non-negative count or a percentage such as 25%",
            f(
                "/spec/rollingUpdate",
                json!({"maxSurge": 1, "maxUnavailable": -1}),
            ),
        ),
        case(
            "GameFleet",
            "spec.ports",
            "ports.port is required with policy Static",
            f("/spec/ports", json!({"policy": "Static"})),
        ),
        case(
            "GameFleet",
            "spec.ports",
            "ports.rangeStart must not exceed ports.rangeEnd",
            f(
                "/spec/ports",
                json!({"policy": "Dynamic", "rangeStart": 9000, "rangeEnd": 8000}),
            ),
        ),
        case(
            "GameFleet",
            "spec.ports",
            "ports.policy is immutable: Matches hold endpoints of the old kind",
            Update(json!({"spec": {"ports": {"policy": "PodIp"}}})),
        ),
        case(
            "Match",
            "spec",
            "Match spec is immutable",
            Update(json!({"spec": {"players": ["a", "b", "c"]}})),
        ),
        case(
            "RedisBackup",
            "spec.retention",
            "retention must be at least 1: a backup job must never delete every backup",
            b("/spec/retention", json!(0)),
        ),
        case(
            "RedisBackup",
            "spec.schedule",
            "schedule must be five cron fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly",
            b("/spec/schedule", json!("every day")),
        ),
        case(
            "Edge",
            "spec",
            "auth.listenPort must lie outside ports.rangeStart..ports.rangeEnd",
            e(
                "/spec/auth",
                json!({"service": "authserver", "listenPort": 20001}),
            ),
        ),
        case(
            "Edge",
            "spec",
            "an edge needs auth or at least one fleet",
            Create({
                let mut obj = valid_edge("bad");
                obj["spec"] = json!({"publicAddress": "play.example.com", "fleets": []});
                obj
            }),
        ),
        case(
            "Edge",
            "spec.publicAddress",
            "publicAddress must be an IP address or a lowercase DNS name",
            e("/spec/publicAddress", json!("Play Example")),
        ),
        case(
            "Edge",
            "spec.auth.service",
            "auth.service must be a Service name (a lowercase DNS label starting with a letter)",
            e("/spec/auth", json!({"service": "Auth.Server"})),
        ),
        case(
            "Edge",
            "spec.fleets",
            "each fleet must be a GameFleet name (a lowercase DNS label)",
            e("/spec/fleets", json!(["arena", "Duel_1"])),
        ),
        case(
            "Edge",
            "spec.ports",
            "ports.rangeStart must not exceed ports.rangeEnd",
            e(
                "/spec/ports",
                json!({"rangeStart": 21000, "rangeEnd": 20000}),
            ),
        ),
        case(
            "Edge",
            "spec.access.allow",
            "each entry must be an IP address or CIDR range such as 203.0.113.0/24",
            e("/spec/access", json!({"allow": ["10.0.0.0/8", "everyone"]})),
        ),
        case(
            "Edge",
            "spec.access.deny",
            "each entry must be an IP address or CIDR range such as 203.0.113.0/24",
            e("/spec/access", json!({"deny": ["10.0.0.0/40"]})),
        ),
    ]
}

fn expect_422(result: Result<DynamicObject, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{what}: {status:?}");
            status.message
        }
        Err(other) => panic!("{what}: unexpected error {other}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cel_rule_rejects_its_violation_with_its_message() {
    let env = TestEnv::new("op-cel", 0, 0).await;
    let api = |kind: &str| -> Api<DynamicObject> {
        let resource = match kind {
            "GameFleet" => ApiResource::erase::<GameFleet>(&()),
            "Match" => ApiResource::erase::<Match>(&()),
            "RedisBackup" => ApiResource::erase::<RedisBackup>(&()),
            "Edge" => ApiResource::erase::<Edge>(&()),
            other => panic!("no CRD of kind {other}"),
        };
        Api::namespaced_with(env.client.clone(), &env.ns, &resource)
    };
    let dry_create = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_patch = PatchParams {
        dry_run: true,
        ..Default::default()
    };

    // The table covers every rule of the CRDs, and only rules that exist.
    let cases = cases();
    let in_table: BTreeSet<(String, String, String)> = cases
        .iter()
        .map(|c| (c.kind.into(), c.field.into(), c.message.into()))
        .collect();
    assert_eq!(in_table.len(), cases.len(), "a rule listed twice");
    assert_eq!(
        in_table,
        rules_in_crds(),
        "the table and the CRDs' CEL rules differ"
    );

    // Valid objects are accepted; these two are the base of the transition rules.
    let valid = |kind: &str| match kind {
        "GameFleet" => fleet("ok", "x").0,
        "RedisBackup" => valid_backup("ok"),
        "Edge" => valid_edge("ok"),
        _ => valid_match("ok"),
    };
    for kind in ["GameFleet", "Match", "RedisBackup", "Edge"] {
        let obj: DynamicObject = serde_json::from_value(valid(kind)).unwrap();
        api(kind)
            .create(&dry_create, &obj)
            .await
            .unwrap_or_else(|e| panic!("a valid {kind} refused in a dry run: {e}"));
        api(kind)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("a valid {kind} refused: {e}"));
    }

    let all_messages: Vec<&str> = cases.iter().map(|c| c.message).collect();
    for case in &cases {
        let what = format!("{} {}: {:?}", case.kind, case.field, case.message);
        let text = match &case.violation {
            Violation::Create(obj) => {
                let obj: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
                expect_422(api(case.kind).create(&dry_create, &obj).await, &what)
            }
            Violation::Update(patch) => expect_422(
                api(case.kind)
                    .patch("ok", &dry_patch, &Patch::Merge(patch))
                    .await,
                &what,
            ),
        };
        assert!(
            text.contains(&format!("{}: ", case.field)) && text.contains(case.message),
            "{what}: expected the field and the message in {text:?}"
        );
        // Exactly this rule is broken: no other rule's message, and this one once.
        for other in &all_messages {
            let expected = usize::from(*other == case.message);
            assert_eq!(
                text.matches(other).count(),
                expected,
                "{what}: {other:?} in {text:?}"
            );
        }
    }

    // Schema bounds and enums (OpenAPI, not CEL) are refused too.
    let schema_cases = [
        (
            fleet("bad", "x").set("/spec/scaling/maxReplicas", json!(100000)),
            "spec.scaling.maxReplicas",
        ),
        (
            fleet("bad", "x").set("/spec/scheduling", json!("Random")),
            "Unsupported value",
        ),
    ];
    for (builder, expected) in schema_cases {
        let obj: DynamicObject = serde_json::from_value(builder.0).unwrap();
        let text = expect_422(api("GameFleet").create(&dry_create, &obj).await, expected);
        assert!(text.contains(expected), "expected {expected:?} in {text}");
    }

    // Nothing above was stored: the dry runs left the valid objects as they were.
    for kind in ["GameFleet", "Match", "RedisBackup", "Edge"] {
        let names: Vec<String> = api(kind)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect();
        assert_eq!(names, ["ok"], "{kind}");
    }
    let ok = api("Match").get("ok").await.unwrap();
    assert_eq!(ok.data["spec"]["players"], json!(["a", "b"]));
    env.cleanup().await;
}
