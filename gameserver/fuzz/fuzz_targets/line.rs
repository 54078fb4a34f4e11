//! Any bytes as a TCP command line: the parser must return, never panic, and every
//! refusal must map to one of the seed's reply lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tanks_core::protocol::game::tcp::{Line, parse_line};

fuzz_target!(|data: &[u8]| {
    match parse_line(data) {
        Ok(Line::Move { x, y }) => assert!(x.is_finite() && y.is_finite()),
        Ok(_) => {}
        Err(e) => assert!(!e.reply().is_empty() && !e.reply().contains('\n')),
    }
});
