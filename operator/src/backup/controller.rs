//! The RedisBackup controller: checks the spec, applies the CronJob (server-side, with a
//! controller reference, so it is garbage-collected with its owner), and writes the last
//! backup's time and result from the CronJob's Jobs into the status and a metric.
//!
//! A bad spec never fails the reconcile (that would retry it in a tight loop): it is
//! reported in the `Ready` condition and one Warning Event, and looked at again later.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus::{GaugeVec, Opts, Registry};
use serde_json::json;
use tracing::{info, warn};

use super::cronjob::{self, BACKUP_LABEL};
use super::history::{History, history};
use super::schedule;
use crate::api::conditions::condition;
use crate::api::{RedisBackup, RedisBackupStatus, namespaced_or_all};
use crate::error::{Error, Result};

const MANAGER: &str = "tanks-operator";
/// Without a watch on Secrets, a missing one is looked for again this often; Jobs are
/// watched, so this is also only a safety net for the status.
const RECHECK: Duration = Duration::from_secs(60);
const RESYNC: Duration = Duration::from_secs(300);

pub struct BackupMetrics {
    /// `operator_redis_backup_last_success_timestamp_seconds{namespace,name}`: alert when
    /// `time() - it` exceeds the schedule's period.
    pub last_success: GaugeVec,
    /// 1 when the newest finished backup Job succeeded, 0 when it failed.
    pub last_ok: GaugeVec,
}

impl BackupMetrics {
    /// Registers in `registry`, unless already there (the operator run twice in one
    /// process, as tests do): the registered metrics are then not updated by this one.
    pub fn new(registry: &Registry) -> Self {
        let m = BackupMetrics {
            last_success: GaugeVec::new(
                Opts::new(
                    "redis_backup_last_success_timestamp_seconds",
                    "When the newest successful Redis backup finished (Unix time)",
                ),
                &["namespace", "name"],
            )
            .expect("valid metric"),
            last_ok: GaugeVec::new(
                Opts::new(
                    "redis_backup_last_result_success",
                    "1 if the newest finished Redis backup succeeded, 0 if it failed",
                ),
                &["namespace", "name"],
            )
            .expect("valid metric"),
        };
        for c in [&m.last_success, &m.last_ok] {
            if let Err(e) = registry.register(Box::new(c.clone())) {
                warn!(error = %e, "redis backup metric not registered");
            }
        }
        m
    }
}

pub struct BackupContext {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: BackupMetrics,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    registry: Registry,
    identity: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let backups: Api<RedisBackup> = namespaced_or_all(&client, namespace.as_deref());
    let cronjobs: Api<CronJob> = namespaced_or_all(&client, namespace.as_deref());
    let jobs: Api<Job> = namespaced_or_all(&client, namespace.as_deref());
    let ctx = Arc::new(BackupContext {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(identity),
            },
        ),
        client,
        metrics: BackupMetrics::new(&registry),
    });
    info!("starting the RedisBackup controller");
    Controller::new(backups, watcher::Config::default())
        .owns(cronjobs, watcher::Config::default().labels(BACKUP_LABEL))
        // Jobs belong to the CronJob, not to us: their label names the RedisBackup.
        .watches(
            jobs,
            watcher::Config::default().labels(BACKUP_LABEL),
            |job| {
                let ns = job.namespace();
                job.labels().get(BACKUP_LABEL).map(|name| {
                    ObjectRef::<RedisBackup>::new(name).within(ns.as_deref().unwrap_or_default())
                })
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "redis backup controller");
            }
        })
        .await;
}

/// What is wrong with a spec, as a condition reason and message; None when it can run.
async fn check(
    backup: &RedisBackup,
    client: &Client,
    ns: &str,
) -> Result<Option<(&'static str, String)>> {
    if let Err(e) = schedule::validate(&backup.spec.schedule) {
        return Ok(Some((
            "InvalidSchedule",
            format!("schedule {:?}: {e}", backup.spec.schedule),
        )));
    }
    if let Err(e) = cronjob::render(backup) {
        return Ok(Some(("InvalidName", e)));
    }
    if let Some(secret) = &backup.spec.redis.password_secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let found = match secrets.get_opt(&secret.name).await {
            Ok(found) => found,
            // The shipped RBAC grants no Secret reads (least privilege): then a missing
            // Secret shows as a failed backup Job instead (its pod cannot start).
            Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match found {
            None => {
                return Ok(Some((
                    "SecretMissing",
                    format!(
                        "Secret {:?} (the Redis password) does not exist",
                        secret.name
                    ),
                )));
            }
            Some(s) => {
                let has = s.data.as_ref().is_some_and(|d| d.contains_key(&secret.key))
                    || s.string_data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&secret.key));
                if !has {
                    return Ok(Some((
                        "SecretKeyMissing",
                        format!("Secret {:?} has no key {:?}", secret.name, secret.key),
                    )));
                }
            }
        }
    }
    Ok(None)
}

