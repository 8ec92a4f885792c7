//! [`RtcTransport`] on the sans-IO `rtc` =0.21.1 core with a driver of our own: every
//! listener of the process on one UDP socket per local address (the str0m model), one
//! receive task per socket, one timer task for all connections, and frames encrypted and
//! sent on the caller's thread (the media clock), with no task per connection.
//!
//! ```text
//!   UDP socket (bind_ip:port) ──recv──► Routes (ufrag of a Binding request, else path)
//!        ▲                                   │
//!        │ send_to                           ▼
//!        ├──────── pump ◄──── Mutex<RTCPeerConnection> (one per listener) ◄── offer/answer/…
//!        │          │                         ▲
//!        │          ├─ events ──► ListenerSinks   │ handle_timeout
//!        │          └─ poll_timeout ──► Timers ──► timer task (sleeps until the earliest)
//!        └──────── send_frame (media clock thread): write_rtp ──► pump
//! ```
//!
//! Every input to a connection (a datagram, a timeout, a frame, a description) is followed
//! by [`Shared::pump`], which sends what the connection wants sent, forwards its events and
//! inbound audio, and re-arms its deadline. Connections differ from [`super::WebrtcTransport`]
//! in two ways on the wire: all share the socket's host candidate (and one DTLS
//! certificate), and none gathers server-reflexive or relay candidates: this driver is for
//! an agent whose bind address its listeners can reach (docs/decisions.md).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use ::rtc::ice::mdns::MulticastDnsMode;
use ::rtc::interceptor::Registry;
use ::rtc::peer_connection::certificate::RTCCertificate;
use ::rtc::peer_connection::configuration::RTCConfigurationBuilder;
use ::rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use ::rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use ::rtc::peer_connection::event::RTCPeerConnectionEvent;
use ::rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use ::rtc::peer_connection::sdp::RTCSessionDescription;
use ::rtc::peer_connection::state::RTCPeerConnectionState;
use ::rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use ::rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use ::rtc::rtp;
use ::rtc::rtp_transceiver::RTCRtpSenderId;
use ::rtc::sansio::Protocol;
use ::rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use protocol::signaling::{IceCandidate, IceServer};
use rand::Rng;
use tokio::sync::Notify;

use super::demux::{Path, Routes, Timers, is_stun};
use super::webrtc_impl::{
    ICE_CHECK_INTERVAL, ICE_MAX_BINDING_REQUESTS, candidate_init, negotiation, opus_media_engine,
    robot_track, setup, split_candidates,
};
use super::{
    InboundAudio, Listener, ListenerEvent, ListenerSinks, ListenerState, RtcError, RtcTransport,
};

/// RTP timestamp ticks per 20 ms frame at 48 kHz.
const TICKS_PER_FRAME: u32 = 960;
/// Largest datagram read (the MTU of any path we use, with room).
const RECV_BUF: usize = 2048;

/// All listeners on one UDP socket per local address, driven by our own tasks.
#[derive(Clone)]
pub struct MuxTransport {
    shared: Arc<Shared>,
    trickled_offer: bool,
}

impl std::fmt::Debug for MuxTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxTransport")
            .field("sockets", &self.local_addrs())
            .field("trickled_offer", &self.trickled_offer)
            .finish()
    }
}

/// One bound socket: tokio's half receives, a clone of the same descriptor sends from any
/// thread (non-blocking, like every UDP send that finds room in the socket buffer).
struct Socket {
    local: SocketAddr,
    send: std::net::UdpSocket,
}

/// What the tasks and the listeners share.
struct Shared {
    sockets: Vec<Socket>,
    routes: Mutex<Routes<Arc<Peer>>>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    timers: Mutex<Timers>,
    /// Wakes the timer task when a deadline earlier than its sleep was armed.
    wake: Notify,
    next_id: AtomicU64,
    /// One DTLS certificate for every connection (taken from the first one built).
    certificate: OnceLock<RTCCertificate>,
    /// Datagrams the socket refused (full send buffer).
    send_drops: AtomicU64,
    /// The note that ICE servers are not used was logged.
    told_host_only: AtomicBool,
}

