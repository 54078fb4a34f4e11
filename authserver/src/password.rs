//! Argon2id password hashing, off the async event loop and bounded in concurrency.
//!
//! Each hash takes tens of milliseconds of one core and `memory_kib` of memory, so it
//! runs on tokio's blocking pool behind a semaphore sized to the cores: more at once
//! would only thrash caches and multiply memory, and a request flood queues (bounded by
//! the connection cap) instead of exhausting the machine.

use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use prometheus::{Histogram, IntGauge};
use rand::RngCore;
use tokio::sync::Semaphore;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashParams {
    /// OWASP Password Storage Cheat Sheet: Argon2id, 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: HashParams = HashParams {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    /// At least as strong as [`HashParams::OWASP`]: OWASP's table trades memory for
    /// iterations (m * t must not drop below 19 MiB * 2), never below 7 MiB.
    pub fn meets_owasp(&self) -> bool {
        let work = u64::from(self.memory_kib) * u64::from(self.iterations);
        let owasp = u64::from(Self::OWASP.memory_kib) * u64::from(Self::OWASP.iterations);
        self.memory_kib >= 7_168 && work >= owasp && self.parallelism >= 1
    }

    fn argon2(&self) -> anyhow::Result<Argon2<'static>> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters {self:?}: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Argon2(String),
    #[error("password hashing task failed")]
    Task,
}

/// Hashes and verifies passwords. Cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of a random password with the configured parameters. Logins for unknown
    /// users verify against it, so they cost the same time as a wrong password.
    dummy: Arc<str>,
    waiting: IntGauge,
    duration: Histogram,
}

impl Hasher {
    /// Computes the dummy hash, so call from a blocking context or via
    /// [`Hasher::new_async`].
    pub fn new(
        params: HashParams,
        concurrency: usize,
        allow_weak: bool,
        waiting: IntGauge,
        duration: Histogram,
    ) -> anyhow::Result<Self> {
        if !allow_weak && !params.meets_owasp() {
            anyhow::bail!(
                "Argon2id parameters {params:?} are below OWASP's advice (19456 KiB x 2 \
                 iterations); pass --allow-weak-hash only for tests"
            );
        }
        let argon2 = params.argon2()?;
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let dummy = hash_with(&argon2, &random)?;
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: dummy.into(),
            waiting,
            duration,
        })
    }

    pub async fn new_async(
        params: HashParams,
        concurrency: usize,
        allow_weak: bool,
        waiting: IntGauge,
        duration: Histogram,
    ) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || {
            Self::new(params, concurrency, allow_weak, waiting, duration)
        })
        .await?
    }

    /// A PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`) for `password`.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            hash_with(&argon2, password.as_bytes()).map_err(|e| HashError::Argon2(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown user), checks
    /// against the dummy hash and answers false, taking the same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let dummy = self.dummy.clone();
        self.run(move || {
            let known = stored.is_some();
            let phc = stored.as_deref().unwrap_or(&dummy);
            let matches = verify_with(phc, password.as_bytes());
            known && matches
        })
        .await
    }

    /// One hash on the calling thread, for measuring the raw rate.
    pub fn hash_blocking(&self, password: &[u8]) -> anyhow::Result<String> {
        hash_with(&self.argon2, password)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.waiting.inc();
        let permit = self.permits.acquire().await;
        self.waiting.dec();
        let _permit = permit.map_err(|_| HashError::Task)?;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| HashError::Task);
        self.duration.observe(started.elapsed().as_secs_f64());
        result
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &[u8]) -> anyhow::Result<String> {
    // A 16-byte salt from the thread's CSPRNG (ChaCha seeded from the OS).
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2
        .hash_password(password, &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
        .to_string())
}

/// Verifies with the parameters recorded in `phc`, so hashes made under older
/// parameters keep working after the defaults are raised. A stored hash that does not
/// parse never matches.
fn verify_with(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn gauge() -> IntGauge {
        IntGauge::new("w", "w").unwrap()
    }

    fn histogram() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("d", "d")).unwrap()
    }

    #[test]
    fn owasp_floor() {
        assert!(HashParams::OWASP.meets_owasp());
        assert!(
            HashParams {
                memory_kib: 47_104,
                iterations: 1,
                parallelism: 1
            }
            .meets_owasp()
        );
        assert!(!FAST.meets_owasp());
        assert!(
            !HashParams {
                memory_kib: 19_456,
                iterations: 1,
                parallelism: 1
            }
            .meets_owasp()
        );
    }

    #[test]
    fn weak_parameters_are_refused_unless_allowed() {
        assert!(Hasher::new(FAST, 1, false, gauge(), histogram()).is_err());
        assert!(Hasher::new(FAST, 1, true, gauge(), histogram()).is_ok());
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = Hasher::new(FAST, 2, true, gauge(), histogram()).unwrap();
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(
            hasher
                .verify("correct horse".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(phc))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("anything".into(), None).await.unwrap());
        assert!(
            !hasher
                .verify("x".into(), Some("not a hash".into()))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn default_parameters_are_owasp_argon2id() {
        let hasher = Hasher::new_async(HashParams::OWASP, 1, false, gauge(), histogram())
            .await
            .unwrap();
        let phc = hasher.hash("pw".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    }
}
