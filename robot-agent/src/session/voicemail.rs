//! Voicemail recording, sans-IO: which participant is recorded, where each received Opus
//! packet goes in its recording, when a recording stops and when it is uploaded.
//!
//! ```text
//!   start(now, peers) ─► one Recording per participant (more for peers who join later)
//!   packet(now, peer, rtp seq, ts, payload)
//!       first packet: granule 0 is its RTP timestamp
//!       ts ahead of what was written: the gap is filled with 20 ms silence packets
//!       ts behind (late, repeated): dropped (an Ogg stream only goes forward)
//!       ─► Write { peer, silence_before, packet, samples }
//!   timeout(now): silence_seconds after speech, or max_seconds ─► Finish { peer, last }
//!                 every UPLOAD_EVERY while recording      ─► Upload { peer } (the file so far)
//!   left(peer) ─► Finish { peer, last: true }; hand-back ─► Finish { peer, last: false }
//! ```
//!
//! **Voice activity from packet sizes** (no decode on the hot path). An Opus encoder spends
//! few bytes on silence and many on speech: libopus at 32 kbit/s mono (a browser) makes
//! 60-120 bytes per 20 ms of speech and under 20 of background noise; aiortc (96 kbit/s)
//! makes 200+ of speech and 3-10 of digital silence; a sender with DTX sends nothing at
//! all (a gap in the RTP timestamps). A packet is **speech** when its size per 20 ms is at
//! least `max(SPEECH_MIN_BYTES, 2 × min(floor, FLOOR_CAP))`, where `floor` is the smallest
//! packet (per 20 ms) seen from that participant: the threshold is 20 to 60 bytes, higher
//! for a noisier sender (its quiet packets are bigger), and a sender that never went quiet
//! cannot push it above speech. Silence is counted in arrival time since the last speech packet, so a sender that
//! stops sending (DTX, muted, gone) is silent too. A recording stops once
//! `silence_seconds` of silence followed speech; before any speech only `max_seconds` or
//! the participant leaving stop it. This is a heuristic: steady loud noise counts as
//! speech (the recording then runs to `max_seconds`), which errs on the side of keeping
//! the message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Samples per 20 ms at 48 kHz.
pub const FRAME_SAMPLES: u32 = 960;
/// A packet smaller than this (per 20 ms) is never speech.
pub const SPEECH_MIN_BYTES: usize = 20;
/// The noise floor counts up to this many bytes per 20 ms.
pub const FLOOR_CAP: usize = 30;
/// The file so far is uploaded this often while recording: a crash loses at most this much.
pub const UPLOAD_EVERY: Duration = Duration::from_secs(4);
/// The longest gap filled with silence at once (a longer one is a sender that stopped and
/// came back: it is shortened to this).
pub const MAX_GAP_FRAMES: u32 = 50 * 60;

/// The voicemail options, as the core uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPlan {
    /// The longest recording.
    pub max: Duration,
    /// Silence after speech that ends a recording.
    pub silence: Duration,
    /// Beep before recording.
    pub beep: bool,
}

/// What to do with a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordAction {
    /// Append `silence_before` 20 ms silence packets, then `packet` (`samples` long).
    Write {
        /// Whose recording.
        peer: Arc<str>,
        /// Silence packets first (a gap in the RTP timestamps).
        silence_before: u32,
        /// The Opus packet as received.
        packet: Bytes,
        /// Its length at 48 kHz.
        samples: u32,
    },
    /// Upload the file so far (whole pages, not final).
    Upload {
        /// Whose recording.
        peer: Arc<str>,
    },
    /// The recording is over here: finish the file (end-of-stream page) and upload it.
    Finish {
        /// Whose recording.
        peer: Arc<str>,
        /// The recording is complete (`final=true`); false on a hand-back, where the
        /// session records on elsewhere into the next part.
        last: bool,
    },
}

#[derive(Debug)]
struct Recording {
    began_at: Instant,
    /// The RTP timestamp of sample 0 and of the last packet written, extended to 64 bits.
    last_ts: Option<(u32, i64)>,
    /// Samples written so far.
    written: i64,
    floor: Option<usize>,
    last_speech: Option<Instant>,
    next_upload: Option<Instant>,
    done: bool,
}

/// Every recording of one session.
#[derive(Debug)]
pub struct Voicemail {
    plan: RecordPlan,
    recordings: BTreeMap<Arc<str>, Recording>,
    out: Vec<RecordAction>,
}

impl Voicemail {
    /// Recording starts now for `peers`.
    pub fn start(plan: RecordPlan, now: Instant, peers: impl IntoIterator<Item = String>) -> Self {
        let mut v = Self {
            plan,
            recordings: BTreeMap::new(),
            out: Vec::new(),
        };
        for p in peers {
            v.add(now, &p);
        }
        v
    }