/// One listener's connection and where its events go.
struct Peer {
    id: u64,
    uid: Arc<str>,
    generation: u64,
    sinks: ListenerSinks,
    /// Closed was reported (or the listener was closed by us): report nothing more.
    closed: AtomicBool,
    state: Mutex<PeerState>,
}

struct PeerState {
    pc: RTCPeerConnection,
    sender: RTCRtpSenderId,
    ssrc: u32,
    /// The negotiated payload type.
    payload_type: Option<u8>,
    sequence: u16,
    timestamp: u32,
    /// Our offer's candidates, held back until the answer is set.
    held: Vec<IceCandidate>,
    /// Remote candidates that came before the remote description.
    pending: Option<Vec<RTCIceCandidateInit>>,
    /// The deadline last handed to [`Timers`].
    armed: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random ICE credential of `len` letters and digits.
fn token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The addresses to bind for `bind_ip`: itself, or for a wildcard every usable interface
/// address of its family (a socket bound to `0.0.0.0` cannot name itself in a candidate).
fn bind_addrs(bind_ip: IpAddr, port: u16) -> Vec<SocketAddr> {
    if !bind_ip.is_unspecified() {
        return vec![SocketAddr::new(bind_ip, port)];
    }
    let mut out = Vec::new();
    for interface in ::rtc::shared::ifaces::ifaces().unwrap_or_default() {
        let Some(addr) = interface.addr else { continue };
        let ip = addr.ip();
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_ipv4() != bind_ip.is_ipv4()
            || ip.is_loopback()
            || ip.is_unspecified()
            || link_local
        {
            continue;
        }
        let a = SocketAddr::new(ip, port);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        out.push(SocketAddr::new(bind_ip, port));
    }
    out
}

impl MuxTransport {
    /// Binds the socket(s) on `bind_ip` (`0.0.0.0`: one per usable interface address)
    /// and `port` (0: an ephemeral one) and starts the receive and timer tasks on the
    /// current runtime.
    pub async fn bind(bind_ip: IpAddr, port: u16) -> Result<Self, RtcError> {
        let mut sockets = Vec::new();
        let mut receivers = Vec::new();
        for addr in bind_addrs(bind_ip, port) {
            let std_socket = std::net::UdpSocket::bind(addr).map_err(setup)?;
            std_socket.set_nonblocking(true).map_err(setup)?;
            let local = std_socket.local_addr().map_err(setup)?;
            let send = std_socket.try_clone().map_err(setup)?;
            let recv = tokio::net::UdpSocket::from_std(std_socket).map_err(setup)?;
            sockets.push(Socket { local, send });
            receivers.push((local, recv));
        }
        let shared = Arc::new(Shared {
            sockets,
            routes: Mutex::new(Routes::default()),
            peers: Mutex::new(HashMap::new()),
            timers: Mutex::new(Timers::default()),
            wake: Notify::new(),
            next_id: AtomicU64::new(1),
            certificate: OnceLock::new(),
            send_drops: AtomicU64::new(0),
            told_host_only: AtomicBool::new(false),
        });
        for (local, recv) in receivers {
            tokio::spawn(Arc::clone(&shared).receive(local, recv));
        }
        tokio::spawn(Arc::clone(&shared).run_timers());
        Ok(Self {
            shared,
            trickled_offer: true,
        })
    }

    /// As [`super::WebrtcTransport::with_trickled_offer`].
    pub fn with_trickled_offer(mut self, trickled: bool) -> Self {
        self.trickled_offer = trickled;
        self
    }

    /// The bound socket addresses (the host candidates of every listener).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.sockets.iter().map(|s| s.local).collect()
    }

    /// Datagrams dropped because a socket's send buffer was full.
    pub fn send_drops(&self) -> u64 {
        self.shared.send_drops.load(Ordering::Relaxed)
    }

    /// Connections currently held.
    pub fn connections(&self) -> usize {
        lock(&self.shared.peers).len()
    }

