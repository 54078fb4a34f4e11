//! `Edge`: one Nginx edge in front of the auth server and the game servers of one or
//! more GameFleets.
//!
//! A resource of its own rather than a section of GameFleet: one edge (one public
//! address, one port range, one nginx) serves the auth server, which belongs to no
//! fleet, and several fleets at once; its port range and quarantine must be decided in
//! one place for all of them. See docs/operator.md, "The edge".
// Every `printcolumn(..)` repeats `type_ = "integer"`: that is the macro's syntax.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tanks.dev",
    version = "v1alpha1",
    kind = "Edge",
    plural = "edges",
    namespaced,
    status = "EdgeStatus",
    derive = "PartialEq",
    shortname = "te",
    category = "tanks",
    doc = "An Nginx edge in front of the auth server and the game servers of some GameFleets.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.publicAddress"),
    printcolumn(name = "Servers", type_ = "integer", json_path = ".status.servers"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.portsFree"),
    printcolumn(
        name = "Hash",
        type_ = "string",
        json_path = ".status.configHash",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new(
        "!has(self.auth) || self.auth.listenPort < self.ports.rangeStart || self.auth.listenPort > self.ports.rangeEnd"
    )
    .message("auth.listenPort must lie outside ports.rangeStart..ports.rangeEnd"),
    validation = Rule::new("has(self.auth) || size(self.fleets) > 0")
        .message("an edge needs auth or at least one fleet"),
)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSpec {
    /// The address players are given: a DNS name or IP of the edge's Service. Match
    /// endpoints are this address and the server's edge port.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("isIP(self) || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("publicAddress must be an IP address or a lowercase DNS name"))]
    pub public_address: String,

    /// The TCP listener in front of the auth server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<EdgeAuth>,

    /// GameFleets in this namespace whose servers get an edge port each.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(f, f.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("each fleet must be a GameFleet name (a lowercase DNS label)"))]
    pub fleets: Vec<String>,

    #[serde(default)]
    pub ports: EdgePorts,

    #[serde(default)]
    pub udp: EdgeUdp,

    #[serde(default)]
    pub limits: EdgeLimits,

    #[serde(default)]
    pub access: EdgeAccess,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeAuth {
    /// The auth server's Service in this namespace; the edge sends to its cluster IP.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("auth.service must be a Service name (a lowercase DNS label starting with a letter)"))]
    pub service: String,
    /// The Service port.
    #[serde(default = "default_auth_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The edge's TCP port for logins.
    #[serde(default = "default_auth_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: i32,
    /// Send the PROXY protocol v1 header, so the auth server sees (and rate-limits) the
    /// real client address. The auth server must then expect it on every connection.
    #[serde(default = "yes")]
    pub proxy_protocol: bool,
    /// Concurrent connections from one client address; 0: unlimited.
    #[serde(default = "default_auth_conns")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_connections_per_source: i32,
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub connect_timeout_seconds: i32,
    /// A connection silent both ways this long is closed.
    #[serde(default = "default_auth_idle")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: i32,
}

fn default_auth_port() -> i32 {
    8888
}
fn yes() -> bool {
    true
}
fn default_auth_conns() -> i32 {
    16
}
fn default_connect_timeout() -> i32 {
    5
}
fn default_auth_idle() -> i32 {
    300
}

/// The edge ports game servers get, shared by every fleet of the edge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.rangeStart <= self.rangeEnd")
        .message("ports.rangeStart must not exceed ports.rangeEnd"),
)]
pub struct EdgePorts {
    /// First edge port, inclusive.
    #[serde(default = "default_range_start")]
    #[schemars(range(min = 1024, max = 65535))]
    pub range_start: i32,
    /// Last edge port, inclusive. Shrinking the range never moves a live server.
    #[serde(default = "default_range_end")]
    #[schemars(range(min = 1024, max = 65535))]
    pub range_end: i32,
    /// How long the port of a deleted server stays unused before another server gets
    /// it, so stale clients never reach somebody else's match.
    #[serde(default = "default_quarantine")]
    #[schemars(range(min = 0, max = 86400))]
    pub quarantine_seconds: i32,
}

fn default_range_start() -> i32 {
    20000
}
fn default_range_end() -> i32 {
    20999
}
fn default_quarantine() -> i32 {
    300
}

impl Default for EdgePorts {
    fn default() -> Self {
        EdgePorts {
            range_start: default_range_start(),
            range_end: default_range_end(),
            quarantine_seconds: default_quarantine(),
        }
    }
}

/// The game listeners.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeUdp {
    /// A player's UDP session ends after this long without a datagram either way.
    #[serde(default = "default_udp_idle")]
    #[schemars(range(min = 1, max = 3600))]
    pub idle_timeout_seconds: i32,
    /// Datagrams expected back per client datagram (`proxy_responses`); unset: no
    /// limit, which the game needs (the server streams state at its own rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub proxy_responses: Option<i32>,
    /// Concurrent UDP sessions from one client address over all game listeners; 0:
    /// unlimited. Players behind one NAT share an address: leave room for them.
    #[serde(default = "default_udp_sessions")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_sessions_per_source: i32,
    /// Prepend a PROXY v1 header to the first datagram of each session. Off by default:
    /// the game server must strip it (docs/operator.md).
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_udp_idle() -> i32 {
    30
}
fn default_udp_sessions() -> i32 {
    8
}

impl Default for EdgeUdp {
    fn default() -> Self {
        EdgeUdp {
            idle_timeout_seconds: default_udp_idle(),
            proxy_responses: None,
            max_sessions_per_source: default_udp_sessions(),
            proxy_protocol: false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeLimits {
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 64))]
    pub worker_processes: i32,
    /// Proxied connections per worker; each TCP connection or UDP session takes two.
    #[serde(default = "default_worker_connections")]
    #[schemars(range(min = 16, max = 1048576))]
    pub worker_connections: i32,
}

fn default_workers() -> i32 {
    1
}
fn default_worker_connections() -> i32 {
    8192
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            worker_processes: default_workers(),
            worker_connections: default_worker_connections(),
        }
    }
}

/// Source address rules for every listener: a deny wins over an allow, and a
/// non-empty allow list denies everything else.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeAccess {
    /// IP addresses or CIDR ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::edge::cidr_list")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::edge::cidr_list")]
    pub deny: Vec<String>,
}

/// A list of IPs or CIDRs, each checked by the API server (Kubernetes' CEL IP and CIDR
/// library), so a typo is refused at apply time rather than breaking the edge.
pub fn cidr_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 1000,
        "items": { "type": "string", "maxLength": 64 },
        "x-kubernetes-validations": [{
            "rule": "self.all(c, isIP(c) || isCIDR(c))",
            "message": "each entry must be an IP address or CIDR range such as 203.0.113.0/24",
        }],
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStatus {
    /// SHA-256 of the nginx.conf in the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Game servers with a listener.
    #[serde(default)]
    pub servers: i32,
    /// The edge port of every game server with a listener, by pod name: what the Match
    /// controller hands out as the endpoint's port. (The port map itself, quarantines
    /// included, is persisted in the ConfigMap next to the config.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, i32>,
    #[serde(default)]
    pub ports_in_use: i32,
    #[serde(default)]
    pub ports_quarantined: i32,
    #[serde(default)]
    pub ports_free: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `PortsExhausted`, `PortMapInvalid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
