//! [`PreparedAudio`]: an asset decoded, resampled and encoded once, ready to be paced out.

use std::io::{Read, Seek, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, SourceInfo};
use crate::downmix::Downmix;
use crate::encode::{FrameEncoder, PacketSink};
use crate::error::{AudioError, Result};
use crate::input::Input;
use crate::loudness::{Loudness, LoudnessMeter};
use crate::ogg_opus::{
    FRAME_SAMPLES, OggOpusReader, OggOpusWriter, OpusHead, OpusTags, random_serial,
};
use crate::resample::{OUTPUT_RATE, To48k};
use crate::settings::{Limits, Settings};

/// Duration of one prepared frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Where the encoded audio came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// Container short name.
    pub format: String,
    /// Codec short name.
    pub codec: String,
    /// Source sample rate, Hz.
    pub sample_rate: u32,
    /// Source channel count.
    pub channels: usize,
    /// Frames decoded from the source (its true length at its own rate).
    pub frames: u64,
}

/// What loudness normalisation measured (over the opening [`LOUDNESS_WINDOW`]) and did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Integrated loudness of the downmixed source's opening [`LOUDNESS_WINDOW`], LUFS
    /// (`None`: silence).
    pub measured_lufs: Option<f64>,
    /// The target asked for, LUFS.
    pub target_lufs: f32,
    /// Gain applied, dB. Limited so the sample peak stays at or below -1 dBFS.
    pub gain_db: f32,
}

/// Progress of a long operation, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Which pass: 1 of 1, or 1 and 2 of 2 with normalisation.
    pub pass: u8,
    /// Number of passes.
    pub passes: u8,
    /// Source audio decoded so far in this pass.
    pub done: Duration,
    /// The source's declared length, when the container gives one.
    pub total: Option<Duration>,
}

/// Encoded 20 ms Opus frames of one asset, with what is needed to play, store and resume them.
///
/// All packets live in one shared [`Bytes`] buffer: [`frame_bytes`](Self::frame_bytes) hands
/// out a reference-counted slice without copying or allocating, which is the robot's per-frame
/// path. Frame `i` starts at `i × 20 ms` (RTP timestamp `i × 960`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedAudio {
    data: Bytes,
    ends: Vec<u32>,
    samples: u64,
    pre_skip: u16,
    channels: u8,
    settings: Settings,
    source: SourceSummary,
    normalization: Option<Normalization>,
    key: Option<String>,
}

impl PreparedAudio {
    /// Assembles an encode's packets (`data`, cut at `ends`) and what it recorded.
    pub(crate) fn from_parts(
        data: Bytes,
        ends: Vec<u32>,
        e: Encoded,
        settings: Settings,
        normalization: Option<Normalization>,
    ) -> Self {
        PreparedAudio {
            data,
            ends,
            samples: e.samples,
            pre_skip: e.pre_skip,
            channels: e.channels,
            settings,
            source: e.source,
            normalization,
            key: None,
        }
    }

    /// Number of 20 ms frames (packets).
    pub fn frame_count(&self) -> usize {
        self.ends.len()
    }

