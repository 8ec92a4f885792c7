//! Just enough of ISO-BMFF (MP4/M4A) to read the audio track's edit list, which symphonia
//! 0.6 parses but ignores: its first edit says how many priming frames to drop and how long the
//! presentation really is.

use std::io::{Read, Seek, SeekFrom};

/// The largest `moov` box we read into memory; real audio files have far smaller ones.
const MAX_MOOV: u64 = 32 * 1024 * 1024;

/// The presentation window of the first audio track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edit {
    /// Frames to skip at the start (media time of the first non-empty edit), in media timescale.
    pub media_time: u64,
    /// Length of that edit in media timescale units (converted from the movie timescale).
    pub duration: u64,
    /// The media (mdhd) timescale, usually the sample rate.
    pub media_timescale: u32,
    /// True when the edit's duration field was zero or absent (use the stream's length).
    pub open_ended: bool,
}

/// Reads the edit list of the first sound track, if the file is MP4 and has one. Any parse
/// problem gives `None`: symphonia's own reading then decides whether the file is valid.
pub(crate) fn read_audio_edit<R: Read + Seek + ?Sized>(r: &mut R) -> Option<Edit> {
    let len = r.seek(SeekFrom::End(0)).ok()?;
    let mut pos = 0u64;
    let mut moov = None;
    while pos + 8 <= len {
        r.seek(SeekFrom::Start(pos)).ok()?;
        let mut hdr = [0u8; 16];
        r.read_exact(&mut hdr[..8]).ok()?;
        let mut size = u64::from(u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]));
        let kind = [hdr[4], hdr[5], hdr[6], hdr[7]];
        let mut hlen = 8;
        if size == 1 {
            r.read_exact(&mut hdr[8..16]).ok()?;
            size = u64::from_be_bytes(hdr[8..16].try_into().ok()?);
            hlen = 16;
        } else if size == 0 {
            size = len - pos;
        }
        if size < hlen {
            return None;
        }
        if &kind == b"moov" {
            let body = size - hlen;
            if body > MAX_MOOV || body > len - pos - hlen {
                return None;
            }
            let mut buf = vec![0u8; body as usize];
            r.read_exact(&mut buf).ok()?;
            moov = Some(buf);
            break;
        }
        pos = pos.checked_add(size)?;
    }
    let _ = r.seek(SeekFrom::Start(0));
    parse_moov(&moov?)
}

/// Iterates the child boxes of a box body: (type, body).
fn boxes(mut b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 8 {
            return None;
        }
        let mut size = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let kind = [b[4], b[5], b[6], b[7]];
        let mut hlen = 8usize;
        if size == 1 {
            size = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
            hlen = 16;
        } else if size == 0 {
            size = b.len() as u64;
        }
        let size = usize::try_from(size).ok()?;
        if size < hlen || size > b.len() {
            return None;
        }
        let body = &b[hlen..size];
        b = &b[size..];
        Some((kind, body))
    })
}

fn child<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(b).find(|(k, _)| k == kind).map(|(_, body)| body)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Timescale of an `mvhd` or `mdhd` box (same layout up to the timescale).
fn timescale(full_box: &[u8]) -> Option<u32> {
    let version = *full_box.first()?;
    if version == 1 {
        be32(full_box, 20)
    } else {
        be32(full_box, 12)
    }
}

fn parse_moov(moov: &[u8]) -> Option<Edit> {
    let movie_ts = timescale(child(moov, b"mvhd")?)?;
    for (kind, trak) in boxes(moov) {
        if &kind != b"trak" {
            continue;
        }
        let Some(mdia) = child(trak, b"mdia") else {
            continue;
        };
        let is_sound = child(mdia, b"hdlr").and_then(|h| h.get(8..12)) == Some(b"soun");
        if !is_sound {
            continue;
        }
        let media_ts = timescale(child(mdia, b"mdhd")?)?;
        let elst = child(child(trak, b"edts")?, b"elst")?;
        return parse_elst(elst, movie_ts, media_ts);
    }
    None
}

fn parse_elst(elst: &[u8], movie_ts: u32, media_ts: u32) -> Option<Edit> {
    if movie_ts == 0 || media_ts == 0 {
        return None;
    }
    let version = *elst.first()?;
    let count = be32(elst, 4)? as usize;
    let entry = if version == 1 { 20 } else { 12 };
    for i in 0..count.min(64) {
        let at = 8 + i * entry;
        let (seg, media_time) = if version == 1 {
            (be64(elst, at)?, be64(elst, at + 8)? as i64)
        } else {
            (
                u64::from(be32(elst, at)?),
                i64::from(be32(elst, at + 4)? as i32),
            )
        };
        if media_time < 0 {
            continue; // an empty edit (a delay before the track starts)
        }
        let duration = (u128::from(seg) * u128::from(media_ts) / u128::from(movie_ts))
            .min(u128::from(u64::MAX)) as u64;
        return Some(Edit {
            media_time: media_time as u64,
            duration,
            media_timescale: media_ts,
            open_ended: seg == 0,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn reads_edit_from_a_minimal_moov() {
        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        let mut mdhd = vec![0u8; 24];
        mdhd[12..16].copy_from_slice(&16000u32.to_be_bytes());
        let mut hdlr = vec![0u8; 24];
        hdlr[8..12].copy_from_slice(b"soun");
        let mut elst = vec![0u8; 8];
        elst[4..8].copy_from_slice(&1u32.to_be_bytes());
        elst.extend_from_slice(&4000u32.to_be_bytes());
        elst.extend_from_slice(&1024u32.to_be_bytes());
        elst.extend_from_slice(&0x0001_0000u32.to_be_bytes());
        let mdia = [bx(b"mdhd", &mdhd), bx(b"hdlr", &hdlr)].concat();
        let trak = [bx(b"edts", &bx(b"elst", &elst)), bx(b"mdia", &mdia)].concat();
        let moov = [bx(b"mvhd", &mvhd), bx(b"trak", &trak)].concat();
        let file = [bx(b"ftyp", b"M4A \0\0\0\0"), bx(b"moov", &moov)].concat();
        let e = read_audio_edit(&mut std::io::Cursor::new(file));
        assert_eq!(
            e,
            Some(Edit {
                media_time: 1024,
                duration: 64000,
                media_timescale: 16000,
                open_ended: false
            })
        );
    }

    #[test]
    fn garbage_gives_none() {
        assert_eq!(
            read_audio_edit(&mut std::io::Cursor::new(vec![0xffu8; 64])),
            None
        );
        assert_eq!(read_audio_edit(&mut std::io::Cursor::new(Vec::new())), None);
    }
}
