//! Streamed decoding of any supported file to interleaved `f32` at the source's own rate.
//!
//! symphonia reads WAV, MP3, FLAC, Ogg Vorbis and AAC (MP4/M4A and ADTS); Ogg Opus goes through
//! [`OggOpusReader`](crate::ogg_opus::OggOpusReader) and libopus, since symphonia has no Opus
//! decoder. Memory stays bounded by one packet whatever the file's length.
//!
//! Exact length: MP3 gapless (LAME/Xing) and Vorbis granules are honoured by symphonia; for
//! AAC in MP4, whose edit list symphonia ignores, the edit list is read here (priming frames
//! dropped, the presentation length kept); without one, ffmpeg's 1024-frame priming is assumed.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use symphonia::core::audio::{Channels, Position};
use symphonia::core::codecs::audio::well_known as codec_ids;
use symphonia::core::codecs::audio::{AudioCodecId, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use crate::downmix::{Speaker, default_layout, vorbis_layout};
use crate::error::{AudioError, Result};
use crate::input::{Input, ReadSeek, Sniffed, known_unsupported, sniff};
use crate::mp4;
use crate::ogg_opus::OggOpusReader;
use crate::settings::Limits;

/// What the decoder found out about a source before decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Container short name: `wav`, `mp3`, `flac`, `ogg`, `isomp4`, `adts`...
    pub format: String,
    /// Codec short name: `pcm_s16le`, `mp3`, `flac`, `vorbis`, `aac`, `opus`...
    pub codec: String,
    /// Sample rate of the decoded audio, Hz.
    pub sample_rate: u32,
    /// Channel count of the decoded audio.
    pub channels: usize,
    /// What each channel is, for the downmix.
    pub layout: Vec<Speaker>,
    /// The rate the content was made at, when it differs from `sample_rate` (an Opus file
    /// records its original rate); it bounds the useful bandwidth.
    pub content_rate: u32,
    /// Length that the container declares, in frames, if any (an estimate for MP3 and ADTS).
    pub declared_frames: Option<u64>,
    /// True when `declared_frames` is exact (lossless headers, the MP4 sample table, an MP3
    /// LAME tag): decoding fewer frames then means the file was cut short.
    pub declared_exact: bool,
}

/// A streaming decoder over an [`Input`].
pub struct Decoder<'a> {
    info: SourceInfo,
    backend: Backend<'a>,
    limits: Limits,
    max_frames: u64,
    frames: u64,
}

