//! Channel downmix: any layout of 1 to 8 channels to mono or stereo.
//!
//! Stereo from surround follows ITU-R BS.775: `Lo = L + 0.707·C + 0.707·Ls`,
//! `Ro = R + 0.707·C + 0.707·Rs`, rear centre at 0.5 to each side, LFE dropped. Mono is the mean
//! of that stereo pair, so a plain stereo file becomes `(L + R) / 2`, as `sox -c 1` does.

use crate::settings::ChannelMode;

/// What a source channel is, as far as the downmix cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// Front left (and left-of-centre, wide left, top front left).
    Left,
    /// Front right (and its relatives).
    Right,
    /// Front centre, or the only channel of a mono file.
    Center,
    /// Low-frequency effects: dropped.
    Lfe,
    /// Side or rear left.
    LeftSurround,
    /// Side or rear right.
    RightSurround,
    /// Rear centre.
    RearCenter,
    /// A channel with no known position: mixed like a centre channel.
    Unknown,
}

const M3DB: f32 = std::f32::consts::FRAC_1_SQRT_2;

impl Speaker {
    /// Gains of this channel into (left, right).
    fn stereo_gains(self) -> (f32, f32) {
        match self {
            Speaker::Left => (1.0, 0.0),
            Speaker::Right => (0.0, 1.0),
            Speaker::Center | Speaker::Unknown => (M3DB, M3DB),
            Speaker::Lfe => (0.0, 0.0),
            Speaker::LeftSurround => (M3DB, 0.0),
            Speaker::RightSurround => (0.0, M3DB),
            Speaker::RearCenter => (0.5, 0.5),
        }
    }
}

/// The default layout for `n` channels without position information (WAV order).
pub fn default_layout(n: usize) -> Vec<Speaker> {
    use Speaker::*;
    match n {
        1 => vec![Center],
        2 => vec![Left, Right],
        3 => vec![Left, Right, Center],
        4 => vec![Left, Right, LeftSurround, RightSurround],
        5 => vec![Left, Right, Center, LeftSurround, RightSurround],
        6 => vec![Left, Right, Center, Lfe, LeftSurround, RightSurround],
        7 => vec![
            Left,
            Right,
            Center,
            Lfe,
            RearCenter,
            LeftSurround,
            RightSurround,
        ],
        8 => vec![
            Left,
            Right,
            Center,
            Lfe,
            LeftSurround,
            RightSurround,
            LeftSurround,
            RightSurround,
        ],
        _ => vec![Unknown; n],
    }
}

/// The Vorbis/Opus channel order (RFC 7845 §5.1.1.2) for `n` channels.
pub fn vorbis_layout(n: usize) -> Vec<Speaker> {
    use Speaker::*;
    match n {
        1 => vec![Center],
        2 => vec![Left, Right],
        3 => vec![Left, Center, Right],
        4 => vec![Left, Right, LeftSurround, RightSurround],
        5 => vec![Left, Center, Right, LeftSurround, RightSurround],
        6 => vec![Left, Center, Right, LeftSurround, RightSurround, Lfe],
        7 => vec![
            Left,
            Center,
            Right,
            LeftSurround,
            RightSurround,
            RearCenter,
            Lfe,
        ],
        8 => vec![
            Left,
            Center,
            Right,
            LeftSurround,
            RightSurround,
            LeftSurround,
            RightSurround,
            Lfe,
        ],
        _ => vec![Unknown; n],
    }
}

/// A fixed downmix matrix from a source layout to mono or stereo.
#[derive(Debug, Clone)]
pub struct Downmix {
    in_ch: usize,
    out_ch: usize,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Same layout in and out.
    Copy,
    /// Mono to stereo.
    Duplicate,
    /// Stereo to mono.
    Average,
    /// Any other: `gains[o * in_ch + i]`.
    Matrix(Vec<f32>),
}

