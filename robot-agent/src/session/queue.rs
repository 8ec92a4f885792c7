//! The playback queue, sans-IO: what the robot plays next, how `control` changes it, and
//! when a mark may truthfully be called played (DESIGN.md decision 13).
//!
//! ```text
//!   entries: [ audio(main: the offer's items) | mark "m1" | audio "jingle" (loop 1) | ... ]
//!                 ▲ cursor
//!   next_frame() ──► Frame { seq, frame, gain_db }   the frame to write now (seq 0, 1, 2...)
//!              ──► Pending                          not encoded yet: nothing sent
//!              ──► Idle                             nothing to play, or paused: wait for a command
//!              ──► Failed(error)
//!   written(seq)  after frame `seq` was written to every connected listener's track
//!   apply(cmd)    play (append | replace), pause, resume, seek, gain, clear, mark;
//!                 from a bridge program: Speak (its 20 ms frames), BridgeMark, BridgeClear
//!   poll_event()  ──► Mark { played | cleared } · Drained (ran out by playing) · Refilled
//!                 ──► BridgeMark (played) · BridgeCleared { marks never played, dropped_ms }
//! ```
//!
//! **Marks tell the truth.** When the cursor reaches a mark, the frame before it is the last
//! one handed out by [`PlaybackQueue::next_frame`]. The mark is reported `played` only once that
//! frame was [`written`](PlaybackQueue::written) (at once if it already was, or if no frame
//! was ever handed out: nothing comes before it). A clear or a replace drops every mark
//! still queued and reports each `cleared`, in order. A mark is reported exactly once: it is
//! either in the queue (it can only be cleared), passed but waiting for its frame (it can
//! only be played: the frame was handed out, and the media clock writes it before it looks
//! at the next command), or reported. Frames the pacer skips after a stall are never
//! written, so [`skip`](PlaybackQueue::skip) stops at a mark rather than jump over it.
//!
//! **A bridge program's entries** are the same kinds with their own reports: its audio is
//! a run of frames (consecutive `Speak`s extend the last run), its marks are reported as
//! `BridgeMark` (to the program, not the API), and a clear that drops any of its marks or
//! frames, or that it asked for, is answered with one `BridgeCleared` listing its marks in
//! queue order and the milliseconds of its audio dropped.
//!
//! The queue lives on the media clock (the playback task owns it), so a command takes effect
//! on the very next frame: a `clear` stops the audio within one frame, and the frame a mark
//! waits for is written by the same task that hands it out. Nothing here reads a clock or
//! touches a socket; the tests below drive it frame by frame.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use protocol::agent::{MarkState, PlayMode, PlaybackState, PlaybackStatus};

use super::playlist::{FrameSource, Playlist, Step};

/// The lowest gain, dB.
pub const MIN_GAIN_DB: f32 = -30.0;
/// The highest gain, dB.
pub const MAX_GAIN_DB: f32 = 12.0;

/// One asset to queue, resolved.
#[derive(Clone)]
pub struct QueueItem {
    /// The asset's name.
    pub name: String,
    /// Its frames.
    pub source: Arc<dyn FrameSource>,
    /// Times played again after the first play.
    pub loops: u32,
    /// Its gain, dB.
    pub gain_db: f32,
}

impl std::fmt::Debug for QueueItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueItem")
            .field("name", &self.name)
            .field("loops", &self.loops)
            .field("gain_db", &self.gain_db)
            .finish_non_exhaustive()
    }
}

/// A control, with its asset resolved.
#[derive(Debug, Clone)]
pub enum Command {
    /// Queue an item, after what is queued or instead of it.
    Play {
        /// The item.
        item: QueueItem,
        /// Append or replace.
        mode: PlayMode,
    },
    /// Stop handing out frames; the position stays.
    Pause,
    /// Hand out frames again.
    Resume,
    /// Move within the current item.
    Seek {
        /// Position in the item, ms.
        position_ms: u64,
    },
    /// The gain added to every item's own, from now on.
    Gain {
        /// dB.
        gain_db: f32,
    },
    /// Drop everything queued and playing.
    Clear,
    /// Queue a mark.
    Mark {
        /// Its name.
        name: String,
    },
    /// A bridge program's audio: append these 20 ms Opus frames (to the program's audio
    /// queued last when nothing was queued after it).
    Speak {
        /// The frames.
        frames: Vec<Bytes>,
    },
    /// A bridge program's mark: reported as [`QueueEvent::BridgeMark`] /
    /// [`QueueEvent::BridgeCleared`].
    BridgeMark {
        /// Its name.
        name: String,
    },
    /// A bridge program's clear: as [`Command::Clear`], and always answered with
    /// [`QueueEvent::BridgeCleared`].
    BridgeClear,
}