pub async fn reconcile(backup: Arc<RedisBackup>, ctx: Arc<BackupContext>) -> Result<Action> {
    let ns = backup
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a RedisBackup is namespaced".into()))?;
    let name = backup.name_any();
    let previous = backup.status.clone().unwrap_or_default();
    let generation = backup.meta().generation;

    let mut problem = check(&backup, &ctx.client, &ns).await?;
    let mut cron_job = previous.cron_job.clone();
    if problem.is_none() {
        let cj = cronjob::render(&backup).map_err(Error::InvalidSpec)?;
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cj),
            )
            .await
        {
            Ok(_) => cron_job = Some(name.clone()),
            // The API server's own validation (a time zone it does not know, say): a
            // spec problem, not a reason to retry at once.
            Err(kube::Error::Api(e)) if e.code == 422 => {
                problem = Some(("CronJobRejected", e.message));
            }
            Err(e) => return Err(e.into()),
        }
    }

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = jobs
        .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={name}")))
        .await?;
    let h = history(&listed.items);
    record_metrics(&ctx.metrics, &ns, &name, &h);

    let ready = match &problem {
        None => condition(
            &previous.conditions,
            "Ready",
            true,
            "CronJobApplied",
            format!("CronJob {name} runs {:?}", backup.spec.schedule),
            generation,
        ),
        Some((reason, msg)) => condition(
            &previous.conditions,
            "Ready",
            false,
            reason,
            msg.clone(),
            generation,
        ),
    };
    let mut conditions = vec![ready.clone()];
    if let Some(last) = &h.last {
        conditions.push(condition(
            &previous.conditions,
            "LastBackupSucceeded",
            last.succeeded,
            if last.succeeded {
                "JobComplete"
            } else {
                "JobFailed"
            },
            format!("Job {}", last.job),
            generation,
        ));
    }
    let status = RedisBackupStatus {
        cron_job,
        last_backup_time: h.last.as_ref().map(|l| l.finished.clone()),
        last_result: h
            .last
            .as_ref()
            .map(|l| if l.succeeded { "Succeeded" } else { "Failed" }.to_owned()),
        last_job: h.last.as_ref().map(|l| l.job.clone()),
        last_success_time: h
            .last_success
            .as_ref()
            .map(|l| l.finished.clone())
            .or(previous.last_success_time.clone()),
        observed_generation: generation,
        conditions,
    };

    // Events only on a change, so a bad spec looked at every minute is one Event.
    let was = previous.conditions.iter().find(|c| c.type_ == "Ready");
    if was.is_none_or(|c: &Condition| c.status != ready.status || c.reason != ready.reason) {
        let warning = problem.is_some();
        publish(&ctx, &backup, warning, &ready.reason, &ready.message).await;
    }
    if let Some(last) = &h.last
        && !last.succeeded
        && previous.last_job.as_deref() != Some(last.job.as_str())
    {
        publish(
            &ctx,
            &backup,
            true,
            "BackupFailed",
            &format!("Job {} failed: see kubectl logs job/{}", last.job, last.job),
        )
        .await;
    }

    if status != previous {
        let api: Api<RedisBackup> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({
            "apiVersion": "tanks.dev/v1alpha1",
            "kind": "RedisBackup",
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(if problem.is_some() {
        RECHECK
    } else {
        RESYNC
    }))
}

fn record_metrics(m: &BackupMetrics, ns: &str, name: &str, h: &History) {
    if let Some(s) = &h.last_success {
        m.last_success
            .with_label_values(&[ns, name])
            .set(s.finished.0.as_millisecond() as f64 / 1000.0);
    }
    if let Some(l) = &h.last {
        m.last_ok
            .with_label_values(&[ns, name])
            .set(if l.succeeded { 1.0 } else { 0.0 });
    }
}

async fn publish(
    ctx: &BackupContext,
    backup: &RedisBackup,
    warning: bool,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &backup.object_ref(&())).await {
        warn!(error = %e, reason, "publishing event");
    }
}

pub fn error_policy(backup: Arc<RedisBackup>, error: &Error, _ctx: Arc<BackupContext>) -> Action {
    warn!(backup = %backup.name_any(), kind = error.kind(), %error, "redis backup reconcile failed");
    Action::requeue(Duration::from_secs(10))
}
