//! Label and annotation keys the operator writes and selects on.

/// The fleet a pod belongs to. Present on every pod the operator owns.
pub const FLEET: &str = "tanks.dev/fleet";
/// Hash of the fleet's pod template the pod was made from (rolling updates).
pub const TEMPLATE_HASH: &str = "tanks.dev/template-hash";
/// The operator replica (Lease holder identity) that created the pod.
pub const CREATED_BY: &str = "tanks.dev/created-by";
/// The host port given to the pod under the `Dynamic` port policy.
pub const GAME_PORT: &str = "tanks.dev/game-port";
/// Cluster autoscaler: `"false"` while a server hosts a session.
pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Selects every pod the operator manages.
pub const MANAGED_SELECTOR: &str = FLEET;
/// The container port name the operator adds for the game's UDP port.
pub const GAME_PORT_NAME: &str = "game";
/// The container port name of the control interface (default 8890 when absent).
pub const CONTROL_PORT_NAME: &str = "control";
