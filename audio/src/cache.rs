//! [`PreparedCache`]: every asset is encoded once per settings, then served from memory or disk.
//!
//! The key is `sha256(sha256(content) ‖ settings.cache_key_part())` in hex. On disk an entry is
//! our own Ogg Opus file `<dir>/<key>.opus` (playable by any tool), written to a temporary name
//! and renamed into place, with the key in its `DAPI_KEY` comment. A damaged or foreign entry
//! is treated as a miss and rewritten. Concurrent requests for the same key wait for the first
//! one instead of encoding again.
//!
//! [`PreparedCache::get_or_stream`] is the same lookup for a player that must not wait for the
//! whole encode: it returns a [`StreamingAudio`] at once. A miss starts one encoder thread;
//! every other request for the key while it runs gets the same stream ([`Served::Joined`]).
//! When the encode is complete, the entry is written to disk (temporary name, fsync, rename),
//! put in memory, and only then does the stream report its end. A failed encode leaves
//! nothing in the cache, on disk or in memory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{AudioError, Result};
use crate::input::Input;
use crate::prepared::{PreparedAudio, Progress, prepare_input};
use crate::settings::{Limits, Settings};
use crate::stream::{StreamingAudio, spawn_encoder};

type Slot = Arc<Mutex<Option<Arc<PreparedAudio>>>>;

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Served from memory.
    pub memory_hits: u64,
    /// Loaded from the disk directory.
    pub disk_hits: u64,
    /// Encoded (for [`PreparedCache::get_or_stream`]: encodes started).
    pub encodes: u64,
    /// Requests that joined an encode already in progress instead of starting one.
    pub joined: u64,
}

/// Where [`PreparedCache::get_or_stream`] found the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Complete, from memory.
    Memory,
    /// Complete, loaded from the disk directory.
    Disk,
    /// A new encode was started for this request.
    Started,
    /// Another request's encode was in progress: this one shares it.
    Joined,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Keys by last use, oldest first.
    lru: Vec<String>,
    bytes: usize,
    stats: CacheStats,
    /// Encodes in progress, by key (a stream also counts while its disk entry is checked).
    streams: HashMap<String, Arc<StreamingAudio>>,
}

/// What the cache shares with its encoder threads.
#[derive(Debug)]
struct Core {
    dir: Option<PathBuf>,
    max_memory_bytes: AtomicUsize,
    state: Mutex<State>,
}

