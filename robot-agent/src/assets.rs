//! Audio assets by name: fetched from the API, cached on disk by ETag, prepared once, played
//! while they are being prepared.
//!
//! ```text
//!  name ──► GET /agent/audio/{name}  (Authorization: Bearer <agent key>,
//!                                     If-None-Match: "<sha256>" when we have a copy)
//!            200 ──► the body in memory (and, meanwhile, <cache>/assets/<name>.bin + .etag)
//!            304 ──► the copy on disk
//!        ──► streams[name, etag] (memory) ──► audio::PreparedCache::get_or_stream
//!              complete: memory or <cache>/prepared/  ·  encoding: shared  ·  else: a new
//!              encoder thread (decode, resample, Opus), ~100× real time
//!        ──► returned once frame 0 is encoded: playback starts while the rest encodes
//! ```
//!
//! Two sessions asking for the same asset (same content and settings) while it is being
//! encoded share one encode (`robot_audio_encode_joins_total`). When the API cannot be
//! reached and a copy is on disk, the copy is used (a restarted API does not stop robots that
//! already know the asset).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use audio::{FrameRead, Input, PreparedCache, Served, Settings, StreamingAudio};
use protocol::Secret;

use crate::metrics::Metrics;

/// Why an asset could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The API does not know the asset.
    #[error("audio asset {0} does not exist on the API")]
    NotFound(String),
    /// The API or the disk failed, and no copy is cached.
    #[error("audio asset {name} unavailable: {reason}")]
    Unavailable {
        /// Asset name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The file could not be prepared (corrupt, unsupported, over the limits).
    #[error("audio asset {name} cannot be played: {source}")]
    Unplayable {
        /// Asset name.
        name: String,
        /// The audio crate's error.
        source: audio::AudioError,
    },
}

