//! The robot's `/rtc` socket: it joins a channel exactly like an app (docs/rtc-protocol.md).
//!
//! ```text
//!  ChannelSocket::join(url, agent_key, app_id, channel, uid, token)
//!     ──► {"type":"join",...}   ◄── {"type":"joined", peers, ice_servers}
//!  send(ClientMessage)  /  next() -> ServerMessage      (pings answered by tungstenite)
//! ```
//!
//! Sessions reach the socket through two small traits, [`Signaling`] (join) and
//! [`ChannelLink`] (one joined socket), implemented here by [`RtcSignaling`] and
//! [`ChannelSocket`]; the `test-util` feature adds an in-memory pair
//! (`test_util::FakeSignaling`) that lets a test play the API's side of the socket.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use protocol::secret::Secret;
use protocol::signaling::{ClientMessage, IceServer, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The socket could not be opened.
    #[error("cannot reach /rtc: {0}")]
    Unreachable(String),
    /// The server refused the join (bad token, channel full...).
    #[error("join refused: {code}: {message}")]
    Refused {
        /// Error code of the `/rtc` protocol.
        code: String,
        /// Its message.
        message: String,
    },
    /// No `joined` in time, or the socket closed.
    #[error("join did not complete: {0}")]
    Incomplete(String),
}

/// What `joined` said.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Uids already present.
    pub peers: Vec<String>,
    /// ICE servers to use.
    pub ice_servers: Vec<IceServer>,
}

/// A joined `/rtc` socket.
pub struct ChannelSocket {
    ws: Ws,
}

impl std::fmt::Debug for ChannelSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelSocket")
    }
}

/// `ws(s)://host/rtc` for an API base URL `http(s)://host`.
pub fn rtc_url(api_url: &str) -> String {
    ws_url(api_url, "/rtc")
}

/// The WebSocket URL of `path` on the API.
pub fn ws_url(api_url: &str, path: &str) -> String {
    let base = api_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}{path}")
}

impl ChannelSocket {
    /// Opens the socket and joins; returns once `joined` arrived.
    ///
    /// `agent_key`: the robot agent's key, presented on the upgrade
    /// (`Authorization: Bearer`), so the API counts the socket against its total only,
    /// not against the agent host's address (`DAPI_RTC_SOCKETS_PER_IP`): one agent
    /// address holds every session of that agent. The join itself is checked as anyone's.
    pub async fn join(
        url: &str,
        agent_key: Option<&str>,
        app_id: &str,
        channel: &str,
        uid: &str,
        token: &str,
    ) -> Result<(Self, Joined), JoinError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url
            .into_client_request()
            .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        if let Some(key) = agent_key {
            let value = format!("Bearer {key}").parse().map_err(|_| {
                JoinError::Unreachable("the agent key is not a valid header".into())
            })?;
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
                value,
            );
        }
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            // An 8 KiB read buffer, not tungstenite's 128 KiB (zero-filled on the first read,
            // so resident): one per session; signaling messages are a few KiB and a larger
            // frame still grows it (docs/decisions.md, "Lighter listeners").
            tokio_tungstenite::connect_async_with_config(
                request,
                Some(
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .read_buffer_size(8 * 1024),
                ),
                false,
            ),
        )
        .await
        .map_err(|_| JoinError::Unreachable("timed out".into()))?
        .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        let mut s = Self { ws };
        s.send(&ClientMessage::Join {
            app_id: app_id.to_owned(),
            channel: channel.to_owned(),
            uid: uid.to_owned(),
            token: token.to_owned(),
        })
        .await
        .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.next().await {
                    Some(ServerMessage::Joined {
                        peers, ice_servers, ..
                    }) => return Ok(Joined { peers, ice_servers }),
                    Some(ServerMessage::Error { code, message }) => {
                        return Err(JoinError::Refused { code, message });
                    }
                    Some(ServerMessage::Kicked { reason }) => {
                        return Err(JoinError::Refused {
                            code: "kicked".into(),
                            message: reason,
                        });
                    }
                    Some(_) => continue,
                    None => return Err(JoinError::Incomplete("the socket closed".into())),
                }
            }
        })
        .await
        .map_err(|_| JoinError::Incomplete("no joined within 10 s".into()))??;
        Ok((s, joined))
    }

    /// Sends one message.
    pub async fn send(
        &mut self,
        msg: &ClientMessage,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(msg.to_json().into())).await
    }

    /// The next server message; `None` once the socket is closed. Frames that do not
    /// parse are skipped (logged without their content).
    pub async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => match ServerMessage::parse(&t) {
                    Ok(m) => return Some(m),
                    Err(e) => tracing::warn!(error = %e, "unreadable /rtc frame"),
                },
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends `leave` and closes the socket (best effort, bounded).
    pub async fn leave(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = self.send(&ClientMessage::Leave).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }
}