/// A memory and disk cache of [`PreparedAudio`], keyed by content and settings.
#[derive(Debug)]
pub struct PreparedCache {
    core: Arc<Core>,
    limits: Limits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding the lock leaves consistent data here: keep going
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PreparedCache {
    /// A cache in memory only.
    pub fn in_memory() -> Self {
        Self::new(None)
    }

    fn new(dir: Option<PathBuf>) -> Self {
        PreparedCache {
            core: Arc::new(Core {
                dir,
                max_memory_bytes: AtomicUsize::new(256 << 20),
                state: Mutex::new(State::default()),
            }),
            limits: Limits::default(),
        }
    }

    /// A cache in memory backed by `dir` (created if missing).
    pub fn with_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| AudioError::io(dir.clone(), e))?;
        Ok(Self::new(Some(dir)))
    }

    /// Caps the encoded bytes kept in memory (default 256 MiB); the least recently used entries
    /// are dropped from memory first (they stay on disk).
    pub fn max_memory_bytes(self, bytes: usize) -> Self {
        self.core.max_memory_bytes.store(bytes, Ordering::Relaxed);
        self
    }

    /// Sets the limits applied to inputs (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Hit and encode counters.
    pub fn stats(&self) -> CacheStats {
        lock(&self.core.state).stats
    }

    /// Encodes in progress.
    pub fn encodes_in_progress(&self) -> usize {
        lock(&self.core.state).streams.len()
    }

    /// The key for `content_sha256` prepared with `settings`.
    pub fn key(content_sha256: &[u8; 32], settings: &Settings) -> String {
        let mut h = Sha256::new();
        h.update(content_sha256);
        h.update(settings.cache_key_part().as_bytes());
        hex::encode(h.finalize())
    }

    /// The disk path of an entry, if the cache has a directory.
    pub fn path_for(&self, key: &str) -> Option<PathBuf> {
        self.core.path_for(key)
    }

    /// Returns the prepared audio for `input` and `settings`, encoding it only if neither
    /// memory nor disk has it.
    pub fn get_or_prepare(
        &self,
        input: impl Into<Input>,
        settings: &Settings,
    ) -> Result<Arc<PreparedAudio>> {
        self.get_or_prepare_with(input, settings, &mut |_| {})
    }

    /// As [`get_or_prepare`](Self::get_or_prepare), reporting progress of an encode.
    pub fn get_or_prepare_with(
        &self,
        input: impl Into<Input>,
        settings: &Settings,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Arc<PreparedAudio>> {
        settings.validate()?;
        let mut input = input.into();
        let key = Self::key(&input.content_sha256()?, settings);
        let slot = {
            let mut st = lock(&self.core.state);
            Arc::clone(st.slots.entry(key.clone()).or_default())
        };
        // Holding the slot's lock while encoding makes a second caller for the same key wait.
        let mut entry = lock(&slot);
        if let Some(a) = entry.as_ref() {
            let a = Arc::clone(a);
            drop(entry);
            let mut st = lock(&self.core.state);
            st.stats.memory_hits += 1;
            touch(&mut st.lru, &key);
            return Ok(a);
        }
        let (audio, from_disk) = match self.core.load(&key) {
            Some(a) => (a, true),
            None => {
                let mut a = prepare_input(&mut input, settings, &self.limits, progress)?;
                a.set_cache_key(key.clone());
                self.core.store(&key, &a);
                (a, false)
            }
        };
        let audio = Arc::new(audio);
        *entry = Some(Arc::clone(&audio));
        drop(entry);
        let mut st = lock(&self.core.state);
        if from_disk {
            st.stats.disk_hits += 1;
        } else {
            st.stats.encodes += 1;
        }
        st.bytes += audio.encoded_bytes();
        touch(&mut st.lru, &key);
        self.core.evict(&mut st, &key);
        Ok(audio)
    }

    /// Returns the audio for `input` and `settings` as a stream, at once: complete from
    /// memory or disk, or the encode in progress for the same key, or a new encode started
    /// on a thread of its own. Hashes the input first (see
    /// [`get_or_stream_hashed`](Self::get_or_stream_hashed) when the hash is known).
    pub fn get_or_stream(
        &self,
        input: impl Into<Input>,
        settings: &Settings,
    ) -> Result<(Arc<StreamingAudio>, Served)> {
        let mut input = input.into();
        let hash = input.content_sha256()?;
        self.get_or_stream_hashed(input, &hash, settings)
    }

    /// As [`get_or_stream`](Self::get_or_stream) for an input whose SHA-256 is
    /// `content_sha256`.
    pub fn get_or_stream_hashed(
        &self,
        input: impl Into<Input>,
        content_sha256: &[u8; 32],
        settings: &Settings,
    ) -> Result<(Arc<StreamingAudio>, Served)> {
        settings.validate()?;
        let key = Self::key(content_sha256, settings);
        let stream = {
            let mut st = lock(&self.core.state);
            if let Some(s) = st.streams.get(&key) {
                let s = Arc::clone(s);
                st.stats.joined += 1;
                return Ok((s, Served::Joined));
            }
            // A batch encode holding the slot: do not wait for it under the state lock; this
            // request then encodes too (same bytes; the disk rename makes the last one win).
            let found = st.slots.get(&key).and_then(|slot| {
                slot.try_lock()
                    .ok()
                    .and_then(|a| a.as_ref().map(Arc::clone))
            });
            if let Some(a) = found {
                st.stats.memory_hits += 1;
                touch(&mut st.lru, &key);
                return Ok((StreamingAudio::complete(a), Served::Memory));
            }
            // Claim the key before looking at the disk, so that a concurrent request joins
            // this one instead of loading or encoding again.
            let s = Arc::new(StreamingAudio::pending(settings.clone(), Some(key.clone())));
            st.streams.insert(key.clone(), Arc::clone(&s));
            s
        };
        if let Some(a) = self.core.load(&key) {
            let a = Arc::new(a);
            let mut st = lock(&self.core.state);
            st.streams.remove(&key);
            st.stats.disk_hits += 1;
            self.core.remember(&mut st, &key, &a);
            drop(st);
            stream.finish(Arc::clone(&a));
            return Ok((stream, Served::Disk));
        }
        lock(&self.core.state).stats.encodes += 1;
        let core = Arc::clone(&self.core);
        let done_key = key.clone();
        let started = spawn_encoder(
            input.into(),
            Arc::clone(&stream),
            self.limits,
            Box::new(move |result| {
                let audio = result.map(Arc::new);
                if let Ok(a) = &audio {
                    core.store(&done_key, a);
                }
                let mut st = lock(&core.state);
                st.streams.remove(&done_key);
                if let Ok(a) = &audio {
                    core.remember(&mut st, &done_key, a);
                }
                audio
            }),
        );
        if let Err(e) = started {
            lock(&self.core.state).streams.remove(&key);
            stream.fail(e.duplicate());
            return Err(e);
        }
        Ok((stream, Served::Started))
    }

    /// Looks a key up in memory, then on disk, without encoding.
    pub fn get(&self, key: &str) -> Option<Arc<PreparedAudio>> {
        let slot = lock(&self.core.state).slots.get(key).cloned();
        if let Some(slot) = slot {
            let found = lock(&slot).as_ref().map(Arc::clone);
            if found.is_some() {
                return found;
            }
        }
        self.core.load(key).map(Arc::new)
    }
}