enum Backend<'a> {
    Sym(Box<SymBackend<'a>>),
    Opus(Box<OpusBackend<'a>>),
}

impl std::fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("info", &self.info)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl<'a> Decoder<'a> {
    /// Opens `input` and reads its headers. Fails with [`AudioError::Empty`] on an empty file,
    /// [`AudioError::Unsupported`] or [`AudioError::Corrupt`] when it is not audio we read, and
    /// [`AudioError::LimitExceeded`] when the headers already show it is too big.
    pub fn open(input: &'a mut Input, limits: &Limits) -> Result<Self> {
        let mut opened = input.open()?;
        if opened.len == Some(0) {
            return Err(AudioError::Empty("the file is empty (0 bytes)".into()));
        }
        let head = opened.peek(64)?;
        if head.is_empty() {
            return Err(AudioError::Empty("the file is empty (0 bytes)".into()));
        }
        let (backend, info) = match sniff(&head) {
            Sniffed::OggOpus => {
                let (b, i) = OpusBackend::open(opened.source, limits)?;
                (Backend::Opus(Box::new(b)), i)
            }
            Sniffed::Other => {
                let (b, i) =
                    SymBackend::open(opened.source, opened.len, opened.extension, &head, limits)?;
                (Backend::Sym(Box::new(b)), i)
            }
        };
        limits.check_format(info.sample_rate, info.channels)?;
        let max_frames = limits.max_frames(info.sample_rate);
        if let Some(d) = info.declared_frames {
            // other declared lengths are estimates: allow 5% before refusing early
            let slack = if info.declared_exact {
                0
            } else {
                max_frames / 20
            };
            if d > max_frames + slack {
                return Err(limits.too_long("the declared duration"));
            }
        }
        Ok(Decoder {
            info,
            backend,
            limits: *limits,
            max_frames,
            frames: 0,
        })
    }

    /// The source's format, codec, rate and layout.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Frames (samples per channel) decoded so far.
    pub fn frames_decoded(&self) -> u64 {
        self.frames
    }

    /// The next block of interleaved samples in `[-1, 1)`, or `None` at the end. The slice is
    /// valid until the next call; its buffer is reused, so a steady stream does not allocate.
    pub fn next_block(&mut self) -> Result<Option<&[f32]>> {
        let ch = self.info.channels;
        let block = match &mut self.backend {
            Backend::Sym(b) => b.next(&self.info)?,
            Backend::Opus(b) => b.next()?,
        };
        match block {
            Some(range) => {
                self.frames += (range.len() / ch) as u64;
                if self.frames > self.max_frames {
                    return Err(self.limits.too_long("the audio"));
                }
                let buf = match &self.backend {
                    Backend::Sym(b) => &b.buf,
                    Backend::Opus(b) => &b.pcm,
                };
                Ok(buf.get(range))
            }
            None => {
                if self.frames == 0 {
                    return Err(match &self.backend {
                        Backend::Sym(b) if b.errors > 0 => AudioError::Corrupt(format!(
                            "no packet could be decoded ({} failed; first: {})",
                            b.errors,
                            b.first_error.as_deref().unwrap_or("?")
                        )),
                        _ => AudioError::Empty("the file has headers but no audio samples".into()),
                    });
                }
                if let Backend::Sym(b) = &self.backend {
                    b.check_complete(self.frames)?;
                }
                Ok(None)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// symphonia

struct SymSource<'a> {
    inner: Box<dyn ReadSeek + 'a>,
    len: Option<u64>,
}

impl Read for SymSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl Seek for SymSource<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}
impl MediaSource for SymSource<'_> {
    fn is_seekable(&self) -> bool {
        true
    }
    fn byte_len(&self) -> Option<u64> {
        self.len
    }
}

/// Consecutive undecodable packets tolerated before giving up on a file.
const MAX_BAD_PACKETS: u32 = 64;

struct SymBackend<'a> {
    format: Box<dyn FormatReader + 'a>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    buf: Vec<f32>,
    /// Frames still to drop at the start (AAC priming).
    skip: u64,
    /// Frames to emit at most (AAC presentation length).
    cap: Option<u64>,
    emitted: u64,
    errors: u32,
    bad_run: u32,
    first_error: Option<String>,
    declared: Option<u64>,
    /// True when `declared` is exact (lossless headers, the MP4 sample table, a LAME tag), so
    /// that decoding fewer frames means the file was cut short.
    exact_declared: bool,
    spec: Option<(u32, usize)>,
}

fn map_sym_open(e: SymError, head: &[u8]) -> AudioError {
    match e {
        SymError::Unsupported(m) if m.contains("moov") => AudioError::Corrupt(
            "truncated or incomplete MP4: it has no moov box (the index written at the end)".into(),
        ),
        SymError::Unsupported(m) => match known_unsupported(head) {
            Some(kind) => AudioError::Unsupported(format!("{kind} ({m})")),
            None if m.contains("format reader") || m.contains("probe") => AudioError::Corrupt(
                "not a recognised audio file (expected WAV, MP3, FLAC, Ogg Vorbis/Opus, M4A/MP4 or ADTS AAC)"
                    .into(),
            ),
            None => AudioError::Unsupported(m.to_string()),
        },
        SymError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt("truncated: the file ends inside its header".into())
        }
        SymError::IoError(e) => AudioError::io("<audio stream>", e),
        SymError::DecodeError(m) => AudioError::Corrupt(format!("malformed header: {m}")),
        SymError::LimitError(m) => AudioError::LimitExceeded(m.to_string()),
        other => AudioError::Corrupt(other.to_string()),
    }
}