    fn host_candidates(&self) -> Result<Vec<RTCIceCandidateInit>, RtcError> {
        self.shared
            .sockets
            .iter()
            .map(|s| {
                let c = CandidateHostConfig {
                    base_config: CandidateConfig {
                        network: "udp".to_owned(),
                        address: s.local.ip().to_string(),
                        port: s.local.port(),
                        component: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                }
                .new_candidate_host()
                .map_err(setup)?;
                RTCIceCandidate::from(&c).to_json().map_err(setup)
            })
            .collect()
    }

    fn connection(&self, ufrag: String, pwd: String) -> Result<RTCPeerConnection, RtcError> {
        let media = opus_media_engine()?;
        // Sender and receiver reports only: NACK and TWCC serve video and bandwidth
        // estimation, neither of which a 20 ms Opus sender at a fixed rate uses.
        let registry = configure_rtcp_reports(Registry::new());
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .with_ice_credentials(ufrag, pwd)
            .build();
        let mut config = RTCConfigurationBuilder::new();
        if let Some(cert) = self.shared.certificate.get() {
            config = config.with_certificates(vec![cert.clone()]);
        }
        let pc = RTCPeerConnectionBuilder::new()
            .with_configuration(config.build())
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(setup)?;
        if let Some(cert) = pc.get_configuration().certificates().first() {
            let _ = self.shared.certificate.set(cert.clone());
        }
        Ok(pc)
    }
}

#[async_trait]
impl RtcTransport for MuxTransport {
    async fn listener(
        &self,
        peer: &str,
        generation: u64,
        ice_servers: &[IceServer],
        sinks: ListenerSinks,
    ) -> Result<Arc<dyn Listener>, RtcError> {
        if !ice_servers.is_empty() && !self.shared.told_host_only.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "listeners get host candidates only (ROBOT_RTC_DRIVER=mux); the channel's ICE servers are for the apps"
            );
        }
        let ufrag = token(16);
        let mut pc = self.connection(ufrag.clone(), token(32))?;
        for c in self.host_candidates()? {
            pc.add_local_candidate(c).map_err(setup)?;
        }
        // End of gathering: nothing more will come.
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(setup)?;
        let ssrc: u32 = rand::random();
        let sender = pc.add_track(robot_track(ssrc)).map_err(setup)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Peer {
            id,
            uid: Arc::from(peer),
            generation,
            sinks,
            closed: AtomicBool::new(false),
            state: Mutex::new(PeerState {
                pc,
                sender,
                ssrc,
                payload_type: None,
                sequence: rand::random(),
                timestamp: rand::random(),
                held: Vec::new(),
                pending: Some(Vec::new()),
                armed: None,
            }),
        });
        lock(&self.shared.routes).add(id, &ufrag, Arc::clone(&p));
        lock(&self.shared.peers).insert(id, Arc::clone(&p));
        self.shared.with_peer(&p, Instant::now(), |_| Ok(()))?;
        Ok(Arc::new(MuxListener {
            shared: Arc::clone(&self.shared),
            peer: p,
            trickled_offer: self.trickled_offer,
        }))
    }
}

impl Shared {
    /// Runs `f` on `peer`'s connection under its lock, then pumps it.
    fn with_peer<T>(
        &self,
        peer: &Arc<Peer>,
        now: Instant,
        f: impl FnOnce(&mut PeerState) -> Result<T, RtcError>,
    ) -> Result<T, RtcError> {
        let mut st = lock(&peer.state);
        let out = f(&mut st);
        self.pump(peer, &mut st, now);
        out
    }

