//! [`RtcTransport`] on webrtc =0.21.1 (with rtc =0.21.1). See `../shared/notes/webrtc.md`
//! for why each setting is what it is.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use ::rtc::ice::mdns::MulticastDnsMode;
use ::rtc::media::Sample;
use ::rtc::media_stream::MediaStreamTrack;
use ::rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use ::rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use async_trait::async_trait;
use bytes::Bytes;
use protocol::signaling::{IceCandidate, IceServer};
use tokio::sync::{Mutex, mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use super::{
    InboundAudio, Listener, ListenerEvent, ListenerSinks, ListenerState, RtcError, RtcTransport,
};
use crate::pacer::FRAME;
use webrtc::media_stream::track_remote::TrackRemoteEvent;

/// The payload type we register Opus under; the negotiated one may differ (aiortc: 96).
pub(super) const OPUS_PT: u8 = 111;
/// ICE connectivity check interval (the crate's default is 200 ms).
pub(super) const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Binding requests per candidate pair: 28 × 50 ms keeps the default 1.4 s.
pub(super) const ICE_MAX_BINDING_REQUESTS: u16 = 28;
/// No payload type negotiated yet.
const NO_PT: u16 = u16::MAX;
/// How long to wait for ICE gathering before sending what we have.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// One PeerConnection per listener, bound to `bind_ip` port 0.
#[derive(Debug, Clone)]
pub struct WebrtcTransport {
    bind_ip: IpAddr,
    /// Our offers' candidates trickle after the answer (see `WebrtcListener::offer`).
    trickled_offer: bool,
}

impl WebrtcTransport {
    /// A transport whose UDP sockets bind `bind_ip` (`127.0.0.1` on loopback; `0.0.0.0`:
    /// every non-loopback interface).
    pub fn new(bind_ip: IpAddr) -> Self {
        Self {
            bind_ip,
            trickled_offer: true,
        }
    }

    /// Whether our offers leave their candidates out, to trickle them once the answer is
    /// set (default), or carry them inside the SDP.
    pub fn with_trickled_offer(mut self, trickled: bool) -> Self {
        self.trickled_offer = trickled;
        self
    }
}

pub(super) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        // opus/48000/2 in SDP even for mono: what every peer expects (notes, 7.9).
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// The robot's outgoing audio track, one SSRC.
pub(super) fn robot_track(ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "robot".to_owned(),
        format!("robot-audio-{ssrc}"),
        "robot".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    )
}

pub(super) fn setup<E: std::fmt::Display>(e: E) -> RtcError {
    RtcError::Setup(e.to_string())
}

pub(super) fn negotiation<E: std::fmt::Display>(e: E) -> RtcError {
    RtcError::Negotiation(e.to_string())
}

/// A remote candidate from signaling, for the connection; `None` for an empty one (the end
/// of one section's candidates), which needs nothing done (both transports).
pub(super) fn candidate_init(c: IceCandidate) -> Option<RTCIceCandidateInit> {
    if c.candidate.is_empty() {
        return None;
    }
    Some(RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
        url: None,
    })
}

/// A media engine that knows Opus only, at [`OPUS_PT`] (both transports).
pub(super) fn opus_media_engine() -> Result<MediaEngine, RtcError> {
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .map_err(setup)?;
    Ok(media)
}

#[async_trait]
impl RtcTransport for WebrtcTransport {
    async fn listener(
        &self,
        peer: &str,
        generation: u64,
        ice_servers: &[IceServer],
        sinks: ListenerSinks,
    ) -> Result<Arc<dyn Listener>, RtcError> {
        let mut media = opus_media_engine()?;
        let registry = register_default_interceptors(Registry::new(), &mut media).map_err(setup)?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            // Connectivity checks every 50 ms instead of 200 (same 1.4 s per candidate):
            // when the robot offers it is the controlling agent and nominates on a check
            // tick, which otherwise costs up to 200 ms before the first frame.
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(
                ice_servers
                    .iter()
                    .map(|s| RTCIceServer {
                        urls: s.urls.clone(),
                        username: s.username.clone().unwrap_or_default(),
                        credential: s.credential.clone().unwrap_or_default(),
                    })
                    .collect(),
            )
            .build();
        let (gathered_tx, gathered_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            peer: peer.to_owned(),
            uid: Arc::from(peer),
            generation,
            events: sinks.events,
            audio: sinks.audio,
            gathered: gathered_tx,
            closed: AtomicBool::new(false),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(handler.clone() as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![std::net::SocketAddr::new(self.bind_ip, 0)])
            .build()
            .await
            .map_err(setup)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc: u32 = rand::random();
        let track = Arc::new(
            TrackLocalStaticSample::new(Instant::now(), robot_track(ssrc)).map_err(setup)?,
        );
        let sender = match pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = pc.close().await;
                return Err(setup(e));
            }
        };
        Ok(Arc::new(WebrtcListener {
            pc,
            track,
            sender,
            ssrc,
            payload_type: AtomicU16::new(NO_PT),
            pending: Mutex::new(Some(Vec::new())),
            held: Mutex::new(Vec::new()),
            trickled_offer: self.trickled_offer,
            gathered: gathered_rx,
            handler,
        }))
    }
}