/// The socket is closed: a message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel socket is closed")]
pub struct SocketClosed;

/// Joins channels on `/rtc` (one per process, shared by every session).
#[async_trait]
pub trait Signaling: Send + Sync + 'static {
    /// Opens a socket and joins `channel` as `uid`; returns once `joined` arrived.
    async fn join(
        &self,
        app_id: &str,
        channel: &str,
        uid: &str,
        token: &str,
    ) -> Result<(Box<dyn ChannelLink>, Joined), JoinError>;
}

/// One joined `/rtc` socket, as a session uses it.
#[async_trait]
pub trait ChannelLink: Send + 'static {
    /// Sends one message.
    async fn send(&mut self, msg: &ClientMessage) -> Result<(), SocketClosed>;
    /// The next server message; `None` once the socket is closed.
    async fn next(&mut self) -> Option<ServerMessage>;
    /// Sends `leave` and closes the socket (best effort, bounded).
    async fn leave(self: Box<Self>);
}

/// The real [`Signaling`]: WebSockets to the API's `/rtc`.
#[derive(Clone)]
pub struct RtcSignaling {
    url: String,
    agent_key: Option<Secret>,
}

impl std::fmt::Debug for RtcSignaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcSignaling")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RtcSignaling {
    /// Joins on `url` (`ws(s)://host/rtc`, see [`rtc_url`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            agent_key: None,
        }
    }

    /// Presents the agent key on every upgrade (see [`ChannelSocket::join`]).
    #[must_use]
    pub fn with_agent_key(mut self, key: Secret) -> Self {
        self.agent_key = Some(key);
        self
    }
}

#[async_trait]
impl Signaling for RtcSignaling {
    async fn join(
        &self,
        app_id: &str,
        channel: &str,
        uid: &str,
        token: &str,
    ) -> Result<(Box<dyn ChannelLink>, Joined), JoinError> {
        let key = self.agent_key.as_ref().map(Secret::expose);
        let (s, j) = ChannelSocket::join(&self.url, key, app_id, channel, uid, token).await?;
        Ok((Box::new(s), j))
    }
}

#[async_trait]
impl ChannelLink for ChannelSocket {
    async fn send(&mut self, msg: &ClientMessage) -> Result<(), SocketClosed> {
        ChannelSocket::send(self, msg)
            .await
            .map_err(|_| SocketClosed)
    }
    async fn next(&mut self) -> Option<ServerMessage> {
        ChannelSocket::next(self).await
    }
    async fn leave(self: Box<Self>) {
        ChannelSocket::leave(*self).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls() {
        assert_eq!(
            super::rtc_url("http://127.0.0.1:80/"),
            "ws://127.0.0.1:80/rtc"
        );
        assert_eq!(super::rtc_url("https://a.example"), "wss://a.example/rtc");
        assert_eq!(super::ws_url("http://h:1", "/agent"), "ws://h:1/agent");
    }
}
