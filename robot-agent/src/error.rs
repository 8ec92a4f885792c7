//! The one error type of the agent ([`AgentError`]).

use std::time::Duration;

use crate::assets::AssetError;
use crate::signaling::JoinError;

/// What went wrong in the agent, named for what happens next.
///
/// A session that ends with one of the session variants reports `failed` with the error's
/// text as the status detail (the API then offers it again with backoff, from the position
/// reported, until it is `dead`); the link variants make the link try again.
///
/// | variant | meaning | what the caller does |
/// |---|---|---|
/// | [`JoinFailed`](AgentError::JoinFailed) | the channel could not be joined (refused: bad token, `channel_full`; or unreachable) | the session fails; the API offers it again |
/// | [`RejoinRefused`](AgentError::RejoinRefused) | the `/rtc` socket was lost and joining again was refused (token expired, kicked, full) | the session fails at its position |
/// | [`RejoinGaveUp`](AgentError::RejoinGaveUp) | the `/rtc` socket was lost and could not be joined again within `rejoin_for` | the session fails at its position; the API resumes it elsewhere |
/// | [`AudioUnavailable`](AgentError::AudioUnavailable) | an asset of the playlist is missing, unreachable or unplayable | the session fails before playing; fix or re-upload the asset |
/// | [`AudioFailed`](AgentError::AudioFailed) | the audio failed during playback (a corrupt tail found mid-stream) | the session fails at its position with the error on it |
/// | [`LinkUnreachable`](AgentError::LinkUnreachable) | the `/agent` socket could not be opened | the link retries with backoff |
/// | [`LinkRefused`](AgentError::LinkRefused) | the API answered the `/agent` upgrade with an HTTP error (401: wrong agent key) | the link retries with backoff; check the key |
/// | [`InvalidAgentKey`](AgentError::InvalidAgentKey) | the agent key cannot be sent as a header | fix the configuration |
/// | [`UploadFailed`](AgentError::UploadFailed) | a recording upload failed (API down, refused) | logged; the next upload re-sends the whole file so far |
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Joining the session's channel failed.
    #[error("join: {0}")]
    JoinFailed(#[source] JoinError),
    /// The `/rtc` socket was lost and the API refused the session's join when it came back.
    #[error("the channel socket closed; rejoin refused: {code}: {message}")]
    RejoinRefused {
        /// Error code of the `/rtc` protocol.
        code: String,
        /// Its message.
        message: String,
    },
    /// The `/rtc` socket was lost and could not be joined again in time.
    #[error(
        "the channel socket closed and could not be joined again within {} s: {last}",
        within.as_secs()
    )]
    RejoinGaveUp {
        /// How long the session tried (`rejoin_for`).
        within: Duration,
        /// The last attempt's error.
        #[source]
        last: JoinError,
    },
    /// An asset of the playlist could not be had.
    #[error(transparent)]
    AudioUnavailable(#[from] AssetError),
    /// The audio failed while it played (the frame source reported an error).
    #[error("audio failed during playback: {0}")]
    AudioFailed(String),
    /// The agent link could not be opened.
    #[error("{0}")]
    LinkUnreachable(String),
    /// The API refused the agent link.
    #[error("the API refused the agent link: HTTP {status}")]
    LinkRefused {
        /// The HTTP status of the refused upgrade.
        status: u16,
    },
    /// The agent key is not a valid header value.
    #[error("the agent key is not a valid header value")]
    InvalidAgentKey,
    /// A recording could not be uploaded.
    #[error("recording upload failed: {0}")]
    UploadFailed(String),
}

impl AgentError {
    /// The error of a failed rejoin: a refusal is final, anything else is `last`.
    pub fn rejoin(e: JoinError, within: Duration) -> Self {
        match e {
            JoinError::Refused { code, message } => Self::RejoinRefused { code, message },
            last => Self::RejoinGaveUp { within, last },
        }
    }
}
