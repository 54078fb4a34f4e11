//! `matchmaking_events` → `Match`. A message is acked only once its Match exists (created
//! now, or AlreadyExists from an earlier delivery), so a crash never loses an event and a
//! redelivery never makes a second Match, not even once the first one was deleted after
//! its TTL ([`ConsumedEvents`]). Malformed events are dead-lettered with the reason; API
//! trouble requeues the message after a pause.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tanks_core::protocol::matchmaking::{MatchRequest, NEW_MATCH_CREATED};
use tanks_core::rabbit::{self, ConsumerSpec, Outcome};

use crate::api::{Match, MatchSpec};
use crate::matches::consumed::ConsumedEvents;
use crate::matches::naming::match_name;

/// Label on every Match made from an event (selects them; the event id itself may be
/// too long or not label-safe, so it lives in the spec).
pub const FROM_EVENT_LABEL: &str = "tanks.dev/from-matchmaking";

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub amqp_uri: String,
    pub queue: String,
    /// Unacked messages in flight = creates in flight.
    pub prefetch: u16,
    /// Where Matches are created.
    pub namespace: String,
    /// The fleet of events that name none.
    pub default_fleet: Option<String>,
    /// Pause before a message is requeued after an API error (no hot loop while the API
    /// server is down).
    pub retry_pause: Duration,
    /// How long a consumed event's key is remembered, so a redelivery after its Match
    /// was deleted (Finished, then the TTL) starts no second match. Longer than any
    /// redelivery: a RabbitMQ outage, a matchmaker's republish.
    pub remember_for: Duration,
    /// At most this many keys are remembered (the oldest are forgotten first).
    pub remember_at_most: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            amqp_uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue: rabbit::MATCHMAKING_EVENTS.into(),
            prefetch: 64,
            namespace: "default".into(),
            default_fleet: None,
            retry_pause: Duration::from_millis(500),
            remember_for: Duration::from_secs(6 * 3600),
            remember_at_most: 500_000,
        }
    }
}

