//! Ogg Opus files (RFC 7845): [`OpusHead`], [`OpusTags`], a writer and a reader.
//!
//! The writer puts `OpusHead` alone on the first page and `OpusTags` on the second (both with
//! granule 0), then audio packets with granule = samples so far (pre-skip included), a page
//! break every [`PACKETS_PER_PAGE`] packets (one second of 20 ms frames) and, on the last page,
//! the end-of-stream flag with granule `pre_skip + samples`: end trimming, so that a decoder
//! gives back exactly the input's length.

use std::io::{self, Read, Seek, Write};

use ogg::reading::{OggReadError, PacketReader};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::error::{AudioError, Result};

/// Packets per Ogg page when writing: 50 × 20 ms = one page a second, as `opusenc` does.
pub const PACKETS_PER_PAGE: u64 = 50;

/// Samples per channel of one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;

/// The identification header of an Ogg Opus stream (RFC 7845 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    /// Output channel count (1..=255; we write 1 or 2).
    pub channels: u8,
    /// Samples at 48 kHz to drop from the start of the decoded output (the encoder's lookahead).
    pub pre_skip: u16,
    /// The sample rate of the original input, for information only (0 if unknown).
    pub input_sample_rate: u32,
    /// Gain to apply on output, Q7.8 dB.
    pub output_gain: i16,
    /// Channel mapping family: 0 (mono/stereo), 1 (Vorbis order, up to 8), 255 (undefined).
    pub mapping_family: u8,
    /// Number of Opus streams in each packet (1 for family 0).
    pub stream_count: u8,
    /// Number of those streams that are coupled (stereo) ones.
    pub coupled_count: u8,
    /// Output channel to decoder channel mapping (one byte per output channel).
    pub mapping: Vec<u8>,
}

impl OpusHead {
    /// A head for a family-0 (mono or stereo) stream.
    pub fn new(channels: u8, pre_skip: u16, input_sample_rate: u32) -> Self {
        let stereo = channels == 2;
        OpusHead {
            channels,
            pre_skip,
            input_sample_rate,
            output_gain: 0,
            mapping_family: 0,
            stream_count: 1,
            coupled_count: u8::from(stereo),
            mapping: if stereo { vec![0, 1] } else { vec![0] },
        }
    }

    /// Serialises the header packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(21 + self.mapping.len());
        b.extend_from_slice(b"OpusHead");
        b.push(1);
        b.push(self.channels);
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&self.input_sample_rate.to_le_bytes());
        b.extend_from_slice(&self.output_gain.to_le_bytes());
        b.push(self.mapping_family);
        if self.mapping_family != 0 {
            b.push(self.stream_count);
            b.push(self.coupled_count);
            b.extend_from_slice(&self.mapping);
        }
        b
    }

    /// Parses and validates a header packet.
    pub fn parse(p: &[u8]) -> Result<Self> {
        let bad = |m: &str| AudioError::Corrupt(format!("invalid OpusHead: {m}"));
        if p.len() < 19 || &p[..8] != b"OpusHead" {
            return Err(bad("missing or short identification header"));
        }
        let version = p[8];
        if version >> 4 != 0 {
            return Err(AudioError::Unsupported(format!(
                "Ogg Opus major version {}",
                version >> 4
            )));
        }
        let channels = p[9];
        if channels == 0 {
            return Err(bad("zero channels"));
        }
        let pre_skip = u16::from_le_bytes([p[10], p[11]]);
        let input_sample_rate = u32::from_le_bytes([p[12], p[13], p[14], p[15]]);
        let output_gain = i16::from_le_bytes([p[16], p[17]]);
        let mapping_family = p[18];
        let (stream_count, coupled_count, mapping) = if mapping_family == 0 {
            if channels > 2 {
                return Err(bad("mapping family 0 with more than 2 channels"));
            }
            let stereo = channels == 2;
            (
                1,
                u8::from(stereo),
                if stereo { vec![0, 1] } else { vec![0] },
            )
        } else {
            let need = 21 + usize::from(channels);
            if p.len() < need {
                return Err(bad("channel mapping table cut short"));
            }
            let (s, c) = (p[19], p[20]);
            if s == 0 || c > s {
                return Err(bad("impossible stream counts"));
            }
            let mapping = p[21..need].to_vec();
            let decoded = u16::from(s) + u16::from(c);
            if mapping.iter().any(|&m| m != 255 && u16::from(m) >= decoded) {
                return Err(bad("channel mapping names a stream that does not exist"));
            }
            (s, c, mapping)
        };
        Ok(OpusHead {
            channels,
            pre_skip,
            input_sample_rate,
            output_gain,
            mapping_family,
            stream_count,
            coupled_count,
            mapping,
        })
    }
}

