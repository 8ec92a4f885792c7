//! The audio of a session: items read frame by frame, played as one stream. Sans-IO.
//!
//! ```text
//!   items: [a, b, c]   each a FrameSource: read(i) -> Ready(frame) | Pending | End | Failed
//!   Playlist::next_step() ──► Frame(bytes)   the frame at the cursor; the cursor moves on
//!                   ──► Pending         not encoded yet: nothing sent, the cursor stays
//!                   ──► End             the last item ended (and not looping)
//!                   ──► Failed(error)   an item failed mid-stream
//! ```
//!
//! An item's length is learnt when it reports `End` (a streaming item is still being
//! encoded while it plays), so nothing here precomputes totals: the cursor moves to the
//! next item on `End`, and when looping it wraps when the last item reports `End`. A
//! resume position (`first` frame of the whole playlist) is found by reading: the frame at
//! the offset in the first item, else that item's length (it ended, so it is known:
//! [`FrameSource::frame_count`] or a binary search over `read`), and on into the next.

use std::sync::Arc;

use audio::PreparedAudio;
use bytes::Bytes;

/// One frame of an item, as its source has it now: the audio crate's own type (Ready,
/// Pending while the encoder has not reached it, End, Failed with the reason).
pub use audio::FrameRead;

/// Frames of one playlist item by index (0 = its first frame).
pub trait FrameSource: Send + Sync {
    /// Frame `index`.
    fn read(&self, index: u64) -> FrameRead;
    /// The item's length in frames when known now (always for prepared audio; for a
    /// stream once its encode ended). Only used to find a resume position faster.
    fn frame_count(&self) -> Option<u64> {
        None
    }
}

impl FrameSource for PreparedAudio {
    fn read(&self, index: u64) -> FrameRead {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.frame_bytes(i))
            .map_or(FrameRead::End, FrameRead::Ready)
    }

    fn frame_count(&self) -> Option<u64> {
        u64::try_from(PreparedAudio::frame_count(self)).ok()
    }
}

/// An asset read while it is still being encoded (DESIGN.md decision 10): frames the
/// encoder has not reached yet are `Pending`.
impl FrameSource for audio::StreamingAudio {
    fn read(&self, index: u64) -> FrameRead {
        let Ok(i) = usize::try_from(index) else {
            return FrameRead::End;
        };
        audio::StreamingAudio::read(self, i)
    }

    fn frame_count(&self) -> Option<u64> {
        self.total_frames().and_then(|n| u64::try_from(n).ok())
    }
}

/// What the cursor has at the current frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The frame to send now (the cursor moved past it).
    Frame(Bytes),
    /// Not there yet: send nothing, keep the position.
    Pending,
    /// The playlist is over.
    End,
    /// An item failed.
    Failed(String),
}

/// The items of a session and a cursor over them.
#[derive(Clone)]
pub struct Playlist {
    items: Vec<Arc<dyn FrameSource>>,
    looping: bool,
    /// Current item.
    item: usize,
    /// Frame index inside the current item.
    local: u64,
    /// Frames of the items before the current one, in this pass.
    before: u64,
    /// Frames still to skip to reach the resume position (from `local` = 0 of `item`).
    seek: Option<u64>,
    /// Frames of the last complete pass (known once it wrapped).
    last_pass: u64,
}

impl std::fmt::Debug for Playlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playlist")
            .field("items", &self.items.len())
            .field("looping", &self.looping)
            .field("item", &self.item)
            .field("local", &self.local)
            .field("before", &self.before)
            .field("seek", &self.seek)
            .finish()
    }
}

impl Playlist {
    /// The items in order, starting at frame `first` of the whole playlist.
    pub fn new(items: Vec<Arc<dyn FrameSource>>, first: u64, looping: bool) -> Self {
        Self {
            items,
            looping,
            item: 0,
            local: 0,
            before: 0,
            seek: (first > 0).then_some(first),
            last_pass: 0,
        }
    }

    /// Frames in the whole playlist, when every item knows its length now.
    pub fn total_frames(&self) -> Option<u64> {
        self.items
            .iter()
            .try_fold(0u64, |t, i| i.frame_count().map(|n| t.saturating_add(n)))
    }

