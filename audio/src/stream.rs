//! [`StreamingAudio`]: prepared audio that can be played while it is still being encoded.
//!
//! ```text
//!   encoder thread ("audio-encode")                 players (any thread, any number)
//!   decode → downmix → 48 kHz → × gain → Opus
//!        │ one packet every 20 ms of audio,          read(i) ──► Ready(frame) | Pending
//!        │ ~100× faster than real time                          | End | Failed(reason)
//!        ▼                                           wait_for(i, timeout)   (blocking)
//!   frames: Vec<Bytes> ──(lock, push, notify)──►     notify_when(i, callback)
//!        │ at the end: one PreparedAudio
//!        ▼ (the cache writes it to disk, then)
//!   complete: OnceLock<Arc<PreparedAudio>> ──► read(i) without a lock
//! ```
//!
//! A stream is shared as `Arc<StreamingAudio>`: every session that plays the same asset
//! while it is being encoded reads the same frames (one encode). Once the encode is complete
//! the frames are served from one [`PreparedAudio`] (one buffer, no lock on the read path);
//! an asset already prepared is wrapped with [`StreamingAudio::complete`].
//!
//! A failure found mid-stream (a truncated or corrupt tail) leaves the frames already
//! encoded readable and then reads as [`FrameRead::Failed`]: the player ends cleanly with the
//! reason. A failed stream never becomes a cache entry.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::encode::{MAX_PACKET, PacketSink};
use crate::error::{AudioError, Result};
use crate::input::Input;
use crate::prepared::{PreparedAudio, encode_input, normalization_gain};
use crate::settings::{Limits, Settings};

/// What [`StreamingAudio::read`] found at a frame index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRead {
    /// The frame (a shared slice: no copy).
    Ready(Bytes),
    /// Not encoded yet: the encoder has not reached it. Ask again later.
    Pending,
    /// Past the last frame of a complete stream.
    End,
    /// The encode failed before reaching this frame; the reason. Frames before it stay
    /// readable.
    Failed(String),
}

/// A callback waiting for a frame (see [`StreamingAudio::notify_when`]).
type Waiter = (usize, Box<dyn FnOnce() + Send>);

#[derive(Default)]
struct Progressing {
    /// Frames encoded so far (each its own slice of a shared chunk).
    frames: Vec<Bytes>,
    failed: Option<AudioError>,
    waiters: Vec<Waiter>,
}

/// 20 ms Opus frames of one asset, readable while the encoder is still producing them.
///
/// `Send + Sync`; share it as `Arc<StreamingAudio>`. [`read`](Self::read) never blocks for
/// more than a short critical section (none at all once complete), so it can be called on
/// a media clock every 20 ms per session.
pub struct StreamingAudio {
    complete: OnceLock<Arc<PreparedAudio>>,
    state: Mutex<Progressing>,
    changed: Condvar,
    settings: Settings,
    key: Option<String>,
}