/// The comment header (RFC 7845 §5.2): a vendor string and `KEY=value` comments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpusTags {
    /// Who wrote the stream.
    pub vendor: String,
    /// `KEY=value` comments.
    pub comments: Vec<String>,
}

impl OpusTags {
    /// Serialises the comment packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"OpusTags");
        put_str(&mut b, &self.vendor);
        b.extend_from_slice(&(self.comments.len() as u32).to_le_bytes());
        for c in &self.comments {
            put_str(&mut b, c);
        }
        b
    }

    /// Parses a comment packet. Bounds are checked against the packet length.
    pub fn parse(p: &[u8]) -> Result<Self> {
        let bad = |m: &str| AudioError::Corrupt(format!("invalid OpusTags: {m}"));
        if p.len() < 16 || &p[..8] != b"OpusTags" {
            return Err(bad("missing comment header"));
        }
        let mut pos = 8;
        let vendor = get_str(p, &mut pos).ok_or_else(|| bad("vendor string cut short"))?;
        let count = get_u32(p, &mut pos).ok_or_else(|| bad("comment count cut short"))?;
        let mut comments = Vec::new();
        for _ in 0..count {
            // Each comment takes at least 4 bytes, so a huge count fails here, not in memory.
            let c = get_str(p, &mut pos).ok_or_else(|| bad("comment cut short"))?;
            comments.push(c);
        }
        Ok(OpusTags { vendor, comments })
    }

    /// The value of the first comment `KEY=value` whose key matches (case-insensitively).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.comments.iter().find_map(|c| {
            let (k, v) = c.split_once('=')?;
            k.eq_ignore_ascii_case(key).then_some(v)
        })
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn get_u32(p: &[u8], pos: &mut usize) -> Option<u32> {
    let bytes = p.get(*pos..pos.checked_add(4)?)?;
    *pos += 4;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn get_str(p: &[u8], pos: &mut usize) -> Option<String> {
    let len = get_u32(p, pos)? as usize;
    let bytes = p.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// The length of an Opus packet at 48 kHz, from its TOC byte and frame count (RFC 6716
/// section 3.1), without decoding it; `None` for a malformed packet.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // frame length in samples at 48 kHz, by configuration number
    let frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames: u32 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let total = frame * frames;
    (frames > 0 && total <= 5760).then_some(total)
}

/// A random-enough stream serial number (RFC 3533 asks for one per logical stream).
pub fn random_serial() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// Writes an Ogg Opus stream of 20 ms packets.
///
/// The last packet is held back until [`finish`](OggOpusWriter::finish), which is what lets it
/// carry the end-of-stream flag and the trimmed granule position.
pub struct OggOpusWriter<W: Write> {
    inner: PacketWriter<'static, W>,
    serial: u32,
    pre_skip: u64,
    packets: u64,
    /// Samples of the packets emitted so far (the granule position without pre-skip).
    samples: u64,
    pending: Option<(Vec<u8>, u64)>,
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a stream: writes the `OpusHead` and `OpusTags` pages.
    pub fn new(out: W, head: &OpusHead, tags: &OpusTags, serial: u32) -> io::Result<Self> {
        let mut inner = PacketWriter::new(out);
        inner.write_packet(head.to_bytes(), serial, PacketWriteEndInfo::EndPage, 0)?;
        inner.write_packet(tags.to_bytes(), serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(OggOpusWriter {
            inner,
            serial,
            pre_skip: u64::from(head.pre_skip),
            packets: 0,
            samples: 0,
            pending: None,
        })
    }

    /// Adds one 20 ms packet.
    pub fn write_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        self.write_packet_samples(packet, FRAME_SAMPLES as u64)
    }

    /// Adds one packet `samples` long at 48 kHz (a received packet may be 10, 20, 40 or
    /// 60 ms: see [`packet_samples`]). Pages break every [`PACKETS_PER_PAGE`] packets.
    pub fn write_packet_samples(&mut self, packet: &[u8], samples: u64) -> io::Result<()> {
        if let Some((prev, n)) = self.pending.take() {
            self.emit(prev, n, PacketWriteEndInfo::NormalPacket, None)?;
        }
        self.pending = Some((packet.to_vec(), samples));
        Ok(())
    }

    /// The inner writer (everything handed to it so far is whole pages).
    pub fn get_ref(&self) -> &W {
        self.inner.inner()
    }

    fn emit(
        &mut self,
        data: Vec<u8>,
        samples: u64,
        end: PacketWriteEndInfo,
        granule: Option<u64>,
    ) -> io::Result<()> {
        self.packets += 1;
        self.samples += samples;
        let full = self.samples;
        let info = if end == PacketWriteEndInfo::NormalPacket
            && self.packets.is_multiple_of(PACKETS_PER_PAGE)
        {
            PacketWriteEndInfo::EndPage
        } else {
            end
        };
        self.inner
            .write_packet(data, self.serial, info, granule.unwrap_or(full))
    }

    /// Ends the stream. `samples` is the number of real samples per channel at 48 kHz (without
    /// pre-skip); the last page's granule becomes `pre_skip + samples`. Returns the writer.
    pub fn finish(mut self, samples: u64) -> io::Result<W> {
        let (last, n) = self.pending.take().unwrap_or_default();
        let max = self.samples + n;
        let granule = (self.pre_skip + samples).min(max);
        self.emit(last, n, PacketWriteEndInfo::EndStream, Some(granule))?;
        let mut w = self.inner.into_inner();
        w.flush()?;
        Ok(w)
    }
}

/// One audio packet read from an Ogg Opus stream.
#[derive(Debug)]
pub struct OggOpusPacket {
    /// The Opus packet.
    pub data: Vec<u8>,
    /// The granule position of the page this packet ends on.
    pub page_granule: u64,
    /// True for the last packet of the logical stream (its page carries end trimming).
    pub last: bool,
}

/// Reads an Ogg Opus stream: headers first, then packets.
///
/// Only the first Opus logical stream is followed; pages of other streams are skipped, and a
/// chained stream after it is ignored.
pub struct OggOpusReader<R: Read + Seek> {
    inner: PacketReader<R>,
    serial: u32,
    head: OpusHead,
    tags: OpusTags,
    done: bool,
}

pub(crate) fn map_ogg_err(e: OggReadError) -> AudioError {
    match e {
        OggReadError::NoCapturePatternFound => {
            AudioError::Corrupt("Ogg page capture pattern not found".into())
        }
        OggReadError::InvalidStreamStructVer(v) => {
            AudioError::Corrupt(format!("Ogg stream structure version {v}"))
        }
        OggReadError::HashMismatch(a, b) => {
            AudioError::Corrupt(format!("Ogg page CRC mismatch ({a:#x} != {b:#x})"))
        }
        OggReadError::ReadError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt("truncated: the Ogg stream ends in the middle of a page".into())
        }
        OggReadError::ReadError(e) => AudioError::io("<ogg stream>", e),
        OggReadError::InvalidData => AudioError::Corrupt("invalid Ogg page structure".into()),
    }
}

