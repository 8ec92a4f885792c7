//! Prepared audio for the robot: any common audio file in, 20 ms Opus frames at 48 kHz out,
//! encoded once and cached.
//!
//! ```text
//!  file / bytes / reader
//!        │  Input
//!        ▼
//!  ┌──────────────┐  WAV, MP3, FLAC, Ogg Vorbis, AAC (M4A/ADTS): symphonia, streamed
//!  │   Decoder    │  Ogg Opus: ogg + libopus; exact length (gapless, MP4 edit list, pre-skip)
//!  └──────┬───────┘  limits: duration, channels, rate → AudioError, never a panic
//!         │ f32 interleaved, source rate, 1..8 channels
//!  ┌──────▼───────┐
//!  │   Downmix    │  mono (default) or stereo; ITU-R BS.775 for surround, LFE dropped
//!  └──────┬───────┘
//!  ┌──────▼───────┐
//!  │    To48k     │  rubato FFT resampler; start delay trimmed, tail flushed: exact length
//!  └──────┬───────┘
//!         │ (optional) × gain from an EBU R128 loudness pass
//!  ┌──────▼───────┐
//!  │ FrameEncoder │  libopus: 20 ms, VBR, complexity 10, bandwidth capped from the source,
//!  └──────┬───────┘  Voip by default, optional FEC and DTX
//!         ▼
//!   PreparedAudio ──► frames (Bytes slices, no copy) ──► the robot's pacer / RTP
//!         │  ▲
//!         ▼  │  write_ogg / read_ogg (RFC 7845: OpusHead, OpusTags, granules, end trim)
//!   PreparedCache: memory + <dir>/<sha256(content, settings)>.opus
//! ```
//!
//! The usual entry points are [`prepare`] (one asset), [`PreparedCache::get_or_prepare`] (what
//! the robot agent calls), [`probe`] (what a file is, its true length and loudness) and
//! [`Decoder`] (streamed PCM). All errors are one [`AudioError`], whose variant tells the
//! caller what to do. The `audio` binary wraps these for testers: `audio probe`, `audio
//! prepare`, `audio decode`. See `docs/audio.md` for the design and measurements.
//!
//! ```no_run
//! # fn main() -> Result<(), audio::AudioError> {
//! let cache = audio::PreparedCache::with_dir("/var/cache/dapi-audio")?;
//! let prompt = cache.get_or_prepare(std::path::Path::new("welcome.mp3"), &audio::Settings::default())?;
//! let mut playhead = prompt.playhead(0);
//! while let Some(frame) = playhead.next() {
//!     // send `frame` (bytes::Bytes) on the next 20 ms deadline
//!     # let _ = frame;
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod cache;
mod decode;
mod downmix;
mod encode;
mod error;
mod gain;
mod growing;
mod input;
mod loudness;
mod mp4;
pub mod ogg_opus;
mod pcm;
mod prepared;
mod probe;
mod resample;
mod settings;
mod stream;
pub mod wav;

pub use cache::{CacheStats, PreparedCache, Served};
pub use decode::{Decoder, SourceInfo};
pub use downmix::{Downmix, Speaker};
pub use encode::{FrameEncoder, MAX_PACKET, PacketSink, max_bandwidth_for};
pub use error::{AudioError, Result};
pub use gain::GainStage;
pub use growing::{GrowingReader, GrowingWriter, growing};
pub use input::{Input, ReadSeek};
pub use loudness::{Loudness, LoudnessMeter};
pub use ogg_opus::FRAME_SAMPLES;
pub use pcm::{PCM_RATES, PcmDecoder, PcmEncoder, frame_samples, opus_packet_samples};
pub use prepared::{
    FRAME_DURATION, Frames, LOUDNESS_WINDOW, Normalization, Playhead, PreparedAudio, Progress,
    SourceSummary, measure_loudness, measure_opening, prepare, prepare_with,
};
pub use probe::{ProbeInfo, probe, probe_with};
pub use resample::{OUTPUT_RATE, To48k};
pub use settings::{Application, ChannelMode, DEFAULT_TARGET_LUFS, Limits, Settings};
pub use stream::{FrameRead, StreamingAudio};
