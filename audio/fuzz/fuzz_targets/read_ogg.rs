//! Any bytes through the Ogg Opus reader that loads cache entries from disk.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = audio::PreparedAudio::read_ogg(std::io::Cursor::new(data)) {
        let _ = p.frames().count();
        let _ = p.write_ogg_with_serial(Vec::new(), 1);
    }
});
