//! Audio assets by name: fetched from the API, cached on disk by ETag, prepared once, played
//! while they are being prepared.
//!
//! ```text
//!  name ──► GET /agent/audio/{name}  (Authorization: Bearer <agent key>,
//!                                     If-None-Match: "<sha256>" when we have a copy)
//!            200 ──► the body, encoded while it arrives (and written to
//!                    <cache>/assets/<name>.bin, then .etag, once complete)
//!            304 ──► the copy on disk
//!        ──► streams[name, etag] (memory) ──► audio::PreparedCache::get_or_stream
//!              complete: memory or <cache>/prepared/  ·  encoding: shared  ·  else: a new
//!              encoder thread (decode, resample, Opus), ~100× real time
//!        ──► returned once frame 0 is encoded: playback starts while the rest encodes
//! ```
//!
//! A fresh download is not waited for: its bytes go to the encoder as they arrive
//! ([`audio::growing`]), and the API's ETag (the content's SHA-256) keys the prepared cache,
//! so a 30-minute file starts playing once its first frames are encoded. A download that
//! breaks off is an I/O error in the encode: the session fails with it, and neither the
//! file nor the prepared audio is cached.
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
use tokio::io::AsyncWriteExt;

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
                let key = format!("{name}\n{}", etag.trim());
                let known = self.lock().get(&key).is_some_and(|s| s.error().is_none());
                if let (false, Some(hash), Some(len)) =
                    (known, etag_sha256(&etag), r.content_length())
                {
                    self.metrics.asset_fetch("downloaded");
                    let input = self.stream_to_disk(name, r, len, bin, etag_path, etag);
                    let cache = Arc::clone(&self.cache);
                    let settings = self.settings.clone();
                    let found = tokio::task::spawn_blocking(move || {
                        cache.get_or_stream_hashed(input, &hash, &settings)
                    })
                    .await;
                    return self.adopt(name, key, found).await;
                }
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
        self.adopt(name, key, found).await
    }

    /// Starts the download of a fresh asset in a task of its own and returns its bytes as
    /// an input that the encoder reads while they arrive. The body is also written to the
    /// disk cache, and the ETag beside it once the body is complete (a broken-off download
    /// leaves nothing behind).
    fn stream_to_disk(
        &self,
        name: &str,
        mut response: reqwest::Response,
        len: u64,
        bin: PathBuf,
        etag_path: PathBuf,
        etag: String,
    ) -> Input {
        let (mut writer, reader) = audio::growing(len);
        let name = name.to_owned();
        tokio::spawn(async move {
            let tmp = temp_path(&bin);
            let mut file = match tokio::fs::File::create(&tmp).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(asset = %name, error = %e, "cannot cache the asset on disk");
                    None
                }
            };
            let received = loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        writer.push(&chunk);
                        if let Some(f) = &mut file
                            && let Err(e) = f.write_all(&chunk).await
                        {
                            tracing::warn!(asset = %name, error = %e, "cannot cache the asset on disk");
                            file = None;
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let cached = match received {
                Ok(()) => {
                    writer.finish();
                    match file {
                        Some(mut f) => {
                            f.flush().await.is_ok()
                                && f.metadata().await.is_ok_and(|m| m.len() == len)
                        }
                        None => false,
                    }
                }
                Err(e) => {
                    tracing::warn!(asset = %name, error = %e, "the asset's download broke off");
                    writer.fail(format!("the download broke off: {e}"));
                    false
                }
            };
            let saved = async {
                if !cached {
                    return Err(std::io::Error::other("not complete"));
                }
                tokio::fs::rename(&tmp, &bin).await?;
                write_atomically(&etag_path, etag.as_bytes()).await
            };
            if saved.await.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        });
        Input::Reader {
            reader: Box::new(reader),
            start: 0,
            extension: None,
        }
    }

    /// Takes the result of a prepared-cache lookup: counts it, keeps the stream for the next
    /// session that asks, and waits for its first frame.
    async fn adopt(
        &self,
        name: &str,
        key: String,
        found: Result<audio::Result<(Arc<StreamingAudio>, Served)>, tokio::task::JoinError>,
    ) -> Result<Arc<StreamingAudio>, AssetError> {
        let (stream, served) = found
            .map_err(|e| AssetError::Unavailable {
                name: name.to_owned(),
                reason: e.to_string(),
            })?
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
    let tmp = temp_path(path);
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

/// A temporary name beside `path`, unique per call: two sessions may download the same
/// asset at once.
fn temp_path(path: &std::path::Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("tmp{}-{n}", std::process::id()))
}

