//! One participant's recording on disk: the received Opus packets passed through into an
//! Ogg Opus file (DESIGN.md decision 12), and its upload.
//!
//! ```text
//!   Write {silence_before, packet, samples} ─► OggOpusWriter ─► <dir>/rec-<session>-<part>-<n>.opus
//!        (silence: the 3-byte Opus packet of 20 ms of silence, once per missing frame)
//!   Upload ─► PUT /agent/recordings/{session}/{uid}?part=P&final=false   the whole pages so far
//!   Finish ─► end-of-stream page ─► PUT ...?part=P&final=F ─► the file is removed
//!             (F false on a hand-back: the next agent records on into part P + 1)
//! ```
//!
//! Memory per recording is the Ogg page being filled (at most one second of packets) and
//! the writer's state: the file holds the rest, so a long message costs disk, not memory.
//! Uploads re-send the whole file so far (the API keeps the longest; docs/recordings.md):
//! idempotent, and a crash loses at most the audio since the last one.
//!
//! The header says pre-skip 0 and 48 kHz: the packets come from another encoder, whose
//! lookahead the robot does not know (a few ms of its start are played).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use audio::ogg_opus::{OggOpusWriter, OpusHead, OpusTags};

use crate::error::AgentError;

/// 20 ms of silence as an Opus packet (CELT, mono, one frame: what WebRTC stacks send).
pub const SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

/// Where finished recordings go.
#[async_trait]
pub trait RecordingSink: Send + Sync + 'static {
    /// Uploads recording `part` of `uid` in session `session_id`: the whole file so far
    /// (`last`: the complete file, with its end-of-stream page).
    async fn upload(
        &self,
        session_id: i64,
        uid: &str,
        part: u32,
        last: bool,
        body: Vec<u8>,
    ) -> Result<(), AgentError>;
}

/// A file writer that counts what it was handed (whole Ogg pages).
struct Counted {
    file: File,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// One participant's recording being written.
pub struct Recorder {
    path: PathBuf,
    writer: OggOpusWriter<Counted>,
    samples: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("samples", &self.samples)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A new file in `dir` (made if missing).
    pub fn create(dir: &Path, session_id: i64, part: u32) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "rec-{session_id}-{part}-{:016x}.opus",
            rand::random::<u64>()
        ));
        let file = File::create(&path)?;
        let head = OpusHead::new(1, 0, 48_000);
        let tags = OpusTags {
            vendor: "dapi robot-agent".into(),
            comments: vec![],
        };
        let writer = OggOpusWriter::new(
            Counted { file, bytes: 0 },
            &head,
            &tags,
            audio::ogg_opus::random_serial(),
        )?;
        Ok(Self {
            path,
            writer,
            samples: 0,
        })
    }

    /// Appends `silence_before` 20 ms of silence, then `packet`.
    pub fn write(&mut self, silence_before: u32, packet: &[u8], samples: u32) -> io::Result<()> {
        for _ in 0..silence_before {
            self.writer.write_packet_samples(&SILENCE, 960)?;
            self.samples += 960;
        }
        self.writer
            .write_packet_samples(packet, u64::from(samples))?;
        self.samples += u64::from(samples);
        Ok(())
    }

    /// Audio written so far, ms.
    pub fn duration_ms(&self) -> u64 {
        self.samples / 48
    }

    /// The file and how many of its bytes are whole pages now.
    pub fn so_far(&self) -> (PathBuf, u64) {
        (self.path.clone(), self.writer.get_ref().bytes)
    }

    /// Writes the end-of-stream page; the file and its length.
    pub fn finish(self) -> io::Result<(PathBuf, u64)> {
        let w = self.writer.finish(self.samples)?;
        Ok((self.path, w.bytes))
    }
}

/// One upload of a recording file.
#[derive(Debug, Clone)]
pub struct UploadJob {
    /// The file.
    pub path: PathBuf,
    /// Its first `len` bytes are whole pages.
    pub len: u64,
    /// Session id.
    pub session_id: i64,
    /// Whose recording.
    pub uid: Arc<str>,
    /// Which part.
    pub part: u32,
    /// The complete recording (`final=true`).
    pub last: bool,
    /// The file is finished: remove it once uploaded.
    pub remove: bool,
}

/// Reads the first `len` bytes of the file and uploads them; removes a finished file
/// afterwards. Failures are logged: the API keeps what it had.
pub async fn upload(sink: Arc<dyn RecordingSink>, job: UploadJob) {
    let body = match tokio::fs::read(&job.path).await {
        Ok(mut b) => {
            b.truncate(usize::try_from(job.len).unwrap_or(usize::MAX));
            b
        }
        Err(e) => {
            tracing::debug!(error = %e, "recording file gone before its upload");
            return;
        }
    };
    let (uid, part, last, bytes) = (&job.uid, job.part, job.last, body.len());
    match sink.upload(job.session_id, uid, part, last, body).await {
        Ok(()) => tracing::info!(uid = %uid, part, bytes, last, "recording uploaded"),
        Err(e) => tracing::warn!(uid = %uid, part, last, error = %e, "recording upload failed"),
    }
    if job.remove
        && let Err(e) = tokio::fs::remove_file(&job.path).await
    {
        tracing::debug!(error = %e, "removing a recording file");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_reads_back_with_its_gaps_as_silence() {
        let dir = std::env::temp_dir().join(format!("rec-test-{}", std::process::id()));
        let mut r = Recorder::create(&dir, 1, 0).unwrap();
        let pkt = [0xF8u8, 1, 2, 3, 4];
        for i in 0..120 {
            r.write(if i == 60 { 10 } else { 0 }, &pkt, 960).unwrap();
        }
        let (_, partial) = r.so_far();
        assert!(partial > 0, "whole pages are on disk before the end");
        let (path, len) = r.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        let mut rd = audio::ogg_opus::OggOpusReader::new(std::io::Cursor::new(bytes)).unwrap();
        let mut packets = 0;
        let mut silent = 0;
        while let Some(p) = rd.next_packet().unwrap() {
            packets += 1;
            if p.data == SILENCE {
                silent += 1;
            }
        }
        assert_eq!((packets, silent), (130, 10));
        // a partial file (whole pages so far) also reads
        let part = std::fs::read(&path).unwrap()[..usize::try_from(partial).unwrap()].to_vec();
        let mut rd = audio::ogg_opus::OggOpusReader::new(std::io::Cursor::new(part)).unwrap();
        let mut n = 0;
        while let Ok(Some(_)) = rd.next_packet() {
            n += 1;
        }
        assert!(n >= 50, "{n}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
