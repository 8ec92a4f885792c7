//! Inputs that are not in the shared fixtures, made here with ffmpeg and opusenc: raw ADTS
//! AAC, multichannel Ogg Opus (mapping family 1), stereo Ogg Opus, and DTX on silence.

mod common;

use std::process::Command;

use audio::{Decoder, Input, Limits, Settings, prepare};
use common::*;

#[test]
fn adts_aac_decodes_aligned_with_at_most_one_aac_frame_of_padding() {
    require_tool("ffmpeg");
    let dir = scratch("adts");
    let src = fixtures_dir().join("speech_16000_mono_4s.wav");
    let aac = dir.join("s.aac");
    run(Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(&src)
        .args(["-c:a", "aac", "-b:a", "48k", "-f", "adts"])
        .arg(&aac));
    let (pcm, rate, ch) = decode_all(&aac);
    assert_eq!((rate, ch), (16_000, 1));
    // priming dropped; the end keeps ADTS padding (no container says how much)
    assert!(
        pcm.len() >= 64_000 && pcm.len() <= 64_000 + 1024,
        "{} frames",
        pcm.len()
    );
    let (reference, _, _) = decode_all(&src);
    let (ncc, lag) = best_ncc(&pcm, &reference, 2_048);
    assert!(ncc > 0.9, "ncc {ncc}");
    assert_eq!(lag, 0, "ADTS output shifted by {lag} frames");
}

#[test]
fn multichannel_ogg_opus_input_is_read_and_downmixed() {
    require_tool("opusenc");
    let dir = scratch("opus51");
    let rate = 48_000;
    let frames = 48_000;
    // 5.1 with a tone on the front left only
    let wav = wav_bytes(rate, 6, Fmt::S16, frames, |i, c| {
        if c == 0 {
            0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin()
        } else {
            0.0
        }
    });
    let wav_path = dir.join("s51.wav");
    std::fs::write(&wav_path, wav).expect("write");
    let opus = dir.join("s51.opus");
    run(Command::new("opusenc")
        .args(["--quiet", "--bitrate", "192"])
        .arg(&wav_path)
        .arg(&opus));
    let mut input = Input::from(opus.as_path());
    let mut dec = Decoder::open(&mut input, &Limits::default()).expect("open 5.1 opus");
    assert_eq!(dec.info().channels, 6);
    let mut n = 0;
    while let Some(b) = dec.next_block().expect("decode") {
        n += b.len() / 6;
    }
    assert_eq!(n, frames, "exact length through pre-skip and end trimming");
    let stereo = prepare(
        opus.as_path(),
        &Settings {
            channels: audio::ChannelMode::Stereo,
            application: audio::Application::Audio,
            bitrate: 64_000,
            ..Settings::default()
        },
    )
    .expect("prepare");
    let ogg = stereo.write_ogg(Vec::new()).expect("ogg");
    let mut input = Input::from(ogg);
    let mut dec = Decoder::open(&mut input, &Limits::default()).expect("open");
    let mut pcm = Vec::new();
    while let Some(b) = dec.next_block().expect("decode") {
        pcm.extend_from_slice(b);
    }
    let energy = |c: usize| pcm.iter().skip(c).step_by(2).map(|s| s * s).sum::<f32>();
    assert!(
        energy(0) > 100.0 * energy(1),
        "front left must stay left: L {} R {}",
        energy(0),
        energy(1)
    );
}

#[test]
fn dtx_shrinks_silence_to_tiny_packets() {
    let wav = wav_bytes(16_000, 1, Fmt::S16, 16_000 * 3, |_, _| 0.0);
    let on = prepare(
        wav.clone(),
        &Settings {
            dtx: true,
            ..Settings::default()
        },
    )
    .expect("dtx");
    let off = prepare(wav, &Settings::default()).expect("no dtx");
    let tiny = |p: &audio::PreparedAudio| p.frames().filter(|f| f.len() <= 2).count();
    assert!(
        tiny(&on) > on.frame_count() * 3 / 4,
        "{} of {} tiny",
        tiny(&on),
        on.frame_count()
    );
    assert!(on.encoded_bytes() < off.encoded_bytes());
}