    /// Frame `i`, borrowed.
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.data.get(start..end)
    }

    /// Frame `i` as a shared [`Bytes`] slice (no copy, no allocation).
    pub fn frame_bytes(&self, i: usize) -> Option<Bytes> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (end <= self.data.len() && start <= end).then(|| self.data.slice(start..end))
    }

    /// All frames from the first.
    pub fn frames(&self) -> Frames<'_> {
        self.frames_from(0)
    }

    /// Frames from index `start` on (resuming mid-asset); empty if `start` is past the end.
    pub fn frames_from(&self, start: usize) -> Frames<'_> {
        Frames {
            audio: self,
            next: start,
        }
    }

    /// The frame that is playing at `offset` from the start.
    pub fn frame_index_at(&self, offset: Duration) -> usize {
        (offset.as_micros() / FRAME_DURATION.as_micros()).min(self.ends.len() as u128) as usize
    }

    /// A cursor that owns a share of the audio, for a robot that plays it over time.
    pub fn playhead(self: &Arc<Self>, start: usize) -> Playhead {
        Playhead {
            audio: Arc::clone(self),
            next: start,
        }
    }

    /// Real length of the audio (without the encoder's padding), at 48 kHz.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            (u128::from(self.samples) * 1_000_000_000 / u128::from(OUTPUT_RATE)) as u64,
        )
    }

    /// Real samples per channel at 48 kHz (the Ogg end granule minus pre-skip).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Samples the decoder drops at the start (the encoder's lookahead).
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Encoded channels (1 or 2).
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// The settings it was encoded with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The source it was made from.
    pub fn source(&self) -> &SourceSummary {
        &self.source
    }

    /// Loudness normalisation applied, if any.
    pub fn normalization(&self) -> Option<&Normalization> {
        self.normalization.as_ref()
    }

    /// The cache key, when it came through a [`PreparedCache`](crate::PreparedCache).
    pub fn cache_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub(crate) fn set_cache_key(&mut self, key: String) {
        self.key = Some(key);
    }

    /// Total encoded bytes.
    pub fn encoded_bytes(&self) -> usize {
        self.data.len()
    }

    /// Average bitrate of the encoded frames, bits per second.
    pub fn average_bitrate(&self) -> f64 {
        if self.ends.is_empty() {
            return 0.0;
        }
        self.data.len() as f64 * 8.0 / (self.ends.len() as f64 * 0.02)
    }

    /// Writes an Ogg Opus file (RFC 7845) with a random stream serial.
    pub fn write_ogg<W: Write>(&self, out: W) -> Result<W> {
        self.write_ogg_with_serial(out, random_serial())
    }

    /// Writes an Ogg Opus file with the given stream serial. The settings, the source summary
    /// and the cache key go into `OpusTags` comments so that [`read_ogg`](Self::read_ogg) gets
    /// them back.
    pub fn write_ogg_with_serial<W: Write>(&self, out: W, serial: u32) -> Result<W> {
        let head = OpusHead::new(self.channels, self.pre_skip, self.source.sample_rate);
        let mut comments = vec!["ENCODER=dapi-audio".to_string()];
        if let Ok(s) = serde_json::to_string(&self.settings) {
            comments.push(format!("DAPI_SETTINGS={s}"));
        }
        if let Ok(s) = serde_json::to_string(&self.source) {
            comments.push(format!("DAPI_SOURCE={s}"));
        }
        if let Some(n) = &self.normalization
            && let Ok(s) = serde_json::to_string(n)
        {
            comments.push(format!("DAPI_NORMALIZATION={s}"));
        }
        if let Some(k) = &self.key {
            comments.push(format!("DAPI_KEY={k}"));
        }
        let tags = OpusTags {
            vendor: format!(
                "dapi-audio {} ({})",
                env!("CARGO_PKG_VERSION"),
                opus::version()
            ),
            comments,
        };
        let io = |e| AudioError::io("<ogg output>", e);
        let mut w = OggOpusWriter::new(out, &head, &tags, serial).map_err(io)?;
        for f in self.frames() {
            w.write_packet(f).map_err(io)?;
        }
        w.finish(self.samples).map_err(io)
    }

    /// Reads an Ogg Opus file of 20 ms mono or stereo packets (ours, `opusenc`'s, ffmpeg's)
    /// back into frames without decoding them.
    pub fn read_ogg<R: Read + Seek>(input: R) -> Result<Self> {
        let mut reader = OggOpusReader::new(input)?;
        let head = reader.head().clone();
        if head.channels > 2 || head.mapping_family != 0 {
            return Err(AudioError::Unsupported(format!(
                "prepared audio is mono or stereo; this Ogg Opus stream has {} channels (family {})",
                head.channels, head.mapping_family
            )));
        }
        let tags = reader.tags().clone();
        let mut data = BytesMut::new();
        let mut ends = Vec::new();
        let mut last_granule = 0;
        while let Some(p) = reader.next_packet()? {
            let n = opus::packet::get_nb_samples(&p.data, OUTPUT_RATE)
                .map_err(|e| AudioError::Corrupt(format!("Opus packet {}: {e}", ends.len() + 1)))?;
            if n != FRAME_SAMPLES {
                return Err(AudioError::Unsupported(format!(
                    "packet {} lasts {} ms; prepared audio needs 20 ms packets",
                    ends.len() + 1,
                    n / 48
                )));
            }
            data.extend_from_slice(&p.data);
            let end = u32::try_from(data.len())
                .map_err(|_| AudioError::LimitExceeded("more than 4 GiB of Opus packets".into()))?;
            ends.push(end);
            last_granule = p.page_granule;
        }
        if ends.is_empty() {
            return Err(AudioError::Empty(
                "the Ogg Opus stream has no audio packets".into(),
            ));
        }
        let max = ends.len() as u64 * FRAME_SAMPLES as u64;
        let samples = last_granule
            .min(max)
            .saturating_sub(u64::from(head.pre_skip));
        let settings = tags
            .get("DAPI_SETTINGS")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| Settings {
                channels: if head.channels == 2 {
                    crate::ChannelMode::Stereo
                } else {
                    crate::ChannelMode::Mono
                },
                ..Settings::default()
            });
        let source = tags
            .get("DAPI_SOURCE")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(SourceSummary {
                format: "ogg".into(),
                codec: "opus".into(),
                sample_rate: if head.input_sample_rate == 0 {
                    OUTPUT_RATE
                } else {
                    head.input_sample_rate
                },
                channels: usize::from(head.channels),
                frames: samples,
            });
        let normalization = tags
            .get("DAPI_NORMALIZATION")
            .and_then(|s| serde_json::from_str(s).ok());
        Ok(PreparedAudio {
            data: data.freeze(),
            ends,
            samples,
            pre_skip: head.pre_skip,
            channels: head.channels,
            settings,
            source,
            normalization,
            key: tags.get("DAPI_KEY").map(str::to_string),
        })
    }
}

