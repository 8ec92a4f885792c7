//! Integrated loudness (ITU-R BS.1770-4 / EBU R128) of a 48 kHz stream, and sample peak.
//!
//! K-weighting (a high shelf and a high-pass, the libebur128 coefficients for any rate), mean
//! square over 400 ms blocks every 100 ms, an absolute gate at -70 LUFS and a relative gate
//! 10 LU under the mean of the blocks above it. Memory: one `f64` per 100 ms for the gating.

/// A biquad in direct form I.
#[derive(Debug, Clone, Copy)]
struct Biquad {
    b: [f64; 3],
    a: [f64; 3],
}

fn k_weighting(rate: f64) -> (Biquad, Biquad) {
    use std::f64::consts::PI;
    // Stage 1: high shelf (+4 dB above ~1.7 kHz)
    let f0 = 1_681.974_450_955_533;
    let g = 3.999_843_853_973_347;
    let q = 0.707_175_236_955_419_6;
    let k = (PI * f0 / rate).tan();
    let vh = 10f64.powf(g / 20.0);
    let vb = vh.powf(0.499_666_774_154_541_6);
    let a0 = 1.0 + k / q + k * k;
    let shelf = Biquad {
        b: [
            (vh + vb * k / q + k * k) / a0,
            2.0 * (k * k - vh) / a0,
            (vh - vb * k / q + k * k) / a0,
        ],
        a: [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0],
    };
    // Stage 2: high-pass (RLB, ~38 Hz)
    let f0 = 38.135_470_876_024_44;
    let q = 0.500_327_037_323_877_3;
    let k = (PI * f0 / rate).tan();
    let d = 1.0 + k / q + k * k;
    let hp = Biquad {
        b: [1.0, -2.0, 1.0],
        a: [1.0, 2.0 * (k * k - 1.0) / d, (1.0 - k / q + k * k) / d],
    };
    (shelf, hp)
}

/// What a loudness measurement found.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Loudness {
    /// Integrated loudness in LUFS; `None` when everything was below the absolute gate
    /// (silence, or shorter than one 400 ms block).
    pub integrated_lufs: Option<f64>,
    /// Largest absolute sample value (1.0 = full scale).
    pub sample_peak: f32,
}

impl Loudness {
    /// The sample peak in dBFS (`-inf` for digital silence).
    pub fn sample_peak_dbfs(&self) -> f64 {
        20.0 * f64::from(self.sample_peak).log10()
    }
}

/// A streaming BS.1770 meter.
#[derive(Debug, Clone)]
pub struct LoudnessMeter {
    channels: usize,
    shelf: Biquad,
    hp: Biquad,
    /// Per channel: x1 x2 y1 y2 of each stage.
    state: Vec<[f64; 8]>,
    step: usize,
    in_step: usize,
    acc: f64,
    /// Mean square (summed over channels) of each 100 ms step.
    steps: Vec<f64>,
    peak: f32,
}

impl LoudnessMeter {
    /// A meter for `channels` interleaved channels at `rate` Hz (all channels weighted 1.0,
    /// which is right for mono and for left/right).
    pub fn new(rate: u32, channels: usize) -> Self {
        let (shelf, hp) = k_weighting(f64::from(rate));
        LoudnessMeter {
            channels: channels.max(1),
            shelf,
            hp,
            state: vec![[0.0; 8]; channels.max(1)],
            step: (rate as usize / 10).max(1),
            in_step: 0,
            acc: 0.0,
            steps: Vec::new(),
            peak: 0.0,
        }
    }

    /// Feeds interleaved samples.
    pub fn push(&mut self, samples: &[f32]) {
        for frame in samples.chunks_exact(self.channels) {
            let mut sum = 0.0;
            for (c, &x) in frame.iter().enumerate() {
                self.peak = self.peak.max(x.abs());
                let s = &mut self.state[c];
                let x = f64::from(x);
                let b = &self.shelf.b;
                let a = &self.shelf.a;
                let y = b[0] * x + b[1] * s[0] + b[2] * s[1] - a[1] * s[2] - a[2] * s[3];
                s[1] = s[0];
                s[0] = x;
                s[3] = s[2];
                s[2] = y;
                let b = &self.hp.b;
                let a = &self.hp.a;
                let z = b[0] * y + b[1] * s[4] + b[2] * s[5] - a[1] * s[6] - a[2] * s[7];
                s[5] = s[4];
                s[4] = y;
                s[7] = s[6];
                s[6] = z;
                sum += z * z;
            }
            self.acc += sum;
            self.in_step += 1;
            if self.in_step == self.step {
                self.steps.push(self.acc / self.step as f64);
                self.acc = 0.0;
                self.in_step = 0;
            }
        }
    }

    /// The result so far.
    pub fn finish(&self) -> Loudness {
        let lufs = |ms: f64| -0.691 + 10.0 * ms.log10();
        let blocks: Vec<f64> = self
            .steps
            .windows(4)
            .map(|w| w.iter().sum::<f64>() / 4.0)
            .filter(|&ms| ms > 0.0 && lufs(ms) > -70.0)
            .collect();
        let integrated = if blocks.is_empty() {
            None
        } else {
            let mean = blocks.iter().sum::<f64>() / blocks.len() as f64;
            let gate = lufs(mean) - 10.0;
            let kept: Vec<f64> = blocks.into_iter().filter(|&ms| lufs(ms) > gate).collect();
            if kept.is_empty() {
                None
            } else {
                Some(lufs(kept.iter().sum::<f64>() / kept.len() as f64))
            }
        };
        Loudness {
            integrated_lufs: integrated,
            sample_peak: self.peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_1k_sine_is_about_minus_3() {
        // EBU Tech 3341: a 1 kHz sine at 0 dBFS in one channel reads -3.01 LUFS
        let mut m = LoudnessMeter::new(48000, 1);
        let s: Vec<f32> = (0..48000 * 5)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 48000.0).sin())
            .collect();
        m.push(&s);
        let l = m.finish().integrated_lufs.unwrap_or(f64::NAN);
        assert!((l + 3.01).abs() < 0.05, "{l}");
    }

    #[test]
    fn silence_has_no_loudness() {
        let mut m = LoudnessMeter::new(48000, 2);
        m.push(&vec![0.0; 48000 * 2]);
        assert_eq!(m.finish().integrated_lufs, None);
    }
}
