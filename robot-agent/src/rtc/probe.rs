//! A minimal receiving peer for benchmarks: it joins as an app would (a recvonly audio
//! transceiver), counts the RTP packets it receives and notes when the first one came. It
//! lives here because this module is the only one that may import `webrtc`.
//!
//! Two kinds: [`ProbePeer::new`], a webrtc-rs PeerConnection (a task and a socket of its
//! own, what the benchmarks always used), and [`ProbePeer::new_light`], a connection of
//! the one-socket driver ([`super::MuxTransport`], one transport per probe so that each
//! probe has its own address as a real receiver does), which costs the benchmark process
//! far less and lets one machine hold more of them.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use ::rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use async_trait::async_trait;
use protocol::signaling::IceCandidate;
use tokio::sync::{Mutex, watch};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder, register_default_interceptors,
};

use super::{
    InboundAudio, Listener, ListenerSinks, ListenerState, MuxTransport, RtcError, RtcTransport,
};

/// What a probe saw.
#[derive(Debug, Default)]
pub struct ProbeStats {
    /// RTP packets received.
    pub packets: AtomicU64,
    /// When the first packet came.
    pub first_packet: std::sync::Mutex<Option<Instant>>,
}

/// A receive-only peer connection.
pub struct ProbePeer {
    inner: Inner,
    stats: Arc<ProbeStats>,
    connected: watch::Receiver<bool>,
}

enum Inner {
    Webrtc {
        pc: Arc<dyn PeerConnection>,
        gathered: watch::Receiver<bool>,
        remote_set: Mutex<bool>,
    },
    Light {
        listener: Arc<dyn Listener>,
        /// Keeps the probe's socket and tasks.
        _transport: MuxTransport,
    },
}

struct ProbeHandler {
    stats: Arc<ProbeStats>,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
}

#[async_trait]
impl PeerConnectionEventHandler for ProbeHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            let _ = self.connected.send(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(_) = ev
                    && stats.packets.fetch_add(1, Ordering::Relaxed) == 0
                    && let Ok(mut f) = stats.first_packet.lock()
                {
                    *f = Some(Instant::now());
                }
            }
        });
    }
}

fn err<E: std::fmt::Display>(e: E) -> RtcError {
    RtcError::Negotiation(e.to_string())
}

impl ProbePeer {
    /// A probe bound to `bind_ip`.
    pub async fn new(bind_ip: IpAddr) -> Result<Self, RtcError> {
        let mut media = MediaEngine::default();
        media
            .register_default_codecs()
            .map_err(|e| RtcError::Setup(e.to_string()))?;
        let registry = register_default_interceptors(Registry::new(), &mut media)
            .map_err(|e| RtcError::Setup(e.to_string()))?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(::rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let stats = Arc::new(ProbeStats::default());
        let (gathered_tx, gathered) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let pc = PeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(ProbeHandler {
                stats: Arc::clone(&stats),
                gathered: gathered_tx,
                connected: connected_tx,
            }))
            .with_udp_addrs(vec![std::net::SocketAddr::new(bind_ip, 0)])
            .build()
            .await
            .map_err(|e| RtcError::Setup(e.to_string()))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        pc.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| RtcError::Setup(e.to_string()))?;
        Ok(Self {
            inner: Inner::Webrtc {
                pc,
                gathered,
                remote_set: Mutex::new(false),
            },
            stats,
            connected,
        })
    }

    /// A probe on a one-socket transport of its own, bound to `bind_ip`. Its offers carry
    /// their candidates inline, like the webrtc probe's. It negotiates `sendrecv` (the
    /// driver's listener always has a track) but never sends.
    pub async fn new_light(bind_ip: IpAddr) -> Result<Self, RtcError> {
        let transport = MuxTransport::bind(bind_ip, 0)
            .await?
            .with_trickled_offer(false);
        let stats = Arc::new(ProbeStats::default());
        let (connected_tx, connected) = watch::channel(false);
        let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (audio, mut audio_rx) = tokio::sync::mpsc::unbounded_channel::<InboundAudio>();
        let listener = transport
            .listener("probe", 0, &[], ListenerSinks { events, audio })
            .await?;
        tokio::spawn(async move {
            while let Some(ev) = events_rx.recv().await {
                let _ = connected_tx.send(ev.state == ListenerState::Connected);
            }
        });
        let counted = Arc::clone(&stats);
        tokio::spawn(async move {
            while audio_rx.recv().await.is_some() {
                if counted.packets.fetch_add(1, Ordering::Relaxed) == 0
                    && let Ok(mut f) = counted.first_packet.lock()
                {
                    *f = Some(Instant::now());
                }
            }
        });
        Ok(Self {
            inner: Inner::Light {
                listener,
                _transport: transport,
            },
            stats,
            connected,
        })
    }

    async fn local_sdp(
        pc: &Arc<dyn PeerConnection>,
        gathered: &watch::Receiver<bool>,
    ) -> Result<String, RtcError> {
        let mut rx = gathered.clone();
        let _ = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|d| *d)).await;
        pc.local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| RtcError::Negotiation("no local description".into()))
    }

    /// Our offer (complete SDP).
    pub async fn offer(&self) -> Result<String, RtcError> {
        match &self.inner {
            Inner::Webrtc { pc, gathered, .. } => {
                let o = pc.create_offer(None).await.map_err(err)?;
                pc.set_local_description(o).await.map_err(err)?;
                Self::local_sdp(pc, gathered).await
            }
            Inner::Light { listener, .. } => listener.offer().await,
        }
    }

    /// Answers the robot's offer.
    pub async fn answer(&self, sdp: String) -> Result<String, RtcError> {
        match &self.inner {
            Inner::Webrtc {
                pc,
                gathered,
                remote_set,
            } => {
                pc.set_remote_description(RTCSessionDescription::offer(sdp).map_err(err)?)
                    .await
                    .map_err(err)?;
                *remote_set.lock().await = true;
                let a = pc.create_answer(None).await.map_err(err)?;
                pc.set_local_description(a).await.map_err(err)?;
                Self::local_sdp(pc, gathered).await
            }
            Inner::Light { listener, .. } => listener.answer(sdp).await,
        }
    }

    /// Takes the robot's answer.
    pub async fn set_answer(&self, sdp: String) -> Result<(), RtcError> {
        match &self.inner {
            Inner::Webrtc { pc, remote_set, .. } => {
                pc.set_remote_description(RTCSessionDescription::answer(sdp).map_err(err)?)
                    .await
                    .map_err(err)?;
                *remote_set.lock().await = true;
                Ok(())
            }
            // The offer was complete: nothing was held back to trickle.
            Inner::Light { listener, .. } => listener.set_answer(sdp).await.map(|_| ()),
        }
    }

    /// A trickled candidate (ignored before the remote description).
    pub async fn add_candidate(&self, c: IceCandidate) -> Result<(), RtcError> {
        match &self.inner {
            Inner::Webrtc { pc, remote_set, .. } => {
                if c.candidate.is_empty() || !*remote_set.lock().await {
                    return Ok(());
                }
                pc.add_ice_candidate(RTCIceCandidateInit {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index,
                    username_fragment: c.username_fragment,
                    url: None,
                })
                .await
                .map_err(err)
            }
            Inner::Light { listener, .. } => listener.add_candidate(c).await,
        }
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ProbeStats> {
        Arc::clone(&self.stats)
    }

    /// Closes it.
    pub async fn close(&self) {
        match &self.inner {
            Inner::Webrtc { pc, .. } => {
                let _ = pc.close().await;
            }
            Inner::Light { listener, .. } => listener.close().await,
        }
    }
}
