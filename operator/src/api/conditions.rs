//! The one builder of status conditions, for every resource here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition of `type_`. Its `lastTransitionTime` is when its status last changed, as
/// the Kubernetes API conventions define it: kept from `previous` when the status there
/// is the same, now otherwise. (A new time on every write would tell a reader that
/// something changed when only the message did.)
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_when_the_status_does() {
        let long_ago = Time("2020-01-01T00:00:00Z".parse().unwrap());
        let previous = vec![Condition {
            type_: "Available".into(),
            status: "True".into(),
            reason: "EnoughReady".into(),
            message: "3 of 3".into(),
            observed_generation: Some(1),
            last_transition_time: long_ago.clone(),
        }];
        let same = condition(
            &previous,
            "Available",
            true,
            "EnoughReady",
            "4 of 4",
            Some(2),
        );
        assert_eq!(same.last_transition_time, long_ago);
        assert_eq!(same.message, "4 of 4");
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition(&previous, "Available", false, "WaitingForServers", "", None);
        assert_ne!(flipped.last_transition_time, long_ago);
        assert_eq!(flipped.status, "False");
        let other = condition(&previous, "Progressing", true, "RollingUpdate", "", None);
        assert_ne!(other.last_transition_time, long_ago);
    }
}
