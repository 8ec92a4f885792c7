//! The bridge's IO: one task per bridged session holding the WebSocket to the program.
//!
//! ```text
//!   ToProgram::Dial ─► connect (Authorization: Bearer <secret>, 3 s) ─► FromProgram::Connected
//!   ToProgram::Start ─► `start`, then whatever waited for it (media heard while dialling)
//!   ToProgram::Audio ─► pcm16: libopus decode at R, re-framed to 20 ms; opus: as received
//!                       ─► `media` {uid, seq, timestamp_ms}
//!   ToProgram::Send / Stop ─► the event (`stop`: then a close, and the task ends)
//!   program text frame ─► parse + check ─► FromProgram::{Command, Hangup, Bad}
//!                         (pcm16 media encoded to 20 ms Opus frames here)
//!   the socket closes or fails ─► FromProgram::Closed (the core decides about a redial)
//! ```
//!
//! Writes go through a bounded queue to a writer task of their own, so a program that does
//! not read never blocks the reading of its messages (a `clear` is acted on however far
//! behind the program is); `media` that finds the queue full is dropped and counted.
//! Nothing here decides when to dial or when to give up: that is [`super::BridgeLink`], in
//! the session core.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::agent::{BridgeFormat, BridgeTarget};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::message::{AgentEvent, CallParties, Format, ProgramMessage, parse_program};
use super::tls::BridgeTls;
use super::{BridgeError, FromProgram, ProgramCommand, StopReason, ToProgram};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a dial may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages waiting to be written to the program (10 s of one participant's media).
const WRITE_QUEUE: usize = 500;
/// Messages held until `start` is sent (media heard while dialling: 10 s of one speaker).
const HOLD_MAX: usize = 500;
/// The hard limit tungstenite enforces (a message over [`super::message::MAX_MESSAGE_BYTES`]
/// and under this is refused with an error and the connection stays; above it the
/// connection is dropped and redialled).
const SOCKET_MAX_MESSAGE: usize = 4 << 20;
/// Bitrate of the program's pcm16 encoded for the listeners (as the gain stage's: the
/// program's audio may be music or a prompt as well as speech).
const SPEAK_BITRATE: u32 = 48_000;
/// How long `stop` may take to be written at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// What a session's socket task needs.
#[derive(Debug, Clone)]
pub struct SocketPlan {
    /// The program to dial.
    pub target: BridgeTarget,
    /// The format (checked).
    pub format: Format,
    /// Session id (`start.session`).
    pub session: i64,
    /// Channel (`start.channel`).
    pub channel: String,
    /// The call's parties (`start.call`).
    pub call: CallParties,
    /// The session continues an earlier attempt (the API offered it again after its agent
    /// died or drained): every `start` says `"resume": true`, the first one too.
    pub continued: bool,
    /// Trust for `wss://` targets.
    pub tls: BridgeTls,
}

struct Conn {
    out: mpsc::Sender<Message>,
    writer: JoinHandle<()>,
    stream: futures_util::stream::SplitStream<Ws>,
    started: bool,
}

/// One participant's audio on its way to the program.
struct PeerStream {
    decoder: Option<audio::PcmDecoder>,
    seq: u64,
    last_ts: u32,
    /// 48 kHz samples since its first packet.
    ext: i64,
    /// Decoded samples not yet sent (less than a frame).
    rest: Vec<i16>,
}

struct Task {
    plan: SocketPlan,
    reports: mpsc::UnboundedSender<FromProgram>,
    conn: Option<Conn>,
    /// Messages waiting for `start`, each flagged media or not.
    held: VecDeque<(Message, bool)>,
    peers: HashMap<Arc<str>, PeerStream>,
    encoder: Option<audio::PcmEncoder>,
    bad: u64,
    dropped: u64,
}

/// Runs the socket of one session until `stop` was sent or the session is gone.
pub async fn run(
    plan: SocketPlan,
    mut commands: mpsc::UnboundedReceiver<ToProgram>,
    reports: mpsc::UnboundedSender<FromProgram>,
) {
    let mut t = Task {
        plan,
        reports,
        conn: None,
        held: VecDeque::new(),
        peers: HashMap::new(),
        encoder: None,
        bad: 0,
        dropped: 0,
    };
    loop {
        tokio::select! {
            c = commands.recv() => match c {
                None => break,
                Some(ToProgram::Stop(reason)) => {
                    t.stop(reason).await;
                    break;
                }
                Some(c) => t.command(c).await,
            },
            m = next(&mut t.conn) => t.incoming(m),
        }
    }
    if let Some(c) = t.conn.take() {
        c.writer.abort();
    }
}

async fn next(
    conn: &mut Option<Conn>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match conn {
        Some(c) => c.stream.next().await,
        None => std::future::pending().await,
    }
}

/// Dials the program (`ws://`, or `wss://` trusting `tls`).
pub async fn dial(target: &BridgeTarget, tls: &BridgeTls) -> Result<Ws, BridgeError> {
    let mut req = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| BridgeError::Config(format!("url: {e}")))?;
    let auth = format!("Bearer {}", target.secret)
        .parse()
        .map_err(|_| BridgeError::Config("the secret cannot be sent as a header".into()))?;
    req.headers_mut().insert("authorization", auth);
    let config = WebSocketConfig::default()
        .max_message_size(Some(SOCKET_MAX_MESSAGE))
        .max_frame_size(Some(SOCKET_MAX_MESSAGE));
    let (ws, _) = tokio::time::timeout(
        DIAL_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls.config())),
        ),
    )
    .await
    .map_err(|_| BridgeError::Unreachable(format!("timed out after {DIAL_TIMEOUT:?}")))?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => BridgeError::Refused {
            status: r.status().as_u16(),
        },
        // a URL that cannot be dialled (no host, an unknown scheme): redialling cannot help
        tokio_tungstenite::tungstenite::Error::Url(e) => BridgeError::Config(format!("url: {e}")),
        tokio_tungstenite::tungstenite::Error::Tls(e) => BridgeError::Config(format!("tls: {e}")),
        tokio_tungstenite::tungstenite::Error::Io(e) => match tls_refusal(&e) {
            Some(why) => BridgeError::Untrusted(why),
            None => BridgeError::Unreachable(e.to_string()),
        },
        e => BridgeError::Unreachable(e.to_string()),
    })?;
    Ok(ws)
}

