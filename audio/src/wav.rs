//! A minimal streaming WAV writer (16-bit PCM or 32-bit float), for `audio decode`.

use std::io::{self, Seek, SeekFrom, Write};

/// Sample encoding of the WAV output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit signed integer, TPDF-free rounding.
    Pcm16,
    /// 32-bit IEEE float.
    Float32,
}

/// Writes a WAV file; the header's sizes are filled in by [`finish`](WavWriter::finish).
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    out: W,
    format: WavFormat,
    channels: u16,
    rate: u32,
    data_bytes: u64,
    scratch: Vec<u8>,
}

impl<W: Write + Seek> WavWriter<W> {
    /// Writes a provisional header.
    pub fn new(out: W, rate: u32, channels: u16, format: WavFormat) -> io::Result<Self> {
        let mut w = WavWriter {
            out,
            format,
            channels,
            rate,
            data_bytes: 0,
            scratch: Vec::new(),
        };
        w.write_header()?;
        Ok(w)
    }

    fn write_header(&mut self) -> io::Result<()> {
        let (tag, bits): (u16, u16) = match self.format {
            WavFormat::Pcm16 => (1, 16),
            WavFormat::Float32 => (3, 32),
        };
        let block = self.channels * bits / 8;
        let data = u32::try_from(self.data_bytes).unwrap_or(u32::MAX);
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&data.saturating_add(36).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&tag.to_le_bytes());
        h.extend_from_slice(&self.channels.to_le_bytes());
        h.extend_from_slice(&self.rate.to_le_bytes());
        h.extend_from_slice(&(self.rate * u32::from(block)).to_le_bytes());
        h.extend_from_slice(&block.to_le_bytes());
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        self.out.write_all(&h)
    }

    /// Appends interleaved samples.
    pub fn write(&mut self, samples: &[f32]) -> io::Result<()> {
        self.scratch.clear();
        match self.format {
            WavFormat::Pcm16 => {
                for &s in samples {
                    let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                    self.scratch.extend_from_slice(&v.to_le_bytes());
                }
            }
            WavFormat::Float32 => {
                for &s in samples {
                    self.scratch.extend_from_slice(&s.to_le_bytes());
                }
            }
        }
        self.data_bytes += self.scratch.len() as u64;
        self.out.write_all(&self.scratch)
    }

    /// Rewrites the header with the final sizes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.seek(SeekFrom::Start(0))?;
        self.write_header()?;
        self.out.flush()?;
        Ok(self.out)
    }
}
