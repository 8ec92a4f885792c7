//! [`PreparedCache`]: every asset is encoded once per settings, then served from memory or disk.
//!
//! The key is `sha256(sha256(content) ‖ settings.cache_key_part())` in hex. On disk an entry is
//! our own Ogg Opus file `<dir>/<key>.opus` (playable by any tool), written to a temporary name
//! and renamed into place, with the key in its `DAPI_KEY` comment. A damaged or foreign entry
//! is treated as a miss and rewritten. Concurrent requests for the same key wait for the first
//! one instead of encoding again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::error::{AudioError, Result};
use crate::input::Input;
use crate::prepared::{PreparedAudio, Progress, prepare_input};
use crate::settings::{Limits, Settings};

type Slot = Arc<Mutex<Option<Arc<PreparedAudio>>>>;

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Served from memory.
    pub memory_hits: u64,
    /// Loaded from the disk directory.
    pub disk_hits: u64,
    /// Encoded.
    pub encodes: u64,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Keys by last use, oldest first.
    lru: Vec<String>,
    bytes: usize,
    stats: CacheStats,
}

/// A memory and disk cache of [`PreparedAudio`], keyed by content and settings.
#[derive(Debug)]
pub struct PreparedCache {
    dir: Option<PathBuf>,
    max_memory_bytes: usize,
    limits: Limits,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding the lock leaves consistent data here: keep going
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PreparedCache {
    /// A cache in memory only.
    pub fn in_memory() -> Self {
        PreparedCache {
            dir: None,
            max_memory_bytes: 256 << 20,
            limits: Limits::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// A cache in memory backed by `dir` (created if missing).
    pub fn with_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| AudioError::io(dir.clone(), e))?;
        Ok(PreparedCache {
            dir: Some(dir),
            ..Self::in_memory()
        })
    }

    /// Caps the encoded bytes kept in memory (default 256 MiB); the least recently used entries
    /// are dropped from memory first (they stay on disk).
    pub fn max_memory_bytes(mut self, bytes: usize) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// Sets the limits applied to inputs (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Hit and encode counters.
    pub fn stats(&self) -> CacheStats {
        lock(&self.state).stats
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
        self.dir.as_ref().map(|d| d.join(format!("{key}.opus")))
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
            let mut st = lock(&self.state);
            Arc::clone(st.slots.entry(key.clone()).or_default())
        };
        // Holding the slot's lock while encoding makes a second caller for the same key wait.
        let mut entry = lock(&slot);
        if let Some(a) = entry.as_ref() {
            let a = Arc::clone(a);
            drop(entry);
            let mut st = lock(&self.state);
            st.stats.memory_hits += 1;
            touch(&mut st.lru, &key);
            return Ok(a);
        }
        let (audio, from_disk) = match self.load(&key) {
            Some(a) => (a, true),
            None => {
                let mut a = prepare_input(&mut input, settings, &self.limits, progress)?;
                a.set_cache_key(key.clone());
                self.store(&key, &a);
                (a, false)
            }
        };
        let audio = Arc::new(audio);
        *entry = Some(Arc::clone(&audio));
        drop(entry);
        let mut st = lock(&self.state);
        if from_disk {
            st.stats.disk_hits += 1;
        } else {
            st.stats.encodes += 1;
        }
        st.bytes += audio.encoded_bytes();
        touch(&mut st.lru, &key);
        self.evict(&mut st, &key);
        Ok(audio)
    }

    /// Looks a key up in memory, then on disk, without encoding.
    pub fn get(&self, key: &str) -> Option<Arc<PreparedAudio>> {
        let slot = lock(&self.state).slots.get(key).cloned();
        if let Some(slot) = slot {
            let found = lock(&slot).as_ref().map(Arc::clone);
            if found.is_some() {
                return found;
            }
        }
        self.load(key).map(Arc::new)
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
        while st.bytes > self.max_memory_bytes && st.lru.len() > 1 {
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

fn write_atomically(path: &Path, audio: &PreparedAudio) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let file = File::create(&tmp).map_err(|e| AudioError::io(tmp.clone(), e))?;
    let w = audio.write_ogg(std::io::BufWriter::new(file))?;
    let file = w
        .into_inner()
        .map_err(|e| AudioError::io(tmp.clone(), e.into_error()))?;
    file.sync_all()
        .map_err(|e| AudioError::io(tmp.clone(), e))?;
    fs::rename(&tmp, path).map_err(|e| AudioError::io(path.to_path_buf(), e))
}