/// What to send at a frame deadline.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Write this frame to every connected listener, then call [`PlaybackQueue::written`].
    Frame {
        /// Its sequence number in the session (0, 1, 2...).
        seq: u64,
        /// The Opus frame.
        frame: Bytes,
        /// The gain to apply, dB (0: send it as it is).
        gain_db: f32,
    },
    /// The frame is not encoded yet: send nothing, ask again a frame later.
    Pending,
    /// Nothing to play, or paused: send nothing until a command comes.
    Idle,
    /// An item failed.
    Failed(String),
}

/// Something to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// A mark was played or cleared.
    Mark {
        /// Its name.
        name: String,
        /// Played or cleared.
        state: MarkState,
        /// Audio handed out before it, ms (played marks).
        position_ms: Option<u64>,
    },
    /// The queue ran out by playing its last item (not by a clear).
    Drained {
        /// The position in the offer's items, ms (as the session reports it).
        position_ms: u64,
    },
    /// Something was queued after [`QueueEvent::Drained`].
    Refilled,
    /// A bridge program's mark was played: the frame before it was written.
    BridgeMark {
        /// Its name.
        name: String,
        /// Audio handed out before it, ms.
        position_ms: u64,
    },
    /// A clear dropped bridge marks or bridge audio, or the program asked for the clear.
    BridgeCleared {
        /// The program's marks that will never play, in queue order.
        marks: Vec<String>,
        /// The program's audio dropped, ms.
        dropped_ms: u64,
    },
}

enum Entry {
    Audio(AudioEntry),
    Mark(MarkEntry),
    /// A bridge program's audio, frame by frame.
    Frames(VecDeque<Bytes>),
}

struct MarkEntry {
    name: String,
    /// A bridge program's mark.
    bridge: bool,
}

/// The item name a bridge program's audio shows as in the playback state.
pub const BRIDGE_ITEM: &str = "bridge";

struct AudioEntry {
    /// The name of each item of the playlist (an item played `loop` times more is listed
    /// that many times more).
    names: Vec<String>,
    /// The gain of each.
    gains: Vec<f32>,
    playlist: Playlist,
    /// The offer's items: their position is the session's.
    main: bool,
}

impl AudioEntry {
    fn new(items: Vec<QueueItem>, first_frame: u64, looping: bool, main: bool) -> Self {
        let mut names = Vec::new();
        let mut gains = Vec::new();
        let mut sources = Vec::new();
        for it in items {
            for _ in 0..=it.loops {
                names.push(it.name.clone());
                gains.push(it.gain_db);
                sources.push(Arc::clone(&it.source));
            }
        }
        Self {
            names,
            gains,
            playlist: Playlist::new(sources, first_frame, looping),
            main,
        }
    }

    fn current(&self) -> Option<&str> {
        self.names
            .get(self.playlist.current_item())
            .map(String::as_str)
    }

    fn rest(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .skip(self.playlist.current_item() + 1)
            .map(String::as_str)
    }
}

/// The robot's playback queue. See the module docs.
pub struct PlaybackQueue {
    entries: VecDeque<Entry>,
    paused: bool,
    /// Added to every item's gain.
    gain_db: f32,
    /// The seq of the next frame handed out.
    next_seq: u64,
    /// Frames `0..written` were written to every listener.
    written: u64,
    /// Marks passed by the cursor, waiting for frames `..n` to be written.
    due: VecDeque<(u64, MarkEntry)>,
    events: VecDeque<QueueEvent>,
    /// The position in the offer's items, ms.
    main_position_ms: u64,
    /// [`QueueEvent::Drained`] was reported and no audio was queued since.
    drained: bool,
    /// Emptied by a clear (or a replace, until its item is queued): idle, but the audio did
    /// not run out, so no `Drained`.
    cleared: bool,
}

