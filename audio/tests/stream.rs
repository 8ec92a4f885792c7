//! StreamingAudio: frames readable while the encoder runs, the same frames as a batch
//! prepare, shared encodes in the cache, and failures mid-stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use audio::{AudioError, FrameRead, PreparedCache, Served, Settings, StreamingAudio, prepare};
use common::*;

/// Long enough for every wait below.
const PATIENCE: Duration = Duration::from_secs(120);

/// `seconds` of the 16 kHz speech fixture, repeated, as WAV bytes; `gain_after` scales the
/// samples after that many seconds (to make the loudness change past the window).
fn speech_wav(seconds: usize, gain_after: Option<(usize, f32)>) -> Vec<u8> {
    let (pcm, rate, ch) = decode_all(&fixtures_dir().join("speech_16000_mono_10s.wav"));
    assert_eq!((rate, ch), (16_000, 1));
    let frames = seconds * 16_000;
    wav_bytes(16_000, 1, Fmt::S16, frames, |i, _| {
        let g = match gain_after {
            Some((after, g)) if i >= after * 16_000 => g,
            _ => 1.0,
        };
        pcm[i % pcm.len()] * g
    })
}

/// Waits for the stream to finish and returns every frame, read through `read`.
fn drain(s: &StreamingAudio) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    loop {
        match s.wait_for(out.len(), PATIENCE) {
            FrameRead::Ready(f) => out.push(f),
            FrameRead::End => return out,
            FrameRead::Pending => panic!("no frame {} within {PATIENCE:?}", out.len()),
            FrameRead::Failed(e) => panic!("stream failed at frame {}: {e}", out.len()),
        }
    }
}

#[test]
fn a_stream_gives_the_same_frames_as_a_batch_prepare() {
    // Opus output is deterministic on one machine for the same input and settings, so the
    // frames are compared byte for byte: MP3 and WAV, plain and normalised.
    let plain = Settings::default();
    let normalised = Settings {
        normalize_lufs: Some(-16.0),
        ..Settings::default()
    };
    for name in ["speech_16000_mono_4s.mp3", "speech_44100_stereo_3s.flac"] {
        for settings in [&plain, &normalised] {
            let path = fixtures_dir().join(name);
            let batch = prepare(path.as_path(), settings).expect("prepare");
            let s = StreamingAudio::start(path.as_path(), settings, &Default::default())
                .expect("start");
            let frames = drain(&s);
            assert_eq!(frames.len(), batch.frame_count(), "{name}");
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(Some(&f[..]), batch.frame(i), "{name} frame {i}");
            }
            let done = s.prepared().expect("complete");
            assert_eq!(s.total_frames(), Some(batch.frame_count()));
            assert_eq!(done.samples(), batch.samples());
            assert_eq!(done.normalization(), batch.normalization(), "{name}");
            assert_eq!(done.source(), batch.source());
            assert_eq!(s.read(batch.frame_count()), FrameRead::End);
        }
    }
}

#[test]
fn normalisation_uses_the_opening_window_in_both_paths() {
    // 40 s whose last 10 s are 12 dB louder: the gain comes from the first 30 s only, in the
    // batch prepare and in the stream alike, so both give the same frames.
    let wav = speech_wav(40, Some((30, 4.0)));
    let quiet = speech_wav(30, None);
    let settings = Settings {
        normalize_lufs: Some(-20.0),
        ..Settings::default()
    };
    let batch = prepare(wav.clone(), &settings).expect("prepare");
    let opening = prepare(quiet, &settings).expect("prepare");
    let n = batch.normalization().expect("normalised");
    let n30 = opening.normalization().expect("normalised");
    assert_eq!(
        n.measured_lufs, n30.measured_lufs,
        "measured over the first 30 s"
    );
    assert_eq!(n.gain_db, n30.gain_db);
    let s = StreamingAudio::start(wav, &settings, &Default::default()).expect("start");
    let frames = drain(&s);
    assert_eq!(frames.len(), batch.frame_count());
    assert!(
        frames
            .iter()
            .enumerate()
            .all(|(i, f)| Some(&f[..]) == batch.frame(i))
    );
    assert_eq!(s.prepared().expect("complete").normalization(), Some(n));
}

