//! What a GameFleet reconcile tells afterwards: one Event per kind of decision carried
//! out, the fleet's gauges, and its status.

use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::warn;

use super::act::Outcome;
use super::{Context, status};
use crate::api::GameFleet;
use crate::domain::decision::Decision;
use crate::domain::fleet::{RemoveReason, Server};
use crate::error::Result;

/// One Event to publish about a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl Note {
    fn normal(reason: &'static str, action: &'static str, note: String) -> Self {
        Note {
            warning: false,
            reason,
            action,
            note,
        }
    }

    fn warning(reason: &'static str, action: &'static str, note: String) -> Self {
        Note {
            warning: true,
            ..Note::normal(reason, action, note)
        }
    }
}

/// The Events a reconcile's outcome deserves, in the order they are published.
pub fn notes(decision: &Decision, outcome: &Outcome, hash: &str) -> Vec<Note> {
    let Decision {
        target,
        reason,
        plan,
        ..
    } = decision;
    let mut notes = Vec::new();
    if outcome.created > 0 {
        let (why, verb) = if decision.rolling {
            ("RollingUpdate", "Rolling")
        } else {
            ("ScaledUp", "Scale")
        };
        notes.push(Note::normal(
            why,
            verb,
            format!(
                "created {} servers toward {target}: {reason}",
                outcome.created
            ),
        ));
    }
    let scale_downs = outcome.removed(RemoveReason::ScaleDown);
    if scale_downs > 0 {
        notes.push(Note::normal(
            "ScaledDown",
            "Scale",
            format!("removed {scale_downs} empty servers toward {target}: {reason}"),
        ));
    }
    let outdated = outcome.removed(RemoveReason::Outdated);
    if outdated > 0 || outcome.drained > 0 {
        notes.push(Note::normal(
            "RollingUpdate",
            "Rolling",
            format!(
                "template {hash}: removed {outdated} empty old servers, draining {} busy ones",
                outcome.drained
            ),
        ));
    }
    let replaced = outcome.removed(RemoveReason::Failed) + outcome.removed(RemoveReason::Lost);
    if replaced > 0 {
        notes.push(Note::warning(
            "ReplacedServers",
            "Replace",
            format!("replacing {replaced} failed or unresponsive servers"),
        ));
    }
    if !plan.lost_busy.is_empty() {
        notes.push(Note::warning(
            "ServersNotReporting",
            "Replace",
            format!(
                "{} busy servers stopped reporting; kept until they fail or empty: {}",
                plan.lost_busy.len(),
                plan.lost_busy.join(", ")
            ),
        ));
    }
    if let Some(e) = &outcome.create_error {
        notes.push(Note::warning("CreateFailed", "Scale", e.clone()));
    }
    notes
}

/// Publishes Events about `fleet`. A failed publish is logged, never fatal: Events are
/// for people, and the status says the same.
pub async fn publish(ctx: &Context, fleet: &GameFleet, notes: Vec<Note>) {
    let reference = fleet.object_ref(&());
    for n in notes {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.into(),
            note: Some(n.note),
            action: n.action.into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = n.reason, "publishing event");
        }
    }
}

/// Sets the fleet's gauges from `servers` (as they are after acting) and writes its
/// status when it changed.
pub async fn status(
    ctx: &Context,
    fleet: &GameFleet,
    servers: &[Server],
    decision: &Decision,
    outcome: &Outcome,
    hash: &str,
) -> Result<()> {
    let facts = status::Facts {
        servers,
        desired: decision.target,
        reason: &decision.reason,
        hash,
        scaled: outcome.scaled(),
        at_max: decision.at_max,
        create_error: outcome.create_error.as_deref(),
    };
    let st = status::compute(fleet, &facts);
    let ns = fleet.namespace().unwrap_or_default();
    let name = fleet.name_any();
    for (measure, value) in [
        ("replicas", i64::from(st.replicas)),
        ("ready", i64::from(st.ready_replicas)),
        ("allocated", i64::from(st.allocated_replicas)),
        ("draining", i64::from(st.draining_replicas)),
        ("desired", i64::from(st.desired_replicas)),
        ("players", st.players),
        ("sessions", st.sessions),
        ("capacity", st.capacity),
    ] {
        ctx.metrics.set_fleet(&ns, &name, measure, value);
    }
    let api: Api<GameFleet> = Api::namespaced(ctx.client.clone(), &ns);
    status::write(&api, fleet, st).await?;
    Ok(())
}
