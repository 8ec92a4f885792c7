//! Any bytes through the decoder (probe, demux, decode, trim, limits): errors are fine,
//! panics, hangs and unbounded memory are not.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = audio::Limits {
        max_duration: Duration::from_secs(20),
        ..audio::Limits::default()
    };
    let mut input = audio::Input::from(data);
    if let Ok(mut dec) = audio::Decoder::open(&mut input, &limits) {
        while let Ok(Some(_)) = dec.next_block() {}
    }
});
