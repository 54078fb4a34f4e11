//! Any bytes as a UDP datagram: the parser must return, never panic, and an accepted
//! datagram must carry a bounded, non-empty player id and finite coordinates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tanks_core::protocol::game::udp::{Datagram, MAX_PLAYER_ID, parse_datagram, parse_server_message};

fuzz_target!(|data: &[u8]| {
    if let Ok(datagram) = parse_datagram(data) {
        let id = datagram.player_id();
        assert!(!id.is_empty() && id.len() <= MAX_PLAYER_ID);
        if let Datagram::Move { position, .. } = datagram {
            assert!(position.iter().all(|v| v.is_finite()));
        }
    }
    let _ = parse_server_message(data);
});
