//! A matrix over sample rates, channel counts and sample formats, with generated WAVs.

mod common;

use audio::{ChannelMode, Decoder, Input, Limits, PreparedAudio, Settings, prepare};
use common::*;

const TONE: f32 = 440.0;

fn tone(rate: u32, i: usize) -> f32 {
    0.5 * (2.0 * std::f32::consts::PI * TONE * i as f32 / rate as f32).sin()
}

/// Decodes prepared audio in process (libopus) to interleaved 48 kHz samples.
fn decode_prepared(p: &PreparedAudio) -> Vec<f32> {
    let ogg = p.write_ogg(Vec::new()).expect("ogg");
    let mut input = Input::from(ogg);
    let mut dec = Decoder::open(&mut input, &Limits::default()).expect("open ogg");
    let mut out = Vec::new();
    while let Some(b) = dec.next_block().expect("decode ogg") {
        out.extend_from_slice(b);
    }
    out
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|s| s * s).sum::<f32>() / v.len().max(1) as f32).sqrt()
}

#[test]
fn every_rate_and_channel_count_gives_exact_length_and_the_tone() {
    let rates = [
        8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000,
    ];
    for rate in rates {
        for channels in 1u16..=8 {
            let frames = rate as usize * 3 / 10 + 7; // 0.3 s and an odd remainder
            // the tone on every channel but LFE (index 3 from 4 channels up in WAV order... the
            // LFE is index 3 only in layouts with one; silence it where the mask has it)
            let has_lfe = matches!(channels, 6..=8);
            let wav = wav_bytes(rate, channels, Fmt::S16, frames, |i, c| {
                if has_lfe && c == 3 {
                    0.0
                } else {
                    tone(rate, i)
                }
            });
            for mode in [ChannelMode::Mono, ChannelMode::Stereo] {
                let settings = Settings {
                    channels: mode,
                    application: audio::Application::Audio,
                    bitrate: 64_000,
                    ..Settings::default()
                };
                let p = prepare(wav.clone(), &settings)
                    .unwrap_or_else(|e| panic!("{rate} Hz {channels} ch {mode:?}: {e}"));
                let want = (frames as u64 * 48_000).div_ceil(u64::from(rate));
                assert_eq!(
                    p.samples(),
                    want,
                    "{rate} Hz {channels} ch {mode:?}: length"
                );
                assert_eq!(p.channels() as usize, mode.count());
                let pcm = decode_prepared(&p);
                let out_ch = mode.count();
                assert_eq!(
                    pcm.len() as u64,
                    want * out_ch as u64,
                    "{rate} Hz {channels} ch: decoded length"
                );
                let left: Vec<f32> = pcm.iter().step_by(out_ch).copied().collect();
                let reference: Vec<f32> = (0..left.len()).map(|i| tone(48_000, i)).collect();
                // skip the first and last 20 ms (codec start-up, band edges)
                let (a, b) = (960, left.len().saturating_sub(960));
                let c = ncc_at(&left[a..b], &reference[a..b], 0);
                assert!(
                    c > 0.95,
                    "{rate} Hz {channels} ch {mode:?}: ncc {c:.4} with the tone"
                );
                assert!(
                    rms(&left[a..b]) > 0.1,
                    "{rate} Hz {channels} ch {mode:?}: too quiet"
                );
            }
        }
    }
}

#[test]
fn every_sample_format_decodes_the_same() {
    let rate = 16_000;
    let frames = 8_000;
    let mut reference: Option<Vec<f32>> = None;
    for fmt in [Fmt::U8, Fmt::S16, Fmt::S24, Fmt::S32, Fmt::F32] {
        let wav = wav_bytes(rate, 2, fmt, frames, |i, c| {
            if c == 0 {
                tone(rate, i)
            } else {
                -tone(rate, i) * 0.5
            }
        });
        let mut input = Input::from(wav);
        let mut dec = Decoder::open(&mut input, &Limits::default()).expect("open");
        assert_eq!(
            (dec.info().sample_rate, dec.info().channels),
            (rate, 2),
            "{fmt:?}"
        );
        let mut pcm = Vec::new();
        while let Some(b) = dec.next_block().expect("decode") {
            pcm.extend_from_slice(b);
        }
        assert_eq!(pcm.len(), frames * 2, "{fmt:?}");
        let tol = if fmt == Fmt::U8 { 1.0 / 64.0 } else { 1e-3 };
        for (i, pair) in pcm.chunks(2).enumerate().step_by(97) {
            assert!((pair[0] - tone(rate, i)).abs() < tol, "{fmt:?} L at {i}");
            assert!(
                (pair[1] + tone(rate, i) * 0.5).abs() < tol,
                "{fmt:?} R at {i}"
            );
        }
        if fmt != Fmt::U8 {
            match &reference {
                None => reference = Some(pcm),
                Some(r) => assert!(
                    r.iter().zip(&pcm).all(|(a, b)| (a - b).abs() < 1e-3),
                    "{fmt:?}"
                ),
            }
        }
    }
}

#[test]
fn surround_downmix_drops_lfe_and_keeps_the_centre() {
    let rate = 48_000;
    let frames = 24_000;
    // 5.1 in WAV order FL FR FC LFE BL BR: only LFE carries sound → silence out
    let lfe_only = wav_bytes(rate, 6, Fmt::F32, frames, |i, c| {
        if c == 3 { tone(rate, i) } else { 0.0 }
    });
    let p = prepare(lfe_only, &Settings::default()).expect("lfe");
    let pcm = decode_prepared(&p);
    assert!(
        rms(&pcm[960..]) < 0.01,
        "LFE leaked into the mono downmix: rms {}",
        rms(&pcm)
    );
    // only the centre: mono gets it at -3 dB (0.707)
    let centre = wav_bytes(rate, 6, Fmt::F32, frames, |i, c| {
        if c == 2 { tone(rate, i) } else { 0.0 }
    });
    let p = prepare(
        centre,
        &Settings {
            application: audio::Application::Audio,
            ..Settings::default()
        },
    )
    .expect("centre");
    let pcm = decode_prepared(&p);
    let ratio = rms(&pcm[960..frames - 960]) / (0.5 / 2f32.sqrt());
    assert!(
        (ratio - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.05,
        "centre gain {ratio}"
    );
}

#[test]
fn stereo_is_kept_when_asked() {
    let rate = 44_100;
    let frames = 22_050;
    // L = tone, R = silence: stereo output keeps them apart
    let wav = wav_bytes(rate, 2, Fmt::S16, frames, |i, c| {
        if c == 0 { tone(rate, i) } else { 0.0 }
    });
    let settings = Settings {
        channels: ChannelMode::Stereo,
        application: audio::Application::Audio,
        bitrate: 96_000,
        ..Settings::default()
    };
    let p = prepare(wav, &settings).expect("stereo");
    let pcm = decode_prepared(&p);
    let l: Vec<f32> = pcm.iter().step_by(2).copied().collect();
    let r: Vec<f32> = pcm.iter().skip(1).step_by(2).copied().collect();
    assert!(rms(&l[960..]) > 0.3, "left lost");
    assert!(
        rms(&r[960..]) < 0.05 * rms(&l[960..]),
        "right not silent: {}",
        rms(&r)
    );
}
