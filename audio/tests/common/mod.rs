//! Helpers shared by the integration tests: fixture table, WAV generation, external tools,
//! cross-correlation.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use audio::{Decoder, Input, Limits};
pub use test_support::TempDir;

/// `shared/fixtures/audio`, beside the workspace (override with `AUDIO_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AUDIO_FIXTURES").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let mut d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/audio");
    if !d.join("README.md").is_file() {
        // A clone elsewhere than beside `shared/` (the machine's copy is at /work/shared).
        d = PathBuf::from("/work/shared/fixtures/audio");
    }
    assert!(
        d.join("README.md").is_file(),
        "audio fixtures not found at {} (set AUDIO_FIXTURES)",
        d.display()
    );
    d
}

/// One row of the fixture README's table.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub path: PathBuf,
    /// True length in frames at `true_rate`.
    pub true_frames: u64,
    /// The rate `true_frames` is counted at (48000 for Opus files, else the file's rate).
    pub true_rate: u32,
    /// The source WAV it was made from.
    pub source_wav: PathBuf,
    pub is_speech: bool,
}

/// Every fixture listed in README.md; asserts that every audio file in the folder is listed.
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("fixture README");
    let mut out = Vec::new();
    for line in readme.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 8 || !cols[1].contains('.') || cols[1] == "file" {
            continue;
        }
        let name = cols[1].to_string();
        let ffprobe: Vec<&str> = cols[3].split_whitespace().collect();
        let file_rate: u32 = ffprobe
            .get(1)
            .and_then(|r| r.parse().ok())
            .expect("rate column");
        let true_col = cols[5];
        let true_frames: u64 = true_col
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("true frames of {name}: {true_col}"));
        let true_rate = if true_col.contains("@48k") {
            48_000
        } else {
            file_rate
        };
        let stem = name.split('.').next().unwrap_or_default();
        let stem = stem
            .trim_end_matches("_noxing")
            .trim_end_matches("_opusenc");
        out.push(Fixture {
            path: dir.join(&name),
            source_wav: dir.join(format!("{stem}.wav")),
            is_speech: name.starts_with("speech"),
            name,
            true_frames,
            true_rate,
        });
    }
    for entry in std::fs::read_dir(&dir).expect("fixture dir").flatten() {
        let n = entry.file_name().to_string_lossy().to_string();
        if n != "README.md" {
            assert!(
                out.iter().any(|f| f.name == n),
                "fixture {n} is not in the README table: add its true length there"
            );
        }
    }
    assert!(
        out.len() >= 20,
        "only {} fixtures parsed from the README",
        out.len()
    );
    out
}

/// Panics (fails the test) when a required tool is missing.
pub fn require_tool(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is required by this test but is not installed: run scripts/audio-test-deps.sh"
    );
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Decodes any file with our decoder: (interleaved samples, rate, channels).
pub fn decode_all(path: &Path) -> (Vec<f32>, u32, usize) {
    let mut input = Input::from(path);
    let mut dec = Decoder::open(&mut input, &Limits::default()).expect("open");
    let (rate, ch) = (dec.info().sample_rate, dec.info().channels);
    let mut v = Vec::new();
    while let Some(b) = dec.next_block().expect("decode") {
        v.extend_from_slice(b);
    }
    (v, rate, ch)
}

/// A scratch directory unique to the test, removed when dropped (also when the test
/// fails).
pub fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("audio-test-{name}"))
}

/// Sample encodings the WAV generator can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    U8,
    S16,
    S24,
    S32,
    F32,
}

/// A WAV file (WAVE_FORMAT_EXTENSIBLE when `channels > 2`) from per-frame sample closures.
pub fn wav_bytes(
    rate: u32,
    channels: u16,
    fmt: Fmt,
    frames: usize,
    sample: impl Fn(usize, usize) -> f32,
) -> Vec<u8> {
    let (tag, bits): (u16, u16) = match fmt {
        Fmt::U8 => (1, 8),
        Fmt::S16 => (1, 16),
        Fmt::S24 => (1, 24),
        Fmt::S32 => (1, 32),
        Fmt::F32 => (3, 32),
    };
    let block = channels * bits / 8;
    let mut data = Vec::with_capacity(frames * usize::from(block));
    for i in 0..frames {
        for c in 0..usize::from(channels) {
            let s = sample(i, c).clamp(-1.0, 1.0);
            match fmt {
                Fmt::U8 => data.push(((s * 127.0).round() as i16 + 128) as u8),
                Fmt::S16 => data.extend_from_slice(&((s * 32767.0).round() as i16).to_le_bytes()),
                Fmt::S24 => {
                    data.extend_from_slice(&((s * 8_388_607.0).round() as i32).to_le_bytes()[..3])
                }
                Fmt::S32 => data.extend_from_slice(
                    &((f64::from(s) * 2_147_483_647.0).round() as i32).to_le_bytes(),
                ),
                Fmt::F32 => data.extend_from_slice(&s.to_le_bytes()),
            }
        }
    }
    let extensible = channels > 2;
    let mut fmt_chunk = Vec::new();
    fmt_chunk.extend_from_slice(&(if extensible { 0xFFFEu16 } else { tag }).to_le_bytes());
    fmt_chunk.extend_from_slice(&channels.to_le_bytes());
    fmt_chunk.extend_from_slice(&rate.to_le_bytes());
    fmt_chunk.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    fmt_chunk.extend_from_slice(&block.to_le_bytes());
    fmt_chunk.extend_from_slice(&bits.to_le_bytes());
    if extensible {
        fmt_chunk.extend_from_slice(&22u16.to_le_bytes());
        fmt_chunk.extend_from_slice(&bits.to_le_bytes());
        let mask: u32 = match channels {
            3 => 0x7,
            4 => 0x33,
            5 => 0x37,
            6 => 0x3F,
            7 => 0x13F,
            8 => 0x63F,
            _ => 0,
        };
        fmt_chunk.extend_from_slice(&mask.to_le_bytes());
        // KSDATAFORMAT_SUBTYPE_PCM / IEEE_FLOAT GUID
        fmt_chunk.extend_from_slice(&tag.to_le_bytes());
        fmt_chunk.extend_from_slice(&[
            0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
        ]);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((4 + 8 + fmt_chunk.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&(fmt_chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt_chunk);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// Normalised cross-correlation of `x` against `y` at lag `lag` (x[i + lag] vs y[i]).
pub fn ncc_at(x: &[f32], y: &[f32], lag: isize) -> f64 {
    let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (i, &b) in y.iter().enumerate() {
        let j = i as isize + lag;
        if j < 0 || j as usize >= x.len() {
            continue;
        }
        let a = f64::from(x[j as usize]);
        let b = f64::from(b);
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    if xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx.sqrt() * yy.sqrt())
    }
}

/// Best normalised cross-correlation over lags within ±`max_lag` (coarse search on every 8th
/// sample, then refined), and the lag.
pub fn best_ncc(x: &[f32], y: &[f32], max_lag: usize) -> (f64, isize) {
    let dec = |v: &[f32]| v.iter().step_by(8).copied().collect::<Vec<f32>>();
    let (xd, yd) = (dec(x), dec(y));
    let m = (max_lag / 8) as isize;
    let mut best = (f64::MIN, 0isize);
    for l in -m..=m {
        let c = ncc_at(&xd, &yd, l);
        if c > best.0 {
            best = (c, l * 8);
        }
    }
    let centre = best.1;
    let mut fine = (f64::MIN, centre);
    for l in centre - 12..=centre + 12 {
        let c = ncc_at(x, y, l);
        if c > fine.0 {
            fine = (c, l);
        }
    }
    fine
}
