//! /rtc and /agent frame parsers on arbitrary input: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = protocol::signaling::ClientMessage::parse(s);
        let _ = protocol::signaling::ServerMessage::parse(s);
        let _ = protocol::agent::parse_agent_message(s);
        let _ = protocol::agent::parse_server_message(s);
    }
});