/// Iterator over a [`PreparedAudio`]'s frames as borrowed slices.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    audio: &'a PreparedAudio,
    next: usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let f = self.audio.frame(self.next)?;
        self.next += 1;
        Some(f)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.audio.frame_count().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Frames<'_> {}

/// An owned position in a shared [`PreparedAudio`]: what a robot session keeps between frames,
/// and what it saves to resume later.
#[derive(Debug, Clone)]
pub struct Playhead {
    audio: Arc<PreparedAudio>,
    next: usize,
}

impl Playhead {
    /// Index of the frame the next call returns.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Moves to frame `index` (past the end means finished).
    pub fn seek(&mut self, index: usize) {
        self.next = index;
    }

    /// True once every frame has been returned.
    pub fn is_finished(&self) -> bool {
        self.next >= self.audio.frame_count()
    }

    /// RTP timestamp offset of the next frame from the start of the asset (960 per frame).
    pub fn timestamp_offset(&self) -> u64 {
        self.next as u64 * FRAME_SAMPLES as u64
    }

    /// The audio being played.
    pub fn audio(&self) -> &Arc<PreparedAudio> {
        &self.audio
    }
}

impl Iterator for Playhead {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        let f = self.audio.frame_bytes(self.next)?;
        self.next += 1;
        Some(f)
    }
}

/// Collects packets into one buffer.
struct Collector {
    data: BytesMut,
    ends: Vec<u32>,
}

impl PacketSink for Collector {
    fn reserve(&mut self, frames: usize, bytes: usize) {
        self.data.reserve(bytes);
        self.ends.reserve(frames);
    }
    fn packet(&mut self, data: &[u8]) -> Result<()> {
        self.data.extend_from_slice(data);
        let end = u32::try_from(self.data.len())
            .map_err(|_| AudioError::LimitExceeded("more than 4 GiB of Opus packets".into()))?;
        self.ends.push(end);
        Ok(())
    }
}

fn declared_total(info: &SourceInfo) -> Option<Duration> {
    info.declared_frames
        .filter(|_| info.sample_rate > 0)
        .map(|f| Duration::from_secs_f64(f as f64 / f64::from(info.sample_rate)))
}