    /// The position of the cursor in ms, as reported to the API: within the current pass
    /// when looping, at most the length of the playlist otherwise.
    pub fn position_ms(&self) -> u64 {
        let local = self.seek.unwrap_or(self.local);
        (self.before + local).saturating_mul(20)
    }

    /// The index of the item under the cursor (`items.len()` once over).
    pub fn current_item(&self) -> usize {
        self.item
    }

    /// The position of the cursor inside its item, in ms.
    pub fn item_position_ms(&self) -> u64 {
        self.seek.unwrap_or(self.local).saturating_mul(20)
    }

    /// Moves the cursor to frame `frame` of the current item; false (and nothing moves)
    /// when the item has no such frame (it ended before it) or the playlist is over. A frame
    /// not encoded yet is accepted (the playback waits for it, as for any frame).
    pub fn seek_in_item(&mut self, frame: u64) -> bool {
        let Some(source) = self.items.get(self.item) else {
            return false;
        };
        match source.read(frame) {
            FrameRead::Ready(_) | FrameRead::Pending => {
                self.seek = None;
                self.local = frame;
                true
            }
            FrameRead::End | FrameRead::Failed(_) => false,
        }
    }

    /// The frame at the cursor, moving past it when there is one.
    pub fn next_step(&mut self) -> Step {
        loop {
            let Some(source) = self.items.get(self.item).cloned() else {
                return Step::End;
            };
            if let Some(rem) = self.seek {
                match source.read(rem) {
                    FrameRead::Ready(_) => {
                        self.local = rem;
                        self.seek = None;
                    }
                    FrameRead::Pending => return Step::Pending,
                    FrameRead::Failed(e) => return Step::Failed(e),
                    FrameRead::End => {
                        let len = length(source.as_ref(), rem);
                        self.before += len;
                        self.seek = Some(rem - len);
                        if !self.next_item() {
                            self.seek = None;
                            return Step::End;
                        }
                        // A resume past the end of a looping playlist wraps.
                        if self.item == 0
                            && let Some(r) = self.seek
                        {
                            let total = self.pass_total();
                            self.seek = (total > 0).then(|| r % total).filter(|r| *r > 0);
                        }
                    }
                }
                continue;
            }
            match source.read(self.local) {
                FrameRead::Ready(frame) => {
                    self.local += 1;
                    return Step::Frame(frame);
                }
                FrameRead::Pending => return Step::Pending,
                FrameRead::Failed(e) => return Step::Failed(e),
                FrameRead::End => {
                    self.before += self.local;
                    self.local = 0;
                    if !self.next_item() {
                        return Step::End;
                    }
                }
            }
        }
    }

    /// Frames of the pass that just wrapped (kept by `next_item`).
    fn pass_total(&self) -> u64 {
        self.last_pass
    }

    /// Moves to the next item, wrapping when looping; false when the playlist is over.
    fn next_item(&mut self) -> bool {
        if self.item + 1 < self.items.len() {
            self.item += 1;
            return true;
        }
        if self.looping && self.before > 0 {
            self.item = 0;
            self.last_pass = self.before;
            self.before = 0;
            return true;
        }
        // Over (or a looping playlist of no frames at all, which would spin): it stays so.
        self.item = self.items.len();
        false
    }
}