impl std::fmt::Debug for StreamingAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingAudio")
            .field("key", &self.key)
            .field("ready_frames", &self.ready_frames())
            .field("total_frames", &self.total_frames())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Progressing>) -> MutexGuard<'_, Progressing> {
    // a panic while holding the lock leaves consistent data here: keep going
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamingAudio {
    /// A stream of an asset that is already prepared: every frame is ready.
    pub fn complete(prepared: Arc<PreparedAudio>) -> Arc<Self> {
        let s = Self::pending(
            prepared.settings().clone(),
            prepared.cache_key().map(str::to_owned),
        );
        let _ = s.complete.set(prepared);
        Arc::new(s)
    }

    /// Starts encoding `input` with `settings` on a thread of its own and returns at once;
    /// frames become readable as they are encoded. Fails only on invalid settings or when
    /// no thread can be started; every problem of the input itself shows on the stream
    /// ([`FrameRead::Failed`], [`error`](Self::error)).
    pub fn start(
        input: impl Into<Input>,
        settings: &Settings,
        limits: &Limits,
    ) -> Result<Arc<Self>> {
        settings.validate()?;
        let stream = Arc::new(Self::pending(settings.clone(), None));
        spawn_encoder(
            input.into(),
            Arc::clone(&stream),
            *limits,
            Box::new(|r| r.map(Arc::new)),
        )?;
        Ok(stream)
    }

    /// An empty stream that an encoder (or a cache load) will fill.
    pub(crate) fn pending(settings: Settings, key: Option<String>) -> Self {
        StreamingAudio {
            complete: OnceLock::new(),
            state: Mutex::new(Progressing::default()),
            changed: Condvar::new(),
            settings,
            key,
        }
    }

    /// Frame `index`: ready, not yet encoded, past the end, or the encode failed before it.
    /// Never blocks on the encoder; no lock at all once the stream is complete.
    pub fn read(&self, index: usize) -> FrameRead {
        if let Some(p) = self.complete.get() {
            return p
                .frame_bytes(index)
                .map_or(FrameRead::End, FrameRead::Ready);
        }
        let st = lock(&self.state);
        if let Some(f) = st.frames.get(index) {
            return FrameRead::Ready(f.clone());
        }
        if let Some(e) = &st.failed {
            return FrameRead::Failed(e.to_string());
        }
        // `complete` is set under the lock: look again now that we hold it
        match self.complete.get() {
            Some(p) => p
                .frame_bytes(index)
                .map_or(FrameRead::End, FrameRead::Ready),
            None => FrameRead::Pending,
        }
    }

    /// Frames readable now (all of them once complete).
    pub fn ready_frames(&self) -> usize {
        if let Some(p) = self.complete.get() {
            return p.frame_count();
        }
        let n = lock(&self.state).frames.len();
        self.complete.get().map_or(n, |p| p.frame_count())
    }

    /// The number of frames, once the encode is complete.
    pub fn total_frames(&self) -> Option<usize> {
        self.complete.get().map(|p| p.frame_count())
    }

    /// The whole prepared audio, once the encode is complete.
    pub fn prepared(&self) -> Option<Arc<PreparedAudio>> {
        self.complete.get().cloned()
    }

    /// True once the encode is complete or has failed: nothing will change any more.
    pub fn is_finished(&self) -> bool {
        self.complete.get().is_some() || lock(&self.state).failed.is_some()
    }

    /// Why the encode failed, if it did.
    pub fn error(&self) -> Option<AudioError> {
        lock(&self.state).failed.as_ref().map(AudioError::duplicate)
    }

    /// The settings the frames are encoded with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The cache key, when the stream came through a [`PreparedCache`](crate::PreparedCache).
    pub fn cache_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Blocks until frame `index` is ready, the stream ended or failed, or `timeout` passed
    /// (then [`FrameRead::Pending`]). Not for the media clock: use [`read`](Self::read) there.
    pub fn wait_for(&self, index: usize, timeout: Duration) -> FrameRead {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if self.complete.get().is_some() || index < st.frames.len() || st.failed.is_some() {
                drop(st);
                return self.read(index);
            }
            let now = Instant::now();
            if now >= deadline {
                return FrameRead::Pending;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Calls `callback` once frame `index` is ready or the stream has ended or failed: at
    /// once on this thread if it already is, otherwise later on the encoder's thread (keep it
    /// short: wake a task, send on a channel). Lets async code wait without blocking.
    pub fn notify_when(&self, index: usize, callback: impl FnOnce() + Send + 'static) {
        {
            let mut st = lock(&self.state);
            let done =
                self.complete.get().is_some() || index < st.frames.len() || st.failed.is_some();
            if !done {
                st.waiters.push((index, Box::new(callback)));
                return;
            }
        }
        callback();
    }

    /// Appends encoded frames and wakes whoever waits for them.
    fn publish(&self, frames: &mut Vec<Bytes>) {
        let ready = {
            let mut st = lock(&self.state);
            st.frames.append(frames);
            let n = st.frames.len();
            take_waiters(&mut st.waiters, |i| i < n)
        };
        self.changed.notify_all();
        for w in ready {
            w();
        }
    }

    /// Completes the stream with the whole prepared audio.
    pub(crate) fn finish(&self, prepared: Arc<PreparedAudio>) {
        let ready = {
            let mut st = lock(&self.state);
            let _ = self.complete.set(prepared);
            // the prepared audio holds the same packets in one buffer: drop the slices
            st.frames = Vec::new();
            take_waiters(&mut st.waiters, |_| true)
        };
        self.changed.notify_all();
        for w in ready {
            w();
        }
    }

    /// Fails the stream (unless it is complete already).
    pub(crate) fn fail(&self, error: AudioError) {
        let ready = {
            let mut st = lock(&self.state);
            if self.complete.get().is_some() || st.failed.is_some() {
                return;
            }
            st.failed = Some(error);
            take_waiters(&mut st.waiters, |_| true)
        };
        self.changed.notify_all();
        for w in ready {
            w();
        }
    }
}

fn take_waiters(
    waiters: &mut Vec<Waiter>,
    ready: impl Fn(usize) -> bool,
) -> Vec<Box<dyn FnOnce() + Send>> {
    if waiters.is_empty() {
        return Vec::new();
    }
    let (now, later): (Vec<_>, Vec<_>) = std::mem::take(waiters)
        .into_iter()
        .partition(|(i, _)| ready(*i));
    *waiters = later;
    now.into_iter().map(|(_, f)| f).collect()
}

/// What the encoder thread does with a finished encode before the stream completes: the
/// cache stores it (disk, memory) here. It returns what the stream then serves.
pub(crate) type Finisher =
    Box<dyn FnOnce(Result<PreparedAudio>) -> Result<Arc<PreparedAudio>> + Send>;

/// Frames published to the stream this often (in frames): small enough that the first ones
/// come out at once, large enough that the lock is taken rarely.
const PUBLISH_EVERY: usize = 5;

/// Bytes of packet storage allocated at a time; each packet is a slice of one of these.
const CHUNK_BYTES: usize = 64 * 1024;

/// The encoder's sink: packets as `Bytes` slices of shared chunks, published to the stream
/// in small batches, and collected into one buffer for the final [`PreparedAudio`].
struct Publisher {
    stream: Arc<StreamingAudio>,
    chunk: BytesMut,
    batch: Vec<Bytes>,
    all: BytesMut,
    ends: Vec<u32>,
}

impl PacketSink for Publisher {
    fn reserve(&mut self, frames: usize, bytes: usize) {
        self.all.reserve(bytes);
        self.ends.reserve(frames);
    }

    fn packet(&mut self, data: &[u8]) -> Result<()> {
        if self.chunk.capacity() < data.len().max(MAX_PACKET) {
            self.chunk = BytesMut::with_capacity(CHUNK_BYTES);
        }
        self.chunk.extend_from_slice(data);
        self.batch.push(self.chunk.split().freeze());
        self.all.extend_from_slice(data);
        let end = u32::try_from(self.all.len())
            .map_err(|_| AudioError::LimitExceeded("more than 4 GiB of Opus packets".into()))?;
        self.ends.push(end);
        // the first frame goes out alone, so that playback can start as early as possible
        if self.ends.len() == 1 || self.batch.len() >= PUBLISH_EVERY {
            self.stream.publish(&mut self.batch);
        }
        Ok(())
    }
}

/// Fails the stream if the encoder thread ends without finishing it (a panic: a bug), so
/// that nobody waits for frames that will never come.
struct FailOnDrop(Arc<StreamingAudio>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        self.0.fail(AudioError::Codec(
            "the encoder thread stopped unexpectedly".into(),
        ));
    }
}

/// Starts the encoder thread that fills `stream` from `input`; `finish` runs on it once the
/// encode has ended (successfully or not), before the stream completes or fails.
pub(crate) fn spawn_encoder(
    mut input: Input,
    stream: Arc<StreamingAudio>,
    limits: Limits,
    finish: Finisher,
) -> Result<()> {
    std::thread::Builder::new()
        .name("audio-encode".into())
        .spawn(move || {
            let guard = FailOnDrop(Arc::clone(&stream));
            let settings = stream.settings.clone();
            let result = encode_stream(&mut input, &settings, &limits, &stream);
            let result = result.map(|mut p| {
                if let Some(k) = &stream.key {
                    p.set_cache_key(k.clone());
                }
                p
            });
            match finish(result) {
                Ok(p) => stream.finish(p),
                Err(e) => stream.fail(e),
            }
            drop(guard); // a no-op now: the stream is complete or failed
        })
        .map(|_| ())
        .map_err(|e| AudioError::io("<audio-encode thread>", e))
}

fn encode_stream(
    input: &mut Input,
    settings: &Settings,
    limits: &Limits,
    stream: &Arc<StreamingAudio>,
) -> Result<PreparedAudio> {
    let (gain, normalization) = normalization_gain(input, settings, limits)?;
    let mut out = Publisher {
        stream: Arc::clone(stream),
        chunk: BytesMut::new(),
        batch: Vec::with_capacity(PUBLISH_EVERY),
        all: BytesMut::new(),
        ends: Vec::new(),
    };
    let e = encode_input(input, settings, limits, gain, (1, 1), &mut |_| {}, &mut out)?;
    // the last few frames: readable before the cache's disk write
    stream.publish(&mut out.batch);
    Ok(PreparedAudio::from_parts(
        out.all.freeze(),
        out.ends,
        e,
        settings.clone(),
        normalization,
    ))
}
