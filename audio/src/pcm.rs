//! Live 16-bit PCM <-> 20 ms Opus packets at one of Opus's own rates: the codec of the
//! robot's media bridge (a program hears a call as PCM and speaks into it as PCM).
//!
//! ```text
//!   a participant's Opus packet ──► PcmDecoder (libopus at R) ──► i16 mono at R, 20 ms per frame
//!   20 ms of i16 mono at R ──► PcmEncoder (libopus at R, 20 ms) ──► one Opus packet
//! ```
//!
//! Every rate a bridge may use (8, 16, 24 and 48 kHz) is one libopus decodes to and encodes
//! from natively, so no separate resampler runs on this path: libopus's own band limiting
//! and rate conversion add no delay of their own, where an FFT resampler (rubato, used for
//! prepared files) would hold back a whole block per call (docs/decisions.md, "The bridge
//! codec").

use bytes::Bytes;
use opus::{Application as OpusApp, Bitrate, Channels};

use crate::encode::MAX_PACKET;
use crate::error::{AudioError, Result};

/// The PCM rates a media bridge may use.
pub const PCM_RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

/// libopus complexity (0-10) of the live encoder.
const SPEAK_COMPLEXITY: i32 = 5;

/// The longest Opus packet: 120 ms, in samples at 48 kHz.
const MAX_PACKET_SAMPLES_48K: usize = 5_760;

fn check_rate(rate: u32) -> Result<()> {
    if PCM_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::Unsupported(format!(
            "PCM at {rate} Hz (a bridge uses 8000, 16000, 24000 or 48000)"
        )))
    }
}

/// Samples in 20 ms at `rate`.
pub fn frame_samples(rate: u32) -> usize {
    usize::try_from(rate / 50).unwrap_or(0)
}

/// The duration of an Opus packet in samples at 48 kHz; an error when it is not a valid
/// packet (an untrusted packet is checked before it is queued).
pub fn opus_packet_samples(packet: &[u8]) -> Result<usize> {
    if packet.is_empty() {
        return Err(AudioError::Corrupt("an empty Opus packet".into()));
    }
    opus::packet::get_nb_samples(packet, 48_000)
        .map_err(|e| AudioError::Corrupt(format!("not an Opus packet: {e}")))
}

/// Decodes a participant's Opus packets to mono 16-bit PCM at one rate, keeping the
/// decoder's state from packet to packet (as for one continuous stream).
pub struct PcmDecoder {
    dec: opus::Decoder,
    rate: u32,
    pcm: Vec<i16>,
}

impl std::fmt::Debug for PcmDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmDecoder")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl PcmDecoder {
    /// A decoder to mono PCM at `rate` (one of [`PCM_RATES`]).
    pub fn new(rate: u32) -> Result<Self> {
        check_rate(rate)?;
        let per_48k = usize::try_from(48_000 / rate).unwrap_or(1).max(1);
        Ok(Self {
            dec: opus::Decoder::new(rate, Channels::Mono)?,
            rate,
            pcm: vec![0; MAX_PACKET_SAMPLES_48K / per_48k],
        })
    }

    /// The samples of one packet (a whole number of 20 ms frames for the usual 20, 40 or
    /// 60 ms packets; a 10 ms packet gives 10 ms).
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16]> {
        let n = self.dec.decode(packet, &mut self.pcm, false)?;
        Ok(&self.pcm[..n])
    }

    /// `samples` of concealment for a lost packet (what libopus plays in its place).
    pub fn conceal(&mut self, samples: usize) -> Result<&[i16]> {
        let n = samples.min(self.pcm.len());
        let n = self.dec.decode(&[], &mut self.pcm[..n], false)?;
        Ok(&self.pcm[..n])
    }
}

/// Encodes mono 16-bit PCM at one rate, 20 ms at a time, to Opus packets the robot plays.
pub struct PcmEncoder {
    enc: opus::Encoder,
    rate: u32,
    out: Vec<u8>,
}