/// The length of an item that reported `End` at `end`: its own count, else the first
/// index in `0..=end` that reads `End` (reads below the length are frames).
fn length(source: &dyn FrameSource, end: u64) -> u64 {
    if let Some(n) = source.frame_count() {
        return n.min(end);
    }
    let (mut lo, mut hi) = (0u64, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if matches!(source.read(mid), FrameRead::End) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::TestFrames;

    fn frame(tag: u8, i: u32) -> Step {
        Step::Frame(TestFrames::frame(tag, i))
    }

    fn items(lens: &[u32]) -> Vec<Arc<dyn FrameSource>> {
        lens.iter()
            .enumerate()
            .map(|(k, n)| {
                let f: Arc<dyn FrameSource> = TestFrames::numbered(u8::try_from(k).unwrap(), *n);
                f
            })
            .collect()
    }

    fn drain(p: &mut Playlist, max: usize) -> Vec<Step> {
        let mut out = Vec::new();
        for _ in 0..max {
            let s = p.next_step();
            let stop = !matches!(s, Step::Frame(_));
            out.push(s);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn items_play_in_order_then_end() {
        let mut p = Playlist::new(items(&[2, 3]), 0, false);
        assert_eq!(
            p.total_frames(),
            None,
            "test frames do not tell their length"
        );
        assert_eq!(
            drain(&mut p, 10),
            vec![
                frame(0, 0),
                frame(0, 1),
                frame(1, 0),
                frame(1, 1),
                frame(1, 2),
                Step::End
            ]
        );
        assert_eq!(p.position_ms(), 100);
        assert_eq!(p.next_step(), Step::End, "it stays over");
    }

    #[test]
    fn a_looping_playlist_wraps_when_the_last_item_ends() {
        let mut p = Playlist::new(items(&[1, 2]), 0, true);
        let got = drain(&mut p, 7);
        assert_eq!(
            got,
            vec![
                frame(0, 0),
                frame(1, 0),
                frame(1, 1),
                frame(0, 0),
                frame(1, 0),
                frame(1, 1),
                frame(0, 0)
            ]
        );
        assert_eq!(p.position_ms(), 20, "the position is within the pass");
    }

    #[test]
    fn a_looping_playlist_of_no_frames_ends() {
        let mut p = Playlist::new(items(&[0, 0]), 0, true);
        assert_eq!(p.next_step(), Step::End);
        let mut p = Playlist::new(Vec::new(), 0, true);
        assert_eq!(p.next_step(), Step::End);
        assert_eq!(p.position_ms(), 0);
    }

    #[test]
    fn a_resume_finds_its_frame_across_items() {
        let mut p = Playlist::new(items(&[3, 4]), 5, false);
        assert_eq!(p.position_ms(), 100);
        assert_eq!(drain(&mut p, 5), vec![frame(1, 2), frame(1, 3), Step::End]);
        assert_eq!(p.position_ms(), 140);
        // past the end: over, at the end
        let mut p = Playlist::new(items(&[3, 4]), 9, false);
        assert_eq!(p.next_step(), Step::End);
        assert_eq!(p.position_ms(), 140);
        // past the end of a looping playlist: wraps (9 = 7 + 2)
        let mut p = Playlist::new(items(&[3, 4]), 9, true);
        assert_eq!(p.next_step(), frame(0, 2));
        assert_eq!(p.position_ms(), 60);
    }

    #[test]
    fn a_frame_not_encoded_yet_is_pending_and_the_position_stays() {
        let s = TestFrames::numbered(7, 2);
        s.keep_open();
        let item: Arc<dyn FrameSource> = s.clone();
        let mut p = Playlist::new(vec![item], 0, true);
        assert_eq!(p.next_step(), frame(7, 0));
        assert_eq!(p.next_step(), frame(7, 1));
        assert_eq!(p.next_step(), Step::Pending);
        assert_eq!(p.next_step(), Step::Pending);
        assert_eq!(p.position_ms(), 40);
        s.push(7, 1);
        assert_eq!(p.next_step(), frame(7, 2));
        // the stream ends: only now does a looping playlist know where to wrap
        s.finish();
        assert_eq!(p.next_step(), frame(7, 0));
    }

    #[test]
    fn a_resume_into_a_stream_still_encoding_waits_for_its_frame() {
        let s = TestFrames::numbered(1, 2);
        s.keep_open();
        let item: Arc<dyn FrameSource> = s.clone();
        let mut p = Playlist::new(vec![item], 4, false);
        assert_eq!(p.next_step(), Step::Pending);
        assert_eq!(p.position_ms(), 80);
        s.push(1, 3);
        assert_eq!(p.next_step(), frame(1, 4));
    }

    #[test]
    fn a_failed_item_fails_the_playlist() {
        let s = TestFrames::numbered(2, 5);
        s.fail_at(3, "corrupt audio: bad packet");
        let item: Arc<dyn FrameSource> = s;
        let mut p = Playlist::new(vec![item], 0, false);
        assert_eq!(
            drain(&mut p, 10),
            vec![
                frame(2, 0),
                frame(2, 1),
                frame(2, 2),
                Step::Failed("corrupt audio: bad packet".into())
            ]
        );
        assert_eq!(p.position_ms(), 60);
    }

    #[test]
    fn the_length_of_an_ended_item_is_found_by_reading() {
        let s = TestFrames::numbered(0, 37);
        for end in 37..200 {
            assert_eq!(length(s.as_ref(), end), 37);
        }
    }
}
