//! The stable map game server → edge port.
//!
//! A player holds an endpoint `edge address:port` for the whole match, so the port a
//! server gets must never change while the server lives, whatever else scales. A port
//! whose server is gone is held back for a quarantine before another server gets it:
//! a client still sending to the old port (a late packet, a reconnect with a stale
//! endpoint) must not land in somebody else's match.
//!
//! The map is plain data with an injected clock (`now` is an argument), persisted as
//! text ([`EdgePortMap::to_text`], [`EdgePortMap::parse`]) next to the rendered config,
//! so an operator restart rebuilds it from the ConfigMap and every live server keeps
//! its port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first line of the persisted form; a new format gets a new version.
const HEADER: &str = "# tanks edge port map v1";

/// The range and quarantine the map allocates with (from the Edge spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPolicy {
    /// First port of the range, inclusive.
    pub start: u16,
    /// Last port of the range, inclusive.
    pub end: u16,
    /// How long a released port stays unused.
    pub quarantine: Duration,
}

impl PortPolicy {
    pub fn size(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            usize::from(self.end - self.start) + 1
        }
    }

    fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

/// Who holds a port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Live(String),
    /// The server that had it (so it gets it back if it reappears) and when it went.
    Quarantined {
        server: String,
        since: SystemTime,
    },
}

/// Port → holder. Ordered maps only, so every listing and the persisted text come out
/// in one order whatever the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgePortMap {
    ports: BTreeMap<u16, Holder>,
}

/// What one [`EdgePortMap::assign`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortPlan {
    /// Every live server that has a port, by server.
    pub assigned: BTreeMap<String, u16>,
    /// Live servers that got no port: the range is used up. They must not be offered to
    /// players (no endpoint) until a port frees up.
    pub unassigned: Vec<String>,
    /// Ports released by this call (their servers went away).
    pub released: Vec<u16>,
    /// Ports whose quarantine ended in this call.
    pub freed: Vec<u16>,
    /// When the next quarantined port becomes free: when the controller should look
    /// again even if nothing else changes.
    pub next_release: Option<SystemTime>,
}

impl PortPlan {
    /// The exhaustion as an error for a condition and an Event; `None` when every live
    /// server has a port.
    pub fn exhaustion(&self, policy: &PortPolicy, quarantined: usize) -> Option<PortsExhausted> {
        (!self.unassigned.is_empty()).then_some(PortsExhausted {
            waiting: self.unassigned.len(),
            start: policy.start,
            end: policy.end,
            quarantined,
            next_release: self.next_release,
        })
    }
}

/// The range cannot give every live server a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "edge port range {start}-{end} is exhausted: {waiting} server(s) have no port \
     ({quarantined} port(s) in quarantine{})",
    next_release_text(.next_release)
)]
pub struct PortsExhausted {
    pub waiting: usize,
    pub start: u16,
    pub end: u16,
    pub quarantined: usize,
    pub next_release: Option<SystemTime>,
}

/// The persisted map could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortMapError {
    #[error("edge port map: missing or unknown header (want `{HEADER}`)")]
    Header,
    #[error("edge port map line {line}: {reason}")]
    Line { line: usize, reason: String },
}

