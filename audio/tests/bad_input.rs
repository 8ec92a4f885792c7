//! Every kind of bad input gives the error variant that tells the caller what to do, and the
//! command line exits non-zero with that message. Nothing panics.

mod common;

use std::process::Command;
use std::time::Duration;

use audio::{AudioError, Limits, Settings, prepare, prepare_with, probe};
use common::*;

fn err(bytes: Vec<u8>) -> AudioError {
    match prepare(bytes, &Settings::default()) {
        Ok(p) => panic!("expected an error, got {} frames", p.frame_count()),
        Err(e) => e,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).expect("fixture")
}

/// A tiny deterministic generator (xorshift) so failures reproduce.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn empty_input_is_empty() {
    assert!(matches!(err(Vec::new()), AudioError::Empty(_)));
}

#[test]
fn header_with_no_samples_is_empty() {
    let wav = wav_bytes(16_000, 1, Fmt::S16, 0, |_, _| 0.0);
    let e = err(wav);
    assert!(matches!(e, AudioError::Empty(_)), "{e}");
}

#[test]
fn truncated_files_are_corrupt() {
    for (name, keep) in [
        ("speech_16000_mono_4s.wav", 0.5),
        ("speech_16000_mono_4s.wav", 0.0002),
        ("speech_16000_mono_4s.flac", 0.5),
        ("speech_16000_mono_4s.mp3", 0.5),
        ("speech_16000_mono_4s.ogg", 0.5),
        ("speech_16000_mono_4s.m4a", 0.5),
        ("speech_16000_mono_4s_opusenc.opus", 0.5),
        ("speech_16000_mono_4s_opusenc.opus", 0.003),
    ] {
        let full = fixture(name);
        let cut = full[..(full.len() as f64 * keep) as usize].to_vec();
        let e = err(cut);
        assert!(
            matches!(e, AudioError::Corrupt(_)),
            "{name} cut to {keep}: {e:?}"
        );
        assert!(
            e.to_string().contains("truncated") || e.to_string().contains("moov"),
            "{name}: {e}"
        );
    }
}

#[test]
fn random_bytes_are_corrupt() {
    for seed in 1..=40 {
        let e = err(random_bytes(seed, 100 + seed as usize * 997));
        assert!(matches!(e, AudioError::Corrupt(_)), "seed {seed}: {e:?}");
    }
}

#[test]
fn unsupported_codecs_and_containers_are_unsupported() {
    // WAV holding MP3 (format tag 0x55), which symphonia's WAV reader does not decode
    let mut wav = wav_bytes(8_000, 1, Fmt::S16, 800, |_, _| 0.0);
    wav[20..22].copy_from_slice(&0x55u16.to_le_bytes());
    let e = err(wav);
    assert!(matches!(e, AudioError::Unsupported(_)), "{e:?}");
    // Matroska magic
    let mut mkv = vec![0x1a, 0x45, 0xdf, 0xa3];
    mkv.extend(random_bytes(7, 500));
    let e = err(mkv);
    assert!(matches!(e, AudioError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("Matroska"), "{e}");
}

#[test]
fn too_long_is_limit_exceeded() {
    let limits = Limits {
        max_duration: Duration::from_secs(2),
        ..Limits::default()
    };
    // declared length already over the limit (WAV header)
    let e = prepare_with(
        fixtures_dir().join("speech_16000_mono_4s.wav"),
        &Settings::default(),
        &limits,
        &mut |_| {},
    )
    .expect_err("too long");
    assert!(matches!(e, AudioError::LimitExceeded(_)), "{e:?}");
    // no declared length (Ogg Opus): caught while decoding
    let e = prepare_with(
        fixtures_dir().join("speech_16000_mono_4s_opusenc.opus"),
        &Settings::default(),
        &limits,
        &mut |_| {},
    )
    .expect_err("too long");
    assert!(matches!(e, AudioError::LimitExceeded(_)), "{e:?}");
    // default limit: one hour, from a header that claims more (the file itself is short)
    let mut wav = wav_bytes(8_000, 1, Fmt::S16, 100, |_, _| 0.0);
    let claimed: u32 = 8_000 * 2 * 3_700;
    let n = wav.len();
    wav[n - 200 - 4..n - 200].copy_from_slice(&claimed.to_le_bytes());
    wav[4..8].copy_from_slice(&(claimed + 36).to_le_bytes());
    let e = err(wav);
    assert!(matches!(e, AudioError::LimitExceeded(_)), "{e:?}");
}

#[test]
fn too_many_channels_or_too_high_a_rate_is_limit_exceeded() {
    let e = err(wav_bytes(16_000, 9, Fmt::S16, 1600, |_, _| 0.1));
    assert!(matches!(e, AudioError::LimitExceeded(_)), "{e:?}");
    assert!(e.to_string().contains("channels"), "{e}");
    let e = err(wav_bytes(384_000, 1, Fmt::S16, 3840, |_, _| 0.1));
    assert!(matches!(e, AudioError::LimitExceeded(_)), "{e:?}");
    assert!(e.to_string().contains("384000"), "{e}");
    let e = err(wav_bytes(4_000, 1, Fmt::S16, 400, |_, _| 0.1));
    assert!(matches!(e, AudioError::Unsupported(_)), "{e:?}");
}

#[test]
fn probe_reports_the_same_errors() {
    assert!(matches!(probe(Vec::<u8>::new()), Err(AudioError::Empty(_))));
    assert!(matches!(
        probe(random_bytes(3, 4096)),
        Err(AudioError::Corrupt(_))
    ));
}

#[test]
fn bad_settings_are_refused() {
    let wav = fixture("speech_16000_mono_4s.wav");
    for s in [
        Settings {
            bitrate: 100,
            ..Settings::default()
        },
        Settings {
            complexity: 11,
            ..Settings::default()
        },
        Settings {
            fec_loss_percent: Some(0),
            ..Settings::default()
        },
        Settings {
            normalize_lufs: Some(5.0),
            ..Settings::default()
        },
    ] {
        let e = prepare(wav.clone(), &s).expect_err("bad settings");
        assert!(matches!(e, AudioError::InvalidSettings(_)), "{e:?}");
    }
}

#[test]
fn command_line_exits_non_zero_with_the_message() {
    let dir = scratch("cli-bad");
    let bin = env!("CARGO_BIN_EXE_audio");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.wav", Vec::new(), "empty"),
        (
            "random.mp3",
            random_bytes(5, 3000),
            "not a recognised audio file",
        ),
        (
            "nine.wav",
            wav_bytes(16_000, 9, Fmt::S16, 160, |_, _| 0.0),
            "9 channels",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        for args in [
            vec!["probe".to_string(), path.display().to_string()],
            vec![
                "prepare".to_string(),
                path.display().to_string(),
                "-o".to_string(),
                dir.join("o.opus").display().to_string(),
            ],
            vec![
                "decode".to_string(),
                path.display().to_string(),
                "-o".to_string(),
                dir.join("o.wav").display().to_string(),
            ],
        ] {
            let out = Command::new(bin).args(&args).output().expect("run audio");
            assert!(!out.status.success(), "{args:?} succeeded");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(needle),
                "{args:?}: stderr {stderr:?} lacks {needle:?}"
            );
        }
    }
    let out = Command::new(bin)
        .args(["probe", "/nonexistent/x.wav"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.wav"));
}
