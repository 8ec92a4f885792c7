//! What the caller chooses: encoder settings and limits on untrusted input.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{AudioError, Result};

/// How many channels the prepared audio keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelMode {
    /// Downmix everything to one channel (the default: robots speak).
    #[default]
    Mono,
    /// Keep two channels: stereo sources stay as they are, mono is duplicated, surround is
    /// downmixed with ITU-R BS.775 weights.
    Stereo,
}

impl ChannelMode {
    /// Number of output channels (1 or 2).
    pub fn count(self) -> usize {
        match self {
            ChannelMode::Mono => 1,
            ChannelMode::Stereo => 2,
        }
    }
}

/// The kind of signal, which picks the libopus application mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Application {
    /// Speech (`OPUS_APPLICATION_VOIP`): prompts, text to speech. The default.
    #[default]
    Voip,
    /// Music or mixed content (`OPUS_APPLICATION_AUDIO`): hold music, jingles.
    Audio,
}

/// Encoder settings. Two prepared assets are the same only if content *and* settings are equal;
/// [`Settings::cache_key_part`] is what the cache hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Mono (default) or stereo output.
    pub channels: ChannelMode,
    /// Target bitrate in bits per second (VBR). Default 32000. Allowed 6000..=510000.
    pub bitrate: u32,
    /// Speech (default) or music.
    pub application: Application,
    /// libopus complexity 0..=10. Default 10: it costs little and is worth 0.4 PESQ.
    pub complexity: u8,
    /// In-band forward error correction, tuned for this expected packet loss in percent (1..=100).
    /// `None` (default) disables FEC: it takes bits from the signal when nothing is lost.
    pub fec_loss_percent: Option<u8>,
    /// Discontinuous transmission: near-silent frames shrink to 1-2 bytes.
    pub dtx: bool,
    /// Normalise the integrated loudness (EBU R128) to this target in LUFS, e.g. -16.
    /// `None` (default) keeps the level of the source.
    pub normalize_lufs: Option<f32>,
}

/// The loudness target used when normalisation is asked for without a value.
pub const DEFAULT_TARGET_LUFS: f32 = -16.0;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            channels: ChannelMode::Mono,
            bitrate: 32_000,
            application: Application::Voip,
            complexity: 10,
            fec_loss_percent: None,
            dtx: false,
            normalize_lufs: None,
        }
    }
}

impl Settings {
    /// Checks every field is in range.
    pub fn validate(&self) -> Result<()> {
        if !(6_000..=510_000).contains(&self.bitrate) {
            return Err(AudioError::InvalidSettings(format!(
                "bitrate {} b/s is outside 6000..=510000",
                self.bitrate
            )));
        }
        if self.complexity > 10 {
            return Err(AudioError::InvalidSettings(format!(
                "complexity {} is outside 0..=10",
                self.complexity
            )));
        }
        if let Some(p) = self.fec_loss_percent
            && !(1..=100).contains(&p)
        {
            return Err(AudioError::InvalidSettings(format!(
                "FEC packet loss {p}% is outside 1..=100"
            )));
        }
        if let Some(l) = self.normalize_lufs
            && (!l.is_finite() || !(-70.0..=0.0).contains(&l))
        {
            return Err(AudioError::InvalidSettings(format!(
                "loudness target {l} LUFS is outside -70..=0"
            )));
        }
        Ok(())
    }

    /// A canonical text form of the settings, part of the cache key. It changes whenever the
    /// encoded output could change, including the crate's pipeline version.
    pub fn cache_key_part(&self) -> String {
        format!(
            "pipeline=1;ch={};br={};app={:?};cx={};fec={};dtx={};norm={}",
            self.channels.count(),
            self.bitrate,
            self.application,
            self.complexity,
            self.fec_loss_percent.map_or(0, u32::from),
            u8::from(self.dtx),
            self.normalize_lufs
                // the gain comes from the opening LOUDNESS_WINDOW (30 s) since streaming
                .map_or_else(|| "off".to_string(), |l| format!("{l:.2}@30s")),
        )
    }
}

/// Limits on untrusted input. Anything beyond them fails with
/// [`AudioError::LimitExceeded`] (or [`AudioError::Unsupported`] for too low a rate) instead of
/// using unbounded time or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted duration. Default one hour.
    pub max_duration: Duration,
    /// Most channels accepted. Default 8.
    pub max_channels: usize,
    /// Highest sample rate accepted, in Hz. Default 192000.
    pub max_sample_rate: u32,
    /// Lowest sample rate accepted, in Hz. Default 8000.
    pub min_sample_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration: Duration::from_secs(3600),
            max_channels: 8,
            max_sample_rate: 192_000,
            min_sample_rate: 8_000,
        }
    }
}

impl Limits {
    /// The maximum number of frames (samples per channel) at `rate`.
    pub fn max_frames(&self, rate: u32) -> u64 {
        let ms = self
            .max_duration
            .as_millis()
            .min(u128::from(u64::MAX / 200_000)) as u64;
        ms.saturating_mul(u64::from(rate)) / 1000
    }

    /// Checks a stream's rate and channel count.
    pub fn check_format(&self, rate: u32, channels: usize) -> Result<()> {
        if channels == 0 {
            return Err(AudioError::Corrupt(
                "the stream declares zero channels".into(),
            ));
        }
        if channels > self.max_channels {
            return Err(AudioError::LimitExceeded(format!(
                "{channels} channels, at most {} are accepted",
                self.max_channels
            )));
        }
        if rate > self.max_sample_rate {
            return Err(AudioError::LimitExceeded(format!(
                "sample rate {rate} Hz, at most {} Hz is accepted",
                self.max_sample_rate
            )));
        }
        if rate < self.min_sample_rate {
            return Err(AudioError::Unsupported(format!(
                "sample rate {rate} Hz, at least {} Hz is needed",
                self.min_sample_rate
            )));
        }
        Ok(())
    }

    /// The error for a stream longer than the limit.
    pub(crate) fn too_long(&self, what: &str) -> AudioError {
        AudioError::LimitExceeded(format!(
            "{what} is longer than the {} s limit",
            self.max_duration.as_secs_f64()
        ))
    }
}
