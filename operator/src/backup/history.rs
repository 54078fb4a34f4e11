//! The last backup, read from the Jobs the CronJob created: the newest finished Job
//! decides `lastResult`; the newest successful one `lastSuccessTime`.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

#[derive(Debug, Clone, PartialEq)]
pub struct LastBackup {
    pub job: String,
    pub finished: Time,
    pub succeeded: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The newest finished Job, successful or not.
    pub last: Option<LastBackup>,
    /// The newest successful Job.
    pub last_success: Option<LastBackup>,
    /// Jobs still running.
    pub running: usize,
}

/// When and how `job` finished, or None while it runs. A Job's `Complete` or `Failed`
/// condition is the verdict (a failed Job has no `completionTime`).
pub fn finished(job: &Job) -> Option<LastBackup> {
    let status = job.status.as_ref()?;
    let verdict = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))?;
    let succeeded = verdict.type_ == "Complete";
    let finished = if succeeded {
        status.completion_time.clone()
    } else {
        None
    }
    .or_else(|| verdict.last_transition_time.clone())?;
    Some(LastBackup {
        job: job.name_any(),
        finished,
        succeeded,
    })
}

pub fn history(jobs: &[Job]) -> History {
    let mut h = History::default();
    for job in jobs {
        let Some(done) = finished(job) else {
            h.running += 1;
            continue;
        };
        let newer = |seen: &Option<LastBackup>| {
            seen.as_ref().is_none_or(|s| done.finished.0 > s.finished.0)
        };
        if done.succeeded && newer(&h.last_success) {
            h.last_success = Some(done.clone());
        }
        if newer(&h.last) {
            h.last = Some(done);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(name: &str, verdict: Option<(&str, &str)>) -> Job {
        let mut status = json!({});
        if let Some((kind, at)) = verdict {
            status["conditions"] = json!([
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": at},
                {"type": kind, "status": "True", "lastTransitionTime": at},
            ]);
            if kind == "Complete" {
                status["completionTime"] = json!(at);
            }
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).unwrap()
    }

    #[test]
    fn the_newest_finished_job_decides() {
        let t = |s: &str| Time(s.parse().unwrap());
        for (jobs, last, last_success, running) in [
            (vec![], None, None, 0),
            (vec![job("a", None)], None, None, 1),
            (
                vec![job("a", Some(("Complete", "2026-01-01T03:00:10Z")))],
                Some(("a", true)),
                Some("a"),
                0,
            ),
            (
                vec![
                    job("a", Some(("Complete", "2026-01-01T03:00:10Z"))),
                    job("b", Some(("Failed", "2026-01-02T03:00:10Z"))),
                    job("c", None),
                ],
                Some(("b", false)),
                Some("a"),
                1,
            ),
            (
                // Listed out of order: time decides, not the list.
                vec![
                    job("new", Some(("Complete", "2026-01-03T03:00:10Z"))),
                    job("old", Some(("Failed", "2026-01-02T03:00:10Z"))),
                ],
                Some(("new", true)),
                Some("new"),
                0,
            ),
            (
                vec![job("f", Some(("Failed", "2026-01-02T03:00:10Z")))],
                Some(("f", false)),
                None,
                0,
            ),
        ] {
            let h = history(&jobs);
            assert_eq!(
                h.last.as_ref().map(|l| (l.job.as_str(), l.succeeded)),
                last,
                "{jobs:?}"
            );
            assert_eq!(
                h.last_success.as_ref().map(|l| l.job.as_str()),
                last_success
            );
            assert_eq!(h.running, running);
        }
        let h = history(&[job("a", Some(("Complete", "2026-01-01T03:00:10Z")))]);
        assert_eq!(h.last.unwrap().finished, t("2026-01-01T03:00:10Z"));
    }
}
