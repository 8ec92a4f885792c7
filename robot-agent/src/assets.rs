//! Audio assets by name: fetched from the API, cached on disk by ETag, prepared once.
//!
//! ```text
//!  name ──► GET /agent/audio/{name}  (Authorization: Bearer <agent key>,
//!                                     If-None-Match: "<sha256>" when we have a copy)
//!            200 ──► <cache>/assets/<name>.bin + .etag
//!            304 ──► the copy on disk
//!        ──► prepared[etag] (memory) ──► audio::PreparedCache (memory + <cache>/prepared/)
//!                                         decode, resample, Opus: once per content
//! ```
//!
//! When the API cannot be reached and a copy is on disk, the copy is used (a restarted API
//! does not stop robots that already know the asset).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use audio::{PreparedAudio, PreparedCache, Settings};

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
    agent_key: String,
    dir: PathBuf,
    cache: Arc<PreparedCache>,
    settings: Settings,
    prepared: Mutex<HashMap<String, Arc<PreparedAudio>>>,
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
        agent_key: &str,
        dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("assets"))?;
        let cache = PreparedCache::with_dir(dir.join("prepared"))?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            api_url: api_url.trim_end_matches('/').to_owned(),
            agent_key: agent_key.to_owned(),
            dir,
            cache: Arc::new(cache),
            settings: Settings::default(),
            prepared: Mutex::new(HashMap::new()),
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

    /// The prepared audio of asset `name`.
    pub async fn get(&self, name: &str) -> Result<Arc<PreparedAudio>, AssetError> {
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
            .bearer_auth(&self.agent_key);
        if let Some(e) = &cached_etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e.trim());
        }
        let etag = match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED && cached_etag.is_some() => {
                self.metrics.asset_fetch("not_modified");
                cached_etag.unwrap_or_default()
            }
            Ok(r) if r.status().is_success() => {
                let etag = r
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = r.bytes().await.map_err(|e| unavailable(e.to_string()))?;
                write_atomically(&bin, &body)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                write_atomically(&etag_path, etag.as_bytes())
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                self.metrics.asset_fetch("downloaded");
                etag
            }
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                return Err(AssetError::NotFound(name.to_owned()));
            }
            Ok(r) => match cached_etag {
                Some(e) => {
                    tracing::warn!(asset = name, status = %r.status(), "asset fetch failed; using the cached copy");
                    self.metrics.asset_fetch("stale");
                    e
                }
                None => return Err(unavailable(format!("the API answered {}", r.status()))),
            },
            Err(err) => match cached_etag {
                Some(e) => {
                    tracing::warn!(asset = name, error = %err, "asset fetch failed; using the cached copy");
                    self.metrics.asset_fetch("stale");
                    e
                }
                None => return Err(unavailable(err.to_string())),
            },
        };
        let key = format!("{name}\n{}", etag.trim());
        if let Some(a) = self.lock().get(&key) {
            self.metrics.cache_hit("memory");
            return Ok(Arc::clone(a));
        }
        let cache = Arc::clone(&self.cache);
        let settings = self.settings.clone();
        let before = cache.stats();
        let prepared = tokio::task::spawn_blocking(move || cache.get_or_prepare(bin, &settings))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|source| AssetError::Unplayable {
                name: name.to_owned(),
                source,
            })?;
        let after = self.cache.stats();
        if after.encodes > before.encodes {
            self.metrics.cache_miss();
        } else if after.disk_hits > before.disk_hits {
            self.metrics.cache_hit("disk");
        } else {
            self.metrics.cache_hit("memory");
        }
        self.lock().insert(key, Arc::clone(&prepared));
        Ok(prepared)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PreparedAudio>>> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
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