impl EdgePortMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the map up to date with the servers alive now and returns every live
    /// server's port.
    ///
    /// In order: servers no longer alive release their port into quarantine; expired
    /// quarantines free their port; a server that reappears while its old port is still
    /// quarantined gets that port back (a server briefly missing from a cache must not
    /// move); every other new server, in name order, takes the lowest free port of the
    /// range. Lowest-first keeps the used ports compact, so the edge's Service and any
    /// firewall in front expose as few ports as possible; a port out of quarantine is
    /// therefore reused before a higher, never-used one.
    ///
    /// A live server keeps its port even when the range has since shrunk past it.
    pub fn assign<'a>(
        &mut self,
        live: impl IntoIterator<Item = &'a str>,
        policy: &PortPolicy,
        now: SystemTime,
    ) -> PortPlan {
        let live: BTreeSet<&str> = live.into_iter().collect();
        let mut plan = PortPlan::default();

        // Release the ports of servers that went away.
        for (port, holder) in self.ports.iter_mut() {
            if let Holder::Live(server) = holder
                && !live.contains(server.as_str())
            {
                *holder = Holder::Quarantined {
                    server: std::mem::take(server),
                    since: now,
                };
                plan.released.push(*port);
            }
        }

        // Free expired quarantines (a clock that went backwards frees nothing early:
        // `duration_since` fails and the port stays held).
        let expired: Vec<u16> = self
            .ports
            .iter()
            .filter_map(|(port, holder)| match holder {
                Holder::Quarantined { since, .. }
                    if now
                        .duration_since(*since)
                        .is_ok_and(|held| held >= policy.quarantine) =>
                {
                    Some(*port)
                }
                _ => None,
            })
            .collect();
        for port in &expired {
            self.ports.remove(port);
        }
        plan.freed = expired;

        // Servers that already have a port, and returning servers reclaiming theirs.
        // Two passes, so a live port always wins over a quarantined one of the same server.
        let mut by_server: BTreeMap<&str, u16> = BTreeMap::new();
        for (port, holder) in &self.ports {
            if let Holder::Live(server) = holder
                && let Some(name) = live.get(server.as_str()).copied()
            {
                by_server.insert(name, *port);
            }
        }
        for (port, holder) in self.ports.iter_mut() {
            if let Holder::Quarantined { server, .. } = holder
                && let Some(name) = live.get(server.as_str()).copied()
                && !by_server.contains_key(name)
            {
                *holder = Holder::Live(name.to_owned());
                by_server.insert(name, *port);
            }
        }

        // New servers: lowest free port first.
        let mut candidates = (policy.start..=policy.end)
            .filter(|p| !self.ports.contains_key(p))
            .collect::<Vec<_>>()
            .into_iter();
        for &server in &live {
            if by_server.contains_key(server) {
                continue;
            }
            match candidates.next() {
                Some(port) => {
                    self.ports.insert(port, Holder::Live(server.to_owned()));
                    by_server.insert(server, port);
                }
                None => plan.unassigned.push(server.to_owned()),
            }
        }

        plan.assigned = by_server
            .into_iter()
            .map(|(server, port)| (server.to_owned(), port))
            .collect();
        plan.next_release = self
            .ports
            .values()
            .filter_map(|holder| match holder {
                Holder::Quarantined { since, .. } => Some(*since + policy.quarantine),
                Holder::Live(_) => None,
            })
            .min();
        plan
    }

    /// The port a server holds now, if any.
    pub fn port_of(&self, server: &str) -> Option<u16> {
        self.ports.iter().find_map(|(port, holder)| match holder {
            Holder::Live(s) if s == server => Some(*port),
            _ => None,
        })
    }

    /// Ports held by live servers, in quarantine, and free in the range (for status).
    pub fn counts(&self, policy: &PortPolicy) -> PortCounts {
        let live = self
            .ports
            .values()
            .filter(|h| matches!(h, Holder::Live(_)))
            .count();
        let quarantined = self.ports.len() - live;
        let held_in_range = self.ports.keys().filter(|p| policy.contains(**p)).count();
        PortCounts {
            live,
            quarantined,
            free: policy.size() - held_in_range,
        }
    }

    /// The persisted form: a header, then one line per held port in port order,
    /// `<port> live <server>` or `<port> quarantined <server> <unix seconds>`. Text
    /// rather than JSON so that `kubectl get cm -o yaml` is readable, and ordered so the
    /// same map always gives the same bytes (no spurious ConfigMap writes).
    pub fn to_text(&self) -> String {
        let mut out = String::from(HEADER);
        out.push('\n');
        for (port, holder) in &self.ports {
            // Writing to a String cannot fail.
            let _ = match holder {
                Holder::Live(server) => writeln!(out, "{port} live {server}"),
                Holder::Quarantined { server, since } => {
                    writeln!(out, "{port} quarantined {server} {}", unix_seconds(*since))
                }
            };
        }
        out
    }

    /// Reads back [`to_text`](Self::to_text). Strict: a port or a live server twice is
    /// an error rather than a guess, since a wrong guess would move a live player.
    pub fn parse(text: &str) -> Result<Self, PortMapError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, first)) if first.trim() == HEADER => {}
            _ => return Err(PortMapError::Header),
        }
        let mut map = EdgePortMap::new();
        let mut live_servers = BTreeSet::new();
        for (index, line) in lines {
            let line_no = index + 1;
            let bad = |reason: &str| PortMapError::Line {
                line: line_no,
                reason: reason.to_owned(),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = fields[0]
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("not a port number"))?;
            let holder = match fields.as_slice() {
                [_, "live", server] => {
                    if !live_servers.insert((*server).to_owned()) {
                        return Err(bad("server holds two ports"));
                    }
                    Holder::Live((*server).to_owned())
                }
                [_, "quarantined", server, since] => {
                    let secs: u64 = since.parse().map_err(|_| bad("not a unix time"))?;
                    Holder::Quarantined {
                        server: (*server).to_owned(),
                        since: UNIX_EPOCH + Duration::from_secs(secs),
                    }
                }
                _ => {
                    return Err(bad(
                        "want `<port> live <server>` or `<port> quarantined <server> <unix seconds>`",
                    ));
                }
            };
            if map.ports.insert(port, holder).is_some() {
                return Err(bad("port listed twice"));
            }
        }
        Ok(map)
    }
}

