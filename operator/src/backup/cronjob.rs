//! The CronJob of a `RedisBackup`, rendered from its spec alone: what the controller
//! applies, and what the unit tests pin down.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use kube::Resource;
use kube::api::ObjectMeta;

use crate::api::RedisBackup;

/// On every Job and pod the CronJob makes: the RedisBackup's name, how the controller
/// finds the Jobs whose outcome goes into the status.
pub const BACKUP_LABEL: &str = "tanks.dev/redis-backup";
/// The command the container runs (backup/tanks-redis-backup, on the image's PATH).
pub const COMMAND: &str = "tanks-redis-backup";
/// Where the PVC is mounted in the backup container.
pub const MOUNT_PATH: &str = "/backups";
/// Job names are the CronJob's plus 11 characters, and must stay within 63.
pub const MAX_NAME: usize = 52;
/// The uid and gid of the `redis` user of the official image: the pod runs as it, and
/// `fsGroup` makes the volume writable for it.
const REDIS_UID: i64 = 999;

/// The CronJob for `backup`, owned by it (controller reference), named after it.
/// Errors when the name is too long for a CronJob, the one thing the CRD cannot check.
pub fn render(backup: &RedisBackup) -> Result<CronJob, String> {
    let name = backup.meta().name.clone().unwrap_or_default();
    if name.len() > MAX_NAME {
        return Err(format!(
            "the name {name:?} is {} characters; a CronJob name takes at most {MAX_NAME}",
            name.len()
        ));
    }
    let spec = &backup.spec;
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "redis-backup".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "tanks-operator".to_owned(),
        ),
        (BACKUP_LABEL.to_owned(), name.clone()),
    ]);
    let plain = |k: &str, v: String| EnvVar {
        name: k.into(),
        value: Some(v),
        ..Default::default()
    };
    let mut env = vec![
        plain("REDIS_HOST", spec.redis.host.clone()),
        plain("REDIS_PORT", spec.redis.port.to_string()),
        plain("BACKUP_DIR", MOUNT_PATH.into()),
        plain("BACKUP_RETENTION", spec.retention.to_string()),
        // One PVC may hold several Redis' backups: each prunes only its own.
        plain("BACKUP_PREFIX", name.clone()),
    ];
    if let Some(user) = &spec.redis.username {
        env.push(plain("REDIS_USERNAME", user.clone()));
    }
    if let Some(secret) = &spec.redis.password_secret {
        env.push(EnvVar {
            name: "REDIS_PASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "backup".into(),
        image: Some(spec.image.clone()),
        command: Some(vec![COMMAND.into()]),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: "backups".into(),
            mount_path: MOUNT_PATH.into(),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        // A failed backup is a failed Job, seen in the status; the next run retries.
        restart_policy: Some("Never".into()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(REDIS_UID),
            run_as_group: Some(REDIS_UID),
            fs_group: Some(REDIS_UID),
            ..Default::default()
        }),
        volumes: Some(vec![Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: spec.volume_claim.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        }]),
        automount_service_account_token: Some(false),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        ..Default::default()
    };
    let job = JobSpec {
        // One retry for a blip (a Redis failover); more would hide a real failure.
        backoff_limit: Some(1),
        active_deadline_seconds: Some(spec.active_deadline_seconds.into()),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels.clone()),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    };
    Ok(CronJob {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: backup.meta().namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: backup.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(CronJobSpec {
            schedule: spec.schedule.trim().to_owned(),
            time_zone: spec.time_zone.clone(),
            // Two snapshots at once double the load on Redis and race on pruning.
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(spec.starting_deadline_seconds.into()),
            successful_jobs_history_limit: Some(spec.successful_jobs_history_limit),
            failed_jobs_history_limit: Some(spec.failed_jobs_history_limit),
            suspend: Some(spec.suspend),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(job),
            },
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup::{RedisBackupSpec, RedisTarget, SecretKey};

    pub fn backup(name: &str) -> RedisBackup {
        let spec: RedisBackupSpec = serde_json::from_value(serde_json::json!({
            "schedule": "0 3 * * *",
            "volumeClaim": "redis-backups",
            "redis": {"host": "redis", "passwordSecret": {"name": "redis-auth"}},
        }))
        .unwrap();
        let mut b = RedisBackup::new(name, spec);
        b.metadata.namespace = Some("tanks".into());
        b.metadata.uid = Some("uid-1".into());
        b
    }

    #[test]
    fn the_defaults_render_a_safe_cronjob() {
        let cj = render(&backup("auth-redis")).unwrap();
        let json = serde_json::to_value(&cj).unwrap();
        let spec = &json["spec"];
        assert_eq!(spec["schedule"], "0 3 * * *");
        assert_eq!(spec["concurrencyPolicy"], "Forbid");
        assert_eq!(spec["startingDeadlineSeconds"], 600);
        assert_eq!(spec["successfulJobsHistoryLimit"], 3);
        assert_eq!(spec["failedJobsHistoryLimit"], 3);
        assert_eq!(spec["suspend"], false);
        let job = &spec["jobTemplate"]["spec"];
        assert_eq!(job["activeDeadlineSeconds"], 1800);
        assert_eq!(job["backoffLimit"], 1);
        assert_eq!(
            spec["jobTemplate"]["metadata"]["labels"][BACKUP_LABEL],
            "auth-redis"
        );
        let pod = &job["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "redis-backups"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["command"], serde_json::json!([COMMAND]));
        assert_eq!(c["image"], crate::api::backup::DEFAULT_BACKUP_IMAGE);
        assert_eq!(c["volumeMounts"][0]["mountPath"], MOUNT_PATH);
        let env: BTreeMap<String, serde_json::Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect();
        assert_eq!(env["REDIS_HOST"]["value"], "redis");
        assert_eq!(env["REDIS_PORT"]["value"], "6379");
        assert_eq!(env["BACKUP_DIR"]["value"], MOUNT_PATH);
        assert_eq!(env["BACKUP_RETENTION"]["value"], "7");
        assert_eq!(env["BACKUP_PREFIX"]["value"], "auth-redis");
        // The password only by reference: never in the CronJob's own bytes.
        assert_eq!(
            env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "redis-auth", "key": "password", "optional": false})
        );
        assert!(!env.contains_key("REDIS_USERNAME"));
        let owner = &cj.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "RedisBackup");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn every_spec_field_reaches_the_cronjob() {
        let mut b = backup("b");
        b.spec.schedule = "*/5 * * * *".into();
        b.spec.time_zone = Some("Europe/Berlin".into());
        b.spec.retention = 2;
        b.spec.suspend = true;
        b.spec.image = "registry.example/backup:1".into();
        b.spec.active_deadline_seconds = 60;
        b.spec.starting_deadline_seconds = 30;
        b.spec.successful_jobs_history_limit = 1;
        b.spec.failed_jobs_history_limit = 5;
        b.spec.redis = RedisTarget {
            host: "10.0.0.7".into(),
            port: 6380,
            username: Some("backup".into()),
            password_secret: Some(SecretKey {
                name: "s".into(),
                key: "k".into(),
            }),
        };
        let json = serde_json::to_value(render(&b).unwrap()).unwrap();
        let spec = &json["spec"];
        assert_eq!(spec["schedule"], "*/5 * * * *");
        assert_eq!(spec["timeZone"], "Europe/Berlin");
        assert_eq!(spec["suspend"], true);
        assert_eq!(spec["startingDeadlineSeconds"], 30);
        assert_eq!(spec["successfulJobsHistoryLimit"], 1);
        assert_eq!(spec["failedJobsHistoryLimit"], 5);
        let job = &spec["jobTemplate"]["spec"];
        assert_eq!(job["activeDeadlineSeconds"], 60);
        let c = &job["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "registry.example/backup:1");
        let env = c["env"].to_string();
        for part in [
            r#""name":"REDIS_HOST","value":"10.0.0.7""#,
            r#""name":"REDIS_PORT","value":"6380""#,
            r#""name":"BACKUP_RETENTION","value":"2""#,
            r#""name":"REDIS_USERNAME","value":"backup""#,
            r#""key":"k","name":"s""#,
        ] {
            assert!(env.contains(part), "{part} in {env}");
        }
    }

    #[test]
    fn no_secret_no_password_variable() {
        let mut b = backup("b");
        b.spec.redis.password_secret = None;
        let json = serde_json::to_value(render(&b).unwrap()).unwrap();
        assert!(!json.to_string().contains("REDIS_PASSWORD"));
    }

    #[test]
    fn a_name_too_long_for_a_cronjob_is_an_error() {
        assert!(render(&backup(&"a".repeat(MAX_NAME))).is_ok());
        let err = render(&backup(&"a".repeat(MAX_NAME + 1))).unwrap_err();
        assert!(err.contains("at most 52"), "{err}");
    }
}
