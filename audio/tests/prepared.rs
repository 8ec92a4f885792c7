//! PreparedAudio (frames, resume, Ogg round trip, normalisation) and PreparedCache.

mod common;

use std::sync::Arc;
use std::time::Duration;

use audio::{PreparedAudio, PreparedCache, Settings, prepare};
use common::*;

fn speech() -> std::path::PathBuf {
    fixtures_dir().join("speech_16000_mono_4s.wav")
}

#[test]
fn frames_resume_from_any_offset_without_copying() {
    let p = Arc::new(prepare(speech(), &Settings::default()).expect("prepare"));
    assert_eq!(p.frame_count(), 201);
    assert_eq!(p.duration(), Duration::from_secs(4));
    let all: Vec<&[u8]> = p.frames().collect();
    assert_eq!(all.len(), 201);
    // resume at frame 120 = 2.4 s
    let at = p.frame_index_at(Duration::from_millis(2_410));
    assert_eq!(at, 120);
    let rest: Vec<&[u8]> = p.frames_from(at).collect();
    assert_eq!(rest.len(), 81);
    assert_eq!(rest[0], all[120]);
    let mut head = p.playhead(at);
    assert_eq!(head.timestamp_offset(), 120 * 960);
    let b = head.next().expect("frame");
    assert_eq!(&b[..], all[120]);
    // a Bytes frame points into the shared buffer (no copy)
    let again = p.frame_bytes(120).expect("frame");
    assert_eq!(again.as_ptr(), b.as_ptr());
    head.seek(201);
    assert!(head.is_finished());
    assert!(head.next().is_none());
    assert_eq!(p.frames_from(500).count(), 0);
    assert!(p.frame(201).is_none());
}

#[test]
fn ogg_round_trip_keeps_frames_and_metadata() {
    let settings = Settings {
        bitrate: 24_000,
        normalize_lufs: Some(-16.0),
        ..Settings::default()
    };
    let p = prepare(speech(), &settings).expect("prepare");
    let ogg = p
        .write_ogg_with_serial(Vec::new(), 0x1234_5678)
        .expect("write");
    let back = PreparedAudio::read_ogg(std::io::Cursor::new(ogg)).expect("read");
    assert_eq!(back, p);
    let n = back.normalization().expect("normalisation recorded");
    assert!(
        (n.measured_lufs.expect("loudness") + 21.3).abs() < 0.5,
        "{n:?}"
    );
    // -21.3 LUFS with a -3 dBFS peak: gain limited to +2 dB by the -1 dBFS ceiling
    assert!((n.gain_db - 2.0).abs() < 0.1, "{n:?}");
}

#[test]
fn normalisation_reaches_the_target_when_the_peak_allows() {
    // a quiet tone: -30 dBFS sine ≈ -33 LUFS, plenty of headroom to reach -16
    let rate = 16_000;
    let wav = wav_bytes(rate, 1, Fmt::F32, rate as usize * 3, |i, _| {
        0.0316 * (2.0 * std::f32::consts::PI * 500.0 * i as f32 / rate as f32).sin()
    });
    let settings = Settings {
        normalize_lufs: Some(-16.0),
        application: audio::Application::Audio,
        bitrate: 64_000,
        ..Settings::default()
    };
    let p = prepare(wav, &settings).expect("prepare");
    let ogg = p.write_ogg(Vec::new()).expect("ogg");
    let (_, _, loud) =
        audio::measure_loudness(ogg, audio::ChannelMode::Mono, &audio::Limits::default())
            .expect("measure");
    let l = loud.integrated_lufs.expect("not silent");
    assert!((l + 16.0).abs() < 0.5, "normalised to {l} LUFS");
}

