//! Counters and gauges of one agent process, rendered as Prometheus text on `/metrics`.
//!
//! Everything is an atomic: the per-frame path (`frame_sent`) costs a few relaxed adds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the lateness histogram, in seconds.
pub const LATENESS_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25,
];

/// A frame counts as late when it goes out more than this after its deadline.
pub const LATE: Duration = Duration::from_millis(5);

/// Session phases shown by `robot_sessions{state=..}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching audio, joining the channel, waiting for the first listener.
    Joining,
    /// Playing.
    Playing,
}

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Configured capacity.
    pub capacity: AtomicU64,
    /// Sessions held.
    pub load: AtomicI64,
    joining: AtomicI64,
    playing: AtomicI64,
    /// Connected listeners.
    pub listeners: AtomicI64,
    /// The agent link is registered.
    pub link_up: AtomicBool,
    /// Draining.
    pub draining: AtomicBool,
    frames: AtomicU64,
    frames_late: AtomicU64,
    frames_skipped: AtomicU64,
    listener_frames: AtomicU64,
    lateness_buckets: [AtomicU64; LATENESS_BUCKETS.len()],
    lateness_count: AtomicU64,
    lateness_sum_ns: AtomicU64,
    link_reconnects: AtomicU64,
    offers_accepted: AtomicU64,
    offers_rejected: AtomicU64,
    cache_misses: AtomicU64,
    frames_pending: AtomicU64,
    encodes_started: AtomicU64,
    encodes_joined: AtomicU64,
    /// Encodes running now (their frames stream into playback as they come).
    pub encodes_running: AtomicI64,
    labelled: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Metrics {
    /// A fresh set for an agent of `capacity`.
    pub fn new(capacity: u32) -> Self {
        let m = Self::default();
        m.capacity.store(u64::from(capacity), Relaxed);
        m
    }

    fn bump(&self, metric: &'static str, label: &str) {
        let mut l = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *l.entry((metric, label.to_owned())).or_default() += 1;
    }

    /// A session entered `phase` (from `from`, if any).
    pub fn phase(&self, from: Option<Phase>, to: Option<Phase>) {
        let gauge = |p: Phase| match p {
            Phase::Joining => &self.joining,
            Phase::Playing => &self.playing,
        };
        if let Some(p) = from {
            gauge(p).fetch_sub(1, Relaxed);
        }
        if let Some(p) = to {
            gauge(p).fetch_add(1, Relaxed);
        }
    }

    /// A session ended with `outcome` (`left`, `failed`, `handed_back`).
    pub fn session_ended(&self, outcome: &str) {
        self.bump("robot_sessions_ended_total", outcome);
    }

    /// One frame was handed out by a pacer `lateness` after its deadline, to `listeners`.
    pub fn frame_sent(&self, lateness: Duration, listeners: usize, skipped: u64) {
        self.frames.fetch_add(1, Relaxed);
        self.listener_frames
            .fetch_add(u64::try_from(listeners).unwrap_or(0), Relaxed);
        self.frames_skipped.fetch_add(skipped, Relaxed);
        if lateness > LATE {
            self.frames_late.fetch_add(1, Relaxed);
        }
        let secs = lateness.as_secs_f64();
        for (i, b) in LATENESS_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.lateness_buckets[i].fetch_add(1, Relaxed);
                break;
            }
        }
        self.lateness_count.fetch_add(1, Relaxed);
        self.lateness_sum_ns.fetch_add(
            u64::try_from(lateness.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// The link connected again after a loss.
    pub fn link_reconnected(&self) {
        self.link_reconnects.fetch_add(1, Relaxed);
    }

    /// An offer was accepted or rejected.
    pub fn offer(&self, accepted: bool) {
        if accepted {
            self.offers_accepted.fetch_add(1, Relaxed);
        } else {
            self.offers_rejected.fetch_add(1, Relaxed);
        }
    }

    /// An asset fetch ended with `result` (`downloaded`, `not_modified`, `stale`).
    pub fn asset_fetch(&self, result: &str) {
        self.bump("robot_asset_fetches_total", result);
    }

    /// Prepared audio came from the cache (`memory` or `disk`).
    pub fn cache_hit(&self, tier: &str) {
        self.bump("robot_audio_cache_hits_total", tier);
    }

    /// Prepared audio had to be encoded.
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    /// A pacer's deadline came before the encoder reached the frame (nothing was sent).
    pub fn frame_pending(&self) {
        self.frames_pending.fetch_add(1, Relaxed);
    }

    /// An asset's encode was started (`joined: false`), or a session joined one in progress
    /// (`joined: true`) instead of encoding again.
    pub fn encode(&self, joined: bool) {
        if joined {
            self.encodes_joined.fetch_add(1, Relaxed);
        } else {
            self.encodes_started.fetch_add(1, Relaxed);
        }
    }

    /// Frames handed out by all pacers.
    pub fn frames(&self) -> u64 {
        self.frames.load(Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let mut g = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            "robot_capacity",
            "Sessions this agent can hold.",
            "gauge",
            self.capacity.load(Relaxed).to_string(),
        );
        g(
            "robot_load",
            "Sessions held now.",
            "gauge",
            self.load.load(Relaxed).to_string(),
        );
        g(
            "robot_listeners",
            "Connected listeners across sessions.",
            "gauge",
            self.listeners.load(Relaxed).to_string(),
        );
        g(
            "robot_link_up",
            "1 when registered on the agent link.",
            "gauge",
            u8::from(self.link_up.load(Relaxed)).to_string(),
        );
        g(
            "robot_draining",
            "1 while draining.",
            "gauge",
            u8::from(self.draining.load(Relaxed)).to_string(),
        );
        g(
            "robot_frames_total",
            "Frames handed out by the pacers.",
            "counter",
            self.frames.load(Relaxed).to_string(),
        );
        g(
            "robot_listener_frames_total",
            "Frames written to listeners' tracks.",
            "counter",
            self.listener_frames.load(Relaxed).to_string(),
        );
        g(
            "robot_frames_late_total",
            "Frames handed out more than 5 ms after their deadline.",
            "counter",
            self.frames_late.load(Relaxed).to_string(),
        );
        g(
            "robot_frames_skipped_total",
            "Frames skipped because they were too late to send.",
            "counter",
            self.frames_skipped.load(Relaxed).to_string(),
        );
        g(
            "robot_link_reconnects_total",
            "Agent link reconnections.",
            "counter",
            self.link_reconnects.load(Relaxed).to_string(),
        );
        g(
            "robot_audio_cache_misses_total",
            "Assets that had to be encoded.",
            "counter",
            self.cache_misses.load(Relaxed).to_string(),
        );
        g(
            "robot_frames_pending_total",
            "Frame deadlines that came before the encoder reached the frame (nothing sent).",
            "counter",
            self.frames_pending.load(Relaxed).to_string(),
        );
        g(
            "robot_audio_encodes_total",
            "Encodes of audio assets started (a cold asset streams into playback as it encodes).",
            "counter",
            self.encodes_started.load(Relaxed).to_string(),
        );
        g(
            "robot_audio_encode_joins_total",
            "Sessions that shared an encode already in progress instead of starting one.",
            "counter",
            self.encodes_joined.load(Relaxed).to_string(),
        );
        g(
            "robot_audio_encodes_running",
            "Encodes of audio assets running now.",
            "gauge",
            self.encodes_running.load(Relaxed).to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP robot_sessions Sessions by state.\n# TYPE robot_sessions gauge"
        );
        let _ = writeln!(
            s,
            "robot_sessions{{state=\"joining\"}} {}",
            self.joining.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "robot_sessions{{state=\"playing\"}} {}",
            self.playing.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP robot_offers_total Offers by decision.\n# TYPE robot_offers_total counter"
        );
        let _ = writeln!(
            s,
            "robot_offers_total{{decision=\"accepted\"}} {}",
            self.offers_accepted.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "robot_offers_total{{decision=\"rejected\"}} {}",
            self.offers_rejected.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP robot_frame_lateness_seconds How late frames go out after their deadline.\n# TYPE robot_frame_lateness_seconds histogram"
        );
        let mut cum = 0;
        for (i, b) in LATENESS_BUCKETS.iter().enumerate() {
            cum += self.lateness_buckets[i].load(Relaxed);
            let _ = writeln!(s, "robot_frame_lateness_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.lateness_count.load(Relaxed);
        let _ = writeln!(
            s,
            "robot_frame_lateness_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "robot_frame_lateness_seconds_sum {}",
            self.lateness_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(s, "robot_frame_lateness_seconds_count {count}");
        let labelled = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut last = "";
        for ((metric, label), v) in &labelled {
            if *metric != last {
                let (help, key) = match *metric {
                    "robot_sessions_ended_total" => ("Sessions ended, by outcome.", "outcome"),
                    "robot_asset_fetches_total" => ("Asset fetches, by result.", "result"),
                    _ => ("Prepared audio served from cache, by tier.", "tier"),
                };
                let _ = writeln!(s, "# HELP {metric} {help}\n# TYPE {metric} counter");
                last = metric;
                let _ = writeln!(s, "{metric}{{{key}=\"{label}\"}} {v}");
            } else {
                let key = match *metric {
                    "robot_sessions_ended_total" => "outcome",
                    "robot_asset_fetches_total" => "result",
                    _ => "tier",
                };
                let _ = writeln!(s, "{metric}{{{key}=\"{label}\"}} {v}");
            }
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new(4);
        m.frame_sent(Duration::from_micros(300), 2, 0);
        m.frame_sent(Duration::from_millis(7), 2, 0);
        m.cache_hit("memory");
        m.encode(false);
        m.encode(true);
        m.encode(true);
        m.session_ended("left");
        m.phase(None, Some(Phase::Joining));
        m.phase(Some(Phase::Joining), Some(Phase::Playing));
        let t = m.render();
        assert!(t.contains("robot_capacity 4"), "{t}");
        assert!(t.contains("robot_frames_late_total 1"), "{t}");
        assert!(t.contains("robot_frame_lateness_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(t.contains("robot_frame_lateness_seconds_bucket{le=\"0.0075\"} 2"));
        assert!(t.contains("robot_frame_lateness_seconds_count 2"));
        assert!(t.contains("robot_audio_cache_hits_total{tier=\"memory\"} 1"));
        assert!(t.contains("robot_sessions{state=\"playing\"} 1"));
        assert!(t.contains("robot_sessions{state=\"joining\"} 0"));
        assert!(t.contains("robot_listener_frames_total 4"));
        assert!(t.contains("robot_audio_encodes_total 1"), "{t}");
        assert!(t.contains("robot_audio_encode_joins_total 2"), "{t}");
    }
}
