//! Proof that the shared Redis client works against the real Redis of `hack/devenv`.

use redis::AsyncCommands;

#[tokio::test]
async fn set_and_get_through_real_redis() {
    let url = tanks_testkit::require_redis();
    let mut redis = tanks_core::redis_store::connect(&url)
        .await
        .expect("connect to Redis");
    let key = tanks_testkit::unique("roundtrip");
    let _: () = redis.set_ex(&key, "hello", 60).await.expect("SET");
    let got: Option<String> = redis.get(&key).await.expect("GET");
    assert_eq!(got.as_deref(), Some("hello"));
    let ttl: i64 = redis.ttl(&key).await.expect("TTL");
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    let _: () = redis.del(&key).await.expect("DEL");
    let gone: Option<String> = redis.get(&key).await.expect("GET");
    assert_eq!(gone, None);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error() {
    let Err(err) = tanks_core::redis_store::connect("redis://127.0.0.1:1/0").await else {
        panic!("connecting to a closed port must fail");
    };
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