impl Downmix {
    /// Builds the downmix from `layout` to `mode`.
    pub fn new(layout: &[Speaker], mode: ChannelMode) -> Self {
        let in_ch = layout.len().max(1);
        let out_ch = mode.count();
        let plain_stereo = in_ch == 2 && layout.iter().all(|s| matches!(s, Speaker::Unknown))
            || layout == [Speaker::Left, Speaker::Right];
        let kind = match (in_ch, out_ch) {
            (1, 1) => Kind::Copy,
            (1, 2) => Kind::Duplicate,
            (2, 2) if plain_stereo => Kind::Copy,
            (2, 1) if plain_stereo => Kind::Average,
            _ => {
                let mut lr: Vec<(f32, f32)> = layout.iter().map(|s| s.stereo_gains()).collect();
                if lr.iter().all(|&(l, r)| l == 0.0 && r == 0.0) {
                    // only LFE channels: keep them rather than produce silence
                    lr = vec![(M3DB, M3DB); in_ch];
                }
                let mut gains = vec![0.0f32; out_ch * in_ch];
                for (i, &(l, r)) in lr.iter().enumerate() {
                    if out_ch == 1 {
                        gains[i] = 0.5 * (l + r);
                    } else {
                        gains[i] = l;
                        gains[in_ch + i] = r;
                    }
                }
                Kind::Matrix(gains)
            }
        };
        Downmix {
            in_ch,
            out_ch,
            kind,
        }
    }

    /// Source channel count.
    pub fn in_channels(&self) -> usize {
        self.in_ch
    }

    /// Output channel count.
    pub fn out_channels(&self) -> usize {
        self.out_ch
    }

    /// Mixes interleaved `input` (whole frames) into `out`, which is cleared first. `out` keeps
    /// its capacity between calls, so a steady stream does not allocate.
    pub fn apply(&self, input: &[f32], out: &mut Vec<f32>) {
        out.clear();
        let frames = input.len() / self.in_ch;
        match &self.kind {
            Kind::Copy => out.extend_from_slice(&input[..frames * self.in_ch]),
            Kind::Duplicate => {
                out.extend(input.iter().flat_map(|&s| [s, s]));
            }
            Kind::Average => {
                out.extend(input.chunks_exact(2).map(|f| 0.5 * (f[0] + f[1])));
            }
            Kind::Matrix(g) => {
                for f in input.chunks_exact(self.in_ch) {
                    for o in 0..self.out_ch {
                        let row = &g[o * self.in_ch..(o + 1) * self.in_ch];
                        out.push(row.iter().zip(f).map(|(w, s)| w * s).sum());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_to_mono_is_the_mean() {
        let d = Downmix::new(&default_layout(2), ChannelMode::Mono);
        let mut out = Vec::new();
        d.apply(&[1.0, 0.5, -1.0, 0.0], &mut out);
        assert_eq!(out, vec![0.75, -0.5]);
    }

    #[test]
    fn five_one_drops_lfe_and_weights_centre() {
        let layout = default_layout(6);
        let d = Downmix::new(&layout, ChannelMode::Stereo);
        let mut out = Vec::new();
        // only LFE
        d.apply(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0], &mut out);
        assert_eq!(out, vec![0.0, 0.0]);
        // only centre
        d.apply(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], &mut out);
        assert!((out[0] - M3DB).abs() < 1e-6 && (out[1] - M3DB).abs() < 1e-6);
        // left surround goes left only
        d.apply(&[0.0, 0.0, 0.0, 0.0, 1.0, 0.0], &mut out);
        assert!((out[0] - M3DB).abs() < 1e-6 && out[1] == 0.0);
        let m = Downmix::new(&layout, ChannelMode::Mono);
        m.apply(&[1.0, 1.0, 0.0, 1.0, 0.0, 0.0], &mut out);
        assert!((out[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn mono_to_stereo_duplicates() {
        let d = Downmix::new(&[Speaker::Center], ChannelMode::Stereo);
        let mut out = Vec::new();
        d.apply(&[0.25, -0.5], &mut out);
        assert_eq!(out, vec![0.25, 0.25, -0.5, -0.5]);
    }
}
