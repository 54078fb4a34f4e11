//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas can
//! run and only one acts.
//!
//! Every write carries the Lease's resourceVersion, so two candidates can never both win
//! the same round. Expiry is judged on this process's own clock, from when it last saw
//! the Lease change (as client-go does), so clock skew between nodes does not matter.
//! A leader that cannot renew steps down before its Lease could expire for others.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

pub struct Elector {
    api: Api<Lease>,
    s: LeaseSettings,
    /// The (holder, renewTime) last seen and when it was first seen.
    observed: Option<(Option<String>, Option<String>, Instant)>,
    last_renewed: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, s: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &s.namespace),
            s,
            observed: None,
            last_renewed: None,
        }
    }

    /// Runs until `stop` resolves, publishing leadership on `tx`. On stop, a leader
    /// releases the Lease so a standby takes over at once rather than after expiry.
    pub async fn run(
        mut self,
        tx: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            let leading = match self.try_acquire_or_renew().await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "lease round failed");
                    // Keep leading only while the Lease we hold cannot have expired.
                    *tx.borrow()
                        && self
                            .last_renewed
                            .is_some_and(|t| t.elapsed() < self.s.duration * 2 / 3)
                }
            };
            if tx.send_if_modified(|v| std::mem::replace(v, leading) != leading) {
                info!(identity = %self.s.identity, leading, "leadership changed");
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.s.renew_every) => {}
            }
        }
        let leading = *tx.borrow();
        if leading {
            tx.send_replace(false);
            if let Err(e) = self.release().await {
                warn!(error = %e, "releasing lease");
            }
        }
    }

    fn now() -> MicroTime {
        MicroTime(Timestamp::now())
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let me = self.s.identity.clone();
        let secs = self.s.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(Self::now()),
                    renew_time: Some(Self::now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.last_renewed = Some(Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let seen_same = self
            .observed
            .as_ref()
            .is_some_and(|(h, r, _)| *h == holder && *r == renew);
        if !seen_same {
            self.observed = Some((holder.clone(), renew, Instant::now()));
        }
        let observed_at = self
            .observed
            .as_ref()
            .map(|o| o.2)
            .unwrap_or_else(Instant::now);
        let their_duration =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let mine = holder.as_deref() == Some(me.as_str());
        let expired = holder.is_none() || observed_at.elapsed() > their_duration;
        if !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(Self::now());
            spec.holder_identity = Some(me);
        }
        spec.renew_time = Some(Self::now());
        spec.lease_duration_seconds = Some(secs);
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.last_renewed = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(Self::now());
        self.api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
