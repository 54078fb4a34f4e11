//! One render pass: the live servers, the port map and the settings in; the config, the
//! new port map text and every server's edge port out. This is what an Edge
//! reconcile calls; it holds no Kubernetes type so it is tested by tables.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::net::Upstream;
use super::ports::{EdgePortMap, PortPlan, PortPolicy, PortsExhausted};
use super::render::{EdgeConfig, GameRoute, RenderError, Rendered, render};

/// A game server the edge fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameServer {
    /// `namespace/pod`: the port map's key.
    pub key: String,
    /// Where its game port is reached from the edge; `None` while the pod has no
    /// address yet. Such a server still gets (and keeps) its edge port, but no listener
    /// until it has somewhere to send to.
    pub upstream: Option<Upstream>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePlan {
    pub rendered: Rendered,
    /// The port map to persist next to the config.
    pub port_map: String,
    /// Edge port of every server with a listener: a Match on one of them gets
    /// `edge address:port` as its endpoint.
    pub endpoints: BTreeMap<String, u16>,
    pub ports: PortPlan,
    /// Set when some live server got no port (a condition and an Event, not a failure
    /// of the whole render: everyone else is still served).
    pub exhausted: Option<PortsExhausted>,
}

/// `base.game` is ignored: the routes come from `servers` and the map.
pub fn plan(
    base: &EdgeConfig,
    policy: &PortPolicy,
    map: &mut EdgePortMap,
    servers: &[GameServer],
    now: SystemTime,
) -> Result<EdgePlan, RenderError> {
    let ports = map.assign(servers.iter().map(|s| s.key.as_str()), policy, now);
    let mut cfg = base.clone();
    cfg.game = servers
        .iter()
        .filter_map(|server| {
            let port = *ports.assigned.get(&server.key)?;
            let upstream = server.upstream.clone()?;
            Some(GameRoute {
                server: server.key.clone(),
                edge_port: port,
                upstream,
            })
        })
        .collect();
    let endpoints = cfg
        .game
        .iter()
        .map(|route| (route.server.clone(), route.edge_port))
        .collect();
    let rendered = render(&cfg)?;
    let exhausted = ports.exhaustion(policy, map.counts(policy).quarantined);
    Ok(EdgePlan {
        rendered,
        port_map: map.to_text(),
        endpoints,
        ports,
        exhausted,
    })
}