#[test]
fn the_first_frames_are_readable_long_before_the_encode_ends() {
    let s = StreamingAudio::start(
        speech_wav(120, None),
        &Settings::default(),
        &Default::default(),
    )
    .expect("start");
    assert!(matches!(s.wait_for(0, PATIENCE), FrameRead::Ready(_)));
    // frame 0 is out while most of the 6,000 frames are still to come
    assert!(s.total_frames().is_none(), "the encode should still run");
    assert!(s.ready_frames() < 6_000);
    let last = s.wait_for(5_999, PATIENCE);
    assert!(matches!(last, FrameRead::Ready(_)), "{last:?}");
    assert!(matches!(s.wait_for(6_001, PATIENCE), FrameRead::End));
    assert_eq!(s.total_frames(), Some(6_001));
}

#[test]
fn many_readers_read_one_stream_while_it_encodes() {
    let s = StreamingAudio::start(
        speech_wav(60, None),
        &Settings::default(),
        &Default::default(),
    )
    .expect("start");
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                // reader r polls as a media clock would, in steps of r + 1 frames
                let mut got = Vec::new();
                let mut i = 0;
                loop {
                    match s.read(i) {
                        FrameRead::Ready(f) => {
                            got.push(f);
                            i += 1;
                        }
                        FrameRead::Pending => {
                            std::thread::sleep(Duration::from_micros(200 * (r + 1)));
                        }
                        FrameRead::End => return got,
                        FrameRead::Failed(e) => panic!("reader {r}: {e}"),
                    }
                }
            })
        })
        .collect();
    let results: Vec<Vec<bytes::Bytes>> = readers
        .into_iter()
        .map(|h| h.join().expect("reader thread"))
        .collect();
    let done = s.prepared().expect("complete");
    for (r, got) in results.iter().enumerate() {
        assert_eq!(got.len(), done.frame_count(), "reader {r}");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(Some(&f[..]), done.frame(i), "reader {r} frame {i}");
        }
    }
}

#[test]
fn a_corrupt_tail_gives_frames_then_a_failure_never_a_panic() {
    // The MP3 fixture has a LAME tag: cut at 60 %, its missing end is found after the frames
    // that exist have been encoded and published.
    let full = std::fs::read(fixtures_dir().join("speech_16000_mono_4s.mp3")).expect("fixture");
    let cut = full[..full.len() * 6 / 10].to_vec();
    let dir = scratch("stream-corrupt");
    let cache = PreparedCache::with_dir(dir.path()).expect("cache");
    let (s, served) = cache
        .get_or_stream(cut.clone(), &Settings::default())
        .expect("started");
    assert_eq!(served, Served::Started);
    let mut ready = 0;
    let failure = loop {
        match s.wait_for(ready, PATIENCE) {
            FrameRead::Ready(_) => ready += 1,
            FrameRead::Failed(e) => break e,
            other => panic!("after {ready} frames: {other:?}"),
        }
    };
    assert!(ready > 50, "frames before the failure: {ready}");
    assert!(failure.contains("truncated"), "{failure}");
    assert!(
        matches!(s.error(), Some(AudioError::Corrupt(_))),
        "{:?}",
        s.error()
    );
    // what was encoded stays readable; past it, the failure, again and again
    assert!(matches!(s.read(ready - 1), FrameRead::Ready(_)));
    assert!(matches!(s.read(ready), FrameRead::Failed(_)));
    assert!(matches!(s.read(ready + 1_000), FrameRead::Failed(_)));
    assert!(s.is_finished());
    assert_eq!(s.total_frames(), None);
    // nothing in the cache: no entry and no temporary file on disk, nothing in memory
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
    assert!(left.is_empty(), "{left:?}");
    let key = s.cache_key().expect("key").to_owned();
    assert!(cache.get(&key).is_none());
    assert_eq!(cache.encodes_in_progress(), 0);
    // the next request encodes again (and fails again) instead of being served a failure
    let (again, served) = cache
        .get_or_stream(cut, &Settings::default())
        .expect("started");
    assert_eq!(served, Served::Started);
    assert!(!Arc::ptr_eq(&s, &again));
    assert!(matches!(
        again.wait_for(usize::MAX, PATIENCE),
        FrameRead::Failed(_)
    ));
}