/// Samples per block handed from the decoding thread to the encoding one.
const BLOCK_SAMPLES: usize = 9_600;

/// Blocks in flight between the two threads (bounds memory: a few hundred kB).
const BLOCKS_IN_FLIGHT: usize = 4;

enum Handoff {
    /// Decoding started: the source rate and declared length, for progress reports.
    Started(u32, Option<Duration>),
    /// 48 kHz samples, and source frames decoded so far.
    Block(Vec<f32>, u64),
    /// The end: what was decoded.
    Done(SourceInfo, u64),
    /// The decoding side failed.
    Failed(AudioError),
}

/// Decodes, downmixes and resamples `input`, handing 48 kHz blocks to `sink`. Returns the
/// source info and frames decoded.
///
/// Decoding and resampling run on a scoped helper thread while `sink` (the Opus encoder, 86 %
/// of the work) runs on the caller's: the two overlap on a multi-core machine. Blocks travel
/// through a bounded channel and their buffers are sent back for reuse, so memory stays at a
/// few blocks and the steady state does not allocate.
pub(crate) fn run_to_48k(
    input: &mut Input,
    mode: crate::ChannelMode,
    limits: &Limits,
    pass: (u8, u8),
    progress: &mut dyn FnMut(Progress),
    sink: &mut dyn FnMut(&[f32]) -> Result<()>,
) -> Result<(SourceInfo, u64)> {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::sync_channel::<Handoff>(BLOCKS_IN_FLIGHT);
    let (give_back, take_back) = mpsc::channel::<Vec<f32>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let msg = match produce(input, mode, limits, &tx, &take_back) {
                Ok((info, frames)) => Handoff::Done(info, frames),
                Err(e) => Handoff::Failed(e),
            };
            // the receiver is gone if the sink failed: then nobody needs the result
            let _ = tx.send(msg);
        });
        // Leaving this closure early drops `rx`, which stops the producer at its next send.
        let mut next_report = 0u64;
        let mut rate = 0u32;
        let mut total = None;
        for msg in rx.iter() {
            match msg {
                Handoff::Started(r, t) => {
                    rate = r.max(1);
                    total = t;
                }
                Handoff::Block(block, done) => {
                    sink(&block)?;
                    let _ = give_back.send(block);
                    if done >= next_report && rate > 0 {
                        next_report = done + u64::from(rate) * 5;
                        progress(Progress {
                            pass: pass.0,
                            passes: pass.1,
                            done: Duration::from_secs_f64(done as f64 / f64::from(rate)),
                            total,
                        });
                    }
                }
                Handoff::Done(info, frames) => return Ok((info, frames)),
                Handoff::Failed(e) => return Err(e),
            }
        }
        Err(AudioError::Codec(
            "the decoding thread stopped without a result".into(),
        ))
    })
}

/// The decoding side of [`run_to_48k`].
fn produce(
    input: &mut Input,
    mode: crate::ChannelMode,
    limits: &Limits,
    tx: &std::sync::mpsc::SyncSender<Handoff>,
    recycled: &std::sync::mpsc::Receiver<Vec<f32>>,
) -> Result<(SourceInfo, u64)> {
    let stopped = || AudioError::Codec("the encoding side stopped".into());
    let mut dec = Decoder::open(input, limits)?;
    let info = dec.info().clone();
    tx.send(Handoff::Started(info.sample_rate, declared_total(&info)))
        .map_err(|_| stopped())?;
    let downmix = Downmix::new(&info.layout, mode);
    let mut rs = To48k::new(info.sample_rate, downmix.out_channels())?;
    let mut mixed = Vec::with_capacity(8192);
    let fresh = || Vec::with_capacity(BLOCK_SAMPLES + 8192);
    let mut block: Vec<f32> = fresh();
    let done = std::cell::Cell::new(0u64);
    {
        let mut emit = |s: &[f32]| -> Result<()> {
            block.extend_from_slice(s);
            if block.len() >= BLOCK_SAMPLES {
                let next = recycled.try_recv().map(|mut v| {
                    v.clear();
                    v
                });
                let full = std::mem::replace(&mut block, next.unwrap_or_else(|_| fresh()));
                tx.send(Handoff::Block(full, done.get()))
                    .map_err(|_| stopped())?;
            }
            Ok(())
        };
        while let Some(b) = dec.next_block()? {
            downmix.apply(b, &mut mixed);
            done.set(dec.frames_decoded());
            rs.push(&mixed, &mut emit)?;
        }
        rs.finish(&mut emit)?;
    }
    if !block.is_empty() {
        tx.send(Handoff::Block(block, done.get()))
            .map_err(|_| stopped())?;
    }
    Ok((info, dec.frames_decoded()))
}

