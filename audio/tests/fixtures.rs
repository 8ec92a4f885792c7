//! Every shared fixture: true length, correlation with sox's reference, Ogg Opus validity
//! under `opusinfo` and `opusdec`.

mod common;

use std::fs::File;
use std::io::BufWriter;
use std::process::Command;

use audio::{Decoder, Input, Limits, Settings, prepare};
use common::*;

/// Frames our decoder must give for a fixture: the true length, except for an MP3 without a
/// LAME/Xing tag, where no decoder can know the encoder delay and padding (README: ffmpeg and
/// symphonia both give 1664 extra frames); there we must match ffmpeg's count.
fn expected_decoded(f: &Fixture) -> u64 {
    if f.name.ends_with("_noxing.mp3") {
        // README "ffmpeg frames" column for this file
        return 65_664;
    }
    f.true_frames
}

#[test]
fn every_fixture_decodes_to_its_true_length() {
    for f in fixtures() {
        let mut input = Input::from(f.path.as_path());
        let mut dec = Decoder::open(&mut input, &Limits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
        let rate = dec.info().sample_rate;
        assert_eq!(rate, f.true_rate, "{}: decoded rate", f.name);
        while dec
            .next_block()
            .unwrap_or_else(|e| panic!("{}: {e}", f.name))
            .is_some()
        {}
        let got = dec.frames_decoded();
        let want = expected_decoded(&f);
        let one_frame = u64::from(rate / 50);
        assert!(
            got.abs_diff(want) <= one_frame,
            "{}: decoded {got} frames, true length {want} (tolerance {one_frame})",
            f.name
        );
        // and in fact exact for every fixture
        assert_eq!(got, want, "{}: not sample exact", f.name);
    }
}

#[test]
fn every_fixture_prepares_to_the_exact_48k_length() {
    for f in fixtures() {
        let p = prepare(f.path.as_path(), &Settings::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
        let want = (expected_decoded(&f) * 48_000).div_ceil(u64::from(f.true_rate));
        assert_eq!(p.samples(), want, "{}: prepared samples at 48 kHz", f.name);
        let packets = (want + u64::from(p.pre_skip())).div_ceil(960);
        assert_eq!(p.frame_count() as u64, packets, "{}: packet count", f.name);
        assert!(
            p.duration().as_secs_f64() - want as f64 / 48_000.0 < 1e-6,
            "{}: duration",
            f.name
        );
    }
}

/// Writes `f` prepared with `settings` as Ogg Opus into `dir`, returning the path.
fn prepare_to_ogg(
    f: &Fixture,
    settings: &Settings,
    dir: &std::path::Path,
) -> (std::path::PathBuf, u64) {
    let p = prepare(f.path.as_path(), settings).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    let out = dir.join(format!("{}.opus", f.name));
    let w = p
        .write_ogg(BufWriter::new(File::create(&out).expect("create")))
        .expect("write ogg");
    drop(w);
    (out, p.samples())
}

#[test]
fn output_decoded_by_libopus_correlates_with_sox_reference() {
    require_tool("sox");
    require_tool("opusdec");
    let dir = scratch("ncc");
    let mut report = Vec::new();
    for f in fixtures() {
        // speech with the default (Voip); tones and sweeps are music to Opus
        let settings = Settings {
            application: if f.is_speech {
                audio::Application::Voip
            } else {
                audio::Application::Audio
            },
            ..Settings::default()
        };
        let (ogg, _) = prepare_to_ogg(&f, &settings, &dir);
        // libopus decode (opusdec), at 48 kHz
        let dec_wav = dir.join(format!("{}.dec.wav", f.name));
        run(Command::new("opusdec")
            .args(["--quiet", "--rate", "48000", "--float"])
            .arg(&ogg)
            .arg(&dec_wav));
        // reference: the source WAV, downmixed by sox and resampled with `rate -v`
        let ref_wav = dir.join(format!("{}.ref.wav", f.name));
        run(Command::new("sox")
            .arg(&f.source_wav)
            .args(["-b", "32", "-e", "floating-point"])
            .arg(&ref_wav)
            .args(["channels", "1", "rate", "-v", "48000"]));
        let (ours, r1, c1) = decode_all(&dec_wav);
        let (reference, r2, c2) = decode_all(&ref_wav);
        assert_eq!((r1, c1, r2, c2), (48_000, 1, 48_000, 1), "{}", f.name);
        let (ncc, lag) = best_ncc(&ours, &reference, 4_800);
        report.push(format!("{:40} ncc {ncc:.4} lag {lag}", f.name));
        // issue 3 asks 0.9 for speech; music settings reach it on tones and sweeps too
        let floor = 0.9;
        assert!(
            ncc >= floor,
            "{}: ncc {ncc:.4} at lag {lag} < {floor}\n{}",
            f.name,
            report.join("\n")
        );
        // a pure tone correlates equally at every period, so its lag says nothing
        if !f.name.ends_with("_noxing.mp3") && !f.name.starts_with("sine") {
            assert!(
                lag.abs() <= 48,
                "{}: output shifted by {lag} samples",
                f.name
            );
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn ogg_output_passes_opusinfo_and_opusdec_gives_the_exact_length() {
    require_tool("opusinfo");
    require_tool("opusdec");
    let dir = scratch("opusinfo");
    for f in fixtures() {
        for settings in [
            Settings::default(),
            Settings {
                channels: audio::ChannelMode::Stereo,
                fec_loss_percent: Some(10),
                dtx: true,
                ..Settings::default()
            },
        ] {
            let (ogg, samples) = prepare_to_ogg(&f, &settings, &dir);
            let info = run(Command::new("opusinfo").arg(&ogg));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&info.stdout),
                String::from_utf8_lossy(&info.stderr)
            );
            assert!(
                !text.to_ascii_lowercase().contains("warning"),
                "{}: opusinfo warns:\n{text}",
                f.name
            );
            let dec = dir.join("d.wav");
            run(Command::new("opusdec")
                .args(["--quiet", "--rate", "48000"])
                .arg(&ogg)
                .arg(&dec));
            let (pcm, rate, ch) = decode_all(&dec);
            assert_eq!(rate, 48_000);
            assert_eq!(
                (pcm.len() / ch) as u64,
                samples,
                "{}: opusdec length",
                f.name
            );
        }
    }
}

#[test]
fn opusenc_fixture_reads_back_with_its_header_values() {
    let f = fixtures_dir().join("speech_16000_mono_4s_opusenc.opus");
    let p = audio::PreparedAudio::read_ogg(File::open(&f).expect("open")).expect("read");
    assert_eq!(p.pre_skip(), 312);
    assert_eq!(p.frame_count(), 201);
    assert_eq!(p.samples(), 192_000);
    assert_eq!(p.source().sample_rate, 16_000);
}
