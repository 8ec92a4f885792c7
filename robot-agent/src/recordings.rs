//! Recording uploads to the API: `PUT /agent/recordings/{session_id}/{uid}?part=P&final=F`
//! with the agent key, the body an Ogg Opus file (docs/recordings.md).

use async_trait::async_trait;
use protocol::Secret;

use crate::error::AgentError;
use crate::session::RecordingSink;

/// Uploads recordings to the API over HTTP.
pub struct ApiRecordings {
    http: reqwest::Client,
    api_url: String,
    agent_key: Secret,
}

impl std::fmt::Debug for ApiRecordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRecordings")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl ApiRecordings {
    /// Uploads to `api_url` with `agent_key`.
    pub fn new(api_url: &str, agent_key: &Secret) -> anyhow::Result<Self> {
        Ok(Self {
            http: crate::assets::http_client()?,
            api_url: api_url.trim_end_matches('/').to_owned(),
            agent_key: agent_key.clone(),
        })
    }
}

/// Percent-encodes a path segment (uids are free text on `/rtc`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait]
impl RecordingSink for ApiRecordings {
    async fn upload(
        &self,
        session_id: i64,
        uid: &str,
        part: u32,
        last: bool,
        body: Vec<u8>,
    ) -> Result<(), AgentError> {
        let url = format!(
            "{}/agent/recordings/{session_id}/{}?part={part}&final={last}",
            self.api_url,
            segment(uid)
        );
        let r = self
            .http
            .put(url)
            .bearer_auth(self.agent_key.expose())
            .header("content-type", "audio/ogg")
            .body(body)
            .send()
            .await
            .map_err(|e| AgentError::UploadFailed(e.to_string()))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(AgentError::UploadFailed(format!("HTTP {}", r.status())))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uids_are_escaped_in_the_path() {
        assert_eq!(super::segment("1001"), "1001");
        assert_eq!(super::segment("a b/c"), "a%20b%2Fc");
    }
}