/// A short name for a codec id.
pub(crate) fn codec_name(id: AudioCodecId) -> String {
    use codec_ids::*;
    let s = match id {
        CODEC_ID_PCM_S16LE => "pcm_s16le",
        CODEC_ID_PCM_S16BE => "pcm_s16be",
        CODEC_ID_PCM_S24LE => "pcm_s24le",
        CODEC_ID_PCM_S24BE => "pcm_s24be",
        CODEC_ID_PCM_S32LE => "pcm_s32le",
        CODEC_ID_PCM_S32BE => "pcm_s32be",
        CODEC_ID_PCM_U8 => "pcm_u8",
        CODEC_ID_PCM_S8 => "pcm_s8",
        CODEC_ID_PCM_F32LE => "pcm_f32le",
        CODEC_ID_PCM_F32BE => "pcm_f32be",
        CODEC_ID_PCM_F64LE => "pcm_f64le",
        CODEC_ID_PCM_F64BE => "pcm_f64be",
        CODEC_ID_PCM_ALAW => "pcm_alaw",
        CODEC_ID_PCM_MULAW => "pcm_mulaw",
        CODEC_ID_MP1 => "mp1",
        CODEC_ID_MP2 => "mp2",
        CODEC_ID_MP3 => "mp3",
        CODEC_ID_AAC => "aac",
        CODEC_ID_FLAC => "flac",
        CODEC_ID_VORBIS => "vorbis",
        CODEC_ID_OPUS => "opus",
        CODEC_ID_ALAC => "alac",
        CODEC_ID_AC3 => "ac3",
        CODEC_ID_EAC3 => "eac3",
        CODEC_ID_SPEEX => "speex",
        CODEC_ID_WAVPACK => "wavpack",
        CODEC_ID_ADPCM_IMA_WAV => "adpcm_ima_wav",
        CODEC_ID_ADPCM_MS => "adpcm_ms",
        _ => return format!("codec {id}"),
    };
    s.to_string()
}

fn is_exact_length_codec(id: AudioCodecId) -> bool {
    (codec_ids::CODEC_ID_PCM_S32LE..=codec_ids::CODEC_ID_PCM_MULAW).contains(&id)
        || id == codec_ids::CODEC_ID_FLAC
}

fn speaker_of_bit(bit: u32) -> Speaker {
    match bit {
        0 | 6 | 12 | 22 | 24 => Speaker::Left,
        1 | 7 | 14 | 23 | 25 => Speaker::Right,
        2 | 11 | 13 | 21 => Speaker::Center,
        3 | 18 => Speaker::Lfe,
        4 | 9 | 15 | 19 => Speaker::LeftSurround,
        5 | 10 | 17 | 20 => Speaker::RightSurround,
        8 | 16 => Speaker::RearCenter,
        _ => Speaker::Unknown,
    }
}

fn layout_of(ch: &Channels, count: usize) -> Vec<Speaker> {
    if let Channels::Positioned(pos) = ch {
        let bits = Position::bits(pos);
        let l: Vec<Speaker> = (0..64u32)
            .filter(|b| bits & (1u64 << b) != 0)
            .map(speaker_of_bit)
            .collect();
        if l.len() == count {
            return l;
        }
    }
    default_layout(count)
}

