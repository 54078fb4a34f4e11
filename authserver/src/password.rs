//! Argon2id password hashing, off the async event loop and bounded in concurrency.
//!
//! Each hash takes tens of milliseconds of one core and `memory_kib` of memory, so it
//! runs on tokio's blocking pool behind a semaphore sized to the cores: more at once
//! would only thrash caches and multiply memory, and a request flood queues (bounded by
//! the connection cap) instead of exhausting the machine.
//!
//! Each hashing slot owns one Argon2 memory buffer, reused from hash to hash. Allocating
//! 19 MiB per hash instead makes glibc keep freed buffers in per-thread arenas across
//! tokio's blocking threads: hundreds of MiB retained under load for nothing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

    fn params(&self) -> anyhow::Result<Params> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters {self:?}: {e}"))
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
    params: Params,
    permits: Arc<Semaphore>,
    /// Argon2 working memory, one buffer per slot in use (at most `concurrency`).
    buffers: Arc<Mutex<Vec<Memory>>>,
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
        let params = params.params()?;
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let mut memory = Memory::default();
        let dummy = hash_with(&params, &random, &mut memory)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            buffers: Arc::new(Mutex::new(vec![memory])),
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
        let params = self.params.clone();
        self.run(move |memory| {
            hash_with(&params, password.as_bytes(), memory)
                .map_err(|e| HashError::Argon2(e.to_string()))
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
        self.run(move |memory| {
            let known = stored.is_some();
            let phc = stored.as_deref().unwrap_or(&dummy);
            let matches = verify_with(phc, password.as_bytes(), memory);
            known && matches
        })
        .await
    }

    /// One hash on the calling thread with the caller's buffer, for measuring the raw
    /// rate with exactly the work a request does.
    pub fn hash_blocking(&self, password: &[u8], memory: &mut Memory) -> anyhow::Result<String> {
        hash_with(&self.params, password, memory)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.waiting.inc();
        let permit = self.permits.acquire().await;
        self.waiting.dec();
        let _permit = permit.map_err(|_| HashError::Task)?;
        let mut memory = self
            .buffers
            .lock()
            .expect("hash buffers")
            .pop()
            .unwrap_or_default();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let out = work(&mut memory);
            (out, memory)
        })
        .await;
        self.duration.observe(started.elapsed().as_secs_f64());
        let (out, mut memory) = result.map_err(|_| HashError::Task)?;
        if memory.0.len() > 2 * self.params.block_count() {
            // Grown for an old hash with a bigger memory cost: do not keep that around.
            memory = Memory::default();
        }
        self.buffers.lock().expect("hash buffers").push(memory);
        Ok(out)
    }
}

/// Argon2 working memory, reused between hashes.
#[derive(Default)]
pub struct Memory(Vec<Block>);

/// Largest memory cost a stored hash may ask for when verifying (1 GiB): a corrupt or
/// hostile record must not make us allocate without bound.
const MAX_VERIFY_MEMORY_KIB: u32 = 1 << 20;

fn hash_with(params: &Params, password: &[u8], memory: &mut Memory) -> anyhow::Result<String> {
    // A 16-byte salt from the thread's CSPRNG (ChaCha seeded from the OS).
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = compute(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        salt.as_salt(),
        password,
        memory,
    )
    .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

/// What `argon2`'s `PasswordHasher::hash_password` does, in a caller-owned buffer.
fn compute<'a>(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    salt: Salt<'a>,
    password: &[u8],
    memory: &mut Memory,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let blocks = params.block_count();
    if memory.0.len() < blocks {
        memory.0.resize(blocks, Block::default());
    }
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(output_len, |out| {
        Ok(argon2.hash_password_into_with_memory(
            password,
            salt_bytes,
            out,
            &mut memory.0[..blocks],
        )?)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Verifies with the algorithm and parameters recorded in `phc`, so hashes made under
/// older parameters keep working after the defaults are raised. A stored hash that does
/// not parse never matches. `Output` compares in constant time.
fn verify_with(phc: &str, password: &[u8], memory: &mut Memory) -> bool {
    let mut check = || -> argon2::password_hash::Result<bool> {
        let stored = PasswordHash::new(phc)?;
        let algorithm = Algorithm::try_from(stored.algorithm)?;
        let version = stored
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(&stored)?;
        if params.m_cost() > MAX_VERIFY_MEMORY_KIB {
            return Ok(false);
        }
        let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
            return Ok(false);
        };
        let computed = compute(algorithm, version, &params, salt, password, memory)?;
        Ok(computed.hash == Some(expected))
    };
    check().unwrap_or(false)
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
    async fn hashes_interoperate_with_the_argon2_crates_own_hasher() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = Hasher::new(FAST, 1, true, gauge(), histogram()).unwrap();
        let ours = hasher.hash("pw-ours".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"pw-ours", &parsed)
                .is_ok()
        );
        // A hash made elsewhere, with other parameters, still verifies here.
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(128, 2, 1, None).unwrap(),
        )
        .hash_password(b"pw-theirs", &salt)
        .unwrap()
        .to_string();
        assert!(
            hasher
                .verify("pw-theirs".into(), Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("pw-ours".into(), Some(theirs)).await.unwrap());
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2l4dGVlbiBieXRlIHNsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!hasher.verify("x".into(), Some(huge.into())).await.unwrap());
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