/// Turns one message body into the Match it asks for, or says why it never can.
/// `message_id` is the AMQP property, the id of last resort.
pub fn to_match(
    body: &[u8],
    message_id: Option<&str>,
    default_fleet: Option<&str>,
) -> Result<Match, String> {
    let request: MatchRequest =
        serde_json::from_slice(body).map_err(|e| format!("not a matchmaking event: {e}"))?;
    if request.event_type != NEW_MATCH_CREATED {
        return Err(format!(
            "unsupported event_type {:?} (expected {NEW_MATCH_CREATED:?})",
            request.event_type
        ));
    }
    let event_id = request
        .key(message_id)
        .filter(|id| !id.trim().is_empty())
        .map(str::to_owned)
        .ok_or("no event id: set event_id, match_details.match_id or the AMQP message_id")?;
    let details = request.match_details;
    if event_id.len() > 1024 {
        return Err("event id longer than 1024 bytes".into());
    }
    let fleet = details
        .fleet
        .or_else(|| default_fleet.map(str::to_owned))
        .filter(|f| !f.is_empty())
        .ok_or("no fleet: set match_details.fleet (the operator has no default fleet)")?;
    if details.players.iter().any(|p| p.is_empty()) {
        return Err("empty player id".into());
    }
    let name = match_name(&event_id);
    Ok(Match {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some([(FROM_EVENT_LABEL.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        spec: MatchSpec {
            fleet,
            players: details.players,
            map: details.map,
            mode: details.mode,
            source_event_id: event_id,
            match_id: details.match_id,
        },
        status: None,
    })
}

/// What the create's result means for the message.
pub fn outcome_of(result: Result<Match, kube::Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ack,
        Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Ack,
        // The API server will never accept this object (schema, CEL): no retry helps.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            Outcome::DeadLetter(format!("the API server refused the Match: {}", s.message))
        }
        Err(_) => Outcome::Retry,
    }
}

/// Handles one message: parse, skip what was consumed already, create, decide.
pub async fn handle(
    api: &Api<Match>,
    config: &ConsumerConfig,
    consumed: &ConsumedEvents,
    body: &[u8],
    message_id: Option<&str>,
) -> Outcome {
    let m = match to_match(body, message_id, config.default_fleet.as_deref()) {
        Ok(m) => m,
        Err(reason) => return Outcome::DeadLetter(reason),
    };
    let name = m.metadata.name.clone().unwrap_or_default();
    if consumed.contains(&name) {
        tracing::info!(%name, "event consumed before: no second Match");
        return Outcome::Ack;
    }
    let result = api.create(&PostParams::default(), &m).await;
    if let Err(e) = &result
        && !matches!(e, kube::Error::Api(s) if s.code == 409)
    {
        tracing::warn!(error = %e, name = ?m.metadata.name, "creating a Match failed");
    }
    let outcome = outcome_of(result);
    match outcome {
        Outcome::Ack => consumed.record(&name),
        Outcome::Retry => tokio::time::sleep(config.retry_pause).await,
        Outcome::DeadLetter(_) => {}
    }
    outcome
}

/// Consumes until `shutdown` resolves, reconnecting with backoff.
pub async fn run(
    client: Client,
    config: ConsumerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Match> = Api::namespaced(client, &config.namespace);
    let spec = ConsumerSpec {
        uri: config.amqp_uri.clone(),
        queue: config.queue.clone(),
        prefetch: config.prefetch,
        tag: format!("tanks-operator-{}", std::process::id()),
    };
    let consumed = ConsumedEvents::new(config.remember_for, config.remember_at_most);
    let shared = Arc::new((api, config, consumed));
    rabbit::consume(
        spec,
        move |delivery| {
            let shared = shared.clone();
            async move {
                let (api, config, consumed) = &*shared;
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned());
                handle(api, config, consumed, &delivery.data, id.as_deref()).await
            }
        },
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_matches() {
        let seed = br#"{"event_type":"new_match_created","match_details":{"match_id":"M_1","players":["a","b"],"map":"desert"}}"#;
        let m = to_match(seed, None, Some("tanks")).unwrap();
        assert_eq!(m.metadata.name.as_deref(), Some(match_name("M_1").as_str()));
        assert_eq!(m.spec.fleet, "tanks");
        assert_eq!(m.spec.players, ["a", "b"]);
        assert_eq!(m.spec.map.as_deref(), Some("desert"));
        assert_eq!(m.spec.source_event_id, "M_1");

        let ours = br#"{"event_type":"new_match_created","event_id":"ev-9","match_details":{"match_id":"m","fleet":"blue","mode":"7v7"}}"#;
        let m = to_match(ours, Some("amqp-id"), Some("tanks")).unwrap();
        assert_eq!(m.metadata.name.as_deref(), Some("ev-9"));
        assert_eq!(m.spec.fleet, "blue");
        assert_eq!(m.spec.match_id.as_deref(), Some("m"));

        let bare = br#"{"event_type":"new_match_created","match_details":{}}"#;
        let m = to_match(bare, Some("msg-7"), Some("tanks")).unwrap();
        assert_eq!(m.spec.source_event_id, "msg-7");
    }

    #[test]
    fn malformed_events_say_why() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"not json", Some("tanks"), "not a matchmaking event"),
            (b"{}", Some("tanks"), "not a matchmaking event"),
            (br#"{"event_type":"match_cancelled"}"#, Some("tanks"), "unsupported event_type"),
            (br#"{"event_type":"new_match_created"}"#, Some("tanks"), "no event id"),
            (br#"{"event_type":"new_match_created","event_id":"  "}"#, Some("tanks"), "no event id"),
            (br#"{"event_type":"new_match_created","event_id":"e"}"#, None, "no fleet"),
            (br#"{"event_type":"new_match_created","event_id":"e","match_details":{"players":[""]}}"#, Some("t"), "empty player"),
            (br#"{"event_type":"new_match_created","event_id":"e","match_details":{"players":"a"}}"#, Some("t"), "not a matchmaking event"),
        ];
        for (body, fleet, why) in cases {
            let err = to_match(body, None, *fleet).unwrap_err();
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn create_results_decide_the_ack() {
        assert_eq!(outcome_of(Err(api_error(409))), Outcome::Ack);
        assert!(
            matches!(outcome_of(Err(api_error(422))), Outcome::DeadLetter(r) if r.contains("boom"))
        );
        assert_eq!(outcome_of(Err(api_error(500))), Outcome::Retry);
        assert_eq!(outcome_of(Err(api_error(429))), Outcome::Retry);
        assert_eq!(outcome_of(Err(api_error(404))), Outcome::Retry);
    }
}