impl<R: Read + Seek> OggOpusReader<R> {
    /// Opens a stream and reads its two header packets.
    pub fn new(input: R) -> Result<Self> {
        let mut inner = PacketReader::new(input);
        let first = inner
            .read_packet()
            .map_err(map_ogg_err)?
            .ok_or_else(|| AudioError::Empty("the Ogg stream has no packets".into()))?;
        if !first.data.starts_with(b"OpusHead") {
            return Err(AudioError::Unsupported(
                "the Ogg stream does not start with an Opus header".into(),
            ));
        }
        let serial = first.stream_serial();
        let head = OpusHead::parse(&first.data)?;
        let tags = loop {
            let p = inner.read_packet().map_err(map_ogg_err)?.ok_or_else(|| {
                AudioError::Corrupt(
                    "truncated: the Ogg Opus stream ends before its comment header".into(),
                )
            })?;
            if p.stream_serial() == serial {
                break OpusTags::parse(&p.data)?;
            }
        };
        Ok(OggOpusReader {
            inner,
            serial,
            head,
            tags,
            done: false,
        })
    }

    /// The identification header.
    pub fn head(&self) -> &OpusHead {
        &self.head
    }

    /// The comment header.
    pub fn tags(&self) -> &OpusTags {
        &self.tags
    }

