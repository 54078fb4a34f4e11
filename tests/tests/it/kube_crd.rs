//! Proof that kube-rs works against the real kube-apiserver of `hack/devenv`: a CRD
//! from Rust types is applied, its CEL rule rejects a bad object, and an object is
//! created, watched and deleted.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, conditions, wait::await_condition, watcher};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "probe.tanks.dev", version = "v1", kind = "Probe", namespaced)]
#[kube(validation = "self.spec.low <= self.spec.high")]
pub struct ProbeSpec {
    low: i32,
    high: i32,
}

#[tokio::test]
async fn crd_applied_object_created_watched_and_deleted() {
    let client = tanks_testkit::require_kube_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply("tanks-tests").force();
    crds.patch(Probe::crd_name(), &ssa, &Patch::Apply(Probe::crd()))
        .await
        .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(crds, Probe::crd_name(), conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .expect("watch");

    let ns_name = tanks_testkit::namespace::create(&client, "probe")
        .await
        .expect("namespace");

    let probes: Api<Probe> = Api::namespaced(client.clone(), &ns_name);
    let bad = Probe::new("bad", ProbeSpec { low: 5, high: 1 });
    let err = probes
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("CEL rejects low > high");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("self.spec.low <= self.spec.high"),
                "{}",
                status.message
            );
        }
        other => panic!("unexpected error {other}"),
    }

    let watch = watcher(probes.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);
    let created = probes
        .create(
            &PostParams::default(),
            &Probe::new("good", ProbeSpec { low: 1, high: 5 }),
        )
        .await
        .expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    let seen = tokio::time::timeout(Duration::from_secs(10), watch.try_next())
        .await
        .expect("watch event in time")
        .expect("watch ok")
        .expect("an object");
    assert_eq!(seen.metadata.name.as_deref(), Some("good"));
    assert_eq!(seen.spec.high, 5);

    probes
        .delete("good", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(probes.clone(), "good", conditions::is_deleted(&uid)),
    )
    .await;
    assert!(gone.is_ok(), "object deleted in time");
    assert!(probes.get_opt("good").await.expect("get").is_none());
    tanks_testkit::namespace::delete(&client, &ns_name).await;
}