/// Event handler: forwards state changes, never blocks the driver.
struct Handler {
    peer: String,
    uid: Arc<str>,
    generation: u64,
    events: mpsc::UnboundedSender<ListenerEvent>,
    audio: mpsc::UnboundedSender<InboundAudio>,
    gathered: watch::Sender<bool>,
    closed: AtomicBool,
}

impl Handler {
    fn emit(&self, state: ListenerState) {
        if state == ListenerState::Closed && self.closed.swap(true, Ordering::SeqCst) {
            return; // report Closed once
        }
        let _ = self.events.send(ListenerEvent {
            peer: self.peer.clone(),
            generation: self.generation,
            state,
        });
    }
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => self.emit(ListenerState::Connected),
            // A peer that goes away silently shows up as disconnected after the consent
            // checks fail: close on that (notes, 7.11).
            RTCPeerConnectionState::Disconnected
            | RTCPeerConnectionState::Failed
            | RTCPeerConnectionState::Closed => self.emit(ListenerState::Closed),
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // The listener's microphone: every RTP packet goes to the session as it came (the
        // payload is a `Bytes` view, nothing is copied or decoded here).
        let audio = self.audio.clone();
        let peer = Arc::clone(&self.uid);
        let generation = self.generation;
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    if p.payload.is_empty() {
                        continue;
                    }
                    let sent = audio.send(InboundAudio {
                        peer: Arc::clone(&peer),
                        generation,
                        sequence: p.header.sequence_number,
                        timestamp: p.header.timestamp,
                        payload: p.payload,
                    });
                    if sent.is_err() {
                        // The session is over: drain the rest so nothing queues up.
                        while track.poll().await.is_some() {}
                        return;
                    }
                }
            }
        });
    }
}

struct WebrtcListener {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// The negotiated payload type, or [`NO_PT`] before negotiation.
    payload_type: AtomicU16,
    /// Remote candidates that came before the remote description (None once it is set).
    pending: Mutex<Option<Vec<RTCIceCandidateInit>>>,
    /// Our candidates held back from our offer until the answer is set.
    held: Mutex<Vec<IceCandidate>>,
    /// Hold our offer's candidates back (else they stay inside its SDP).
    trickled_offer: bool,
    gathered: watch::Receiver<bool>,
    handler: Arc<Handler>,
}

impl WebrtcListener {
    async fn wait_gathered(&self) {
        let mut rx = self.gathered.clone();
        let _ = tokio::time::timeout(GATHER_TIMEOUT, rx.wait_for(|done| *done)).await;
    }

