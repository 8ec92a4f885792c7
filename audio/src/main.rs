//! `audio`: the command line for testers. `audio probe`, `audio prepare`, `audio decode`.
//! All logic is in the library; this file parses flags, draws a progress bar and maps errors
//! to a non-zero exit status with the error's message.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use audio::wav::{WavFormat, WavWriter};
use audio::{Application, ChannelMode, Decoder, Input, Limits, Progress, Settings};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "audio",
    version,
    about = "Prepare audio for the robot: probe, encode to Ogg Opus, decode"
)]
struct Cli {
    /// Longest input accepted, in seconds.
    #[arg(
        long,
        global = true,
        env = "AUDIO_MAX_DURATION",
        default_value_t = 3600.0
    )]
    max_duration: f64,
    /// Show a progress bar even when stderr is not a terminal.
    #[arg(long, global = true)]
    progress: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print format, codec, rate, channels, true duration and loudness.
    Probe {
        /// The audio file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Encode to 48 kHz Opus in 20 ms frames and write an Ogg Opus file.
    Prepare {
        /// The audio file.
        file: PathBuf,
        /// The Ogg Opus file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Target bitrate, bits per second.
        #[arg(long, default_value_t = 32_000)]
        bitrate: u32,
        /// Keep two channels instead of downmixing to mono.
        #[arg(long)]
        stereo: bool,
        /// Normalise loudness to this many LUFS (EBU R128); -16 when given without a value.
        #[arg(long, num_args = 0..=1, default_missing_value = "-16", allow_negative_numbers = true)]
        normalize: Option<f32>,
        /// In-band FEC for this expected packet loss in percent (10 when given without a value).
        #[arg(long, num_args = 0..=1, default_missing_value = "10")]
        fec: Option<u8>,
        /// Discontinuous transmission (tiny packets in silence).
        #[arg(long)]
        dtx: bool,
        /// Tune for music instead of speech (OPUS_APPLICATION_AUDIO).
        #[arg(long)]
        music: bool,
        /// libopus complexity, 0..=10.
        #[arg(long, default_value_t = 10)]
        complexity: u8,
    },
    /// Decode any supported file (including Ogg Opus) to a WAV file at its own rate.
    Decode {
        /// The audio file.
        file: PathBuf,
        /// The WAV file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Write 32-bit float samples instead of 16-bit integers.
        #[arg(long)]
        float: bool,
    },
}

/// A one-line progress bar on stderr, drawn only for long inputs.
struct Bar {
    enabled: bool,
    started: Instant,
    drawn: bool,
}

impl Bar {
    fn new(force: bool) -> Self {
        Bar {
            enabled: force || std::io::stderr().is_terminal(),
            started: Instant::now(),
            drawn: false,
        }
    }

    fn update(&mut self, p: Progress) {
        let long = p.total.unwrap_or(p.done) >= Duration::from_secs(30);
        if !self.enabled || !long {
            return;
        }
        let pass = if p.passes > 1 {
            format!(" pass {}/{}", p.pass, p.passes)
        } else {
            String::new()
        };
        let line = match p.total {
            Some(t) if t.as_secs_f64() > 0.0 => {
                let f = (p.done.as_secs_f64() / t.as_secs_f64()).clamp(0.0, 1.0);
                let w = 30;
                let filled = (f * w as f64).round() as usize;
                format!(
                    "\r[{}{}] {:3.0}% {:.0}/{:.0} s{pass} ",
                    "#".repeat(filled),
                    ".".repeat(w - filled),
                    f * 100.0,
                    p.done.as_secs_f64(),
                    t.as_secs_f64()
                )
            }
            _ => format!("\r{:.0} s decoded{pass} ", p.done.as_secs_f64()),
        };
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(line.as_bytes());
        let _ = e.flush();
        self.drawn = true;
    }