impl<'a> SymBackend<'a> {
    fn open(
        mut source: Box<dyn ReadSeek + 'a>,
        len: Option<u64>,
        extension: Option<String>,
        head: &[u8],
        limits: &Limits,
    ) -> Result<(Self, SourceInfo)> {
        let edit = if head.get(4..8) == Some(b"ftyp") {
            let e = mp4::read_audio_edit(&mut *source);
            source
                .seek(SeekFrom::Start(0))
                .map_err(|e| AudioError::io("<audio stream>", e))?;
            e
        } else {
            None
        };
        if head.starts_with(b"OggS") && !ogg_ends_cleanly(&mut *source)? {
            return Err(AudioError::Corrupt(
                "truncated: the Ogg stream does not end with a complete end-of-stream page".into(),
            ));
        }
        let mut hint = Hint::new();
        if let Some(ext) = extension.as_deref() {
            hint.with_extension(ext);
        }
        let mss = MediaSourceStream::new(
            Box::new(SymSource { inner: source, len }),
            Default::default(),
        );
        let format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| map_sym_open(e, head))?;
        let format_name = format.format_info().short_name.to_string();
        let track = format
            .default_track(TrackType::Audio)
            .or_else(|| format.first_track(TrackType::Audio))
            .ok_or_else(|| {
                AudioError::Unsupported(format!("the {format_name} file has no audio track"))
            })?
            .clone();
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| {
                AudioError::Unsupported("the audio track has no codec parameters".into())
            })?
            .clone();
        let codec = codec_name(params.codec);
        if params.codec == codec_ids::CODEC_ID_OPUS {
            return Err(AudioError::Unsupported(format!(
                "Opus in a {format_name} container (only Ogg Opus is read)"
            )));
        }
        if let Some(ch) = &params.channels {
            let n = ch.count();
            if n > limits.max_channels {
                return Err(AudioError::LimitExceeded(format!(
                    "{n} channels, at most {} are accepted",
                    limits.max_channels
                )));
            }
        }
        if let Some(r) = params.sample_rate {
            limits.check_format(r, params.channels.as_ref().map_or(1, |c| c.count().max(1)))?;
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| match e {
                SymError::Unsupported(_) => {
                    AudioError::Unsupported(format!("{codec} audio in a {format_name} file"))
                }
                other => AudioError::Corrupt(format!("cannot start the {codec} decoder: {other}")),
            })?;

        // AAC priming and padding (symphonia 0.6 ignores the MP4 edit list).
        let mut skip = 0;
        let mut cap = None;
        let mut declared = track.num_frames;
        if params.codec == codec_ids::CODEC_ID_AAC && track.delay.is_none() {
            let rate = params.sample_rate.unwrap_or(0);
            match edit {
                Some(e) if rate > 0 => {
                    let to_rate = |v: u64| {
                        (u128::from(v) * u128::from(rate) / u128::from(e.media_timescale.max(1)))
                            as u64
                    };
                    skip = to_rate(e.media_time);
                    let from_stts = track.num_frames.map(|n| n.saturating_sub(skip));
                    let from_elst = (!e.open_ended).then(|| to_rate(e.duration));
                    cap = match (from_stts, from_elst) {
                        // the sample table is exact when it agrees with the edit to a tick
                        (Some(a), Some(b)) if a.abs_diff(b) <= u64::from(rate / 1000 + 1) => {
                            Some(a)
                        }
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                _ if format_name == "isomp4" => {
                    skip = 1024;
                    cap = track.num_frames.map(|n| n.saturating_sub(1024));
                }
                _ => skip = 1024,
            }
            if cap.is_some() {
                declared = cap;
            }
        }
        let exact_declared = is_exact_length_codec(params.codec)
            || (params.codec == codec_ids::CODEC_ID_AAC
                && format_name == "isomp4"
                && cap.is_some())
            || (params.codec == codec_ids::CODEC_ID_MP3 && track.delay.is_some());
        let rate = params.sample_rate.unwrap_or(0);
        let channels = params.channels.as_ref().map_or(0, |c| c.count());
        let layout = params
            .channels
            .as_ref()
            .map_or_else(|| default_layout(channels), |c| layout_of(c, channels));
        let info = SourceInfo {
            format: format_name,
            codec,
            sample_rate: rate,
            channels,
            layout,
            content_rate: rate,
            declared_frames: declared,
            declared_exact: exact_declared,
        };
        Ok((
            SymBackend {
                format,
                decoder,
                track_id: track.id,
                buf: Vec::new(),
                skip,
                cap,
                emitted: 0,
                errors: 0,
                bad_run: 0,
                first_error: None,
                declared,
                exact_declared,
                spec: None,
            },
            info,
        ))
    }

    fn note_error(&mut self, e: &SymError) -> Result<()> {
        self.errors += 1;
        self.bad_run += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
        if self.bad_run > MAX_BAD_PACKETS {
            return Err(AudioError::Corrupt(format!(
                "{} packets in a row could not be decoded (first error: {})",
                self.bad_run,
                self.first_error.as_deref().unwrap_or("?")
            )));
        }
        Ok(())
    }

    fn next(&mut self, info: &SourceInfo) -> Result<Option<Range<usize>>> {
        loop {
            if let Some(cap) = self.cap
                && self.emitted >= cap
            {
                return Ok(None);
            }
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) | Err(SymError::ResetRequired) => return Ok(None),
                Err(SymError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if self.emitted == 0 && self.errors == 0 {
                        return Err(AudioError::Corrupt(
                            "truncated: the file ends before its first audio packet".into(),
                        ));
                    }
                    return Ok(None);
                }
                Err(SymError::IoError(e)) => return Err(AudioError::io("<audio stream>", e)),
                Err(e @ SymError::DecodeError(_)) => {
                    self.note_error(&e)?;
                    continue;
                }
                Err(SymError::LimitError(m)) => {
                    return Err(AudioError::LimitExceeded(m.to_string()));
                }
                Err(SymError::Unsupported(m)) => {
                    return Err(AudioError::Unsupported(m.to_string()));
                }
                Err(e) => return Err(AudioError::Corrupt(e.to_string())),
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let buf = match self.decoder.decode(&packet) {
                Ok(b) => b,
                Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => {
                    self.note_error(&e)?;
                    continue;
                }
                Err(SymError::ResetRequired) => {
                    self.decoder.reset();
                    continue;
                }
                Err(SymError::Unsupported(m)) => {
                    return Err(AudioError::Unsupported(format!("{}: {m}", info.codec)));
                }
                Err(SymError::LimitError(m)) => {
                    return Err(AudioError::LimitExceeded(m.to_string()));
                }
                Err(e) => return Err(AudioError::Corrupt(e.to_string())),
            };
            self.bad_run = 0;
            let frames = buf.frames();
            if frames == 0 {
                continue;
            }
            let spec = (buf.spec().rate(), buf.spec().channels().count());
            match self.spec {
                None => {
                    if spec != (info.sample_rate, info.channels) {
                        return Err(AudioError::Unsupported(format!(
                            "the decoded stream ({} Hz, {} ch) differs from its header ({} Hz, {} ch)",
                            spec.0, spec.1, info.sample_rate, info.channels
                        )));
                    }
                    self.spec = Some(spec);
                }
                Some(s) if s != spec => {
                    return Err(AudioError::Unsupported(
                        "the sample rate or channel count changes in the middle of the stream"
                            .into(),
                    ));
                }
                Some(_) => {}
            }
            buf.copy_to_vec_interleaved::<f32>(&mut self.buf);
            let ch = spec.1;
            let mut start = 0usize;
            let mut n = frames;
            if self.skip > 0 {
                let s = (self.skip.min(n as u64)) as usize;
                self.skip -= s as u64;
                start = s;
                n -= s;
            }
            if let Some(cap) = self.cap {
                n = n.min(cap.saturating_sub(self.emitted) as usize);
            }
            if n == 0 {
                continue;
            }
            self.emitted += n as u64;
            return Ok(Some(start * ch..(start + n) * ch));
        }
    }

    /// Lossless formats declare their exact length: fewer frames means the file was cut.
    fn check_complete(&self, frames: u64) -> Result<()> {
        if let Some(d) = self.declared
            && self.exact_declared
            && frames < d
        {
            return Err(AudioError::Corrupt(format!(
                "truncated: the header declares {d} frames but only {frames} could be read"
            )));
        }
        Ok(())
    }
}

