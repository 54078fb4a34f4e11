//! Against the real Redis (`hack/devenv up`): two replicas sharing users, limits and
//! revocations. Each test writes under its own key prefix, so runs never collide.

use crate::common::{Client, config, login, once, register, start, username};
use redis::AsyncCommands;
use tanks_core::protocol::auth::{Request, Status, revoked_token_key};

const PASSWORD: &str = "correct horse battery";

/// A config on the real Redis under a fresh prefix.
fn redis_config(prefix: &str) -> authserver::Config {
    let mut cfg = config();
    cfg.redis_url = Some(tanks_testkit::require_redis());
    cfg.redis_prefix = prefix.to_owned();
    cfg
}

async fn redis() -> redis::aio::ConnectionManager {
    tanks_core::redis_store::connect(&tanks_testkit::require_redis())
        .await
        .unwrap()
}

/// Deletes what a test wrote under its prefix.
async fn cleanup(prefix: &str) {
    let mut conn = redis().await;
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_users_through_redis() {
    let prefix = format!("{}:", tanks_testkit::unique("authtest"));
    let a = start(redis_config(&prefix)).await;
    let b = start(redis_config(&prefix)).await;
    let name = username("Shared");

    assert!(once(&a, &register(&name, PASSWORD)).await.is_success());
    let dup = once(&b, &register(&name.to_uppercase(), PASSWORD)).await;
    assert_eq!(dup.reason.as_deref(), Some("username_taken"));
    let reply = once(&b, &login(&name.to_lowercase(), PASSWORD)).await;
    assert!(reply.is_success(), "{reply:?}");
    assert_eq!(reply.username.as_deref(), Some(name.as_str()));

    // The record in Redis: a JSON string with an Argon2id hash, never the password.
    let raw: String = redis()
        .await
        .get(format!("{prefix}user:{}", name.to_lowercase()))
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(record["username"], name.as_str());
    assert!(
        record["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    assert!(!raw.contains(PASSWORD));

    a.shutdown().await;
    b.shutdown().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_name_have_one_winner() {
    let prefix = format!("{}:", tanks_testkit::unique("authtest"));
    let a = start(redis_config(&prefix)).await;
    let b = start(redis_config(&prefix)).await;
    let name = username("race");
    let request = register(&name, PASSWORD);
    let (ra, rb) = tokio::join!(once(&a, &request), once(&b, &request));
    let wins = [&ra, &rb].iter().filter(|r| r.is_success()).count();
    assert_eq!(wins, 1, "{ra:?} {rb:?}");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_limits_are_shared_between_replicas() {
    let prefix = format!("{}:", tanks_testkit::unique("authtest"));
    let mut cfg = redis_config(&prefix);
    cfg.failures_per_user = 4;
    let a = start(cfg.clone()).await;
    let b = start(cfg).await;
    let name = username("target");
    assert!(once(&a, &register(&name, PASSWORD)).await.is_success());
    for server in [&a, &b, &a, &b] {
        assert_eq!(
            once(server, &login(&name, "guess-guess"))
                .await
                .reason
                .as_deref(),
            Some("invalid_credentials")
        );
    }
    for server in [&a, &b] {
        assert_eq!(
            once(server, &login(&name, PASSWORD))
                .await
                .reason
                .as_deref(),
            Some("rate_limited")
        );
    }
    // The counter expires with its window.
    let ttl: i64 = redis()
        .await
        .pttl(format!("{prefix}rl:fail:user:{}", name.to_lowercase()))
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 300_000, "window TTL {ttl} ms");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_replica_revokes_on_all() {
    let prefix = format!("{}:", tanks_testkit::unique("authtest"));
    let a = start(redis_config(&prefix)).await;
    let b = start(redis_config(&prefix)).await;
    let name = username("leaver");
    assert!(once(&a, &register(&name, PASSWORD)).await.is_success());
    let token = once(&a, &login(&name, PASSWORD)).await.token.unwrap();
    let mut on_b = Client::connect(&b).await;
    assert!(
        on_b.call(&Request::Verify {
            token: token.clone()
        })
        .await
        .is_success()
    );
    assert!(
        once(
            &a,
            &Request::Logout {
                token: token.clone()
            }
        )
        .await
        .is_success()
    );
    let reply = on_b
        .call(&Request::Verify {
            token: token.clone(),
        })
        .await;
    assert_eq!(
        (reply.status, reply.reason.as_deref()),
        (Status::Failure, Some("token_revoked"))
    );
    // Logging out twice is refused the same way.
    assert_eq!(
        on_b.call(&Request::Logout {
            token: token.clone()
        })
        .await
        .reason
        .as_deref(),
        Some("token_revoked")
    );

    // The revocation key lives exactly as long as the token would have.
    let claims = tanks_core::token::TokenSigner::from_key_file(None)
        .unwrap()
        .0
        .verify(&token)
        .unwrap();
    let ttl: i64 = redis()
        .await
        .ttl(revoked_token_key(&prefix, &claims.jti))
        .await
        .unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "revocation TTL {ttl} s");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_at_start_with_its_address() {
    let mut cfg = config();
    cfg.redis_url = Some("redis://127.0.0.1:1/0".into());
    let err = authserver::Server::start(cfg)
        .await
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
