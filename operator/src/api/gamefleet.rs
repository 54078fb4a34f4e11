//! `GameFleet`: a fleet of game-server pods that scales on player load.
//!
//! The schema is generated from these types (`crdgen`); the invariants that span fields
//! are CEL rules, so the API server rejects a bad fleet before the operator sees it.
// Every `printcolumn(..)` repeats `type_ = "integer"`: that is the macro's syntax.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A fleet of game servers. The operator owns its pods directly (no ReplicaSet in
/// between) so that it alone decides which server goes: never one with a live session.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tanks.dev",
    version = "v1alpha1",
    kind = "GameFleet",
    plural = "gamefleets",
    namespaced,
    status = "GameFleetStatus",
    derive = "PartialEq",
    shortname = "gf",
    shortname = "fleet",
    category = "tanks",
    doc = "A fleet of game-server pods that scales on player load.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Allocated",
        type_ = "integer",
        json_path = ".status.allocatedReplicas"
    ),
    printcolumn(name = "Players", type_ = "integer", json_path = ".status.players"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.desiredReason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.scaling.minReplicas <= self.scaling.maxReplicas")
        .message("scaling.minReplicas must not exceed scaling.maxReplicas"),
    validation = Rule::new("!has(self.replicas) || self.replicas <= self.scaling.maxReplicas")
        .message("replicas must not exceed scaling.maxReplicas"),
    validation = Rule::new(
        "!has(self.scaling.buffer.slots) || self.scaling.buffer.slots <= self.scaling.maxReplicas * self.capacity.sessionsPerServer"
    )
    .message("scaling.buffer.slots must fit in maxReplicas * capacity.sessionsPerServer"),
    validation = Rule::new("!self.scaling.scaleToZero || self.scaling.minReplicas == 0")
        .message("scaling.scaleToZero needs scaling.minReplicas 0"),
)]
#[serde(rename_all = "camelCase")]
pub struct GameFleetSpec {
    /// Replicas asked for by `kubectl scale` or an HPA (the scale subresource). A floor:
    /// the buffer policy may run more servers when players need them, never fewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// The game-server pod. The operator adds the fleet labels, the game port and the
    /// `TANKS_*` environment (see docs/operator.md). Its schema is kept open here: the
    /// API server validates it when the pods are created, and a failure shows as an
    /// Event and the `ReplicaFailure` condition.
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub template: PodTemplateSpec,

    pub capacity: Capacity,

    pub scaling: ScalingPolicy,

    #[serde(default)]
    pub scheduling: Scheduling,

    #[serde(default)]
    pub rolling_update: RollingUpdate,

    #[serde(default)]
    pub ports: PortPolicy,

    #[serde(default)]
    pub health: HealthPolicy,
}

/// What one game server holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Sessions (matches) one server hosts at once.
    #[schemars(range(min = 1, max = 1000))]
    pub sessions_per_server: i32,
    /// Players in one session.
    #[schemars(range(min = 1, max = 1000))]
    pub players_per_session: i32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    #[schemars(range(min = 0, max = 10000))]
    pub max_replicas: i32,
    /// Free session slots kept ready for new matches.
    #[serde(default)]
    pub buffer: Buffer,
    /// How long the load must stay low before empty servers are removed (the largest
    /// recommendation inside this window wins, so a steady load never oscillates).
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: i32,
    /// Let an idle fleet (no session for `scaleDownDelaySeconds`) go to zero servers,
    /// ignoring the buffer until demand returns.
    #[serde(default)]
    pub scale_to_zero: bool,
}

fn default_scale_down_delay() -> i32 {
    60
}

/// Exactly one of `slots` or `percent`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.slots) != has(self.percent)")
        .message("scaling.buffer needs exactly one of slots or percent")
)]
pub struct Buffer {
    /// Absolute number of free session slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub slots: Option<i32>,
    /// Free slots as a share of the fleet's capacity, 0 to 90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 90))]
    pub percent: Option<i32>,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            slots: Some(0),
            percent: None,
        }
    }
}