/// The certificate error inside a failed TLS handshake, if that is what failed.
fn tls_refusal(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        e @ (rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType) => Some(e.to_string()),
        _ => None,
    }
}

fn text(e: &AgentEvent) -> Message {
    Message::Text(e.to_json().into())
}

impl Task {
    async fn command(&mut self, c: ToProgram) {
        match c {
            ToProgram::Dial => {
                if let Some(old) = self.conn.take() {
                    old.writer.abort();
                }
                // Media of a gap is dropped (DESIGN.md); events (a mark played meanwhile)
                // reach the program after its `start`.
                self.held.retain(|(_, media)| !media);
                match dial(&self.plan.target, &self.plan.tls).await {
                    Ok(ws) => {
                        let (sink, stream) = ws.split();
                        let (out, rx) = mpsc::channel(WRITE_QUEUE);
                        let writer = tokio::spawn(write(sink, rx));
                        self.conn = Some(Conn {
                            out,
                            writer,
                            stream,
                            started: false,
                        });
                        tracing::info!(bridge = %self.plan.target.name, "bridge program connected");
                        let _ = self.reports.send(FromProgram::Connected);
                    }
                    Err(e) => {
                        tracing::warn!(bridge = %self.plan.target.name, error = %e, "bridge program not reached");
                        let _ = self.reports.send(FromProgram::DialFailed(e));
                    }
                }
            }
            ToProgram::Start { resume } => {
                let start = AgentEvent::Start {
                    session: self.plan.session,
                    channel: self.plan.channel.clone(),
                    call: self.plan.call.clone(),
                    format: self.plan.format,
                    resume: resume || self.plan.continued,
                };
                let Some(conn) = self.conn.as_mut() else {
                    return;
                };
                if conn.started {
                    return;
                }
                conn.started = true;
                if conn.out.try_send(text(&start)).is_err() {
                    tracing::warn!("bridge: start not written");
                }
                while let Some((m, media)) = self.held.pop_front() {
                    self.write(m, media);
                }
            }
            ToProgram::Send(e) => self.write(text(&e), false),
            ToProgram::Audio {
                peer,
                timestamp,
                payload,
            } => self.audio(peer, timestamp, payload),
            // handled by the loop
            ToProgram::Stop(_) => {}
        }
    }