impl Core {
    fn path_for(&self, key: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key}.opus")))
    }

    /// Puts complete audio into the memory tier (its slot, the byte count, the LRU).
    fn remember(&self, st: &mut State, key: &str, audio: &Arc<PreparedAudio>) {
        let slot = Arc::clone(st.slots.entry(key.to_owned()).or_default());
        // never wait here under the state lock: a batch encode of the key holds the slot
        let Ok(mut entry) = slot.try_lock() else {
            return;
        };
        if entry.is_none() {
            *entry = Some(Arc::clone(audio));
            st.bytes += audio.encoded_bytes();
        }
        drop(entry);
        touch(&mut st.lru, key);
        self.evict(st, key);
    }

    fn load(&self, key: &str) -> Option<PreparedAudio> {
        let path = self.path_for(key)?;
        let file = File::open(&path).ok()?;
        match PreparedAudio::read_ogg(BufReader::new(file)) {
            Ok(a) if a.cache_key() == Some(key) => Some(a),
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "discarding unreadable cache entry");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn store(&self, key: &str, audio: &PreparedAudio) {
        let Some(path) = self.path_for(key) else {
            return;
        };
        if let Err(e) = write_atomically(&path, audio) {
            // the cache is an optimisation: a full disk must not fail the call
            tracing::warn!(path = %path.display(), error = %e, "cannot write cache entry");
        }
    }

    fn evict(&self, st: &mut State, keep: &str) {
        while st.bytes > self.max_memory_bytes.load(Ordering::Relaxed) && st.lru.len() > 1 {
            let Some(pos) = st.lru.iter().position(|k| k != keep) else {
                break;
            };
            let old = st.lru.remove(pos);
            if let Some(slot) = st.slots.remove(&old)
                && let Some(a) = lock(&slot).take()
            {
                st.bytes = st.bytes.saturating_sub(a.encoded_bytes());
            }
        }
    }
}

fn touch(lru: &mut Vec<String>, key: &str) {
    if let Some(p) = lru.iter().position(|k| k == key) {
        lru.remove(p);
    }
    lru.push(key.to_string());
}

/// Writes `audio` to a temporary file beside `path` (unique to this process and call),
/// fsyncs it and renames it into place: a reader sees the whole entry or none. A failed write
/// removes its temporary file.
fn write_atomically(path: &Path, audio: &PreparedAudio) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let write = || -> Result<()> {
        let file = File::create(&tmp).map_err(|e| AudioError::io(tmp.clone(), e))?;
        let w = audio.write_ogg(std::io::BufWriter::new(file))?;
        let file = w
            .into_inner()
            .map_err(|e| AudioError::io(tmp.clone(), e.into_error()))?;
        file.sync_all()
            .map_err(|e| AudioError::io(tmp.clone(), e))?;
        fs::rename(&tmp, path).map_err(|e| AudioError::io(path.to_path_buf(), e))
    };
    let r = write();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}
