//! The voicemail beep: 400 ms of 1 kHz with 10 ms ramps, encoded once per process with the
//! audio crate's encoder, played as the last item of a recording session's queue.

use std::sync::{Arc, OnceLock};

use audio::{FrameEncoder, PacketSink, Settings};
use bytes::Bytes;

use super::playlist::{FrameRead, FrameSource};

/// The beep's name in the queue (and in `control_ack`).
pub const BEEP: &str = "beep";

/// The beep's frames.
#[derive(Debug)]
pub struct Beep {
    frames: Vec<Bytes>,
}

impl FrameSource for Beep {
    fn read(&self, index: u64) -> FrameRead {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.frames.get(i))
            .map_or(FrameRead::End, |f| FrameRead::Ready(f.clone()))
    }

    fn frame_count(&self) -> Option<u64> {
        u64::try_from(self.frames.len()).ok()
    }
}

struct Frames(Vec<Bytes>);

impl PacketSink for Frames {
    fn packet(&mut self, data: &[u8]) -> audio::Result<()> {
        self.0.push(Bytes::copy_from_slice(data));
        Ok(())
    }
}

fn make() -> audio::Result<Beep> {
    let rate = 48_000.0f32;
    let n = 19_200; // 400 ms
    let ramp = 480.0; // 10 ms
    let pcm: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32;
            let env = (t / ramp).min((n as f32 - t) / ramp).min(1.0);
            0.4 * env * (2.0 * std::f32::consts::PI * 1000.0 * t / rate).sin()
        })
        .collect();
    let mut enc = FrameEncoder::new(&Settings::default(), 48_000)?;
    let mut out = Frames(Vec::new());
    enc.push(&pcm, &mut out)?;
    enc.finish(&mut out)?;
    Ok(Beep { frames: out.0 })
}

/// The beep (encoded on first use; an encoder failure gives a silent, empty beep).
pub fn beep() -> Arc<Beep> {
    static BEEP_FRAMES: OnceLock<Arc<Beep>> = OnceLock::new();
    Arc::clone(BEEP_FRAMES.get_or_init(|| {
        Arc::new(make().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot encode the beep");
            Beep { frames: Vec::new() }
        }))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_beep_is_about_400_ms() {
        let n = beep().frame_count().unwrap_or(0);
        assert!((20..=23).contains(&n), "{n} frames");
    }
}
