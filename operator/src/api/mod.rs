//! The custom resources, as Rust types. `crdgen` writes their CRDs to `crds/`.

pub mod backup;
pub mod conditions;
pub mod edge;
pub mod gamefleet;
pub mod labels;
pub mod matches;
pub mod schema;

pub use backup::{RedisBackup, RedisBackupSpec, RedisBackupStatus};
pub use edge::{Edge, EdgeSpec, EdgeStatus};
pub use gamefleet::{GameFleet, GameFleetSpec, GameFleetStatus};
pub use matches::{Match, MatchPhase, MatchSpec, MatchStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt, Resource};

/// The API group of every resource here.
pub const GROUP: &str = "tanks.dev";

/// Every CRD, with the file name `crdgen` writes it to.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("edge.yaml", Edge::crd()),
        ("gamefleet.yaml", GameFleet::crd()),
        ("match.yaml", Match::crd()),
        ("redisbackup.yaml", RedisBackup::crd()),
    ]
}

/// An `Api` over one namespace, or over all of them when none is given: what each
/// watch uses, as the operator watches one namespace (`--namespace`) or the cluster.
pub fn namespaced_or_all<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