/// True when the last Ogg page of the file is complete and has the end-of-stream flag.
pub(crate) fn ogg_ends_cleanly<R: Read + Seek + ?Sized>(r: &mut R) -> Result<bool> {
    let io = |e| AudioError::io("<ogg stream>", e);
    let len = r.seek(SeekFrom::End(0)).map_err(io)?;
    let from = len.saturating_sub(70_000);
    r.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    r.read_to_end(&mut tail).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut i = tail.len();
    while i >= 4 {
        i -= 1;
        if i + 4 > tail.len() || &tail[i..i + 4] != b"OggS" {
            continue;
        }
        let Some(&nseg) = tail.get(i + 26) else {
            return Ok(false);
        };
        let lacing = tail.get(i + 27..i + 27 + usize::from(nseg));
        let Some(lacing) = lacing else {
            return Ok(false);
        };
        let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let end = i + 27 + usize::from(nseg) + body;
        return Ok(end == tail.len() && tail[i + 5] & 0x04 != 0);
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// Ogg Opus

/// The longest Opus packet: 120 ms at 48 kHz.
const MAX_OPUS_FRAME: usize = 5760;

struct OpusBackend<'a> {
    reader: OggOpusReader<Box<dyn ReadSeek + 'a>>,
    decoder: opus::MSDecoder,
    channels: usize,
    pcm: Vec<f32>,
    skip: usize,
    pre_skip: u64,
    emitted: u64,
    gain: f32,
    packets: u64,
}

impl<'a> OpusBackend<'a> {
    fn open(source: Box<dyn ReadSeek + 'a>, limits: &Limits) -> Result<(Self, SourceInfo)> {
        let reader = OggOpusReader::new(source)?;
        let head = reader.head().clone();
        let channels = usize::from(head.channels);
        limits.check_format(48_000, channels)?;
        if head.mapping_family > 1 {
            return Err(AudioError::Unsupported(format!(
                "Ogg Opus channel mapping family {}",
                head.mapping_family
            )));
        }
        let decoder =
            opus::MSDecoder::new(48_000, head.stream_count, head.coupled_count, &head.mapping)
                .map_err(|e| {
                    AudioError::Corrupt(format!("Opus stream layout refused by libopus: {e}"))
                })?;
        let gain = if head.output_gain == 0 {
            1.0
        } else {
            10f32.powf(f32::from(head.output_gain) / 256.0 / 20.0)
        };
        let layout = if head.mapping_family == 0 {
            default_layout(channels)
        } else {
            vorbis_layout(channels)
        };
        let content_rate = match head.input_sample_rate {
            0 => 48_000,
            r => r.min(48_000),
        };
        let info = SourceInfo {
            format: "ogg".into(),
            codec: "opus".into(),
            sample_rate: 48_000,
            channels,
            layout,
            content_rate,
            declared_frames: None,
            declared_exact: false,
        };
        Ok((
            OpusBackend {
                reader,
                decoder,
                channels,
                pcm: vec![0.0; MAX_OPUS_FRAME * channels],
                skip: usize::from(head.pre_skip),
                pre_skip: u64::from(head.pre_skip),
                emitted: 0,
                gain,
                packets: 0,
            },
            info,
        ))
    }

    fn next(&mut self) -> Result<Option<Range<usize>>> {
        loop {
            let Some(pkt) = self.reader.next_packet()? else {
                return Ok(None);
            };
            self.packets += 1;
            if pkt.data.is_empty() {
                continue;
            }
            let n = opus::packet::get_nb_samples(&pkt.data, 48_000).map_err(|e| {
                AudioError::Corrupt(format!("Opus packet {} is invalid: {e}", self.packets))
            })?;
            if n == 0 || n > MAX_OPUS_FRAME {
                return Err(AudioError::Corrupt(format!(
                    "Opus packet {} claims {n} samples",
                    self.packets
                )));
            }
            let ch = self.channels;
            let got = self
                .decoder
                .decode_float(&pkt.data, &mut self.pcm[..n * ch], false)
                .map_err(|e| {
                    AudioError::Corrupt(format!(
                        "Opus packet {} does not decode: {e}",
                        self.packets
                    ))
                })?;
            let got = got.min(n);
            let start = self.skip.min(got);
            self.skip -= start;
            let mut take = got - start;
            if pkt.last {
                let total = pkt.page_granule.saturating_sub(self.pre_skip);
                take = take.min(total.saturating_sub(self.emitted) as usize);
            }
            if take == 0 {
                continue;
            }
            self.emitted += take as u64;
            let range = start * ch..(start + take) * ch;
            if self.gain != 1.0 {
                for s in &mut self.pcm[range.clone()] {
                    *s *= self.gain;
                }
            }
            return Ok(Some(range));
        }
    }
}