    /// The next audio packet, or `None` after the end-of-stream packet.
    ///
    /// A stream that stops without an end-of-stream page is reported as
    /// [`AudioError::Corrupt`] (truncated).
    pub fn next_packet(&mut self) -> Result<Option<OggOpusPacket>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let Some(p) = self.inner.read_packet().map_err(map_ogg_err)? else {
                self.done = true;
                return Err(AudioError::Corrupt(
                    "truncated: the Ogg Opus stream has no end-of-stream page".into(),
                ));
            };
            if p.stream_serial() != self.serial {
                continue;
            }
            let last = p.last_in_stream();
            if last {
                self.done = true;
            }
            return Ok(Some(OggOpusPacket {
                page_granule: p.absgp_page(),
                last,
                data: p.data,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_lengths_come_from_the_toc() {
        assert_eq!(packet_samples(&[0xF8, 0xFF, 0xFE]), Some(960)); // CELT FB 20 ms
        assert_eq!(packet_samples(&[0x08]), Some(960)); // SILK NB 20 ms
        assert_eq!(packet_samples(&[0x18]), Some(2880)); // SILK NB 60 ms
        assert_eq!(packet_samples(&[0x78 | 1]), Some(1920)); // hybrid 20 ms, two frames
        assert_eq!(packet_samples(&[0xE0 | 3, 0x03]), Some(360)); // CELT 2.5 ms × 3
        assert_eq!(packet_samples(&[0xF8 | 3, 0x00]), None); // no frames
        assert_eq!(packet_samples(&[0x18 | 3, 0x03]), None); // 180 ms: too long
        assert_eq!(packet_samples(&[]), None);
    }

    #[test]
    fn head_round_trips() {
        for ch in [1u8, 2] {
            let h = OpusHead::new(ch, 312, 16000);
            let b = h.to_bytes();
            assert_eq!(b.len(), 19);
            assert_eq!(OpusHead::parse(&b).ok(), Some(h));
        }
    }

    #[test]
    fn tags_round_trip_and_reject_lies() {
        let t = OpusTags {
            vendor: "v".into(),
            comments: vec!["A=1".into(), "b=two".into()],
        };
        let b = t.to_bytes();
        let back = OpusTags::parse(&b).ok();
        assert_eq!(back.as_ref(), Some(&t));
        assert_eq!(back.as_ref().and_then(|t| t.get("B")), Some("two"));
        let mut lying = b.clone();
        // claim 2^32-1 comments
        let n = 8 + 4 + 1;
        lying[n..n + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            OpusTags::parse(&lying),
            Err(AudioError::Corrupt(_))
        ));
    }

    #[test]
    fn head_rejects_bad_mapping() {
        let mut b = OpusHead::new(2, 312, 0).to_bytes();
        b[9] = 3; // three channels with family 0
        assert!(matches!(OpusHead::parse(&b), Err(AudioError::Corrupt(_))));
        assert!(OpusHead::parse(b"OpusHead").is_err());
    }
}