impl std::fmt::Debug for PlaybackQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackQueue")
            .field("entries", &self.entries.len())
            .field("paused", &self.paused)
            .field("next_seq", &self.next_seq)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl PlaybackQueue {
    /// A queue holding the offer's items, from frame `first_frame` of them (a resume);
    /// `looping`: they play again and again.
    pub fn new(items: Vec<QueueItem>, first_frame: u64, looping: bool) -> Self {
        let mut entries = VecDeque::new();
        entries.push_back(Entry::Audio(AudioEntry::new(
            items,
            first_frame,
            looping,
            true,
        )));
        Self {
            entries,
            paused: false,
            gain_db: 0.0,
            next_seq: 0,
            written: 0,
            due: VecDeque::new(),
            events: VecDeque::new(),
            main_position_ms: first_frame.saturating_mul(20),
            drained: false,
            cleared: false,
        }
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<QueueEvent> {
        self.events.pop_front()
    }

    /// The position in the offer's items, ms (what the session reports and resumes from).
    pub fn position_ms(&self) -> u64 {
        self.main_position_ms
    }

    /// What to send now; the cursor moves past the frame it returns.
    pub fn next_frame(&mut self) -> Next {
        if self.paused {
            return Next::Idle;
        }
        loop {
            match self.entries.front_mut() {
                None => {
                    if !self.drained && !self.cleared {
                        self.drained = true;
                        self.events.push_back(QueueEvent::Drained {
                            position_ms: self.main_position_ms,
                        });
                    }
                    return Next::Idle;
                }
                Some(Entry::Mark(_)) => {
                    if let Some(Entry::Mark(m)) = self.entries.pop_front() {
                        self.pass_mark(m);
                    }
                }
                Some(Entry::Frames(f)) => match f.pop_front() {
                    Some(frame) => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        return Next::Frame {
                            seq,
                            frame,
                            gain_db: self.gain_db.clamp(MIN_GAIN_DB, MAX_GAIN_DB),
                        };
                    }
                    None => {
                        self.entries.pop_front();
                    }
                },
                Some(Entry::Audio(a)) => {
                    let step = a.playlist.next_step();
                    if a.main {
                        self.main_position_ms = a.playlist.position_ms();
                    }
                    match step {
                        Step::Frame(frame) => {
                            let item_gain = a
                                .gains
                                .get(a.playlist.current_item())
                                .copied()
                                .unwrap_or(0.0);
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            return Next::Frame {
                                seq,
                                frame,
                                gain_db: (item_gain + self.gain_db).clamp(MIN_GAIN_DB, MAX_GAIN_DB),
                            };
                        }
                        Step::Pending => return Next::Pending,
                        Step::Failed(e) => return Next::Failed(e),
                        Step::End => {
                            self.entries.pop_front();
                        }
                    }
                }
            }
        }
    }

    /// Skips up to `n` frames (the pacer skipped them after a stall: they are not
    /// written), stopping before a mark so that no mark is passed on a frame never written.
    pub fn skip(&mut self, n: u64) -> u64 {
        let mut done = 0;
        while done < n && !self.paused {
            match self.entries.front_mut() {
                Some(Entry::Audio(a)) => match a.playlist.next_step() {
                    Step::Frame(_) => {
                        if a.main {
                            self.main_position_ms = a.playlist.position_ms();
                        }
                        done += 1;
                    }
                    Step::End => {
                        self.entries.pop_front();
                    }
                    // The pending or failed frame is found again by the next `next_frame()`.
                    Step::Pending | Step::Failed(_) => break,
                },
                Some(Entry::Frames(f)) => {
                    if f.pop_front().is_some() {
                        done += 1;
                    } else {
                        self.entries.pop_front();
                    }
                }
                Some(Entry::Mark(_)) | None => break,
            }
        }
        done
    }

    /// Frame `seq` was written to every connected listener's track.
    pub fn written(&mut self, seq: u64) {
        self.written = self.written.max(seq + 1);
        while let Some((n, _)) = self.due.front() {
            if *n > self.written {
                break;
            }
            if let Some((n, m)) = self.due.pop_front() {
                self.played(m, n);
            }
        }
    }

    /// Applies a control; `Err` (with the queue unchanged) when it cannot be.
    pub fn apply(&mut self, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::Play { item, mode } => {
                if mode == PlayMode::Replace {
                    self.drop_entries(false);
                }
                self.push(Entry::Audio(AudioEntry::new(vec![item], 0, false, false)));
            }
            Command::Pause => self.paused = true,
            Command::Resume => self.paused = false,
            Command::Seek { position_ms } => {
                let Some(a) = self.current_audio() else {
                    return Err("nothing is playing to seek in".into());
                };
                let name = a.current().unwrap_or_default().to_owned();
                if !a.playlist.seek_in_item(position_ms / 20) {
                    return Err(format!("seek past the end of {name}"));
                }
            }
            Command::Gain { gain_db } => {
                self.gain_db = gain_db.clamp(MIN_GAIN_DB, MAX_GAIN_DB);
            }
            Command::Clear => self.drop_entries(false),
            Command::BridgeClear => self.drop_entries(true),
            Command::Mark { name } => self.push(Entry::Mark(MarkEntry {
                name,
                bridge: false,
            })),
            Command::BridgeMark { name } => {
                self.push(Entry::Mark(MarkEntry { name, bridge: true }))
            }
            Command::Speak { frames } => {
                if frames.is_empty() {
                    return Ok(());
                }
                if let Some(Entry::Frames(f)) = self.entries.back_mut() {
                    f.extend(frames);
                } else {
                    self.push(Entry::Frames(frames.into()));
                }
            }
        }
        Ok(())
    }

    /// What plays now, as `control_ack` reports it.
    pub fn status(&self) -> PlaybackStatus {
        if let Some(at) = self
            .entries
            .iter()
            .position(|e| !matches!(e, Entry::Mark(_)))
            && matches!(self.entries.get(at), Some(Entry::Frames(_)))
        {
            // The program's audio plays now.
            return PlaybackStatus {
                state: if self.paused {
                    PlaybackState::Paused
                } else {
                    PlaybackState::Playing
                },
                item: Some(BRIDGE_ITEM.to_owned()),
                position_ms: 0,
                queue: self.names_after(at + 1),
            };
        }
        let mut audio = self.entries.iter().filter_map(|e| match e {
            Entry::Audio(a) => Some(a),
            Entry::Mark(_) | Entry::Frames(_) => None,
        });
        let Some(first) = audio.next() else {
            return PlaybackStatus {
                state: PlaybackState::Idle,
                item: None,
                position_ms: 0,
                queue: Vec::new(),
            };
        };
        let mut queue: Vec<String> = first.rest().map(str::to_owned).collect();
        let at = self
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Audio(_)))
            .unwrap_or(0);
        queue.extend(self.names_after(at + 1));
        PlaybackStatus {
            state: if self.paused {
                PlaybackState::Paused
            } else {
                PlaybackState::Playing
            },
            item: first.current().map(str::to_owned),
            position_ms: first.playlist.item_position_ms(),
            queue,
        }
    }

    /// The item names of the entries from `from` on.
    fn names_after(&self, from: usize) -> Vec<String> {
        let mut names = Vec::new();
        for e in self.entries.iter().skip(from) {
            match e {
                Entry::Audio(a) => names.extend(a.names.iter().cloned()),
                Entry::Frames(_) => names.push(BRIDGE_ITEM.to_owned()),
                Entry::Mark(_) => {}
            }
        }
        names
    }

    fn current_audio(&mut self) -> Option<&mut AudioEntry> {
        self.entries.iter_mut().find_map(|e| match e {
            Entry::Audio(a) => Some(a),
            Entry::Mark(_) | Entry::Frames(_) => None,
        })
    }

    fn push(&mut self, e: Entry) {
        if !matches!(e, Entry::Mark(_)) {
            self.cleared = false;
            if self.drained {
                self.drained = false;
                self.events.push_back(QueueEvent::Refilled);
            }
        }
        self.entries.push_back(e);
    }

    /// The session is over (it ended, or it is handed to another agent, which resumes only
    /// the offer's items): every mark not reported yet is reported `cleared`, in order:
    /// first those whose frame was handed out but not confirmed written to every listener
    /// (never called played unless it was), then those still queued. After this every
    /// mark ever queued has been reported exactly once.
    ///
    /// A bridge program's marks are not reported here: `stop` is the last message it gets
    /// (DESIGN.md, "Media bridge"), and tells it that nothing more plays.
    pub fn end(&mut self) {
        let due = self.due.drain(..).map(|(_, m)| m);
        let queued: Vec<MarkEntry> = self
            .entries
            .drain(..)
            .filter_map(|e| match e {
                Entry::Mark(m) => Some(m),
                _ => None,
            })
            .collect();
        for m in due.collect::<Vec<_>>().into_iter().chain(queued) {
            if !m.bridge {
                self.events.push_back(QueueEvent::Mark {
                    name: m.name,
                    state: MarkState::Cleared,
                    position_ms: None,
                });
            }
        }
        self.cleared = true;
    }

    /// Drops every entry; each mark among them is cleared. After this the queue is idle
    /// but not `Drained` (a clear is not the end of the audio).
    ///
    /// The bridge program hears of it ([`QueueEvent::BridgeCleared`]) when it asked for the
    /// clear (`bridge`), or when its marks or audio were among what was dropped.
    fn drop_entries(&mut self, bridge: bool) {
        let mut bridge_marks = Vec::new();
        let mut dropped_frames: u64 = 0;
        for e in self.entries.drain(..) {
            match e {
                Entry::Mark(MarkEntry {
                    name,
                    bridge: false,
                }) => self.events.push_back(QueueEvent::Mark {
                    name,
                    state: MarkState::Cleared,
                    position_ms: None,
                }),
                Entry::Mark(MarkEntry { name, bridge: true }) => bridge_marks.push(name),
                Entry::Frames(f) => {
                    dropped_frames += u64::try_from(f.len()).unwrap_or(u64::MAX);
                }
                Entry::Audio(_) => {}
            }
        }
        if bridge || !bridge_marks.is_empty() || dropped_frames > 0 {
            self.events.push_back(QueueEvent::BridgeCleared {
                marks: bridge_marks,
                dropped_ms: dropped_frames.saturating_mul(20),
            });
        }
        self.cleared = true;
    }

    /// The cursor reached a mark: the frame before it is `next_seq - 1`.
    fn pass_mark(&mut self, m: MarkEntry) {
        if self.written >= self.next_seq && self.due.is_empty() {
            self.played(m, self.next_seq);
        } else {
            self.due.push_back((self.next_seq, m));
        }
    }

    fn played(&mut self, m: MarkEntry, frames_before: u64) {
        let position_ms = frames_before.saturating_mul(20);
        self.events.push_back(if m.bridge {
            QueueEvent::BridgeMark {
                name: m.name,
                position_ms,
            }
        } else {
            QueueEvent::Mark {
                name: m.name,
                state: MarkState::Played,
                position_ms: Some(position_ms),
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::TestFrames;

    fn item(tag: u8, frames: u32) -> QueueItem {
        QueueItem {
            name: format!("a{tag}"),
            source: TestFrames::numbered(tag, frames),
            loops: 0,
            gain_db: 0.0,
        }
    }

    fn queue(lens: &[u32]) -> PlaybackQueue {
        let items = lens
            .iter()
            .enumerate()
            .map(|(k, n)| item(u8::try_from(k).unwrap(), *n))
            .collect();
        PlaybackQueue::new(items, 0, false)
    }

    /// Hands out and writes one frame; the frame's (tag, index).
    fn tick(q: &mut PlaybackQueue) -> Option<(u8, u32)> {
        match q.next_frame() {
            Next::Frame { seq, frame, .. } => {
                q.written(seq);
                Some((
                    frame[0],
                    u32::from_be_bytes(frame[1..5].try_into().unwrap()),
                ))
            }
            _ => None,
        }
    }

    /// Hands out the next frame (not written yet); its sequence number.
    fn hand_out(q: &mut PlaybackQueue) -> u64 {
        match q.next_frame() {
            Next::Frame { seq, .. } => seq,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn events(q: &mut PlaybackQueue) -> Vec<QueueEvent> {
        std::iter::from_fn(|| q.poll_event()).collect()
    }

    fn played(name: &str, at: u64) -> QueueEvent {
        QueueEvent::Mark {
            name: name.into(),
            state: MarkState::Played,
            position_ms: Some(at),
        }
    }

    fn cleared(name: &str) -> QueueEvent {
        QueueEvent::Mark {
            name: name.into(),
            state: MarkState::Cleared,
            position_ms: None,
        }
    }

    fn mark(q: &mut PlaybackQueue, name: &str) {
        q.apply(Command::Mark { name: name.into() }).unwrap();
    }

    fn play(q: &mut PlaybackQueue, it: QueueItem, mode: PlayMode) {
        q.apply(Command::Play { item: it, mode }).unwrap();
    }

    #[test]
    fn the_offer_plays_then_the_queue_drains_once() {
        let mut q = queue(&[2, 1]);
        assert_eq!(q.status().item.as_deref(), Some("a0"));
        assert_eq!(q.status().queue, vec!["a1".to_owned()]);
        assert_eq!(tick(&mut q), Some((0, 0)));
        assert_eq!(tick(&mut q), Some((0, 1)));
        assert_eq!(tick(&mut q), Some((1, 0)));
        assert_eq!(q.next_frame(), Next::Idle);
        assert_eq!(q.next_frame(), Next::Idle);
        assert_eq!(
            events(&mut q),
            vec![QueueEvent::Drained { position_ms: 60 }]
        );
        assert_eq!(q.status().state, PlaybackState::Idle);
    }

    #[test]
    fn append_plays_after_and_a_drained_queue_is_refilled() {
        let mut q = queue(&[1]);
        tick(&mut q);
        assert_eq!(q.next_frame(), Next::Idle);
        events(&mut q);
        let mut it = item(5, 2);
        it.loops = 1;
        play(&mut q, it, PlayMode::Append);
        assert_eq!(events(&mut q), vec![QueueEvent::Refilled]);
        let s = q.status();
        assert_eq!(
            (s.state, s.item.as_deref(), s.queue),
            (PlaybackState::Playing, Some("a5"), vec!["a5".to_owned()])
        );
        let got: Vec<_> = std::iter::from_fn(|| tick(&mut q)).collect();
        assert_eq!(got, vec![(5, 0), (5, 1), (5, 0), (5, 1)], "played twice");
    }

    #[test]
    fn replace_drops_what_plays_and_clears_its_marks_in_order() {
        let mut q = queue(&[100]);
        tick(&mut q);
        mark(&mut q, "m1");
        play(&mut q, item(3, 5), PlayMode::Append);
        mark(&mut q, "m2");
        play(&mut q, item(4, 5), PlayMode::Replace);
        assert_eq!(events(&mut q), vec![cleared("m1"), cleared("m2")]);
        assert_eq!(
            tick(&mut q),
            Some((4, 0)),
            "the very next frame is the new item"
        );
        assert_eq!(q.status().queue, Vec::<String>::new());
    }

    #[test]
    fn pause_sends_nothing_and_resume_goes_on_where_it_was() {
        let mut q = queue(&[10]);
        tick(&mut q);
        q.apply(Command::Pause).unwrap();
        assert_eq!(q.next_frame(), Next::Idle);
        let s = q.status();
        assert_eq!((s.state, s.position_ms), (PlaybackState::Paused, 20));
        q.apply(Command::Resume).unwrap();
        assert_eq!(tick(&mut q), Some((0, 1)));
        assert!(events(&mut q).is_empty(), "a pause is not the end");
    }

    #[test]
    fn seek_moves_within_the_current_item_and_refuses_past_its_end() {
        let mut q = queue(&[50, 5]);
        tick(&mut q);
        q.apply(Command::Seek { position_ms: 600 }).unwrap();
        assert_eq!(q.status().position_ms, 600);
        assert_eq!(tick(&mut q), Some((0, 30)));
        let e = q.apply(Command::Seek { position_ms: 1000 }).unwrap_err();
        assert_eq!(e, "seek past the end of a0");
        assert_eq!(tick(&mut q), Some((0, 31)), "unchanged");
        q.apply(Command::Clear).unwrap();
        assert!(q.apply(Command::Seek { position_ms: 0 }).is_err());
    }

    #[test]
    fn gain_adds_to_each_items_gain_within_the_limits() {
        let mut q = queue(&[10]);
        let gain = |q: &mut PlaybackQueue| match q.next_frame() {
            Next::Frame { gain_db, .. } => gain_db,
            other => panic!("{other:?}"),
        };
        assert_eq!(gain(&mut q), 0.0);
        q.apply(Command::Gain { gain_db: -6.0 }).unwrap();
        assert_eq!(gain(&mut q), -6.0);
        let mut it = item(2, 3);
        it.gain_db = -28.0;
        play(&mut q, it, PlayMode::Replace);
        assert_eq!(gain(&mut q), MIN_GAIN_DB);
    }

    #[test]
    fn clear_stops_at_once_and_the_robot_stays() {
        let mut q = queue(&[100]);
        tick(&mut q);
        mark(&mut q, "m");
        q.apply(Command::Clear).unwrap();
        assert_eq!(q.next_frame(), Next::Idle, "no frame after a clear");
        assert_eq!(events(&mut q), vec![cleared("m")], "and no Drained");
        mark(&mut q, "after");
        assert_eq!(q.next_frame(), Next::Idle);
        assert_eq!(events(&mut q), vec![played("after", 20)]);
    }

    #[test]
    fn a_mark_is_played_only_once_the_frame_before_it_was_written() {
        let mut q = queue(&[2]);
        mark(&mut q, "m0");
        play(&mut q, item(1, 1), PlayMode::Append);
        mark(&mut q, "m1");
        // the frame before m0 is the offer's last frame: handed out, not written yet
        let s0 = hand_out(&mut q);
        q.written(s0);
        let s1 = hand_out(&mut q);
        // the cursor passes m0 while frame s1 is not written yet
        let s2 = hand_out(&mut q);
        assert!(events(&mut q).is_empty(), "not before its frame is written");
        q.written(s1);
        assert_eq!(events(&mut q), vec![played("m0", 40)]);
        q.written(s2);
        assert_eq!(q.next_frame(), Next::Idle);
        assert_eq!(
            events(&mut q),
            vec![played("m1", 60), QueueEvent::Drained { position_ms: 40 }]
        );
    }

    #[test]
    fn a_mark_on_an_idle_queue_or_before_any_audio_is_played_at_once() {
        let mut q = PlaybackQueue::new(Vec::new(), 0, false);
        mark(&mut q, "first");
        assert_eq!(q.next_frame(), Next::Idle);
        assert_eq!(
            events(&mut q),
            vec![played("first", 0), QueueEvent::Drained { position_ms: 0 }]
        );
    }

    #[test]
    fn skipped_frames_never_carry_a_mark_past_them() {
        let mut q = queue(&[3]);
        mark(&mut q, "m");
        play(&mut q, item(1, 10), PlayMode::Append);
        tick(&mut q);
        assert_eq!(q.skip(5), 2, "stops before the mark");
        assert_eq!(tick(&mut q), Some((1, 0)));
        assert_eq!(events(&mut q), vec![played("m", 20)]);
        assert_eq!(q.skip(4), 4);
        assert_eq!(tick(&mut q), Some((1, 5)));
    }

    #[test]
    fn at_the_end_every_mark_not_reported_is_cleared_in_order() {
        let mut q = queue(&[2]);
        mark(&mut q, "due");
        play(&mut q, item(1, 3), PlayMode::Append);
        mark(&mut q, "queued-1");
        mark(&mut q, "queued-2");
        let s0 = hand_out(&mut q);
        q.written(s0);
        // The offer's last frame is handed out, then the cursor passes "due": its frame is
        // not confirmed written when the session ends.
        assert!(matches!(q.next_frame(), Next::Frame { .. }));
        assert!(matches!(q.next_frame(), Next::Frame { .. }));
        assert!(events(&mut q).is_empty());
        q.end();
        assert_eq!(
            events(&mut q),
            vec![cleared("due"), cleared("queued-1"), cleared("queued-2")]
        );
        q.end();
        assert!(events(&mut q).is_empty(), "each mark is reported once");
        // A mark already played is not reported again.
        let mut q = queue(&[1]);
        mark(&mut q, "heard");
        tick(&mut q);
        tick(&mut q);
        assert_eq!(events(&mut q)[0], played("heard", 20));
        q.end();
        assert!(
            events(&mut q)
                .iter()
                .all(|e| !matches!(e, QueueEvent::Mark { .. }))
        );
    }

    #[test]
    fn a_looping_offer_never_drains_and_reports_its_position() {
        let mut q = PlaybackQueue::new(vec![item(0, 2)], 1, true);
        assert_eq!(q.position_ms(), 20);
        let got: Vec<_> = (0..4).filter_map(|_| tick(&mut q)).collect();
        assert_eq!(got, vec![(0, 1), (0, 0), (0, 1), (0, 0)]);
        assert!(events(&mut q).is_empty());
    }

    /// Over many random runs of controls and frames, every mark is reported exactly once,
    /// in the order queued among the played ones, and a mark reported played always had
    /// the frame before it written.
    #[test]
    fn marks_are_never_both_never_early_never_lost() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        for _ in 0..200 {
            let mut q = queue(&[20]);
            let mut queued = Vec::new();
            let mut reported: Vec<(String, MarkState)> = Vec::new();
            let mut handed: Option<u64> = None; // last frame handed out
            let mut written: Option<u64> = None;
            for step in 0..400 {
                match rng.random_range(0..10) {
                    0 => {
                        let name = format!("m{step}");
                        queued.push(name.clone());
                        mark(&mut q, &name);
                    }
                    1 => play(&mut q, item(1, rng.random_range(0..8)), PlayMode::Append),
                    2 if rng.random_bool(0.3) => q.apply(Command::Clear).unwrap(),
                    3 if rng.random_bool(0.2) => {
                        play(&mut q, item(2, 3), PlayMode::Replace);
                    }
                    4 => {
                        q.skip(rng.random_range(0..3));
                    }
                    _ => {
                        if let Next::Frame { seq, .. } = q.next_frame() {
                            handed = Some(seq);
                            if rng.random_bool(0.8) {
                                q.written(seq);
                                written = Some(seq);
                            }
                        }
                    }
                }
                // written after a while anyway (the media clock always writes what it
                // handed out before the next command)
                if let Some(h) = handed
                    && written != Some(h)
                    && rng.random_bool(0.5)
                {
                    q.written(h);
                    written = Some(h);
                }
                while let Some(e) = q.poll_event() {
                    if let QueueEvent::Mark {
                        name,
                        state,
                        position_ms,
                    } = e
                    {
                        if state == MarkState::Played {
                            let before = position_ms.unwrap() / 20;
                            assert!(
                                before == 0 || written.is_some_and(|w| w + 1 >= before),
                                "{name} played before frame {before} was written"
                            );
                        }
                        assert!(
                            !reported.iter().any(|(n, _)| *n == name),
                            "{name} reported twice"
                        );
                        reported.push((name, state));
                    }
                }
            }
            if let Some(h) = handed {
                q.written(h);
            }
            q.apply(Command::Clear).unwrap();
            while let Some(e) = q.poll_event() {
                if let QueueEvent::Mark { name, state, .. } = e {
                    reported.push((name, state));
                }
            }
            let names: Vec<&String> = reported.iter().map(|(n, _)| n).collect();
            let mut expected: Vec<&String> = queued.iter().collect();
            expected.sort();
            let mut got = names.clone();
            got.sort();
            assert_eq!(got, expected, "every mark reported exactly once");
            let played: Vec<&String> = reported
                .iter()
                .filter(|(_, s)| *s == MarkState::Played)
                .map(|(n, _)| n)
                .collect();
            let order: Vec<&String> = queued.iter().filter(|n| played.contains(n)).collect();
            assert_eq!(played, order, "played marks in the order queued");
        }
    }

    fn speak(q: &mut PlaybackQueue, tag: u8, n: u32) {
        let frames = (0..n).map(|i| TestFrames::frame(tag, i)).collect();
        q.apply(Command::Speak { frames }).unwrap();
    }

    fn bridge_mark(q: &mut PlaybackQueue, name: &str) {
        q.apply(Command::BridgeMark { name: name.into() }).unwrap();
    }

    #[test]
    fn a_programs_audio_plays_in_order_after_what_is_queued() {
        let mut q = queue(&[1]);
        speak(&mut q, 7, 2);
        speak(&mut q, 8, 1); // appended to the same run of frames
        assert_eq!(q.status().item.as_deref(), Some("a0"));
        assert_eq!(q.status().queue, vec![BRIDGE_ITEM.to_owned()]);
        assert_eq!(tick(&mut q), Some((0, 0)));
        assert_eq!(tick(&mut q), Some((7, 0)));
        assert_eq!(q.status().item.as_deref(), Some(BRIDGE_ITEM));
        assert_eq!(tick(&mut q), Some((7, 1)));
        assert_eq!(tick(&mut q), Some((8, 0)));
        assert_eq!(q.next_frame(), Next::Idle);
        assert_eq!(
            events(&mut q),
            vec![QueueEvent::Drained { position_ms: 20 }]
        );
        // more audio later: refilled, and it plays at once
        speak(&mut q, 9, 1);
        assert_eq!(events(&mut q), vec![QueueEvent::Refilled]);
        assert_eq!(tick(&mut q), Some((9, 0)));
    }

    #[test]
    fn a_program_mark_is_reported_to_the_program_once_its_audio_was_written() {
        let mut q = PlaybackQueue::new(Vec::new(), 0, false);
        speak(&mut q, 1, 2);
        bridge_mark(&mut q, "said");
        speak(&mut q, 2, 1);
        let s0 = hand_out(&mut q);
        q.written(s0);
        let s1 = hand_out(&mut q);
        // the cursor passes the mark while the frame before it is not written
        let s2 = hand_out(&mut q);
        assert!(events(&mut q).is_empty(), "not before its frame is written");
        q.written(s1);
        assert_eq!(
            events(&mut q),
            vec![QueueEvent::BridgeMark {
                name: "said".into(),
                position_ms: 40
            }]
        );
        q.written(s2);
    }

    #[test]
    fn a_program_clear_drops_its_audio_and_reports_marks_never_played() {
        let mut q = PlaybackQueue::new(Vec::new(), 0, false);
        speak(&mut q, 1, 10);
        bridge_mark(&mut q, "a");
        mark(&mut q, "control");
        speak(&mut q, 2, 5);
        bridge_mark(&mut q, "b");
        assert!(tick(&mut q).is_some());
        events(&mut q);
        q.apply(Command::BridgeClear).unwrap();
        assert_eq!(q.next_frame(), Next::Idle, "nothing after the clear");
        assert_eq!(
            events(&mut q),
            vec![
                cleared("control"),
                QueueEvent::BridgeCleared {
                    marks: vec!["a".into(), "b".into()],
                    dropped_ms: 14 * 20
                }
            ],
            "9 + 5 frames dropped, no Drained"
        );
        // a clear of an empty queue is answered too
        q.apply(Command::BridgeClear).unwrap();
        assert_eq!(
            events(&mut q),
            vec![QueueEvent::BridgeCleared {
                marks: vec![],
                dropped_ms: 0
            }]
        );
        // an operator's clear tells the program only when its audio or marks were dropped
        speak(&mut q, 3, 2);
        q.apply(Command::Clear).unwrap();
        assert_eq!(
            events(&mut q),
            vec![QueueEvent::BridgeCleared {
                marks: vec![],
                dropped_ms: 40
            }]
        );
        mark(&mut q, "x");
        q.apply(Command::Clear).unwrap();
        assert_eq!(events(&mut q), vec![cleared("x")]);
    }

    #[test]
    fn skipped_program_frames_stop_at_a_program_mark() {
        let mut q = PlaybackQueue::new(Vec::new(), 0, false);
        speak(&mut q, 1, 3);
        bridge_mark(&mut q, "m");
        speak(&mut q, 2, 3);
        assert_eq!(q.skip(10), 3);
        assert_eq!(tick(&mut q), Some((2, 0)));
    }
}
