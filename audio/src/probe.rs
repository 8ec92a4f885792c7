//! [`probe`]: what a file is, how long it really is, and how loud.

use serde::Serialize;

use crate::error::Result;
use crate::input::Input;
use crate::prepared::measure_loudness;
use crate::settings::{ChannelMode, Limits};

/// The facts about an audio file, from decoding all of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeInfo {
    /// Container short name (`wav`, `mp3`, `flac`, `ogg`, `isomp4`, `adts`).
    pub format: String,
    /// Codec short name (`pcm_s16le`, `mp3`, `flac`, `vorbis`, `aac`, `opus`).
    pub codec: String,
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channel count.
    pub channels: usize,
    /// True length in frames (samples per channel), counted by decoding.
    pub frames: u64,
    /// True length in seconds.
    pub duration_seconds: f64,
    /// The length the container declares, in frames, if any.
    pub declared_frames: Option<u64>,
    /// Integrated loudness (EBU R128) of the stereo (or mono) downmix, LUFS.
    pub loudness_lufs: Option<f64>,
    /// Sample peak of that downmix at 48 kHz, dBFS.
    pub sample_peak_dbfs: Option<f64>,
}

/// Probes `input` with the default limits.
pub fn probe(input: impl Into<Input>) -> Result<ProbeInfo> {
    probe_with(input, &Limits::default())
}

/// Decodes `input` completely (streamed) to report its true duration and loudness.
pub fn probe_with(input: impl Into<Input>, limits: &Limits) -> Result<ProbeInfo> {
    let mut input = input.into();
    let channels = crate::Decoder::open(&mut input, limits)?.info().channels;
    let mode = if channels >= 2 {
        ChannelMode::Stereo
    } else {
        ChannelMode::Mono
    };
    let (info, frames, loud) = measure_loudness(input, mode, limits)?;
    let peak = (loud.sample_peak > 0.0).then(|| loud.sample_peak_dbfs());
    Ok(ProbeInfo {
        duration_seconds: frames as f64 / f64::from(info.sample_rate.max(1)),
        format: info.format,
        codec: info.codec,
        sample_rate: info.sample_rate,
        channels: info.channels,
        frames,
        declared_frames: info.declared_frames,
        loudness_lufs: loud.integrated_lufs,
        sample_peak_dbfs: peak,
    })
}
