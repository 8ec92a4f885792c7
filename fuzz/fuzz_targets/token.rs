//! Token parsing and verification on arbitrary input: never a panic.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../api/src/token/mod.rs"]
mod token;

use libfuzzer_sys::fuzz_target;

const APP: &str = "970CA35de60c44645bbae8a215061b33";
const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = token::parse_006(s);
        let _ = token::parse_007(s);
        let _ = token::verify(s, APP, CERT, "ch", "uid", 1_700_000_000);
    }
    // Well-formed prefixes with arbitrary payloads reach the byte readers.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = token::parse_006(&format!("006{APP}{b64}"));
    let _ = token::parse_007(&format!("007{b64}"));
});
