//! `Match`: one match, from a matchmaking event to a game server's endpoint.
//!
//! Created by the matchmaking consumer (named from the event id), allocated by the Match
//! reconciler, finished when the game server reports the session ended, deleted after a
//! TTL. The spec is what the matchmaker asked for and never changes (a CEL rule).
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One match of the game: which fleet it runs on, who plays, and where.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tanks.dev",
    version = "v1alpha1",
    kind = "Match",
    plural = "matches",
    singular = "match",
    namespaced,
    status = "MatchStatus",
    derive = "PartialEq",
    shortname = "tm",
    category = "tanks",
    doc = "One match: allocated onto a game server of a GameFleet, with the endpoint clients join.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Fleet", type_ = "string", json_path = ".spec.fleet"),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.endpoint.address"
    ),
    printcolumn(name = "Port", type_ = "integer", json_path = ".status.endpoint.port"),
    printcolumn(
        name = "Server",
        type_ = "string",
        json_path = ".status.gameServer",
        priority = "1"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("Match spec is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct MatchSpec {
    /// The GameFleet (same namespace) whose servers may host the match.
    #[schemars(length(min = 1, max = 253))]
    pub fleet: String,
    /// Player ids expected in the match.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub players: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub mode: Option<String>,
    /// The matchmaking event this Match was created from (its name derives from it).
    #[schemars(length(min = 1, max = 1024))]
    pub source_event_id: String,
    /// The matchmaker's own match id, when the event had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub match_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum MatchPhase {
    /// Waiting for a game server with room.
    #[default]
    Pending,
    /// A game server holds the session; `endpoint` is set.
    Allocated,
    /// Players are in.
    Running,
    /// The game server reported the session ended.
    Finished,
    /// Never allocated (timeout) or its server was lost; `reason` says which.
    Failed,
}

impl MatchPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchPhase::Pending => "Pending",
            MatchPhase::Allocated => "Allocated",
            MatchPhase::Running => "Running",
            MatchPhase::Finished => "Finished",
            MatchPhase::Failed => "Failed",
        }
    }

    /// The match holds a session slot on its server.
    pub fn holds_slot(self) -> bool {
        matches!(self, MatchPhase::Allocated | MatchPhase::Running)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, MatchPhase::Finished | MatchPhase::Failed)
    }
}

/// What a client dials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchEndpoint {
    pub address: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Always `UDP` today.
    pub protocol: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchStatus {
    #[serde(default)]
    pub phase: MatchPhase,
    /// The game-server pod hosting the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<MatchEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// RFC 3339 times of the phase changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why the match is in its phase, in words (why Pending, why Failed, how it ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Match {
    pub fn phase(&self) -> MatchPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_has_status_columns_and_the_immutability_rule() {
        let crd = serde_json::to_value(Match::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "tm");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(columns.starts_with(&["Phase", "Fleet", "Address", "Port"]));
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
        let phases = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
            ["enum"];
        assert_eq!(phases.as_array().unwrap().len(), 5);
    }
}