    /// A participant to record from now on (one who joined while recording). A uid already
    /// recorded (it reconnected) goes on in the same recording.
    pub fn add(&mut self, now: Instant, peer: &str) {
        if !self.recordings.contains_key(peer) {
            self.recordings.insert(
                Arc::from(peer),
                Recording {
                    began_at: now,
                    last_ts: None,
                    written: 0,
                    floor: None,
                    last_speech: None,
                    next_upload: None,
                    done: false,
                },
            );
        }
    }

    /// What to do next.
    pub fn drain(&mut self) -> std::vec::Drain<'_, RecordAction> {
        self.out.drain(..)
    }

    /// Every recording is finished (or there were none).
    pub fn is_done(&self) -> bool {
        self.recordings.values().all(|r| r.done)
    }

    /// Recordings that got at least one packet.
    pub fn recorded(&self) -> usize {
        self.recordings.values().filter(|r| r.written > 0).count()
    }

    /// A packet from `peer`.
    pub fn packet(&mut self, now: Instant, peer: &Arc<str>, timestamp: u32, payload: Bytes) {
        let Some(r) = self.recordings.get_mut(&**peer) else {
            return;
        };
        if r.done || payload.is_empty() {
            return;
        }
        let samples = audio::ogg_opus::packet_samples(&payload).unwrap_or(FRAME_SAMPLES);
        let max_samples = i64::try_from(self.plan.max.as_millis()).unwrap_or(i64::MAX) * 48;
        // Where the packet goes: its timestamp's distance from the last packet's, from
        // where that one was placed (so a shortened gap does not shift what follows).
        let pos = match r.last_ts {
            None => r.written,
            Some((last, placed)) => placed + i64::from(timestamp.wrapping_sub(last) as i32),
        };
        if pos < r.written {
            return; // late or repeated
        }
        let gap = u32::try_from((pos - r.written) / i64::from(FRAME_SAMPLES))
            .unwrap_or(u32::MAX)
            .min(MAX_GAP_FRAMES);
        let placed = r.written + i64::from(gap) * i64::from(FRAME_SAMPLES);
        r.last_ts = Some((timestamp, placed));
        r.written = placed + i64::from(samples);
        if r.next_upload.is_none() {
            r.next_upload = Some(now + UPLOAD_EVERY);
        }
        // voice activity
        let per_frame = payload.len() * FRAME_SAMPLES as usize / samples.max(1) as usize;
        let floor = r.floor.map_or(per_frame, |f| f.min(per_frame));
        r.floor = Some(floor);
        if per_frame >= SPEECH_MIN_BYTES.max(2 * floor.min(FLOOR_CAP)) {
            r.last_speech = Some(now);
        }
        self.out.push(RecordAction::Write {
            peer: Arc::clone(peer),
            silence_before: gap,
            packet: payload,
            samples,
        });
        if r.written >= max_samples {
            r.done = true;
            self.out.push(RecordAction::Finish {
                peer: Arc::clone(peer),
                last: true,
            });
        }
    }

    /// `peer` left the channel: its recording is over.
    pub fn left(&mut self, peer: &str) {
        if let Some((k, r)) = self.recordings.get_key_value(peer)
            && !r.done
        {
            let k = Arc::clone(k);
            self.finish(&k);
        }
    }

    /// Finishes every recording still going.
    pub fn finish_all(&mut self) {
        let open: Vec<Arc<str>> = self
            .recordings
            .iter()
            .filter(|(_, r)| !r.done)
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for k in open {
            self.finish(&k);
        }
    }

    /// Uploads every recording still going as it is, not final (a hand-back: the session
    /// goes on recording on another agent, into the next part).
    pub fn flush_all(&mut self) {
        for (k, r) in &mut self.recordings {
            if !r.done {
                r.done = true;
                self.out.push(RecordAction::Finish {
                    peer: Arc::clone(k),
                    last: false,
                });
            }
        }
    }

    fn finish(&mut self, peer: &Arc<str>) {
        if let Some(r) = self.recordings.get_mut(peer) {
            r.done = true;
            self.out.push(RecordAction::Finish {
                peer: Arc::clone(peer),
                last: true,
            });
        }
    }

    /// When [`Voicemail::timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.recordings
            .values()
            .filter(|r| !r.done)
            .flat_map(|r| {
                [
                    Some(r.began_at + self.plan.max),
                    r.last_speech.map(|t| t + self.plan.silence),
                    r.next_upload,
                ]
            })
            .flatten()
            .min()
    }

    /// Time passed: stop what ends now, upload what is due.
    pub fn timeout(&mut self, now: Instant) {
        let mut finish = Vec::new();
        for (k, r) in &mut self.recordings {
            if r.done {
                continue;
            }
            let silent = r.last_speech.is_some_and(|t| now >= t + self.plan.silence);
            if silent || now >= r.began_at + self.plan.max {
                finish.push(Arc::clone(k));
            } else if r.next_upload.is_some_and(|t| now >= t) {
                r.next_upload = Some(now + UPLOAD_EVERY);
                self.out.push(RecordAction::Upload {
                    peer: Arc::clone(k),
                });
            }
        }
        for k in finish {
            self.finish(&k);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan() -> RecordPlan {
        RecordPlan {
            max: Duration::from_secs(60),
            silence: Duration::from_secs(2),
            beep: true,
        }
    }

    /// A 20 ms CELT packet of `len` bytes (TOC: config 31, mono, one frame).
    fn pkt(len: usize) -> Bytes {
        let mut b = vec![0xF8u8];
        b.resize(len.max(1), 0x55);
        Bytes::from(b)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn writes(v: &mut Voicemail) -> Vec<(u32, u32)> {
        v.drain()
            .filter_map(|a| match a {
                RecordAction::Write {
                    silence_before,
                    samples,
                    ..
                } => Some((silence_before, samples)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn gaps_become_silence_and_late_packets_are_dropped() {
        let t0 = Instant::now();
        let a: Arc<str> = Arc::from("a");
        let mut v = Voicemail::start(plan(), t0, vec!["a".to_owned()]);
        let base = u32::MAX - 1000; // the timestamps wrap
        v.packet(t0, &a, base, pkt(100));
        v.packet(t0, &a, base.wrapping_add(960), pkt(100));
        // 3 packets lost
        v.packet(t0, &a, base.wrapping_add(960 * 5), pkt(100));
        // a late one
        v.packet(t0, &a, base.wrapping_add(960 * 3), pkt(100));
        v.packet(t0, &a, base.wrapping_add(960 * 6), pkt(100));
        assert_eq!(writes(&mut v), vec![(0, 960), (0, 960), (3, 960), (0, 960)]);
    }

    #[test]
    fn silence_after_speech_ends_the_recording() {
        let t0 = Instant::now();
        let a: Arc<str> = Arc::from("a");
        let mut v = Voicemail::start(plan(), t0, vec!["a".to_owned()]);
        // quiet first: no speech, no end
        for i in 0..100u32 {
            v.packet(t0 + ms(u64::from(i) * 20), &a, i * 960, pkt(5));
        }
        v.timeout(t0 + ms(3000));
        assert!(!v.is_done());
        // speech, then quiet packets
        let mut t = 2000;
        for i in 100..150u32 {
            v.packet(t0 + ms(t), &a, i * 960, pkt(150));
            t += 20;
        }
        let last_speech = t - 20;
        for i in 150..300u32 {
            v.packet(t0 + ms(t), &a, i * 960, pkt(6));
            t += 20;
        }
        v.drain().count();
        let mut finished = None;
        while let Some(at) = v.poll_timeout() {
            v.timeout(at);
            if v.drain().any(|a| matches!(a, RecordAction::Finish { .. })) {
                finished = Some(at);
            }
        }
        assert!(v.is_done());
        assert_eq!(finished, Some(t0 + ms(last_speech + 2000)));
    }

    #[test]
    fn the_file_so_far_is_uploaded_every_few_seconds_and_max_seconds_ends_it() {
        let t0 = Instant::now();
        let a: Arc<str> = Arc::from("a");
        let mut v = Voicemail::start(
            RecordPlan {
                max: Duration::from_secs(10),
                silence: Duration::from_secs(30),
                beep: false,
            },
            t0,
            vec!["a".to_owned(), "b".to_owned()],
        );
        v.packet(t0, &a, 0, pkt(150));
        v.drain().count();
        let mut uploads = 0;
        let mut finished = Vec::new();
        while let Some(t) = v.poll_timeout() {
            // speech all along (the recording never goes silent)
            v.packet(t, &a, 0, pkt(150));
            v.timeout(t);
            for act in v.drain() {
                match act {
                    RecordAction::Upload { .. } => uploads += 1,
                    RecordAction::Finish { peer, .. } => finished.push((peer, t - t0)),
                    RecordAction::Write { .. } => {}
                }
            }
        }
        assert_eq!(uploads, 2, "at 4 and 8 s");
        assert_eq!(
            finished,
            vec![
                (Arc::from("a"), Duration::from_secs(10)),
                (Arc::from("b"), Duration::from_secs(10))
            ]
        );
    }

    #[test]
    fn leaving_ends_a_recording_and_a_hand_back_uploads_what_there_is() {
        let t0 = Instant::now();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let mut v = Voicemail::start(plan(), t0, vec!["a".to_owned(), "b".to_owned()]);
        v.packet(t0, &a, 0, pkt(150));
        v.packet(t0, &b, 0, pkt(150));
        v.drain().count();
        v.left("a");
        assert!(matches!(
            v.drain().collect::<Vec<_>>().as_slice(),
            [RecordAction::Finish { peer, last: true }] if &**peer == "a"
        ));
        v.flush_all();
        assert!(matches!(
            v.drain().collect::<Vec<_>>().as_slice(),
            [RecordAction::Finish { peer, last: false }] if &**peer == "b"
        ));
        assert!(v.is_done());
    }
}