#[test]
fn the_cache_shares_an_encode_in_progress_and_keeps_the_complete_entry() {
    let dir = scratch("stream-cache");
    let cache = PreparedCache::with_dir(dir.path()).expect("cache");
    let wav = speech_wav(120, None);
    let settings = Settings::default();
    let (first, served) = cache.get_or_stream(wav.clone(), &settings).expect("start");
    assert_eq!(served, Served::Started);
    // a 2-minute input takes far longer to encode than this second request takes to arrive
    let (second, served) = cache.get_or_stream(wav.clone(), &settings).expect("join");
    assert_eq!(served, Served::Joined);
    assert!(Arc::ptr_eq(&first, &second), "one stream for both");
    assert_eq!(cache.encodes_in_progress(), 1);
    let key = first.cache_key().expect("key").to_owned();
    assert!(
        !cache.path_for(&key).expect("path").exists(),
        "no disk entry before the encode is complete"
    );
    let frames = drain(&second);
    assert_eq!(frames.len(), 6_001);
    let stats = cache.stats();
    assert_eq!((stats.encodes, stats.joined), (1, 1), "{stats:?}");
    assert_eq!(cache.encodes_in_progress(), 0);

    // complete: the entry is on disk (whole, nothing temporary) and in memory
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![format!("{key}.opus")]);
    let (mem, served) = cache.get_or_stream(wav.clone(), &settings).expect("memory");
    assert_eq!(served, Served::Memory);
    assert_eq!(mem.total_frames(), Some(6_001));
    // a fresh cache on the same directory serves it from disk, frame for frame
    let cold = PreparedCache::with_dir(dir.path()).expect("cache");
    let (disk, served) = cold.get_or_stream(wav, &settings).expect("disk");
    assert_eq!(served, Served::Disk);
    let from_disk = drain(&disk);
    assert_eq!(from_disk, frames);
    assert_eq!(cold.stats().encodes, 0);
}

#[test]
fn a_complete_stream_and_its_callbacks() {
    let p = Arc::new(
        prepare(
            fixtures_dir().join("speech_16000_mono_4s.wav"),
            &Settings::default(),
        )
        .expect("prepare"),
    );
    let s = StreamingAudio::complete(Arc::clone(&p));
    assert_eq!(s.total_frames(), Some(201));
    assert_eq!(s.ready_frames(), 201);
    assert_eq!(
        s.read(3),
        FrameRead::Ready(p.frame_bytes(3).expect("frame"))
    );
    assert_eq!(s.read(201), FrameRead::End);
    let (tx, rx) = std::sync::mpsc::channel();
    s.notify_when(10, move || tx.send(()).expect("send"));
    rx.recv_timeout(Duration::from_secs(1))
        .expect("called at once: the frame is ready");

    // on a stream still encoding, the callback comes from the encoder's thread
    let live = StreamingAudio::start(
        speech_wav(60, None),
        &Settings::default(),
        &Default::default(),
    )
    .expect("start");
    let (tx, rx) = std::sync::mpsc::channel();
    live.notify_when(2_500, move || tx.send(()).expect("send"));
    rx.recv_timeout(PATIENCE)
        .expect("called when frame 2500 is encoded");
    assert!(live.ready_frames() > 2_500);
    let (tx, rx) = std::sync::mpsc::channel();
    live.notify_when(usize::MAX, move || tx.send(()).expect("send"));
    rx.recv_timeout(PATIENCE)
        .expect("called when the stream is complete");
    assert_eq!(live.total_frames(), Some(3_001));
}

#[test]
fn input_that_is_not_audio_fails_the_stream_at_frame_zero() {
    let s = StreamingAudio::start(vec![7u8; 5_000], &Settings::default(), &Default::default())
        .expect("start");
    assert!(matches!(s.wait_for(0, PATIENCE), FrameRead::Failed(_)));
    assert!(matches!(s.error(), Some(AudioError::Corrupt(_))));
    let bad = Settings {
        bitrate: 100,
        ..Settings::default()
    };
    assert!(matches!(
        StreamingAudio::start(vec![7u8; 10], &bad, &Default::default()),
        Err(AudioError::InvalidSettings(_))
    ));
}