/// Port usage, for the Edge status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCounts {
    pub live: usize,
    pub quarantined: usize,
    pub free: usize,
}

fn next_release_text(next: &Option<SystemTime>) -> String {
    match next {
        Some(t) => format!(", the next frees at unix time {}", unix_seconds(*t)),
        None => String::new(),
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: u64 = 300;

    fn policy(start: u16, end: u16) -> PortPolicy {
        PortPolicy {
            start,
            end,
            quarantine: Duration::from_secs(Q),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn ports(plan: &PortPlan) -> Vec<(&str, u16)> {
        plan.assigned
            .iter()
            .map(|(s, p)| (s.as_str(), *p))
            .collect()
    }

    /// One step of a scenario: the live servers at a time, and what must follow.
    struct Step {
        at: u64,
        live: &'static [&'static str],
        want: &'static [(&'static str, u16)],
        unassigned: &'static [&'static str],
    }

    fn run(name: &str, range: (u16, u16), steps: &[Step]) {
        let policy = policy(range.0, range.1);
        let mut map = EdgePortMap::new();
        for (i, step) in steps.iter().enumerate() {
            let plan = map.assign(step.live.iter().copied(), &policy, at(step.at));
            assert_eq!(ports(&plan), step.want, "{name}: step {i} (t={})", step.at);
            assert_eq!(
                plan.unassigned, step.unassigned,
                "{name}: step {i} unassigned"
            );
            // Whatever happened, the persisted form reads back to the same map.
            assert_eq!(
                EdgePortMap::parse(&map.to_text()).as_ref(),
                Ok(&map),
                "{name}: step {i}"
            );
        }
    }

    #[test]
    fn scenarios() {
        run(
            "scale-up keeps the ports of existing servers",
            (20000, 20009),
            &[
                Step {
                    at: 0,
                    live: &["b", "a"],
                    want: &[("a", 20000), ("b", 20001)],
                    unassigned: &[],
                },
                Step {
                    at: 1,
                    live: &["0-first-by-name", "a", "b", "c"],
                    want: &[
                        ("0-first-by-name", 20002),
                        ("a", 20000),
                        ("b", 20001),
                        ("c", 20003),
                    ],
                    unassigned: &[],
                },
            ],
        );
        run(
            "scale-down frees a port only after the quarantine",
            (20000, 20009),
            &[
                Step {
                    at: 0,
                    live: &["a", "b", "c"],
                    want: &[("a", 20000), ("b", 20001), ("c", 20002)],
                    unassigned: &[],
                },
                // b goes; its port is held, the newcomer gets a never-used port.
                Step {
                    at: 10,
                    live: &["a", "c", "d"],
                    want: &[("a", 20000), ("c", 20002), ("d", 20003)],
                    unassigned: &[],
                },
                Step {
                    at: 10 + Q - 1,
                    live: &["a", "c", "d", "e"],
                    want: &[("a", 20000), ("c", 20002), ("d", 20003), ("e", 20004)],
                    unassigned: &[],
                },
                // Quarantine over: the lowest free port is b's old one.
                Step {
                    at: 10 + Q,
                    live: &["a", "c", "d", "e", "f"],
                    want: &[
                        ("a", 20000),
                        ("c", 20002),
                        ("d", 20003),
                        ("e", 20004),
                        ("f", 20001),
                    ],
                    unassigned: &[],
                },
            ],
        );
        run(
            "reuse order: expired ports lowest first, quarantined ones skipped",
            (20000, 20009),
            &[
                Step {
                    at: 0,
                    live: &["a", "b", "c", "d"],
                    want: &[("a", 20000), ("b", 20001), ("c", 20002), ("d", 20003)],
                    unassigned: &[],
                },
                Step {
                    at: 0,
                    live: &["a", "b", "d"],
                    want: &[("a", 20000), ("b", 20001), ("d", 20003)],
                    unassigned: &[],
                },
                Step {
                    at: 100,
                    live: &["a", "d"],
                    want: &[("a", 20000), ("d", 20003)],
                    unassigned: &[],
                },
                // 20002 is out of quarantine, 20001 not yet: 20002 first, then 20004.
                Step {
                    at: Q,
                    live: &["a", "d", "x", "y"],
                    want: &[("a", 20000), ("d", 20003), ("x", 20002), ("y", 20004)],
                    unassigned: &[],
                },
                Step {
                    at: 100 + Q,
                    live: &["a", "d", "x", "y", "z"],
                    want: &[
                        ("a", 20000),
                        ("d", 20003),
                        ("x", 20002),
                        ("y", 20004),
                        ("z", 20001),
                    ],
                    unassigned: &[],
                },
            ],
        );
        run(
            "a server that reappears within the quarantine gets its port back",
            (20000, 20009),
            &[
                Step {
                    at: 0,
                    live: &["a", "b"],
                    want: &[("a", 20000), ("b", 20001)],
                    unassigned: &[],
                },
                Step {
                    at: 5,
                    live: &["b"],
                    want: &[("b", 20001)],
                    unassigned: &[],
                },
                Step {
                    at: 6,
                    live: &["a", "b", "c"],
                    want: &[("a", 20000), ("b", 20001), ("c", 20002)],
                    unassigned: &[],
                },
            ],
        );
        run(
            "exhaustion: the rest wait, nobody moves, a port frees after the quarantine",
            (20000, 20001),
            &[
                Step {
                    at: 0,
                    live: &["a", "b", "c"],
                    want: &[("a", 20000), ("b", 20001)],
                    unassigned: &["c"],
                },
                Step {
                    at: 1,
                    live: &["b", "c"],
                    want: &[("b", 20001)],
                    unassigned: &["c"],
                },
                Step {
                    at: 1 + Q,
                    live: &["b", "c"],
                    want: &[("b", 20001), ("c", 20000)],
                    unassigned: &[],
                },
            ],
        );
        run(
            "an empty range assigns nothing and does not panic",
            (20001, 20000),
            &[Step {
                at: 0,
                live: &["a"],
                want: &[],
                unassigned: &["a"],
            }],
        );
        run(
            "the top of the u16 range does not overflow",
            (65534, 65535),
            &[Step {
                at: 0,
                live: &["a", "b", "c"],
                want: &[("a", 65534), ("b", 65535)],
                unassigned: &["c"],
            }],
        );
    }

    #[test]
    fn exhaustion_is_an_error_with_the_numbers() {
        let policy = policy(20000, 20001);
        let mut map = EdgePortMap::new();
        map.assign(["a", "b"], &policy, at(0));
        let plan = map.assign(["c", "d"], &policy, at(10));
        let counts = map.counts(&policy);
        assert_eq!(
            counts,
            PortCounts {
                live: 0,
                quarantined: 2,
                free: 0
            }
        );
        assert_eq!(plan.next_release, Some(at(10 + Q)));
        let err = plan
            .exhaustion(&policy, counts.quarantined)
            .expect("exhausted");
        assert_eq!(err.waiting, 2);
        let text = err.to_string();
        assert!(
            text.contains(
                "20000-20001 is exhausted: 2 server(s) have no port (2 port(s) in quarantine"
            ),
            "{text}"
        );
    }

    #[test]
    fn restart_recovers_ports_and_quarantine_from_the_persisted_map() {
        let policy = policy(20000, 20009);
        let mut before = EdgePortMap::new();
        before.assign(["a", "b", "c"], &policy, at(0));
        before.assign(["a", "c"], &policy, at(50));
        let saved = before.to_text();
        assert_eq!(
            saved,
            format!(
                "{HEADER}\n20000 live a\n20001 quarantined b {}\n20002 live c\n",
                1_700_000_050
            )
        );

        // A new process: same live servers plus a newcomer, before b's quarantine ends.
        let mut after = EdgePortMap::parse(&saved).expect("parse");
        let plan = after.assign(["a", "c", "d"], &policy, at(60));
        assert_eq!(ports(&plan), [("a", 20000), ("c", 20002), ("d", 20003)]);
        // After it: b's port is reused.
        let plan = after.assign(["a", "c", "d", "e"], &policy, at(50 + Q));
        assert_eq!(plan.assigned["e"], 20001);
        assert_eq!(plan.freed, [20001]);
    }

    #[test]
    fn a_clock_going_backwards_frees_nothing_early() {
        let policy = policy(20000, 20000);
        let mut map = EdgePortMap::new();
        map.assign(["a"], &policy, at(1000));
        map.assign([], &policy, at(1000));
        let plan = map.assign(["b"], &policy, at(0));
        assert_eq!(plan.unassigned, ["b"]);
    }

    #[test]
    fn a_shrunken_range_does_not_move_live_servers() {
        let mut map = EdgePortMap::new();
        map.assign(["a", "b"], &policy(20000, 20009), at(0));
        let plan = map.assign(["a", "b", "c"], &policy(20001, 20002), at(1));
        assert_eq!(ports(&plan), [("a", 20000), ("b", 20001), ("c", 20002)]);
    }

    #[test]
    fn parse_rejects_what_it_cannot_trust() {
        let cases: &[(&str, &str)] = &[
            ("no header", "20000 live a\n"),
            ("bad port", "# tanks edge port map v1\nx live a\n"),
            ("port zero", "# tanks edge port map v1\n0 live a\n"),
            (
                "port twice",
                "# tanks edge port map v1\n20000 live a\n20000 live b\n",
            ),
            (
                "server twice",
                "# tanks edge port map v1\n20000 live a\n20001 live a\n",
            ),
            (
                "bad time",
                "# tanks edge port map v1\n20000 quarantined a soon\n",
            ),
            ("bad kind", "# tanks edge port map v1\n20000 reserved a\n"),
        ];
        for (name, text) in cases {
            assert!(
                EdgePortMap::parse(text).is_err(),
                "{name}: accepted {text:?}"
            );
        }
        assert_eq!(
            EdgePortMap::parse(&format!("{HEADER}\n\n# note\n")),
            Ok(EdgePortMap::new())
        );
    }
}