impl std::fmt::Debug for PcmEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmEncoder")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl PcmEncoder {
    /// An encoder for mono PCM at `rate` (one of [`PCM_RATES`]), VBR at `bitrate`, in
    /// libopus's `Audio` mode (the program may play music or prompts; `Voip` mode's speech
    /// filtering measurably lowered the fidelity of an echoed recording).
    pub fn new(rate: u32, bitrate: u32) -> Result<Self> {
        check_rate(rate)?;
        let mut enc = opus::Encoder::new(rate, Channels::Mono, OpusApp::Audio)?;
        enc.set_bitrate(Bitrate::Bits(i32::try_from(bitrate).unwrap_or(i32::MAX)))?;
        enc.set_vbr(true)?;
        // Live audio, one encoder per bridged call: complexity 5 (WebRTC's choice on
        // phones) costs about half of libopus's default 10 for a quality loss the
        // end-to-end test's cross-correlation does not see (docs/decisions.md).
        enc.set_complexity(SPEAK_COMPLEXITY)?;
        Ok(Self {
            enc,
            rate,
            out: vec![0; MAX_PACKET],
        })
    }

    /// Samples in one frame (20 ms).
    pub fn frame_samples(&self) -> usize {
        frame_samples(self.rate)
    }

    /// One 20 ms frame of PCM as an Opus packet.
    pub fn encode(&mut self, frame: &[i16]) -> Result<Bytes> {
        if frame.len() != self.frame_samples() {
            return Err(AudioError::Corrupt(format!(
                "{} samples is not one 20 ms frame at {} Hz ({})",
                frame.len(),
                self.rate,
                self.frame_samples()
            )));
        }
        let len = self.enc.encode(frame, &mut self.out)?;
        Ok(Bytes::copy_from_slice(&self.out[..len]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tone(rate: u32, n: usize, hz: f32) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                (8000.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    /// Correlation of `a` and `b` at the best lag up to `max_lag`.
    fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
        (0..max_lag)
            .map(|lag| {
                let n = a.len().min(b.len().saturating_sub(lag));
                let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
                for i in 0..n {
                    let x = f64::from(a[i]);
                    let y = f64::from(b[i + lag]);
                    ab += x * y;
                    aa += x * x;
                    bb += y * y;
                }
                ab / (aa.sqrt() * bb.sqrt()).max(1.0)
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn pcm_survives_a_round_trip_at_every_rate() {
        for rate in PCM_RATES {
            let n = frame_samples(rate);
            let input = tone(rate, n * 50, 440.0);
            let mut enc = PcmEncoder::new(rate, 32_000).unwrap();
            let mut dec = PcmDecoder::new(rate).unwrap();
            let mut output = Vec::new();
            for f in input.chunks(n) {
                let packet = enc.encode(f).unwrap();
                assert_eq!(opus_packet_samples(&packet).unwrap(), 960, "{rate}");
                let pcm = dec.decode(&packet).unwrap();
                assert_eq!(pcm.len(), n, "{rate}");
                output.extend_from_slice(pcm);
            }
            // skip the codec's start-up; the lookahead delays the output a few ms
            let c = best_correlation(&input[n * 5..n * 45], &output[n * 5..], n);
            assert!(c > 0.9, "{rate} Hz: correlation {c}");
        }
    }

    #[test]
    fn bad_rates_frames_and_packets_are_errors() {
        assert!(matches!(
            PcmEncoder::new(44_100, 32_000),
            Err(AudioError::Unsupported(_))
        ));
        assert!(PcmDecoder::new(11_025).is_err());
        let mut enc = PcmEncoder::new(16_000, 32_000).unwrap();
        assert!(matches!(enc.encode(&[0; 319]), Err(AudioError::Corrupt(_))));
        assert!(opus_packet_samples(&[]).is_err());
        // a code-3 packet announcing 63 frames of 60 ms is not a packet
        assert!(opus_packet_samples(&[0xff, 0xff]).is_err());
        let mut dec = PcmDecoder::new(16_000).unwrap();
        assert!(dec.decode(&[0xff, 0xff]).is_err());
        assert_eq!(dec.conceal(320).unwrap().len(), 320);
    }
}
