//! The custom resources, as Rust types. `crdgen` writes their CRDs to `crds/`.
//!
//! Issue 7 adds `Match` here: same group and version, same rules.

pub mod gamefleet;
pub mod labels;
pub mod schema;

pub use gamefleet::{GameFleet, GameFleetSpec, GameFleetStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every resource here.
pub const GROUP: &str = "tanks.dev";

/// Every CRD, with the file name `crdgen` writes it to.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![("gamefleet.yaml", GameFleet::crd())]
}