    /// Writes a message, or holds it until `start` is sent.
    fn write(&mut self, m: Message, media: bool) {
        match self.conn.as_mut() {
            Some(c) if c.started => {
                if let Err(e) = c.out.try_send(m) {
                    self.dropped += 1;
                    if !media || self.dropped % 100 == 1 {
                        let full = matches!(e, mpsc::error::TrySendError::Full(_));
                        tracing::warn!(
                            dropped = self.dropped,
                            full,
                            "bridge: a message to the program was dropped (it does not read fast enough)"
                        );
                    }
                }
            }
            _ => {
                if self.held.len() >= HOLD_MAX {
                    self.held.pop_front();
                    self.dropped += 1;
                }
                self.held.push_back((m, media));
            }
        }
    }

    /// A participant's packet as `media` events.
    fn audio(&mut self, peer: Arc<str>, timestamp: u32, payload: Bytes) {
        let format = self.plan.format;
        if let Some(s) = self.peers.get_mut(&peer) {
            let delta = i64::from(timestamp.wrapping_sub(s.last_ts) as i32);
            s.ext += delta;
            s.last_ts = timestamp;
        } else {
            let decoder = match format.encoding {
                BridgeFormat::Opus => None,
                BridgeFormat::Pcm16 => match audio::PcmDecoder::new(format.rate) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(error = %e, "bridge: no decoder");
                        return;
                    }
                },
            };
            self.peers.insert(
                Arc::clone(&peer),
                PeerStream {
                    decoder,
                    seq: 0,
                    last_ts: timestamp,
                    ext: 0,
                    rest: Vec::new(),
                },
            );
        }
        let Some(s) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut events = Vec::new();
        match s.decoder.as_mut() {
            None => {
                events.push(AgentEvent::Media {
                    uid: Arc::clone(&peer),
                    seq: s.seq,
                    timestamp_ms: u64::try_from(s.ext.max(0) / 48).unwrap_or(0),
                    payload,
                });
                s.seq += 1;
            }
            Some(d) => {
                let pcm = match d.decode(&payload) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "bridge: a packet did not decode");
                        return;
                    }
                };
                let per_ms = i64::from(format.rate / 1000);
                // the first sample of `rest`, in ms of the participant's stream
                let start_ms =
                    s.ext / 48 - i64::try_from(s.rest.len()).unwrap_or(0) / per_ms.max(1);
                s.rest.extend_from_slice(pcm);
                let frame = audio::frame_samples(format.rate);
                let whole = s.rest.len() / frame * frame;
                for (k, chunk) in s.rest[..whole].chunks(frame).enumerate() {
                    let mut bytes = Vec::with_capacity(frame * 2);
                    for v in chunk {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                    let at = start_ms + 20 * i64::try_from(k).unwrap_or(0);
                    events.push(AgentEvent::Media {
                        uid: Arc::clone(&peer),
                        seq: s.seq,
                        timestamp_ms: u64::try_from(at.max(0)).unwrap_or(0),
                        payload: Bytes::from(bytes),
                    });
                    s.seq += 1;
                }
                s.rest.drain(..whole);
            }
        }
        for e in events {
            self.write(text(&e), true);
        }
    }

    /// A frame from the program (or the end of the connection).
    fn incoming(&mut self, m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let report = match m {
            Some(Ok(Message::Text(t))) => match parse_program(t.as_str(), &self.plan.format) {
                Ok(ProgramMessage::Media { audio }) => match self.speak(&audio) {
                    Ok(frames) => FromProgram::Command(ProgramCommand::Speak(frames)),
                    Err(e) => self.bad(e),
                },
                Ok(ProgramMessage::Mark { name }) => {
                    FromProgram::Command(ProgramCommand::Mark(name))
                }
                Ok(ProgramMessage::Clear) => FromProgram::Command(ProgramCommand::Clear),
                Ok(ProgramMessage::Play { audio }) => {
                    FromProgram::Command(ProgramCommand::Play(audio))
                }
                Ok(ProgramMessage::Hangup) => FromProgram::Hangup,
                Err(e) => self.bad(e),
            },
            Some(Ok(Message::Binary(_))) => self.bad(BridgeError::Binary),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return,
            Some(Ok(Message::Close(f))) => self.closed(match f {
                Some(f) => format!("the program closed the socket ({} {})", f.code, f.reason),
                None => "the program closed the socket".into(),
            }),
            Some(Err(e)) => {
                if let tokio_tungstenite::tungstenite::Error::Capacity(c) = &e {
                    self.bad += 1;
                    tracing::warn!(error = %c, "bridge: a program message over 4 MiB; the socket is dropped");
                }
                self.closed(format!("the socket failed: {e}"))
            }
            None => self.closed("the socket closed".into()),
        };
        let _ = self.reports.send(report);
    }

    fn closed(&mut self, why: String) -> FromProgram {
        if let Some(c) = self.conn.take() {
            c.writer.abort();
        }
        self.held.retain(|(_, media)| !media);
        tracing::warn!(reason = %why, "bridge program connection lost");
        FromProgram::Closed(why)
    }

    fn bad(&mut self, e: BridgeError) -> FromProgram {
        self.bad += 1;
        if self.bad <= 10 || self.bad.is_multiple_of(100) {
            tracing::warn!(error = %e, bad_messages = self.bad, "bridge: a program message was refused");
        }
        FromProgram::Bad(e)
    }

    /// The program's audio as 20 ms Opus frames.
    fn speak(&mut self, audio: &Bytes) -> Result<Vec<Bytes>, BridgeError> {
        let format = self.plan.format;
        if format.encoding == BridgeFormat::Opus {
            return Ok(vec![audio.clone()]);
        }
        let enc = match &mut self.encoder {
            Some(e) => e,
            None => self.encoder.insert(
                audio::PcmEncoder::new(format.rate, SPEAK_BITRATE)
                    .map_err(|e| BridgeError::Config(e.to_string()))?,
            ),
        };
        let frame = format.pcm_frame_bytes();
        let mut pcm = vec![0i16; frame / 2];
        let mut frames = Vec::with_capacity(audio.len() / frame);
        for chunk in audio.chunks_exact(frame) {
            for (v, b) in pcm.iter_mut().zip(chunk.chunks_exact(2)) {
                *v = i16::from_le_bytes([b[0], b[1]]);
            }
            frames.push(
                enc.encode(&pcm)
                    .map_err(|e| BridgeError::BadOpus(e.to_string()))?,
            );
        }
        Ok(frames)
    }

    /// Sends `stop` (when a connection is started) and closes.
    async fn stop(&mut self, reason: StopReason) {
        let Some(c) = self.conn.take() else { return };
        if c.started {
            let _ = c.out.try_send(text(&AgentEvent::Stop { reason }));
            let _ = c.out.try_send(Message::Close(None));
        }
        drop(c.out);
        let mut writer = c.writer;
        if tokio::time::timeout(STOP_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        tracing::info!(reason = reason.as_str(), "bridge stopped");
    }
}

/// Writes queued messages until the queue closes or the socket fails.
async fn write(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(m) = rx.recv().await {
        let close = matches!(m, Message::Close(_));
        if sink.send(m).await.is_err() || close {
            break;
        }
    }
    let _ = sink.close().await;
}
