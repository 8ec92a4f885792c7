//! Bytes that arrive over time (a download), readable while they arrive: the encoder reads
//! the file as it comes in instead of waiting for the last byte.
//!
//! ```text
//!  download task ──push──► GrowingWriter ─┐
//!                                         ├─ shared buffer (declared length known up front)
//!  encoder thread ◄─read/seek─ GrowingReader ┘   a read past what has arrived waits
//! ```
//!
//! The declared length (the HTTP `Content-Length`) is what `SeekFrom::End` counts from.
//! A download that fails, ends short, or whose writer is dropped unfinished makes every
//! read past the bytes received an error, so a decoder sees a truncated file as an I/O
//! error, never as a clean end.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug)]
enum End {
    /// More may come.
    Open,
    /// Every declared byte arrived.
    Complete,
    /// The download failed: why.
    Failed(String),
}

#[derive(Debug)]
struct State {
    buf: Vec<u8>,
    end: End,
}

#[derive(Debug)]
struct Shared {
    len: u64,
    state: Mutex<State>,
    more: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A buffer of `len` bytes that will arrive over time: the writer half and the reader half.
pub fn growing(len: u64) -> (GrowingWriter, GrowingReader) {
    let shared = Arc::new(Shared {
        len,
        state: Mutex::new(State {
            buf: Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 30)),
            end: End::Open,
        }),
        more: Condvar::new(),
    });
    (
        GrowingWriter {
            shared: Arc::clone(&shared),
            done: false,
        },
        GrowingReader { shared, pos: 0 },
    )
}

/// The side that receives the bytes.
#[derive(Debug)]
pub struct GrowingWriter {
    shared: Arc<Shared>,
    done: bool,
}

impl GrowingWriter {
    /// Appends bytes that arrived. Bytes beyond the declared length fail the download.
    pub fn push(&mut self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        if !matches!(st.end, End::Open) {
            return;
        }
        if st.buf.len() as u64 + bytes.len() as u64 > self.shared.len {
            st.end = End::Failed(format!(
                "more than the {} bytes announced arrived",
                self.shared.len
            ));
            self.done = true;
        } else {
            st.buf.extend_from_slice(bytes);
        }
        drop(st);
        self.shared.more.notify_all();
    }

    /// The download ended: complete if every declared byte arrived, else failed (short).
    pub fn finish(mut self) {
        let mut st = self.shared.lock();
        if matches!(st.end, End::Open) {
            st.end = if st.buf.len() as u64 == self.shared.len {
                End::Complete
            } else {
                End::Failed(format!(
                    "the download ended after {} of {} bytes",
                    st.buf.len(),
                    self.shared.len
                ))
            };
        }
        self.done = true;
        drop(st);
        self.shared.more.notify_all();
    }

    /// The download failed.
    pub fn fail(mut self, why: impl Into<String>) {
        self.set_failed(why.into());
    }

    fn set_failed(&mut self, why: String) {
        let mut st = self.shared.lock();
        if matches!(st.end, End::Open) {
            st.end = End::Failed(why);
        }
        self.done = true;
        drop(st);
        self.shared.more.notify_all();
    }
}

impl Drop for GrowingWriter {
    fn drop(&mut self) {
        if !self.done {
            self.set_failed("the download was abandoned".into());
        }
    }
}

/// The side that reads, from any thread; a read past what has arrived waits for it.
#[derive(Debug)]
pub struct GrowingReader {
    shared: Arc<Shared>,
    pos: u64,
}

impl Read for GrowingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.shared.len {
            return Ok(0);
        }
        let mut st = self.shared.lock();
        loop {
            let have = st.buf.len() as u64;
            if self.pos < have {
                let from = usize::try_from(self.pos).unwrap_or(usize::MAX);
                let n = out.len().min(st.buf.len() - from);
                out[..n].copy_from_slice(&st.buf[from..from + n]);
                self.pos += n as u64;
                return Ok(n);
            }
            match &st.end {
                End::Open => {
                    st = self
                        .shared
                        .more
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                // complete means have == len, and pos < len was checked above
                End::Complete => return Ok(0),
                End::Failed(why) => return Err(io::Error::other(why.clone())),
            }
        }
    }
}

impl Seek for GrowingReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.shared.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        };
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_arrived_then_waits_for_more() {
        let (mut w, mut r) = growing(6);
        w.push(b"abc");
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        let t = std::thread::spawn(move || {
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            (rest, r)
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        w.push(b"de");
        w.push(b"f");
        w.finish();
        let (rest, mut r) = t.join().unwrap();
        assert_eq!(rest, b"def");
        // seekable, from the end of the declared length too
        assert_eq!(r.seek(SeekFrom::End(-2)).unwrap(), 4);
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"ef");
        assert_eq!(r.seek(SeekFrom::Start(0)).unwrap(), 0);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdef");
    }

    #[test]
    fn a_short_failed_or_abandoned_download_is_an_error_past_what_arrived() {
        let (mut w, mut r) = growing(6);
        w.push(b"abc");
        w.finish();
        let mut all = Vec::new();
        let err = r.read_to_end(&mut all).unwrap_err();
        assert!(err.to_string().contains("3 of 6"), "{err}");
        assert_eq!(all, b"abc");

        let (mut w, mut r) = growing(6);
        w.push(b"ab");
        w.fail("connection reset");
        let mut all = Vec::new();
        assert!(
            r.read_to_end(&mut all)
                .unwrap_err()
                .to_string()
                .contains("reset")
        );

        let (w, mut r) = growing(6);
        drop(w);
        assert!(r.read(&mut [0u8; 4]).is_err());

        let (mut w, mut r) = growing(2);
        w.push(b"abc");
        assert!(r.read(&mut [0u8; 4]).is_err());
    }

    #[test]
    fn reads_at_or_past_the_declared_end_return_nothing_without_waiting() {
        let (_w, mut r) = growing(4);
        r.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
        assert!(r.seek(SeekFrom::Current(-5)).is_err());
    }
}
