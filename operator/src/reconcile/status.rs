//! The fleet status: computed from the classified servers, written by server-side apply
//! only when it changed.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::conditions::condition;
use crate::api::{GameFleet, GameFleetStatus, labels};
use crate::domain::fleet::{Server, ServerState};
use crate::error::Result;

/// The field manager of status writes.
pub const STATUS_MANAGER: &str = "tanks-operator-status";

pub struct Facts<'a> {
    pub servers: &'a [Server],
    pub desired: u32,
    pub reason: &'a str,
    pub hash: &'a str,
    pub scaled: bool,
    pub at_max: bool,
    pub create_error: Option<&'a str>,
}

pub fn compute(fleet: &GameFleet, f: &Facts) -> GameFleetStatus {
    let old = fleet.status.clone().unwrap_or_default();
    let live: Vec<&Server> = f
        .servers
        .iter()
        .filter(|s| !matches!(s.state, ServerState::Failed | ServerState::Terminating))
        .collect();
    let ready = live
        .iter()
        .filter(|s| s.state == ServerState::Ready)
        .count() as i32;
    let per_server = i64::from(fleet.spec.capacity.sessions_per_server);
    let updated = live.iter().filter(|s| s.current).count() as i32;
    let rolling = live.iter().any(|s| !s.current);
    let generation = fleet.metadata.generation;

    let mut conditions = Vec::new();
    let mut cond = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions.push(condition(
            &old.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
        ));
    };
    let available = ready as u32 >= f.desired;
    cond(
        "Available",
        available,
        if available {
            "EnoughReady"
        } else {
            "WaitingForServers"
        },
        format!("{ready} of {} servers ready", f.desired),
    );
    cond(
        "Progressing",
        rolling,
        if rolling { "RollingUpdate" } else { "Complete" },
        format!("{updated} of {} servers on template {}", live.len(), f.hash),
    );
    cond(
        "ScalingLimited",
        f.at_max,
        if f.at_max {
            "AtMaxReplicas"
        } else {
            "WithinLimits"
        },
        f.reason.to_owned(),
    );
    cond(
        "ReplicaFailure",
        f.create_error.is_some(),
        if f.create_error.is_some() {
            "CreateFailed"
        } else {
            "None"
        },
        f.create_error.unwrap_or_default().to_owned(),
    );

    GameFleetStatus {
        replicas: live.len() as i32,
        ready_replicas: ready,
        allocated_replicas: live.iter().filter(|s| s.sessions > 0).count() as i32,
        draining_replicas: live
            .iter()
            .filter(|s| s.state == ServerState::Draining)
            .count() as i32,
        updated_replicas: updated,
        players: live.iter().map(|s| i64::from(s.players)).sum(),
        sessions: live.iter().map(|s| i64::from(s.sessions)).sum(),
        capacity: i64::from(ready) * per_server,
        desired_replicas: f.desired as i32,
        desired_reason: Some(f.reason.to_owned()),
        last_scale_time: if f.scaled {
            Some(k8s_openapi::jiff::Timestamp::now().to_string())
        } else {
            old.last_scale_time.clone()
        },
        selector: Some(format!("{}={}", labels::FLEET, fleet.name_any())),
        template_hash: Some(f.hash.to_owned()),
        observed_generation: generation,
        conditions,
    }
}

/// Writes `status` unless it equals what the fleet already shows.
pub async fn write(
    api: &Api<GameFleet>,
    fleet: &GameFleet,
    status: GameFleetStatus,
) -> Result<bool> {
    if fleet.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let patch = json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "GameFleet",
        "status": status,
    });
    api.patch_status(
        &fleet.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(true)
}
