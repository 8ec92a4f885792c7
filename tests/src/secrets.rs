//! The check that a process never logged what must not reach a log: SDP, ICE candidates,
//! tokens (docs/security.md).

/// What no log line may contain: SDP (`v=0`), ICE candidates, a token field, the start of
/// a token minted with the test App ID.
pub const SECRETS: &[&str] = &[
    "v=0",
    "a=candidate",
    "candidate:",
    "typ host",
    "\"token\"",
    "006970CA35de60c",
];

/// Fails when a line of `logs` contains one of [`SECRETS`] or of `extra` (the keys a test
/// started its processes with); `what` names the process in the message.
pub fn assert_no_secrets(what: &str, logs: &[String], extra: &[&str]) {
    for line in logs {
        for secret in SECRETS.iter().chain(extra) {
            assert!(!line.contains(secret), "{what} logged {secret:?}: {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_logs_pass() {
        assert_no_secrets("x", &["listening".into(), "joined".into()], &["k3y"]);
    }

    #[test]
    #[should_panic(expected = "logged \"a=candidate\"")]
    fn a_candidate_fails() {
        assert_no_secrets("x", &["sdp a=candidate:1 1 udp".into()], &[]);
    }

    #[test]
    #[should_panic(expected = "x logged \"k3y\"")]
    fn an_extra_key_fails() {
        assert_no_secrets("x", &["Bearer k3y".into()], &["k3y"]);
    }
}
