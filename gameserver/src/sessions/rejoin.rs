//! A player already in a session joins again: the address binding follows the token.
//!
//! A token-bound player's address changes without the player doing anything: a NAT
//! rebinding, or a reload of the Nginx edge, whose new workers relay the same player
//! from a new upstream socket. Such a player's inputs from the new address are
//! refused (`WrongSource`, answered `not_in_game` so the client knows to join again);
//! its `join_game` with a valid token moves the binding and is answered `joined` with
//! its tank as it is now, so the client carries on where it was. A datagram from a
//! new address without a valid token never moves anyone: the token is checked before
//! this runs, and an unbound re-join only moves an unbound player (the seed's
//! behaviour, where nothing is proven either way).

use std::net::SocketAddr;

use tanks_core::protocol::game::udp::TankState;

use super::registry::JoinOutcome;
use super::{SessionKey, SessionManager};

impl SessionManager {
    /// `player_id` is in the session at `key` and joins again from `addr`; `bound`:
    /// the join carried a valid token for this player.
    pub(super) fn rejoin(
        &mut self,
        key: SessionKey,
        player_id: &str,
        addr: SocketAddr,
        bound: bool,
    ) -> JoinOutcome {
        let tick = self.tick;
        let session = self.sessions[key].as_mut().expect("indexed sessions exist");
        let session_id = session.id.clone();
        let player = session
            .players
            .iter_mut()
            .find(|p| p.id == player_id)
            .expect("indexed players exist");
        let moved = player.addr != addr;
        let tank = self.pool.get(player.tank);
        let tank_id = tank.id().to_owned();
        if bound && moved {
            player.addr = addr;
            player.bound = true;
            player.last_seen = tick;
            return JoinOutcome::Rebound {
                session_id,
                tank: TankState {
                    id: tank_id,
                    position: tank.position,
                    health: tank.health,
                    ack: player.ack,
                    alive: tank.alive,
                },
            };
        }
        if bound || !player.bound {
            // The same address again (a client whose `joined` got lost), or an unbound
            // player: the seed's answer.
            player.addr = addr;
            player.bound |= bound;
        }
        player.last_seen = tick;
        JoinOutcome::AlreadyInSession {
            session_id,
            tank_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::sessions::InputError;
    use crate::sessions::testkit::*;

    #[tokio::test]
    async fn a_token_join_from_a_new_address_moves_the_player_and_says_joined() {
        let (mut m, _memory, _pump) = manager();
        let (session, tank) = joined(m.join("p", addr(1), true, None));
        assert!(
            m.queue_move("p", Some(addr(1)), [300.0, 300.0], Some(7))
                .is_ok()
        );
        let mut out = Outbox::default();
        m.step(&mut out);

        // The edge reloaded: the same player, a new source port.
        assert_eq!(
            m.queue_move("p", Some(addr(2)), [1.0, 1.0], None),
            Err(InputError::WrongSource)
        );
        let JoinOutcome::Rebound {
            session_id,
            tank: now,
        } = m.join("p", addr(2), true, None)
        else {
            panic!("expected a rebind");
        };
        assert_eq!((session_id, &now.id), (session, &tank.id));
        assert_eq!(now.ack, Some(7), "the tank as it is, with its last input");
        assert_ne!(now.position, tank.position, "it moved toward the target");
        assert!(m.queue_move("p", Some(addr(2)), [1.0, 1.0], None).is_ok());
        assert_eq!(
            m.queue_move("p", Some(addr(1)), [1.0, 1.0], None),
            Err(InputError::WrongSource),
            "the old address no longer speaks for it"
        );
        m.step(&mut out);
        assert!(!updates(&out, addr(2)).is_empty(), "snapshots follow");
        assert!(updates(&out, addr(1)).is_empty());
        assert_eq!((m.player_count(), m.tanks_in_use()), (1, 1));
    }

    #[tokio::test]
    async fn without_a_token_a_new_address_moves_nobody() {
        let (mut m, _memory, _pump) = manager();
        joined(m.join("p", addr(1), true, None));
        // A join without a valid token (the UDP handler passes bound = false).
        assert!(matches!(
            m.join("p", addr(9), false, None),
            JoinOutcome::AlreadyInSession { .. }
        ));
        assert_eq!(
            m.queue_move("p", Some(addr(9)), [1.0, 1.0], None),
            Err(InputError::WrongSource)
        );
        let mut out = Outbox::default();
        m.step(&mut out);
        assert!(updates(&out, addr(9)).is_empty());
        assert!(!updates(&out, addr(1)).is_empty());
    }

    #[tokio::test]
    async fn a_repeated_join_from_the_same_address_is_already_in_session() {
        let (mut m, _memory, _pump) = manager();
        joined(m.join("p", addr(1), true, None));
        assert!(matches!(
            m.join("p", addr(1), true, None),
            JoinOutcome::AlreadyInSession { .. }
        ));
    }
}