/// Where new servers go, and which empty server goes first on scale-down.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Scheduling {
    /// Fill nodes (pod affinity to the fleet), remove servers from the emptiest nodes
    /// first, so a cluster autoscaler can drop whole nodes.
    #[default]
    Packed,
    /// Spread servers over nodes; remove from the fullest nodes first.
    Distributed,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!((self.maxSurge == 0 || self.maxSurge == '0%') && (self.maxUnavailable == 0 || self.maxUnavailable == '0%'))"
    )
    .message("rollingUpdate.maxSurge and rollingUpdate.maxUnavailable must not both be zero")
)]
pub struct RollingUpdate {
    /// Servers above the target during an update: a count or a percentage (rounded up).
    #[serde(default = "default_surge")]
    #[schemars(schema_with = "crate::api::schema::count_or_percent")]
    pub max_surge: IntOrString,
    /// Ready servers that may be missing during an update (rounded down).
    #[serde(default = "default_unavailable")]
    #[schemars(schema_with = "crate::api::schema::count_or_percent")]
    pub max_unavailable: IntOrString,
}

fn default_surge() -> IntOrString {
    IntOrString::String("25%".into())
}

fn default_unavailable() -> IntOrString {
    IntOrString::String("25%".into())
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate {
            max_surge: default_surge(),
            max_unavailable: default_unavailable(),
        }
    }
}

/// How players reach a server's UDP game port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.policy != 'Static' || has(self.port)")
        .message("ports.port is required with policy Static"),
    validation = Rule::new("self.rangeStart <= self.rangeEnd")
        .message("ports.rangeStart must not exceed ports.rangeEnd"),
    validation = Rule::new("self.policy == oldSelf.policy")
        .message("ports.policy is immutable: Matches hold endpoints of the old kind"),
)]
pub struct PortPolicy {
    #[serde(default)]
    pub policy: PortKind,
    /// The container that gets the port (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The port for `Static` (host and container), or the container port for `PodIp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Host ports for `Dynamic`, inclusive.
    #[serde(default = "default_range_start")]
    #[schemars(range(min = 1024, max = 65535))]
    pub range_start: i32,
    #[serde(default = "default_range_end")]
    #[schemars(range(min = 1024, max = 65535))]
    pub range_end: i32,
}

fn default_range_start() -> i32 {
    7000
}

fn default_range_end() -> i32 {
    8999
}

impl Default for PortPolicy {
    fn default() -> Self {
        PortPolicy {
            policy: PortKind::Dynamic,
            container: None,
            port: None,
            range_start: default_range_start(),
            range_end: default_range_end(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PortKind {
    /// A host port from the range, unique per node, chosen by the operator; the game
    /// server listens on the same port number (passthrough).
    #[default]
    Dynamic,
    /// The same host port on every server: at most one server per node.
    Static,
    /// No host port: players reach the pod IP (flat networks, or behind the edge).
    PodIp,
}

/// When a server that does not answer its control interface is replaced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthPolicy {
    /// A running server that has never reported load after this long is replaced.
    #[serde(default = "default_startup_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub startup_timeout_seconds: i32,
    /// A server whose reports stop for this long counts as lost: it is replaced, and
    /// deleted once its last report showed no session.
    #[serde(default = "default_unresponsive")]
    #[schemars(range(min = 1, max = 86400))]
    pub unresponsive_seconds: i32,
}

fn default_startup_timeout() -> i32 {
    300
}

fn default_unresponsive() -> i32 {
    30
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            startup_timeout_seconds: default_startup_timeout(),
            unresponsive_seconds: default_unresponsive(),
        }
    }
}

/// What the operator last saw of the fleet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameFleetStatus {
    /// Servers that exist and are not terminating.
    #[serde(default)]
    pub replicas: i32,
    /// Servers that report ready and accept sessions.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Servers hosting at least one session.
    #[serde(default)]
    pub allocated_replicas: i32,
    /// Servers told to accept no new session (rolling update, scale-down).
    #[serde(default)]
    pub draining_replicas: i32,
    /// Servers running the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub players: i64,
    #[serde(default)]
    pub sessions: i64,
    /// Session slots on ready, non-draining servers.
    #[serde(default)]
    pub capacity: i64,
    #[serde(default)]
    pub desired_replicas: i32,
    /// Why `desiredReplicas` is what it is, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_reason: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// The label selector of the fleet's pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