    async fn local_sdp(&self) -> Result<String, RtcError> {
        self.wait_gathered().await;
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| RtcError::Negotiation("no local description".into()))
    }

    /// After the remote description: apply queued candidates, read the negotiated PT.
    async fn remote_set(&self) -> Result<(), RtcError> {
        let queued = self.pending.lock().await.take().unwrap_or_default();
        for c in queued {
            if let Err(e) = self.pc.add_ice_candidate(c).await {
                tracing::debug!(error = %e, "a queued remote candidate was refused");
            }
        }
        let params = self.sender.get_parameters().await.map_err(negotiation)?;
        let pt = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or_else(|| RtcError::Negotiation("the peer accepted no Opus codec".into()))?;
        self.payload_type.store(u16::from(pt), Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl Listener for WebrtcListener {
    /// The offer goes out **without** its candidates; `set_answer` hands them back to be
    /// trickled. The ICE agent beneath (rtc-ice 0.21.1, `handle_inbound`) drops every
    /// connectivity check that arrives before the remote credentials are known, i.e. before
    /// the answer is set. A peer that answers at once with a complete SDP (aiortc) starts
    /// checking our candidates the moment it has them, and its first check often beat its
    /// own answer through the hub: dropped, so aioice waited for its retransmission (500 ms),
    /// the ~450 ms tail on first audio whenever the robot offered (BENCHMARKS.md). Without
    /// candidates in the offer the peer has nothing to check before we can answer checks.
    /// Peers must accept trickled candidates (docs/rtc-protocol.md, "The offer rule").
    async fn offer(&self) -> Result<String, RtcError> {
        let offer = self.pc.create_offer(None).await.map_err(negotiation)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(negotiation)?;
        let sdp = self.local_sdp().await?;
        if !self.trickled_offer {
            return Ok(sdp);
        }
        let (sdp, held) = split_candidates(&sdp);
        *self.held.lock().await = held;
        Ok(sdp)
    }

    async fn answer(&self, offer_sdp: String) -> Result<String, RtcError> {
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(negotiation)?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(negotiation)?;
        let answer = self.pc.create_answer(None).await.map_err(negotiation)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(negotiation)?;
        self.remote_set().await?;
        self.local_sdp().await
    }

    async fn set_answer(&self, answer_sdp: String) -> Result<Vec<IceCandidate>, RtcError> {
        let answer = RTCSessionDescription::answer(answer_sdp).map_err(negotiation)?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(negotiation)?;
        self.remote_set().await?;
        Ok(std::mem::take(&mut *self.held.lock().await))
    }

    async fn add_candidate(&self, c: IceCandidate) -> Result<(), RtcError> {
        let Some(init) = candidate_init(c) else {
            return Ok(()); // end of candidates of one section
        };
        {
            let mut pending = self.pending.lock().await;
            if let Some(q) = pending.as_mut() {
                q.push(init);
                return Ok(());
            }
        }
        self.pc.add_ice_candidate(init).await.map_err(negotiation)
    }

    async fn send_frame(&self, frame: Bytes, skipped: u16) -> Result<(), RtcError> {
        let Ok(pt) = u8::try_from(self.payload_type.load(Ordering::Relaxed)) else {
            return Ok(()); // not negotiated yet
        };
        let sample = Sample {
            data: frame,
            duration: FRAME,
            prev_dropped_packets: skipped,
            ..Sample::new(Instant::now())
        };
        self.track
            .write_sample(self.ssrc, pt, &sample, &[])
            .await
            .map_err(|e| RtcError::Send(e.to_string()))
    }

    async fn close(&self) {
        self.handler.closed.store(true, Ordering::SeqCst);
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing a peer connection");
        }
    }
}

/// Splits a complete SDP into the SDP without its `a=candidate` and `a=end-of-candidates`
/// lines and those candidates, each with its section's `a=mid` and m-line index, as a
/// trickling peer would send them.
pub(super) fn split_candidates(sdp: &str) -> (String, Vec<IceCandidate>) {
    let mut out = String::with_capacity(sdp.len());
    let mut found: Vec<(Option<u16>, String)> = Vec::new();
    let mut mids: Vec<Option<String>> = Vec::new();
    let mut section: Option<u16> = None;
    for line in sdp.split_inclusive('\n') {
        let text = line.trim_end_matches(['\r', '\n']);
        if text.starts_with("m=") {
            section = Some(section.map_or(0, |i| i + 1));
            mids.push(None);
        } else if let (Some(mid), Some(slot)) = (text.strip_prefix("a=mid:"), mids.last_mut()) {
            *slot = Some(mid.to_owned());
        }
        if let Some(c) = text.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                found.push((section, c.to_owned()));
                continue;
            }
            if c == "end-of-candidates" {
                continue;
            }
        }
        out.push_str(line);
    }
    let held = found
        .into_iter()
        .map(|(index, candidate)| IceCandidate {
            candidate,
            sdp_mid: index.and_then(|i| mids.get(usize::from(i)).cloned().flatten()),
            sdp_mline_index: index,
            username_fragment: None,
        })
        .collect();
    (out, held)
}

#[cfg(test)]
mod split_tests {
    use super::split_candidates;

    #[test]
    fn candidates_leave_the_sdp_with_their_section() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 10.0.0.2 50001 typ host\r\n\
                   a=end-of-candidates\r\na=sendonly\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:x\r\n\
                   a=candidate:3 1 udp 2130706431 127.0.0.1 50002 typ host\r\n";
        let (rest, held) = split_candidates(sdp);
        assert!(!rest.contains("candidate"), "{rest}");
        assert!(rest.contains("a=mid:0\r\na=sendonly\r\nm=application"));
        let got: Vec<_> = held
            .iter()
            .map(|c| {
                (
                    c.candidate.as_str(),
                    c.sdp_mid.as_deref(),
                    c.sdp_mline_index,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
                    Some("0"),
                    Some(0)
                ),
                (
                    "candidate:2 1 udp 2130706431 10.0.0.2 50001 typ host",
                    Some("0"),
                    Some(0)
                ),
                (
                    "candidate:3 1 udp 2130706431 127.0.0.1 50002 typ host",
                    Some("x"),
                    Some(1)
                ),
            ]
        );
    }

    #[test]
    fn an_sdp_without_candidates_is_unchanged() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        let (rest, held) = split_candidates(sdp);
        assert_eq!(rest, sdp);
        assert!(held.is_empty());
    }
}