#[test]
fn cache_encodes_once_in_memory_and_on_disk() {
    let dir = scratch("cache");
    let settings = Settings::default();
    let cache = PreparedCache::with_dir(dir.path()).expect("cache");
    let a = cache.get_or_prepare(speech(), &settings).expect("first");
    let b = cache.get_or_prepare(speech(), &settings).expect("second");
    assert!(Arc::ptr_eq(&a, &b));
    // same content as bytes: same key
    let bytes = std::fs::read(speech()).expect("read");
    let c = cache
        .get_or_prepare(bytes.clone(), &settings)
        .expect("bytes");
    assert!(Arc::ptr_eq(&a, &c));
    assert_eq!(cache.stats().encodes, 1);
    assert_eq!(cache.stats().memory_hits, 2);
    let key = a.cache_key().expect("key").to_string();
    let path = cache.path_for(&key).expect("path");
    assert!(path.is_file());

    // a new process (new cache on the same directory) reads it from disk
    let cache2 = PreparedCache::with_dir(dir.path()).expect("cache");
    let d = cache2.get_or_prepare(speech(), &settings).expect("disk");
    assert_eq!(cache2.stats().encodes, 0);
    assert_eq!(cache2.stats().disk_hits, 1);
    assert_eq!(*d, *a);
    assert!(cache2.get(&key).is_some());

    // other settings: another entry
    let e = cache2
        .get_or_prepare(
            speech(),
            &Settings {
                bitrate: 24_000,
                ..Settings::default()
            },
        )
        .expect("other settings");
    assert_ne!(e.cache_key(), a.cache_key());
    assert_eq!(cache2.stats().encodes, 1);

    // a damaged file on disk is a miss, re-encoded and rewritten
    std::fs::write(&path, b"OggS garbage").expect("damage");
    let cache3 = PreparedCache::with_dir(dir.path()).expect("cache");
    let f = cache3
        .get_or_prepare(speech(), &settings)
        .expect("re-encode");
    assert_eq!(cache3.stats().encodes, 1);
    assert_eq!(*f, *a);
    assert!(PreparedAudio::read_ogg(std::fs::File::open(&path).expect("open")).is_ok());
}

#[test]
fn concurrent_requests_for_one_asset_encode_once() {
    let cache = Arc::new(PreparedCache::in_memory());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                cache
                    .get_or_prepare(speech(), &Settings::default())
                    .map(|a| a.frame_count())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread").expect("prepare"), 201);
    }
    assert_eq!(cache.stats().encodes, 1);
    assert_eq!(cache.stats().memory_hits, 3);
}

#[test]
fn memory_limit_evicts_the_oldest_but_disk_keeps_it() {
    let dir = scratch("evict");
    let cache = PreparedCache::with_dir(dir.path())
        .expect("cache")
        .max_memory_bytes(1);
    let a = cache
        .get_or_prepare(speech(), &Settings::default())
        .expect("a");
    let _b = cache
        .get_or_prepare(
            speech(),
            &Settings {
                bitrate: 24_000,
                ..Settings::default()
            },
        )
        .expect("b");
    let again = cache
        .get_or_prepare(speech(), &Settings::default())
        .expect("a again");
    assert_eq!(*again, *a);
    assert_eq!(cache.stats().encodes, 2);
    assert_eq!(cache.stats().disk_hits, 1);
}

#[test]
fn command_line_probe_prepare_decode() {
    let dir = scratch("cli");
    let bin = env!("CARGO_BIN_EXE_audio");
    let src = fixtures_dir().join("speech_44100_stereo_3s.mp3");
    let out = run(std::process::Command::new(bin)
        .arg("probe")
        .arg(&src)
        .arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["frames"], 132_300);
    assert_eq!(v["sample_rate"], 44_100);
    assert_eq!(v["channels"], 2);
    assert_eq!(v["codec"], "mp3");
    assert!(v["loudness_lufs"].as_f64().is_some());
    let opus = dir.join("o.opus");
    run(std::process::Command::new(bin)
        .arg("prepare")
        .arg(&src)
        .arg("-o")
        .arg(&opus)
        .args([
            "--bitrate",
            "24000",
            "--stereo",
            "--normalize",
            "-18",
            "--fec",
        ]));
    let p = PreparedAudio::read_ogg(std::fs::File::open(&opus).expect("open")).expect("read");
    assert_eq!(p.channels(), 2);
    assert_eq!(p.samples(), 144_000);
    assert_eq!(p.settings().bitrate, 24_000);
    assert_eq!(p.settings().fec_loss_percent, Some(10));
    assert_eq!(p.settings().normalize_lufs, Some(-18.0));
    let wav = dir.join("o.wav");
    run(std::process::Command::new(bin)
        .arg("decode")
        .arg(&opus)
        .arg("-o")
        .arg(&wav));
    let (pcm, rate, ch) = decode_all(&wav);
    assert_eq!((rate, ch, pcm.len()), (48_000, 2, 288_000));
}