/// Measures the loudness of `input` as it would be played in `mode` (downmixed, at 48 kHz).
pub fn measure_loudness(
    input: impl Into<Input>,
    mode: crate::ChannelMode,
    limits: &Limits,
) -> Result<(SourceInfo, u64, Loudness)> {
    let mut input = input.into();
    let mut meter = LoudnessMeter::new(OUTPUT_RATE, mode.count());
    let (info, frames) = run_to_48k(&mut input, mode, limits, (1, 1), &mut |_| {}, &mut |s| {
        meter.push(s);
        Ok(())
    })?;
    Ok((info, frames, meter.finish()))
}

/// Prepares `input` with `settings` and the default [`Limits`].
pub fn prepare(input: impl Into<Input>, settings: &Settings) -> Result<PreparedAudio> {
    prepare_with(input, settings, &Limits::default(), &mut |_| {})
}

/// Prepares `input`: decode → downmix → 48 kHz → (loudness gain) → 20 ms Opus frames.
///
/// With [`Settings::normalize_lufs`] the gain comes from a first pass over the opening
/// [`LOUDNESS_WINDOW`] of the input (the whole input when it is shorter), then the input is
/// read again to encode. Memory stays at a few buffers plus the encoded output, whatever the
/// length.
pub fn prepare_with(
    input: impl Into<Input>,
    settings: &Settings,
    limits: &Limits,
    progress: &mut dyn FnMut(Progress),
) -> Result<PreparedAudio> {
    prepare_input(&mut input.into(), settings, limits, progress)
}

/// How much of the input the loudness normalisation measures: its opening 30 s.
///
/// A gain measured over the whole file would hold back the first frame of a stream by the
/// decoding time of the whole file (a 30-minute MP3: seconds). The opening half minute is what
/// a listener hears first, is long enough for the gated EBU R128 measure to settle on speech,
/// and costs only its decoding (no encoding), tens of milliseconds. Batch preparation and streams use the same
/// window, so the same content and settings always give the same frames. See
/// docs/decisions.md.
pub const LOUDNESS_WINDOW: Duration = Duration::from_secs(30);

/// Measures the loudness of the first `window` of `input` as it would be played in `mode`
/// (downmixed, at 48 kHz), on the calling thread. Reads only as much of the input as needed.
pub fn measure_opening(
    input: &mut Input,
    mode: crate::ChannelMode,
    limits: &Limits,
    window: Duration,
) -> Result<Loudness> {
    let mut dec = Decoder::open(input, limits)?;
    let downmix = Downmix::new(&dec.info().layout, mode);
    let mut rs = To48k::new(dec.info().sample_rate, downmix.out_channels())?;
    let ch = downmix.out_channels();
    let want = (window.as_secs_f64() * f64::from(OUTPUT_RATE)) as usize;
    let mut meter = LoudnessMeter::new(OUTPUT_RATE, ch);
    let seen = std::cell::Cell::new(0usize);
    let mut mixed = Vec::with_capacity(8192);
    let mut feed = |s: &[f32]| -> Result<()> {
        let room = want.saturating_sub(seen.get()) * ch;
        let take = room.min(s.len());
        meter.push(&s[..take]);
        seen.set(seen.get() + take / ch);
        Ok(())
    };
    let mut ended = true;
    while let Some(b) = dec.next_block()? {
        downmix.apply(b, &mut mixed);
        rs.push(&mixed, &mut feed)?;
        if seen.get() >= want {
            ended = false;
            break;
        }
    }
    if ended {
        rs.finish(&mut feed)?;
    }
    Ok(meter.finish())
}

