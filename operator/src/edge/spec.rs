//! The Edge spec as the plain data [`render`](super::render) and [`ports`](super::ports)
//! take. The API server has already checked ranges and CIDR syntax (CEL); this checks
//! again, since a spec written before a rule existed, or a rule the API server is too
//! old to run, must become a condition, not a broken nginx.conf.

use std::time::Duration;

use crate::api::edge::EdgeSpec;

use super::net::{BadCidr, BadUpstream, Cidr, Upstream};
use super::ports::PortPolicy;
use super::render::{Access, AuthRoute, EdgeConfig, Limits, NginxRuntime, UdpPolicy};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("access list: {0}")]
    Cidr(#[from] BadCidr),
    #[error("auth: {0}")]
    Upstream(#[from] BadUpstream),
    #[error("{field} = {value} is outside {min}..={max}")]
    Range {
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
}

/// `auth_upstreams`: the auth Service's cluster IP(s) and `spec.auth.port`, looked up by
/// the controller; ignored when the spec has no `auth`.
pub fn settings(
    spec: &EdgeSpec,
    runtime: NginxRuntime,
    auth_hosts: &[String],
) -> Result<(EdgeConfig, PortPolicy), SpecError> {
    let auth = match &spec.auth {
        None => None,
        Some(a) => Some(AuthRoute {
            listen_port: port("auth.listenPort", a.listen_port)?,
            upstreams: auth_hosts
                .iter()
                .map(|host| {
                    Upstream::new(host, port("auth.port", a.port)?).map_err(SpecError::from)
                })
                .collect::<Result<_, _>>()?,
            proxy_protocol: a.proxy_protocol,
            max_connections_per_source: count(
                "auth.maxConnectionsPerSource",
                a.max_connections_per_source,
                0,
            )?,
            connect_timeout_seconds: count(
                "auth.connectTimeoutSeconds",
                a.connect_timeout_seconds,
                1,
            )?,
            idle_timeout_seconds: count("auth.idleTimeoutSeconds", a.idle_timeout_seconds, 1)?,
        }),
    };
    let cidrs = |list: &[String]| {
        list.iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<Cidr>, _>>()
    };
    let cfg = EdgeConfig {
        runtime,
        limits: Limits {
            worker_processes: count("limits.workerProcesses", spec.limits.worker_processes, 1)?,
            worker_connections: count(
                "limits.workerConnections",
                spec.limits.worker_connections,
                1,
            )?,
        },
        access: Access {
            allow: cidrs(&spec.access.allow)?,
            deny: cidrs(&spec.access.deny)?,
        },
        auth,
        udp: UdpPolicy {
            idle_timeout_seconds: count(
                "udp.idleTimeoutSeconds",
                spec.udp.idle_timeout_seconds,
                1,
            )?,
            proxy_responses: spec
                .udp
                .proxy_responses
                .map(|n| count("udp.proxyResponses", n, 0))
                .transpose()?,
            max_sessions_per_source: count(
                "udp.maxSessionsPerSource",
                spec.udp.max_sessions_per_source,
                0,
            )?,
            proxy_protocol: spec.udp.proxy_protocol,
        },
        game: Vec::new(),
    };
    let policy = PortPolicy {
        start: port("ports.rangeStart", spec.ports.range_start)?,
        end: port("ports.rangeEnd", spec.ports.range_end)?,
        quarantine: Duration::from_secs(u64::from(count(
            "ports.quarantineSeconds",
            spec.ports.quarantine_seconds,
            0,
        )?)),
    };
    Ok((cfg, policy))
}

fn port(field: &'static str, value: i32) -> Result<u16, SpecError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(SpecError::Range {
            field,
            value: value.into(),
            min: 1,
            max: 65535,
        })
}

fn count(field: &'static str, value: i32, min: i32) -> Result<u32, SpecError> {
    if value < min {
        return Err(SpecError::Range {
            field,
            value: value.into(),
            min: min.into(),
            max: i32::MAX.into(),
        });
    }
    Ok(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::edge::{EdgeAccess, EdgeAuth, EdgeLimits, EdgePorts, EdgeUdp};

    fn spec() -> EdgeSpec {
        EdgeSpec {
            public_address: "play.example.com".into(),
            auth: Some(
                serde_json::from_value::<EdgeAuth>(serde_json::json!({"service": "auth"})).unwrap(),
            ),
            fleets: vec!["arena".into()],
            ports: EdgePorts::default(),
            udp: EdgeUdp::default(),
            limits: EdgeLimits::default(),
            access: EdgeAccess::default(),
        }
    }

    #[test]
    fn defaults_become_settings() {
        let (cfg, policy) =
            settings(&spec(), NginxRuntime::default(), &["10.96.0.20".into()]).unwrap();
        let auth = cfg.auth.unwrap();
        assert_eq!(auth.listen_port, 8888);
        assert_eq!(auth.upstreams[0].to_string(), "10.96.0.20:8888");
        assert!(auth.proxy_protocol);
        assert_eq!(
            (
                auth.max_connections_per_source,
                auth.connect_timeout_seconds,
                auth.idle_timeout_seconds
            ),
            (16, 5, 300)
        );
        assert_eq!(
            cfg.udp,
            UdpPolicy {
                idle_timeout_seconds: 30,
                proxy_responses: None,
                max_sessions_per_source: 8,
                proxy_protocol: false
            }
        );
        assert_eq!(
            cfg.limits,
            Limits {
                worker_processes: 1,
                worker_connections: 8192
            }
        );
        assert_eq!(
            (policy.start, policy.end, policy.quarantine),
            (20000, 20999, Duration::from_secs(300))
        );
    }

    #[test]
    fn what_cel_should_have_refused_is_an_error() {
        type Mutate = Box<dyn Fn(&mut EdgeSpec)>;
        let cases: Vec<(&str, Mutate)> = vec![
            (
                "bad cidr",
                Box::new(|s| s.access.deny = vec!["10.0.0.0/40".into()]),
            ),
            ("port 0", Box::new(|s| s.ports.range_start = 0)),
            ("port too high", Box::new(|s| s.ports.range_end = 70000)),
            (
                "negative quarantine",
                Box::new(|s| s.ports.quarantine_seconds = -1),
            ),
            ("no workers", Box::new(|s| s.limits.worker_processes = 0)),
            (
                "negative responses",
                Box::new(|s| s.udp.proxy_responses = Some(-1)),
            ),
        ];
        for (name, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(
                settings(&s, NginxRuntime::default(), &["10.96.0.20".into()]).is_err(),
                "{name}"
            );
        }
        assert!(settings(&spec(), NginxRuntime::default(), &["not a host".into()]).is_err());
    }
}
