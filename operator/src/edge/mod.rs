//! The Nginx edge: players' one public address in front of the auth server and every
//! game server of the fleets an [`Edge`](crate::api::edge::Edge) names.
//!
//! This module is the Kubernetes-free core, tested by tables and golden files:
//!
//! - [`ports`]: the stable map game server → edge port, with a quarantine before reuse
//!   and a text form that survives an operator restart;
//! - [`render`]: nginx.conf (`stream {}`) from plain data, byte-for-byte deterministic,
//!   with its SHA-256;
//! - [`plan`]: one pass of both, what a reconcile calls;
//! - [`spec`]: the Edge spec turned into that plain data;
//! - [`net`]: the checked address types every rendered value goes through.
//!
//! No controller is wired yet. What it must do (docs/operator.md, "The edge"):
//!
//! 1. Watch Edges, the GameFleets they name and those fleets' pods (the pod reflector
//!    the fleet controller already has), and the auth Service.
//! 2. Read the owned ConfigMap `<edge>-nginx`; rebuild the port map from its `ports`
//!    key with [`ports::EdgePortMap::parse`] (missing ConfigMap: an empty map; a map
//!    that does not parse: condition `PortMapInvalid`, keep the old config, do not
//!    re-render, since a guess could move live players).
//! 3. Call [`plan::plan`] with the live servers (pods neither terminating nor
//!    finished, keyed `namespace/pod`, upstream = node IP and host port for
//!    `Dynamic`/`Static` ports, pod IP and game port for `PodIp`) and the wall clock.
//! 4. Server-side apply the ConfigMap (`nginx.conf`, `ports`, annotation
//!    `tanks.dev/config-hash`) with a controller owner reference to the Edge, only when
//!    the hash or the port map text changed; requeue at `PortPlan::next_release`.
//! 5. Status: `configHash`, port counts, conditions `Ready`, `PortsExhausted` (with
//!    [`ports::PortsExhausted`]'s message) and an Event on each transition.
//! 6. Matches: a server with no edge port is not allocatable through the edge; the
//!    endpoint of a Match on a fronted fleet is the Edge's `publicAddress` and the
//!    server's edge port.
//!
//! The edge Deployment mounts the ConfigMap as a directory (not `subPath`, which never
//! updates) and runs a reloader beside nginx that sends `nginx -s reload` when the
//! mounted file's SHA-256 differs from the last one it loaded and `nginx -t` accepts it.

pub mod net;
pub mod plan;
pub mod ports;
pub mod render;
pub mod spec;

#[cfg(test)]
mod golden_tests;