    /// Sends what the connection wants sent, forwards its events and audio, re-arms its
    /// deadline.
    fn pump(&self, peer: &Arc<Peer>, st: &mut PeerState, _now: Instant) {
        while let Some(out) = st.pc.poll_write() {
            let path: Path = (out.transport.local_addr, out.transport.peer_addr);
            let Some(socket) = self.sockets.iter().find(|s| s.local == path.0) else {
                continue;
            };
            // Our own connectivity check: its reply comes back over this path.
            if is_stun(&out.message) {
                let mut routes = lock(&self.routes);
                if !routes.knows(peer.id, path) {
                    routes.learn(peer.id, path, Arc::clone(peer));
                }
            }
            if let Err(e) = socket.send.send_to(&out.message, path.1) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.send_drops.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::debug!(error = %e, "a datagram was not sent");
                }
            }
        }
        while let Some(event) = st.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = event {
                match s {
                    RTCPeerConnectionState::Connected => peer.emit(ListenerState::Connected),
                    // As the webrtc transport: a peer gone silent shows up as disconnected
                    // once the consent checks fail.
                    RTCPeerConnectionState::Disconnected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed => peer.emit(ListenerState::Closed),
                    _ => {}
                }
            }
        }
        while let Some(m) = st.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = m.message {
                if p.payload.is_empty() {
                    continue;
                }
                let _ = peer.sinks.audio.send(InboundAudio {
                    peer: Arc::clone(&peer.uid),
                    generation: peer.generation,
                    sequence: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    payload: p.payload,
                });
            }
        }
        let next = st.pc.poll_timeout();
        if next != st.armed {
            st.armed = next;
            if lock(&self.timers).arm(peer.id, next) {
                self.wake.notify_one();
            }
        }
    }

    /// Forgets a listener: no more datagrams or timeouts reach it.
    fn remove(&self, id: u64) {
        lock(&self.routes).remove(id);
        lock(&self.peers).remove(&id);
        lock(&self.timers).remove(id);
    }

    /// Reads one socket until the process ends; each datagram goes to its connection.
    async fn receive(self: Arc<Self>, local: SocketAddr, socket: tokio::net::UdpSocket) {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port unreachable of a peer gone away, and the like.
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            };
            let Some(datagram) = buf.get(..n) else {
                continue;
            };
            let Some(peer) = lock(&self.routes).route((local, from), datagram) else {
                continue;
            };
            let now = Instant::now();
            let msg = TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: local,
                    peer_addr: from,
                    transport_protocol: TransportProtocol::UDP,
                    ecn: None,
                },
                message: BytesMut::from(datagram),
            };
            let _ = self.with_peer(&peer, now, |st| {
                if let Err(e) = st.pc.handle_read(msg) {
                    tracing::debug!(error = %e, "a datagram was refused");
                }
                Ok(())
            });
        }
    }

    /// Sleeps until the earliest deadline of any connection, then hands the due ones
    /// their timeout.
    async fn run_timers(self: Arc<Self>) {
        loop {
            let next = lock(&self.timers).next();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = self.wake.notified() => continue,
                    }
                }
                None => {
                    self.wake.notified().await;
                    continue;
                }
            }
            let now = Instant::now();
            let due = lock(&self.timers).due(now);
            for id in due {
                let Some(peer) = lock(&self.peers).get(&id).cloned() else {
                    continue;
                };
                let _ = self.with_peer(&peer, now, |st| {
                    st.armed = None;
                    if let Err(e) = st.pc.handle_timeout(now) {
                        tracing::debug!(error = %e, "a connection's timeout failed");
                    }
                    Ok(())
                });
            }
        }
    }
}

impl Peer {
    fn emit(&self, state: ListenerState) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        if state == ListenerState::Closed && self.closed.swap(true, Ordering::SeqCst) {
            return; // report Closed once
        }
        let _ = self.sinks.events.send(ListenerEvent {
            peer: self.uid.to_string(),
            generation: self.generation,
            state,
        });
    }
}

struct MuxListener {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    trickled_offer: bool,
}

impl Drop for MuxListener {
    fn drop(&mut self) {
        self.shared.remove(self.peer.id);
    }
}

impl MuxListener {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut PeerState) -> Result<T, RtcError>,
    ) -> Result<T, RtcError> {
        self.shared.with_peer(&self.peer, Instant::now(), f)
    }
}

fn local_sdp(st: &PeerState) -> Result<String, RtcError> {
    st.pc
        .local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| RtcError::Negotiation("no local description".into()))
}

/// After the remote description: apply queued candidates, read the negotiated PT.
fn remote_set(st: &mut PeerState) -> Result<(), RtcError> {
    for c in st.pending.take().unwrap_or_default() {
        if let Err(e) = st.pc.add_remote_candidate(c) {
            tracing::debug!(error = %e, "a queued remote candidate was refused");
        }
    }
    let sender = st.sender;
    let pt = st
        .pc
        .rtp_sender(sender)
        .and_then(|mut s| {
            s.get_parameters()
                .rtp_parameters
                .codecs
                .first()
                .map(|c| c.payload_type)
        })
        .ok_or_else(|| RtcError::Negotiation("the peer accepted no Opus codec".into()))?;
    st.payload_type = Some(pt);
    Ok(())
}

