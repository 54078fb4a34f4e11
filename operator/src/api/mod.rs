//! The custom resources, as Rust types. `crdgen` writes their CRDs to `crds/`.

pub mod edge;
pub mod gamefleet;
pub mod labels;
pub mod matches;
pub mod schema;

pub use gamefleet::{GameFleet, GameFleetSpec, GameFleetStatus};
pub use matches::{Match, MatchPhase, MatchSpec, MatchStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every resource here.
pub const GROUP: &str = "tanks.dev";

/// Every CRD, with the file name `crdgen` writes it to.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("gamefleet.yaml", GameFleet::crd()),
        ("match.yaml", Match::crd()),
    ]
}
