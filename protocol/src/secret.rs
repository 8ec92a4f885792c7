//! [`Secret`]: a key or password from the configuration of `api` or `robot-agent`.
//!
//! One type on both sides of the agent link, so that the API's `DAPI_AGENT_KEY` and the
//! agent's copy of it are handled alike: never printed by `Debug`, compared in constant
//! time, and an empty value refused when parsed.

/// A secret string: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An empty value is refused rather than taken as a key: `DAPI_ADMIN_KEY=` in an env file
/// would otherwise turn an endpoint on with the empty string as its key.
impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("a secret must not be empty: unset the variable instead".into());
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(s)).contains("hunter2"));
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let s = Secret::new("k3y");
        assert!(s.matches("k3y"));
        assert!(!s.matches("k3y "));
        assert!(!s.matches("k3"));
        assert!(!s.matches(""));
    }

    #[test]
    fn an_empty_or_blank_value_is_refused() {
        assert!("".parse::<Secret>().is_err());
        assert!("  ".parse::<Secret>().is_err());
        assert_eq!("k".parse::<Secret>().unwrap().expose(), "k");
    }
}