#[async_trait]
impl Listener for MuxListener {
    /// As the webrtc transport's: the candidates are held back until the answer is set.
    async fn offer(&self) -> Result<String, RtcError> {
        let trickled = self.trickled_offer;
        self.with(|st| {
            let offer = st.pc.create_offer(None).map_err(negotiation)?;
            st.pc
                .set_local_description(Instant::now(), offer)
                .map_err(negotiation)?;
            let sdp = local_sdp(st)?;
            if !trickled {
                return Ok(sdp);
            }
            let (sdp, held) = split_candidates(&sdp);
            st.held = held;
            Ok(sdp)
        })
    }

    async fn answer(&self, offer_sdp: String) -> Result<String, RtcError> {
        self.with(|st| {
            let offer = RTCSessionDescription::offer(offer_sdp).map_err(negotiation)?;
            st.pc
                .set_remote_description(Instant::now(), offer)
                .map_err(negotiation)?;
            let answer = st.pc.create_answer(None).map_err(negotiation)?;
            st.pc
                .set_local_description(Instant::now(), answer)
                .map_err(negotiation)?;
            remote_set(st)?;
            local_sdp(st)
        })
    }

    async fn set_answer(&self, answer_sdp: String) -> Result<Vec<IceCandidate>, RtcError> {
        self.with(|st| {
            let answer = RTCSessionDescription::answer(answer_sdp).map_err(negotiation)?;
            st.pc
                .set_remote_description(Instant::now(), answer)
                .map_err(negotiation)?;
            remote_set(st)?;
            Ok(std::mem::take(&mut st.held))
        })
    }

    async fn add_candidate(&self, c: IceCandidate) -> Result<(), RtcError> {
        let Some(init) = candidate_init(c) else {
            return Ok(()); // end of candidates of one section
        };
        self.with(|st| {
            if let Some(q) = st.pending.as_mut() {
                q.push(init);
                return Ok(());
            }
            st.pc.add_remote_candidate(init).map_err(negotiation)
        })
    }

    /// Encrypts and sends the frame right here, on the caller's thread (the media clock):
    /// no hop to another task.
    async fn send_frame(&self, frame: Bytes, skipped: u16) -> Result<(), RtcError> {
        self.with(|st| {
            let Some(pt) = st.payload_type else {
                return Ok(()); // not negotiated yet
            };
            st.sequence = st.sequence.wrapping_add(skipped);
            st.timestamp = st
                .timestamp
                .wrapping_add(TICKS_PER_FRAME.wrapping_mul(u32::from(skipped)));
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: pt,
                    sequence_number: st.sequence,
                    timestamp: st.timestamp,
                    ssrc: st.ssrc,
                    ..Default::default()
                },
                payload: frame,
            };
            st.sequence = st.sequence.wrapping_add(1);
            st.timestamp = st.timestamp.wrapping_add(TICKS_PER_FRAME);
            // Straight into the connection's write path: `RTCRtpSender::write_rtp` would
            // rebuild the sender's parameters (codec lists, strings) on every packet to
            // check the SSRC and payload type that this code set itself.
            st.pc
                .handle_write(TaggedRTCMessage {
                    now: Instant::now(),
                    message: RTCMessage::RtpPacket(String::new(), packet),
                })
                .map_err(|e| RtcError::Send(e.to_string()))
        })
    }

    async fn close(&self) {
        self.peer.closed.store(true, Ordering::SeqCst);
        let _ = self.with(|st| {
            if let Err(e) = st.pc.close() {
                tracing::debug!(error = %e, "closing a peer connection");
            }
            Ok(())
        });
        self.shared.remove(self.peer.id);
    }
}

#[cfg(test)]
mod tests {
    //! The driver against a real peer (the webrtc-rs probe) on loopback. Waits are bounded
    //! by generous timeouts and assert on what arrived, never on how fast.
    use super::*;
    use crate::rtc::probe::ProbePeer;
    use std::time::Duration;
    use tokio::sync::mpsc;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const WAIT: Duration = Duration::from_secs(20);

    struct Side {
        listener: Arc<dyn Listener>,
        events: mpsc::UnboundedReceiver<ListenerEvent>,
        probe: ProbePeer,
    }

