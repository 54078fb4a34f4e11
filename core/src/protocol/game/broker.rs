//! RabbitMQ bodies of the `player_commands` queue, in the seed's shapes. The other
//! queue the game server reads, `matchmaking_events`, has its body in
//! [`crate::protocol::matchmaking`], shared with the operator.

use serde::{Deserialize, Serialize};

/// A `player_commands` message: `{"player_id","command","details":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerCommand {
    pub player_id: String,
    pub command: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// A command the game can apply.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandAction {
    Move {
        position: [f64; 2],
        seq: Option<u64>,
    },
    Shoot {
        target: Option<String>,
        seq: Option<u64>,
    },
}

impl PlayerCommand {
    pub fn moved(player_id: &str, position: [f64; 2], seq: Option<u64>) -> Self {
        let mut details = serde_json::json!({ "new_position": position });
        if let Some(seq) = seq {
            details["seq"] = seq.into();
        }
        Self {
            player_id: player_id.to_owned(),
            command: "move".into(),
            details,
        }
    }

    pub fn shot(player_id: &str, target: Option<&str>, seq: Option<u64>) -> Self {
        let mut details = serde_json::json!({});
        if let Some(target) = target {
            details["target"] = target.into();
        }
        if let Some(seq) = seq {
            details["seq"] = seq.into();
        }
        Self {
            player_id: player_id.to_owned(),
            command: "shoot".into(),
            details,
        }
    }

    /// What to do, or why it cannot be done (the dead-letter reason).
    pub fn action(&self) -> Result<CommandAction, String> {
        let seq = self.details.get("seq").and_then(|s| s.as_u64());
        match self.command.as_str() {
            "move" => {
                // The seed wrote `new_position`; accept `position` too.
                let pos = self
                    .details
                    .get("new_position")
                    .or_else(|| self.details.get("position"));
                let position: [f64; 2] = pos
                    .and_then(|p| serde_json::from_value(p.clone()).ok())
                    .filter(|p: &[f64; 2]| p.iter().all(|v| v.is_finite()))
                    .ok_or_else(|| "move without a valid new_position".to_owned())?;
                Ok(CommandAction::Move { position, seq })
            }
            "shoot" => {
                let target = self
                    .details
                    .get("target")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned);
                Ok(CommandAction::Shoot { target, seq })
            }
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_bodies_parse() {
        let seed: PlayerCommand = serde_json::from_str(
            r#"{"player_id":"p","command":"move","details":{"new_position":[3,4]}}"#,
        )
        .unwrap();
        assert_eq!(
            seed.action(),
            Ok(CommandAction::Move {
                position: [3.0, 4.0],
                seq: None
            })
        );
        assert_eq!(
            PlayerCommand::moved("p", [1.0, 2.0], Some(3)).action(),
            Ok(CommandAction::Move {
                position: [1.0, 2.0],
                seq: Some(3)
            })
        );
        let bad: PlayerCommand =
            serde_json::from_str(r#"{"player_id":"p","command":"fly"}"#).unwrap();
        assert!(bad.action().is_err());
    }
}