/// Fetches and prepares assets; shared by all sessions of the process.
pub struct AssetLibrary {
    http: reqwest::Client,
    api_url: String,
    agent_key: Secret,
    dir: PathBuf,
    cache: Arc<PreparedCache>,
    settings: Settings,
    /// By name and ETag: complete or still encoding (a failed one is dropped on lookup).
    streams: Mutex<HashMap<String, Arc<StreamingAudio>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AssetLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetLibrary")
            .field("api_url", &self.api_url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The HTTP client of the agent's calls to the API (assets, recordings): 30 s per request.
pub(crate) fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl AssetLibrary {
    /// A library fetching from `api_url` and caching under `dir`.
    pub fn new(
        api_url: &str,
        agent_key: &Secret,
        dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("assets"))?;
        let cache = PreparedCache::with_dir(dir.join("prepared"))?;
        Ok(Self {
            http: http_client()?,
            api_url: api_url.trim_end_matches('/').to_owned(),
            agent_key: agent_key.clone(),
            dir,
            cache: Arc::new(cache),
            settings: Settings::default(),
            streams: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join("assets");
        (
            base.join(format!("{name}.bin")),
            base.join(format!("{name}.etag")),
        )
    }

    /// The audio of asset `name`, once its first frame is ready: at once when it is
    /// prepared already (memory or disk), else as soon as the encode (started here, or
    /// shared with a session that started it) has produced frame 0. The rest is encoded on a
    /// thread of its own while it plays.
    pub async fn get(&self, name: &str) -> Result<Arc<StreamingAudio>, AssetError> {
        if !valid_name(name) {
            return Err(AssetError::NotFound(name.to_owned()));
        }
        let (bin, etag_path) = self.paths(name);
        let cached_etag = tokio::fs::read_to_string(&etag_path)
            .await
            .ok()
            .filter(|_| bin.exists());
        let unavailable = |reason: String| AssetError::Unavailable {
            name: name.to_owned(),
            reason,
        };
        let mut req = self
            .http
            .get(format!("{}/agent/audio/{name}", self.api_url))
            .bearer_auth(self.agent_key.expose());
        if let Some(e) = &cached_etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e.trim());
        }
        // `body`: a fresh download, played from memory while it is written to disk.
        let (etag, body) = match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED && cached_etag.is_some() => {
                self.metrics.asset_fetch("not_modified");
                (cached_etag.unwrap_or_default(), None)
            }
            Ok(r) if r.status().is_success() => {
                let etag = r
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = r.bytes().await.map_err(|e| unavailable(e.to_string()))?;
                self.metrics.asset_fetch("downloaded");
                (etag, Some(body))
            }
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                return Err(AssetError::NotFound(name.to_owned()));
            }
            Ok(r) => match cached_etag {
                Some(e) => {
                    tracing::warn!(asset = name, status = %r.status(), "asset fetch failed; using the cached copy");
                    self.metrics.asset_fetch("stale");
                    (e, None)
                }
                None => return Err(unavailable(format!("the API answered {}", r.status()))),
            },
            Err(err) => match cached_etag {
                Some(e) => {
                    tracing::warn!(asset = name, error = %err, "asset fetch failed; using the cached copy");
                    self.metrics.asset_fetch("stale");
                    (e, None)
                }
                None => return Err(unavailable(err.to_string())),
            },
        };
        let key = format!("{name}\n{}", etag.trim());
        let known = self.lock().get(&key).cloned();
        if let Some(s) = known.filter(|s| s.error().is_none()) {
            if s.total_frames().is_some() {
                self.metrics.cache_hit("memory");
            } else {
                self.metrics.encode(true);
            }
            if let Some(b) = body {
                save(&bin, &etag_path, &b, &etag)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
            }
            return self.first_frame(name, s).await;
        }
        let cache = Arc::clone(&self.cache);
        let settings = self.settings.clone();
        let input = match &body {
            Some(b) => Input::Bytes(b.clone()),
            None => Input::Path(bin.clone()),
        };
        // Hash and look up (or start the encode) while the download is written to disk.
        let lookup = tokio::task::spawn_blocking(move || {
            let mut input = input;
            let hash = input.content_sha256()?;
            cache.get_or_stream_hashed(input, &hash, &settings)
        });
        let (found, saved) = tokio::join!(lookup, async {
            match &body {
                Some(b) => save(&bin, &etag_path, b, &etag).await,
                None => Ok(()),
            }
        });
        saved.map_err(|e| unavailable(e.to_string()))?;
        let (stream, served) =
            found
                .map_err(|e| unavailable(e.to_string()))?
                .map_err(|source| AssetError::Unplayable {
                    name: name.to_owned(),
                    source,
                })?;
        match served {
            Served::Memory => self.metrics.cache_hit("memory"),
            Served::Disk => self.metrics.cache_hit("disk"),
            Served::Joined => self.metrics.encode(true),
            Served::Started => {
                self.metrics.cache_miss();
                self.metrics.encode(false);
                self.metrics
                    .encodes_running
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let metrics = Arc::clone(&self.metrics);
                // no frame has this index: called once the encode is complete or failed
                stream.notify_when(usize::MAX, move || {
                    metrics
                        .encodes_running
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        }
        self.lock().insert(key, Arc::clone(&stream));
        self.first_frame(name, stream).await
    }

    /// Waits (without blocking a thread) until frame 0 of `stream` is encoded; an encode
    /// that fails before it is the asset's error.
    async fn first_frame(
        &self,
        name: &str,
        stream: Arc<StreamingAudio>,
    ) -> Result<Arc<StreamingAudio>, AssetError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        stream.notify_when(0, move || {
            let _ = tx.send(());
        });
        let _ = rx.await;
        match stream.read(0) {
            FrameRead::Ready(_) | FrameRead::End => Ok(stream),
            FrameRead::Failed(reason) => Err(match stream.error() {
                Some(source) => AssetError::Unplayable {
                    name: name.to_owned(),
                    source,
                },
                None => AssetError::Unavailable {
                    name: name.to_owned(),
                    reason,
                },
            }),
            FrameRead::Pending => Err(AssetError::Unavailable {
                name: name.to_owned(),
                reason: "the encoder stopped before the first frame".into(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StreamingAudio>>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes a downloaded asset and then its ETag (so that an ETag on disk always has its file).
async fn save(
    bin: &std::path::Path,
    etag_path: &std::path::Path,
    body: &[u8],
    etag: &str,
) -> std::io::Result<()> {
    write_atomically(bin, body).await?;
    write_atomically(etag_path, etag.as_bytes()).await
}

async fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    // unique per call: two sessions may download the same asset at once
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_checked_before_they_reach_a_path() {
        assert!(super::valid_name("default"));
        assert!(super::valid_name("a-b_C9"));
        assert!(!super::valid_name("../etc/passwd"));
        assert!(!super::valid_name(""));
        assert!(!super::valid_name(&"x".repeat(65)));
    }
}