/// The content's SHA-256 from the API's ETag (`"<64 hex digits>"`), if it has that form.
fn etag_sha256(etag: &str) -> Option<[u8; 32]> {
    let hex = etag.trim().trim_matches('"').as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
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

    /// A WAV file: `secs` seconds of a 440 Hz tone, 48 kHz mono 16-bit.
    fn wav(secs: u32) -> Vec<u8> {
        let n = 48_000 * secs;
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + n * 2).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        for x in [16u32, 0x0001_0001, 48_000, 96_000, 0x0010_0002] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(n * 2).to_le_bytes());
        for i in 0..n {
            let s = (f64::from(i) * 440.0 * std::f64::consts::TAU / 48_000.0).sin() * 8000.0;
            v.extend_from_slice(&(s as i16).to_le_bytes());
        }
        v
    }

    /// An "API" on loopback answering one `GET /agent/audio/...` with `file`'s headers
    /// (Content-Length, ETag = its SHA-256) and only its first `send` bytes, then closing.
    async fn one_answer(file: Vec<u8>, send: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = tcp.read(&mut req).await;
            let etag: String = audio::Input::from(file.clone())
                .content_sha256()
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\n\r\n",
                file.len()
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(&file[..send]).await.unwrap();
            // the rest never comes: the connection closes
        });
        url
    }

    #[tokio::test]
    async fn a_download_that_breaks_off_fails_the_audio_and_caches_nothing() {
        let tmp = test_support::TempDir::new("assets-broken");
        let dir = tmp.path().to_path_buf();
        let file = wav(20);
        let url = one_answer(file.clone(), file.len() / 2).await;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(1));
        let lib = super::AssetLibrary::new(&url, &protocol::Secret::new("k"), dir.clone(), metrics)
            .unwrap();
        // The first frames may well be played before the break is noticed: then the audio
        // fails later, with the download's error, instead of ending as if complete.
        match lib.get("tone").await {
            Err(e) => assert!(e.to_string().contains("broke off"), "{e}"),
            Ok(stream) => {
                let mut i = 0;
                let why = loop {
                    match stream.read(i) {
                        audio::FrameRead::Ready(_) => i += 1,
                        audio::FrameRead::Pending => {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        audio::FrameRead::End => panic!("a half file played as if whole"),
                        audio::FrameRead::Failed(why) => break why,
                    }
                };
                assert!(i < 50 * 20, "{i} frames");
                assert!(why.contains("broke off"), "{why}");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let left: Vec<_> = walk(&dir);
        assert!(left.is_empty(), "nothing is cached: {left:?}");
    }

    #[tokio::test]
    async fn a_whole_download_is_played_and_cached_with_its_etag() {
        let tmp = test_support::TempDir::new("assets-whole");
        let dir = tmp.path().to_path_buf();
        let file = wav(2);
        let url = one_answer(file.clone(), file.len()).await;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(1));
        let lib = super::AssetLibrary::new(&url, &protocol::Secret::new("k"), dir.clone(), metrics)
            .unwrap();
        let stream = lib.get("tone").await.unwrap();
        let mut i = 0;
        loop {
            match stream.read(i) {
                audio::FrameRead::Ready(_) => i += 1,
                audio::FrameRead::Pending => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                audio::FrameRead::End => break,
                audio::FrameRead::Failed(why) => panic!("{why}"),
            }
        }
        // 2 s of 20 ms frames, and one for the encoder's look-ahead
        assert!((100..=101).contains(&i), "{i} frames");
        for _ in 0..100 {
            if dir.join("assets/tone.etag").exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read(dir.join("assets/tone.bin")).unwrap(), file);
        assert!(dir.join("assets/tone.etag").exists());
    }

    /// Every file under `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn the_etag_gives_the_content_hash_only_in_its_own_form() {
        let hex = "00ff10".to_owned() + &"a".repeat(58);
        let h = super::etag_sha256(&format!("\"{hex}\"")).unwrap();
        assert_eq!(h[..3], [0x00, 0xff, 0x10]);
        assert_eq!(h[31], 0xaa);
        assert!(super::etag_sha256("\"abc\"").is_none());
        assert!(super::etag_sha256(&format!("\"{}\"", "g".repeat(64))).is_none());
        assert!(super::etag_sha256("").is_none());
    }
}