/// The gain (linear) and its record for `settings`, from a pass over the opening
/// [`LOUDNESS_WINDOW`] of `input`; unity and `None` without normalisation.
pub(crate) fn normalization_gain(
    input: &mut Input,
    settings: &Settings,
    limits: &Limits,
) -> Result<(f32, Option<Normalization>)> {
    let Some(target) = settings.normalize_lufs else {
        return Ok((1.0, None));
    };
    let l = measure_opening(input, settings.channels, limits, LOUDNESS_WINDOW)?;
    let mut gain_db = match l.integrated_lufs {
        Some(m) => (f64::from(target) - m) as f32,
        None => 0.0,
    };
    if l.sample_peak > 0.0 {
        let headroom = -1.0 - l.sample_peak_dbfs() as f32;
        gain_db = gain_db.min(headroom);
    }
    Ok((
        10f32.powf(gain_db / 20.0),
        Some(Normalization {
            measured_lufs: l.integrated_lufs,
            target_lufs: target,
            gain_db,
        }),
    ))
}

/// What an encode produced besides its packets.
pub(crate) struct Encoded {
    pub samples: u64,
    pub pre_skip: u16,
    pub channels: u8,
    pub source: SourceSummary,
}

/// Decodes, downmixes, resamples and encodes `input` into `sink` with a fixed `gain`. Calls
/// [`PacketSink::reserve`] once with the expected size when the container declares a length.
pub(crate) fn encode_input(
    input: &mut Input,
    settings: &Settings,
    limits: &Limits,
    gain: f32,
    pass: (u8, u8),
    progress: &mut dyn FnMut(Progress),
    sink: &mut dyn PacketSink,
) -> Result<Encoded> {
    // The encoder needs the content rate before the first sample: peek at the headers.
    let (content_rate, declared) = {
        let dec = Decoder::open(input, limits)?;
        (dec.info().content_rate, declared_total(dec.info()))
    };
    let mut enc = FrameEncoder::new(settings, content_rate)?;
    enc.set_gain(gain);
    // Reserve the expected output once, so that a long file does not double its buffer (and
    // briefly hold two copies) as it grows: VBR stays close to the target, +25 % for safety.
    if let Some(d) = declared {
        let secs = d.as_secs_f64().min(limits.max_duration.as_secs_f64());
        let bytes = (secs * f64::from(settings.bitrate) / 8.0 * 1.25) as usize + 4096;
        let frames = (secs * 50.0) as usize + 2;
        sink.reserve(frames.min(1 << 24), bytes.min(256 << 20));
    }
    let (info, frames) = run_to_48k(input, settings.channels, limits, pass, progress, &mut |s| {
        enc.push(s, sink)
    })?;
    let samples = enc.finish(sink)?;
    Ok(Encoded {
        samples,
        pre_skip: enc.lookahead(),
        channels: enc.channels() as u8,
        source: SourceSummary {
            format: info.format,
            codec: info.codec,
            sample_rate: info.sample_rate,
            channels: info.channels,
            frames,
        },
    })
}

/// [`prepare_with`] on an input that can be read again afterwards (the cache hashes it first).
pub(crate) fn prepare_input(
    input: &mut Input,
    settings: &Settings,
    limits: &Limits,
    progress: &mut dyn FnMut(Progress),
) -> Result<PreparedAudio> {
    settings.validate()?;
    let passes = if settings.normalize_lufs.is_some() {
        2
    } else {
        1
    };
    let (gain, normalization) = normalization_gain(input, settings, limits)?;
    let mut out = Collector {
        data: BytesMut::new(),
        ends: Vec::new(),
    };
    let e = encode_input(
        input,
        settings,
        limits,
        gain,
        (passes, passes),
        progress,
        &mut out,
    )?;
    Ok(PreparedAudio::from_parts(
        out.data.freeze(),
        out.ends,
        e,
        settings.clone(),
        normalization,
    ))
}
