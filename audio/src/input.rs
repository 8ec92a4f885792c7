//! Where audio comes from: a path, bytes in memory, or any seekable reader.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{AudioError, Result};

/// A seekable byte source that can cross threads.
pub trait ReadSeek: Read + Seek + Send + Sync {}
impl<T: Read + Seek + Send + Sync + ?Sized> ReadSeek for T {}

/// An audio file to read. Every variant can be read more than once (the loudness pass of
/// normalisation and the content hash of the cache read it again), so readers must seek.
pub enum Input {
    /// A file on disk, opened each time it is read.
    Path(PathBuf),
    /// The whole file in memory. Cloning [`Bytes`] is cheap.
    Bytes(Bytes),
    /// Any seekable reader; reading starts from `start` every time.
    Reader {
        /// The reader.
        reader: Box<dyn ReadSeek>,
        /// Byte offset of the audio file inside the reader.
        start: u64,
        /// A file extension hint ("mp3"), if known.
        extension: Option<String>,
    },
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Input::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Input::Reader {
                start, extension, ..
            } => f
                .debug_struct("Reader")
                .field("start", start)
                .field("extension", extension)
                .finish_non_exhaustive(),
        }
    }
}

impl From<&Path> for Input {
    fn from(p: &Path) -> Self {
        Input::Path(p.to_path_buf())
    }
}
impl From<PathBuf> for Input {
    fn from(p: PathBuf) -> Self {
        Input::Path(p)
    }
}
impl From<&PathBuf> for Input {
    fn from(p: &PathBuf) -> Self {
        Input::Path(p.clone())
    }
}
impl From<Bytes> for Input {
    fn from(b: Bytes) -> Self {
        Input::Bytes(b)
    }
}
impl From<Vec<u8>> for Input {
    fn from(b: Vec<u8>) -> Self {
        Input::Bytes(Bytes::from(b))
    }
}
impl From<&[u8]> for Input {
    fn from(b: &[u8]) -> Self {
        Input::Bytes(Bytes::copy_from_slice(b))
    }
}

impl Input {
    /// Wraps a seekable reader positioned at the start of an audio file.
    pub fn reader(mut reader: impl Read + Seek + Send + Sync + 'static) -> Result<Self> {
        let start = reader
            .stream_position()
            .map_err(|e| AudioError::io("<reader>", e))?;
        Ok(Input::Reader {
            reader: Box::new(reader),
            start,
            extension: None,
        })
    }

    /// A name for messages.
    pub fn describe(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Bytes(b) => format!("<{} bytes in memory>", b.len()),
            Input::Reader { .. } => "<reader>".to_string(),
        }
    }

    fn extension(&self) -> Option<String> {
        match self {
            Input::Path(p) => p
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase()),
            Input::Bytes(_) => None,
            Input::Reader { extension, .. } => extension.clone(),
        }
    }

    /// Opens a fresh reading of the input, positioned at its start.
    pub(crate) fn open(&mut self) -> Result<Opened<'_>> {
        let extension = self.extension();
        let name = self.describe();
        match self {
            Input::Path(p) => {
                let file = File::open(&*p).map_err(|e| AudioError::io(p.clone(), e))?;
                let len = file
                    .metadata()
                    .map_err(|e| AudioError::io(p.clone(), e))?
                    .len();
                Ok(Opened {
                    source: Box::new(BufReader::with_capacity(64 * 1024, file)),
                    len: Some(len),
                    extension,
                    name,
                })
            }
            Input::Bytes(b) => Ok(Opened {
                len: Some(b.len() as u64),
                source: Box::new(io::Cursor::new(b.clone())),
                extension,
                name,
            }),
            Input::Reader { reader, start, .. } => {
                let end = reader
                    .seek(SeekFrom::End(0))
                    .map_err(|e| AudioError::io("<reader>", e))?;
                reader
                    .seek(SeekFrom::Start(*start))
                    .map_err(|e| AudioError::io("<reader>", e))?;
                Ok(Opened {
                    source: Box::new(Offset {
                        inner: &mut **reader,
                        start: *start,
                    }),
                    len: Some(end.saturating_sub(*start)),
                    extension,
                    name,
                })
            }
        }
    }

    /// SHA-256 of the file's bytes, streamed.
    pub fn content_sha256(&mut self) -> Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        if let Input::Bytes(b) = self {
            hasher.update(b);
            return Ok(hasher.finalize().into());
        }
        let mut opened = self.open()?;
        let name = opened.name.clone();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match opened.source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AudioError::io(name, e)),
            };
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().into())
    }
}

/// A reader over `inner` that presents `start` as offset 0.
struct Offset<'a> {
    inner: &'a mut dyn ReadSeek,
    start: u64,
}

impl Read for Offset<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Seek for Offset<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let p = match pos {
            SeekFrom::Start(n) => self
                .inner
                .seek(SeekFrom::Start(self.start.saturating_add(n)))?,
            other => self.inner.seek(other)?,
        };
        if p < self.start {
            self.inner.seek(SeekFrom::Start(self.start))?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the audio",
            ));
        }
        Ok(p - self.start)
    }
}

/// One reading of an [`Input`].
pub(crate) struct Opened<'a> {
    pub source: Box<dyn ReadSeek + 'a>,
    pub len: Option<u64>,
    pub extension: Option<String>,
    pub name: String,
}

impl Opened<'_> {
    /// Reads up to `n` bytes from the start and seeks back.
    pub fn peek(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut head = Vec::with_capacity(n);
        (&mut self.source)
            .take(n as u64)
            .read_to_end(&mut head)
            .map_err(|e| AudioError::io(self.name.clone(), e))?;
        self.source
            .seek(SeekFrom::Start(0))
            .map_err(|e| AudioError::io(self.name.clone(), e))?;
        Ok(head)
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// An Ogg stream whose first packet is an `OpusHead`.
    OggOpus,
    /// Something symphonia should probe.
    Other,
}

pub(crate) fn sniff(head: &[u8]) -> Sniffed {
    if head.len() >= 28 && &head[..4] == b"OggS" {
        let nseg = usize::from(head[26]);
        let data = 27 + nseg;
        if head.get(data..data + 8) == Some(b"OpusHead") {
            return Sniffed::OggOpus;
        }
    }
    Sniffed::Other
}

/// Names a container that we recognise but do not read, from its first bytes.
pub(crate) fn known_unsupported(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(&[0x1a, 0x45, 0xdf, 0xa3]) {
        Some("Matroska/WebM (.mka/.webm)")
    } else if starts(&[0x30, 0x26, 0xb2, 0x75]) {
        Some("ASF/WMA")
    } else if starts(b"FORM") {
        Some("AIFF")
    } else if starts(b"caff") {
        Some("Core Audio (.caf)")
    } else if starts(b"wvpk") {
        Some("WavPack")
    } else if starts(b"MAC ") {
        Some("Monkey's Audio")
    } else if starts(b"RF64") {
        Some("RF64 WAV")
    } else if starts(b"#!AMR") {
        Some("AMR")
    } else if starts(b".snd") {
        Some("Sun/NeXT .au")
    } else if starts(b"MThd") {
        Some("MIDI")
    } else if starts(b"OggS") {
        Some("Ogg stream of an unsupported codec")
    } else if starts(b"RIFF") {
        Some("RIFF file that is not WAV audio")
    } else {
        None
    }
}
