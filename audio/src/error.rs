//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading, preparing or writing audio.
///
/// The variants say what the caller must do about it:
///
/// | variant | meaning | what to do |
/// |---|---|---|
/// | [`Unsupported`](AudioError::Unsupported) | a container, codec or layout we do not read | convert the file (WAV, FLAC, MP3, Ogg Vorbis/Opus, AAC-LC) |
/// | [`Corrupt`](AudioError::Corrupt) | the bytes are not a valid file of their kind (random data, truncated) | re-upload or re-export the file |
/// | [`LimitExceeded`](AudioError::LimitExceeded) | valid, but longer, wider or faster than the [`Limits`](crate::Limits) allow | shorten or downmix it, or raise the limit |
/// | [`Empty`](AudioError::Empty) | no audio samples at all | supply a file with sound in it |
/// | [`InvalidSettings`](AudioError::InvalidSettings) | the caller asked for something impossible | fix the [`Settings`](crate::Settings) |
/// | [`Io`](AudioError::Io) | the file system failed | check the path, permissions and disk |
/// | [`Codec`](AudioError::Codec) | libopus refused a call that should work (a bug) | report it |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The input is in a format, codec or channel layout that this crate does not decode.
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    /// The input is malformed: not audio at all, damaged, or cut short.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// The input is well formed but exceeds a configured limit (duration, channels, sample rate).
    #[error("audio limit exceeded: {0}")]
    LimitExceeded(String),
    /// The input holds no audio samples (an empty file, or a header with no samples after it).
    #[error("no audio: {0}")]
    Empty(String),
    /// The requested settings cannot be honoured (for example a bitrate out of range).
    #[error("invalid audio settings: {0}")]
    InvalidSettings(String),
    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file (or a description of the stream) that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The Opus codec refused an operation that should have succeeded.
    #[error("opus codec error: {0}")]
    Codec(String),
}

impl AudioError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        AudioError::Io {
            path: path.into(),
            source,
        }
    }

    /// A copy of this error (an I/O error keeps its kind and message), for handing the same
    /// failure to every reader of a stream.
    pub fn duplicate(&self) -> Self {
        match self {
            AudioError::Unsupported(m) => AudioError::Unsupported(m.clone()),
            AudioError::Corrupt(m) => AudioError::Corrupt(m.clone()),
            AudioError::LimitExceeded(m) => AudioError::LimitExceeded(m.clone()),
            AudioError::Empty(m) => AudioError::Empty(m.clone()),
            AudioError::InvalidSettings(m) => AudioError::InvalidSettings(m.clone()),
            AudioError::Io { path, source } => AudioError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            AudioError::Codec(m) => AudioError::Codec(m.clone()),
        }
    }

    /// A short stable code for this kind of error, for logs and JSON (`"unsupported"`, `"corrupt"`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::Unsupported(_) => "unsupported",
            AudioError::Corrupt(_) => "corrupt",
            AudioError::LimitExceeded(_) => "limit_exceeded",
            AudioError::Empty(_) => "empty",
            AudioError::InvalidSettings(_) => "invalid_settings",
            AudioError::Io { .. } => "io",
            AudioError::Codec(_) => "codec",
        }
    }
}

impl From<opus::Error> for AudioError {
    fn from(e: opus::Error) -> Self {
        AudioError::Codec(e.to_string())
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = AudioError> = std::result::Result<T, E>;