    fn done(&mut self) {
        if self.drawn {
            eprintln!(
                "\rdone in {:.2} s{:40}",
                self.started.elapsed().as_secs_f64(),
                ""
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audio: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn limits(cli: &Cli) -> anyhow::Result<Limits> {
    if !(cli.max_duration.is_finite() && cli.max_duration > 0.0) {
        anyhow::bail!("--max-duration must be a positive number of seconds");
    }
    Ok(Limits {
        max_duration: Duration::from_secs_f64(cli.max_duration),
        ..Limits::default()
    })
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let f = File::create(path).map_err(|e| audio::AudioError::io(path, e))?;
    Ok(BufWriter::with_capacity(64 * 1024, f))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let limits = limits(&cli)?;
    let mut bar = Bar::new(cli.progress);
    match cli.command {
        Command::Probe { file, json } => {
            let info = audio::probe_with(file.as_path(), &limits)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let opt = |v: Option<f64>, unit: &str| {
                    v.map_or("n/a".to_string(), |v| format!("{v:.2} {unit}"))
                };
                println!("file:      {}", file.display());
                println!("format:    {}", info.format);
                println!("codec:     {}", info.codec);
                println!("rate:      {} Hz", info.sample_rate);
                println!("channels:  {}", info.channels);
                println!(
                    "duration:  {:.3} s ({} frames)",
                    info.duration_seconds, info.frames
                );
                println!("loudness:  {}", opt(info.loudness_lufs, "LUFS"));
                println!("peak:      {}", opt(info.sample_peak_dbfs, "dBFS"));
            }
        }
        Command::Prepare {
            file,
            output,
            bitrate,
            stereo,
            normalize,
            fec,
            dtx,
            music,
            complexity,
        } => {
            let settings = Settings {
                channels: if stereo {
                    ChannelMode::Stereo
                } else {
                    ChannelMode::Mono
                },
                bitrate,
                application: if music {
                    Application::Audio
                } else {
                    Application::Voip
                },
                complexity,
                fec_loss_percent: fec,
                dtx,
                normalize_lufs: normalize,
            };
            let prepared =
                audio::prepare_with(file.as_path(), &settings, &limits, &mut |p| bar.update(p))?;
            bar.done();
            let w = prepared.write_ogg(create(&output)?)?;
            w.into_inner()
                .map_err(|e| audio::AudioError::io(&output, e.into_error()))?
                .sync_all()
                .map_err(|e| audio::AudioError::io(&output, e))?;
            let norm = prepared
                .normalization()
                .map(|n| {
                    format!(
                        ", loudness {} → gain {:+.1} dB",
                        n.measured_lufs
                            .map_or("silent".into(), |l| format!("{l:.1} LUFS")),
                        n.gain_db
                    )
                })
                .unwrap_or_default();
            println!(
                "{}: {:.3} s, {} frames of 20 ms, {:.1} kb/s, {} ch, pre-skip {}{norm}",
                output.display(),
                prepared.duration().as_secs_f64(),
                prepared.frame_count(),
                prepared.average_bitrate() / 1000.0,
                prepared.channels(),
                prepared.pre_skip(),
            );
        }
        Command::Decode {
            file,
            output,
            float,
        } => {
            let mut input = Input::from(file.as_path());
            let mut dec = Decoder::open(&mut input, &limits)?;
            let info = dec.info().clone();
            let channels = u16::try_from(info.channels)?;
            let fmt = if float {
                WavFormat::Float32
            } else {
                WavFormat::Pcm16
            };
            let io_err = |e| audio::AudioError::io(&output, e);
            let mut wav = WavWriter::new(create(&output)?, info.sample_rate, channels, fmt)
                .map_err(io_err)?;
            let total = info
                .declared_frames
                .map(|f| Duration::from_secs_f64(f as f64 / f64::from(info.sample_rate.max(1))));
            let mut next = 0;
            while let Some(block) = dec.next_block()? {
                wav.write(block).map_err(io_err)?;
                let done = dec.frames_decoded();
                if done >= next {
                    next = done + u64::from(info.sample_rate) * 5;
                    bar.update(Progress {
                        pass: 1,
                        passes: 1,
                        done: Duration::from_secs_f64(
                            done as f64 / f64::from(info.sample_rate.max(1)),
                        ),
                        total,
                    });
                }
            }
            bar.done();
            let frames = dec.frames_decoded();
            wav.finish()
                .map_err(io_err)?
                .into_inner()
                .map_err(|e| io_err(e.into_error()))?;
            println!(
                "{}: {} frames, {} Hz, {} ch ({:.3} s)",
                output.display(),
                frames,
                info.sample_rate,
                info.channels,
                frames as f64 / f64::from(info.sample_rate.max(1))
            );
        }
    }
    Ok(())
}
