//! Streaming conversion to 48 kHz with rubato's FFT resampler, exact in length and timing.
//!
//! rubato's `Fft` delays its output by `output_delay()` frames and only emits whole chunks.
//! [`To48k`] drops that delay at the start and, on [`finish`](To48k::finish), feeds the last
//! partial chunk and then silence until exactly `ceil(frames_in · 48000 / rate)` frames have come
//! out. Sources already at 48 kHz pass straight through.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::error::{AudioError, Result};

/// The output rate of the whole pipeline.
pub const OUTPUT_RATE: u32 = 48_000;

/// Input frames per resampler call.
const CHUNK: usize = 1024;

/// A streaming resampler from `rate` to 48 kHz for interleaved `f32`.
pub struct To48k {
    channels: usize,
    rate: u32,
    fft: Option<Box<Fft<f32>>>,
    chunk_in: usize,
    inbuf: Vec<f32>,
    in_fill: usize,
    outbuf: Vec<f32>,
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl std::fmt::Debug for To48k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("To48k")
            .field("channels", &self.channels)
            .field("rate", &self.rate)
            .field("frames_in", &self.frames_in)
            .field("frames_out", &self.frames_out)
            .finish_non_exhaustive()
    }
}

fn rs_err(e: impl std::fmt::Display) -> AudioError {
    AudioError::Codec(format!("resampler: {e}"))
}

impl To48k {
    /// A resampler for `channels` interleaved channels at `rate` Hz.
    pub fn new(rate: u32, channels: usize) -> Result<Self> {
        if rate == 0 || channels == 0 {
            return Err(AudioError::Corrupt(format!(
                "cannot resample {channels} channels at {rate} Hz"
            )));
        }
        let (fft, chunk_in, out_max, delay) = if rate == OUTPUT_RATE {
            (None, 0, 0, 0)
        } else {
            let fft = Fft::<f32>::new(
                rate as usize,
                OUTPUT_RATE as usize,
                CHUNK,
                channels,
                FixedSync::Input,
            )
            .map_err(rs_err)?;
            let chunk_in = fft.input_frames_next();
            let out_max = fft.output_frames_max();
            let delay = fft.output_delay();
            (Some(Box::new(fft)), chunk_in, out_max, delay)
        };
        Ok(To48k {
            channels,
            rate,
            fft,
            chunk_in,
            inbuf: vec![0.0; chunk_in * channels],
            in_fill: 0,
            outbuf: vec![0.0; out_max * channels],
            delay_left: delay,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Frames of output owed for the input so far: `ceil(frames_in · 48000 / rate)`.
    pub fn expected_output(&self) -> u64 {
        let num = u128::from(self.frames_in) * u128::from(OUTPUT_RATE);
        num.div_ceil(u128::from(self.rate)) as u64
    }

    /// Frames emitted so far.
    pub fn frames_out(&self) -> u64 {
        self.frames_out
    }

    /// Pushes interleaved input; `emit` receives interleaved 48 kHz output.
    pub fn push(
        &mut self,
        mut input: &[f32],
        emit: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        let ch = self.channels;
        let frames = input.len() / ch;
        self.frames_in += frames as u64;
        if self.fft.is_none() {
            self.frames_out += frames as u64;
            return emit(&input[..frames * ch]);
        }
        while !input.is_empty() {
            let want = (self.chunk_in - self.in_fill) * ch;
            let take = want.min(input.len() / ch * ch);
            if take == 0 {
                break;
            }
            let at = self.in_fill * ch;
            self.inbuf[at..at + take].copy_from_slice(&input[..take]);
            self.in_fill += take / ch;
            input = &input[take..];
            if self.in_fill == self.chunk_in {
                self.run(None, emit)?;
                self.in_fill = 0;
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        partial: Option<usize>,
        emit: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        let ch = self.channels;
        let Some(fft) = self.fft.as_mut() else {
            return Ok(());
        };
        let in_adapter =
            InterleavedSlice::new(&self.inbuf[..], ch, self.chunk_in).map_err(rs_err)?;
        let out_frames = self.outbuf.len() / ch;
        let mut out_adapter =
            InterleavedSlice::new_mut(&mut self.outbuf[..], ch, out_frames).map_err(rs_err)?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, written) = fft
            .process_into_buffer(&in_adapter, &mut out_adapter, indexing.as_ref())
            .map_err(rs_err)?;
        let skip = self.delay_left.min(written);
        self.delay_left -= skip;
        let mut frames = written - skip;
        if partial.is_some() {
            // during the flush, stop exactly at the owed length
            let owed = self.expected_output().saturating_sub(self.frames_out);
            frames = frames.min(usize::try_from(owed).unwrap_or(usize::MAX));
        }
        if frames > 0 {
            self.frames_out += frames as u64;
            emit(&self.outbuf[skip * ch..(skip + frames) * ch])?;
        }
        Ok(())
    }

    /// Flushes the tail: the last partial chunk, then silence until the owed length is out.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        if self.fft.is_none() {
            return Ok(());
        }
        let ch = self.channels;
        let fill = self.in_fill;
        self.inbuf[fill * ch..].fill(0.0);
        self.run(Some(fill), emit)?;
        self.in_fill = 0;
        self.inbuf.fill(0.0);
        // Each silent chunk yields about a chunk of output; the delay is below two chunks.
        let mut guard = 0;
        while self.frames_out < self.expected_output() {
            self.run(Some(0), emit)?;
            guard += 1;
            if guard > 64 {
                return Err(AudioError::Codec("resampler did not drain".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: u32, ch: usize, frames: usize, push: usize) -> (Vec<f32>, u64) {
        let mut r = To48k::new(rate, ch).expect("resampler");
        let input: Vec<f32> = (0..frames * ch)
            .map(|i| ((i / ch) as f32 * 0.01).sin() * 0.5)
            .collect();
        let mut out = Vec::new();
        let mut emit = |s: &[f32]| {
            out.extend_from_slice(s);
            Ok(())
        };
        for c in input.chunks(push * ch) {
            r.push(c, &mut emit).expect("push");
        }
        r.finish(&mut emit).expect("finish");
        let expected = r.expected_output();
        (out, expected)
    }

    #[test]
    fn exact_length_for_every_rate_and_push_size() {
        for rate in [
            8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000,
        ] {
            for (frames, push) in [(1, 1), (100, 7), (4000, 1024), (10_000, 333)] {
                let (out, expected) = run(rate, 2, frames, push);
                assert_eq!(
                    out.len() as u64,
                    expected * 2,
                    "rate {rate} frames {frames}"
                );
                let want = (frames as u64 * 48000).div_ceil(u64::from(rate));
                assert_eq!(expected, want);
            }
        }
    }

    #[test]
    fn no_shift_on_a_ramp() {
        // a slow sine at 16 kHz must come out aligned: sample 3k of output ≈ input sample k
        let (out, _) = run(16000, 1, 16000, 500);
        for k in [1000usize, 5000, 9000] {
            let want = (k as f32 * 0.01).sin() * 0.5;
            assert!(
                (out[3 * k] - want).abs() < 1e-3,
                "k={k} got {} want {want}",
                out[3 * k]
            );
        }
    }
}