    async fn side(t: &MuxTransport, uid: &str) -> Side {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (audio, _) = mpsc::unbounded_channel();
        let listener = t
            .listener(
                uid,
                1,
                &[],
                ListenerSinks {
                    events: events_tx,
                    audio,
                },
            )
            .await
            .expect("listener");
        let probe = ProbePeer::new(LOOPBACK).await.expect("probe");
        Side {
            listener,
            events,
            probe,
        }
    }

    async fn robot_offers(s: &Side) {
        let offer = s.listener.offer().await.expect("offer");
        assert!(!offer.contains("a=candidate"), "candidates are trickled");
        let answer = s.probe.answer(offer).await.expect("answer");
        for c in s.listener.set_answer(answer).await.expect("set answer") {
            s.probe.add_candidate(c).await.expect("candidate");
        }
    }

    async fn probe_offers(s: &Side) {
        let offer = s.probe.offer().await.expect("probe offer");
        let answer = s.listener.answer(offer).await.expect("answer");
        s.probe.set_answer(answer).await.expect("set answer");
    }

    async fn connected(s: &mut Side) {
        let ev = tokio::time::timeout(WAIT, s.events.recv())
            .await
            .expect("an event in time")
            .expect("events open");
        assert_eq!(ev.state, ListenerState::Connected, "{ev:?}");
    }

    /// Sends `n` frames 20 ms apart (each listener its own), then waits until every probe
    /// counted them all.
    async fn frames_arrive(sides: &[Side], n: u64) {
        for _ in 0..n {
            for s in sides {
                s.listener
                    .send_frame(Bytes::from_static(&[0xfc, 0xff, 0xfe]), 0)
                    .await
                    .expect("sent");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        for s in sides {
            let stats = s.probe.stats();
            while stats.packets.load(Ordering::Relaxed) < n {
                assert!(tokio::time::Instant::now() < deadline, "frames lost");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(stats.packets.load(Ordering::Relaxed), n, "no extra packets");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listeners_share_one_socket_whoever_offers() {
        let t = MuxTransport::bind(LOOPBACK, 0).await.expect("bind");
        assert_eq!(t.local_addrs().len(), 1);
        let mut a = side(&t, "a").await;
        let mut b = side(&t, "b").await;
        robot_offers(&a).await;
        probe_offers(&b).await;
        connected(&mut a).await;
        connected(&mut b).await;
        assert_eq!(t.connections(), 2);
        let sides = [a, b];
        frames_arrive(&sides, 25).await;
        assert_eq!(t.send_drops(), 0);
        for s in &sides {
            s.listener.close().await;
        }
        assert_eq!(t.connections(), 0);
    }

    #[tokio::test]
    async fn a_wildcard_bind_becomes_one_socket_per_interface_address() {
        let t = MuxTransport::bind(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
            .await
            .expect("bind");
        let addrs = t.local_addrs();
        assert!(!addrs.is_empty());
        for a in &addrs {
            // A usable interface address (or, on a host without one, the wildcard kept so
            // the bind still succeeds), never loopback, always a real port.
            assert!(!a.ip().is_loopback(), "{a}");
            assert_ne!(a.port(), 0, "{a}");
        }
        assert_eq!(t.host_candidates().expect("candidates").len(), addrs.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_peer_is_reported_once_and_the_others_keep_playing() {
        let t = MuxTransport::bind(LOOPBACK, 0).await.expect("bind");
        let mut a = side(&t, "a").await;
        let mut b = side(&t, "b").await;
        probe_offers(&a).await;
        probe_offers(&b).await;
        connected(&mut a).await;
        connected(&mut b).await;
        // The probe closes its side: its connection reports Closed (a DTLS close_notify or
        // failed consent checks), once.
        a.probe.close().await;
        let ev = tokio::time::timeout(Duration::from_secs(60), a.events.recv())
            .await
            .expect("Closed in time")
            .expect("events open");
        assert_eq!(ev.state, ListenerState::Closed);
        a.listener.close().await;
        assert_eq!(t.connections(), 1);
        frames_arrive(std::slice::from_ref(&b), 10).await;
        assert!(a.events.try_recv().is_err(), "nothing after Closed");
    }
}
