//! Bounded fuzzing inside `cargo test`: mutated fixtures and random bytes through the decoder
//! and the Ogg Opus reader. Errors are expected; a panic fails the test. (The open-ended
//! fuzzer is `scripts/audio-fuzz.sh`, cargo-fuzz on nightly.)

mod common;

use std::time::Duration;

use audio::{Decoder, Input, Limits, PreparedAudio};
use common::*;
use proptest::prelude::*;

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(load_corpus)
}

fn load_corpus() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fixtures()
        .iter()
        // the short files keep each case fast
        .filter(|f| !f.name.contains("10s"))
        .map(|f| std::fs::read(&f.path).expect("fixture"))
        .collect();
    let ogg = audio::prepare(v[0].clone(), &audio::Settings::default())
        .expect("prepare")
        .write_ogg(Vec::new())
        .expect("ogg");
    v.push(ogg);
    v
}

fn decode_everything(bytes: Vec<u8>) {
    let limits = Limits {
        max_duration: Duration::from_secs(20),
        ..Limits::default()
    };
    let mut input = Input::from(bytes.clone());
    if let Ok(mut dec) = Decoder::open(&mut input, &limits) {
        let ch = dec.info().channels;
        while let Ok(Some(b)) = dec.next_block() {
            assert_eq!(b.len() % ch, 0, "a block of partial frames");
            assert!(b.iter().all(|s| s.is_finite()), "non-finite samples");
        }
        assert!(dec.frames_decoded() <= limits.max_frames(dec.info().sample_rate));
    }
    let _ = PreparedAudio::read_ogg(std::io::Cursor::new(bytes));
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Truncate { keep: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

fn apply(mut data: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = data.len().max(1);
        match m {
            Mutation::Flip { at, xor } => {
                if let Some(b) = data.get_mut(at % n) {
                    *b ^= xor;
                }
            }
            Mutation::Truncate { keep } => data.truncate(keep % n),
            Mutation::Insert { at, bytes } => {
                let at = (at % n).min(data.len());
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Overwrite { at, bytes } => {
                // most damage is in headers: aim at the first 256 bytes half of the time
                let at = if at % 2 == 0 { (at / 2) % 256 } else { at % n };
                for (i, b) in bytes.iter().enumerate() {
                    if let Some(d) = data.get_mut(at + i) {
                        *d = *b;
                    }
                }
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(
        pick in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let corpus = corpus();
        let data = apply(corpus[pick % corpus.len()].clone(), &muts);
        decode_everything(data);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_everything(data);
    }

    #[test]
    fn random_bytes_behind_real_magic_never_panic(
        magic in prop_oneof![
            Just(b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec()),
            Just(b"fLaC".to_vec()),
            Just(b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec()),
            Just(b"\x00\x00\x00\x20ftypM4A ".to_vec()),
            Just(b"OggS\x00\x02".to_vec()),
            Just(vec![0xff, 0xfb, 0x90, 0x64]),
            Just(vec![0xff, 0xf1, 0x50, 0x80]),
        ],
        tail in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut data = magic;
        data.extend(tail);
        decode_everything(data);
    }
}
