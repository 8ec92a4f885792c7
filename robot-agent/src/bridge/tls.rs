//! TLS for `wss://` bridge targets: rustls on the ring provider (no aws-lc build, as the
//! API's push client), trusting the system's roots plus, optionally, the CA certificates of
//! one PEM file (`--bridge-ca-file`, `ROBOT_BRIDGE_CA_FILE`: a program behind a private CA).
//!
//! One [`BridgeTls`] is built at start and shared by every session's socket. A file that
//! cannot be read or holds no certificate stops the agent at start, naming the setting;
//! a program whose certificate is not trusted is a [`super::BridgeError::Untrusted`] on
//! its session (the robot leaves at once, as for a 401: redialling cannot help).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The client side of `wss://` dials.
#[derive(Clone)]
pub struct BridgeTls {
    config: Arc<rustls::ClientConfig>,
    roots: usize,
}

impl std::fmt::Debug for BridgeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeTls")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Why the TLS settings cannot be used (at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or parsed.
    #[error("--bridge-ca-file / ROBOT_BRIDGE_CA_FILE {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("bridge TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl BridgeTls {
    /// The system's roots (as `rustls-native-certs` finds them: `SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`, else the distribution's bundle), plus the certificates of
    /// `extra_ca` (PEM, one or more) when given.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::warn!(
                errors = native.errors.len(),
                "bridge TLS: some system roots could not be read"
            );
        }
        let (system, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_ca {
            let bad = |why: String| TlsSetupError::CaFile {
                path: path.display().to_string(),
                why,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("a certificate is not a usable CA: {e}")))?;
            }
        }
        let n = roots.len();
        tracing::debug!(system, roots = n, "bridge TLS roots loaded");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            roots: n,
        })
    }

    /// The system's roots only (tests and tools that build a session context by hand).
    pub fn system() -> Self {
        // Without a file the only error is the provider refusing the default TLS versions,
        // which ring's does not.
        #[allow(clippy::expect_used)]
        Self::new(None).expect("the ring provider supports TLS 1.2 and 1.3")
    }

    /// How many roots it trusts.
    pub fn roots(&self) -> usize {
        self.roots
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA (P-256, valid until 2126), made with openssl for this test.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUCT0ukewpZlNmOTjsxfEHlSIK6RgwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTYnJpZGdlIHVuaXQgdGVzdCBDQTAgFw0yNjEyMDUwMjU0MDBa
GA8yMTI2MTExMTAyNTQwMFowHjEcMBoGA1UEAwwTYnJpZGdlIHVuaXQgdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABAsrrnwWmO/Xp0xFCXflgvPJwpVr
0IGF754qyANdsZ1Os1Kjn3Yev6y9B+MUpgEOYA5yjZx8/g92AJVrcSaEnTWjUzBR
MB0GA1UdDgQWBBTwgkRKMdBJ+MN6yyGm6QShUDT7fDAfBgNVHSMEGDAWgBTwgkRK
MdBJ+MN6yyGm6QShUDT7fDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIDEouitHJgby0IczLNFhk2pGHRNzVvqVrfCDk7EDIcQQAiEAmyLsMbYihFqh
AWsqjOCvtw+7hQxtl1jMcYUVwBXQkFY=
-----END CERTIFICATE-----
";

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("bridge-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_ca_file_is_trusted_beside_the_system_roots() {
        let system = BridgeTls::system().roots();
        let p = file("ca.pem", &format!("some words before\n{CA}"));
        assert_eq!(BridgeTls::new(Some(&p)).unwrap().roots(), system + 1);
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_naming_the_setting() {
        let missing = std::env::temp_dir().join("bridge-tls-no-such-file.pem");
        let e = BridgeTls::new(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.starts_with("--bridge-ca-file / ROBOT_BRIDGE_CA_FILE "),
            "{e}"
        );
        let p = file("empty.pem", "not a certificate\n");
        let e = BridgeTls::new(Some(&p)).unwrap_err().to_string();
        assert!(e.ends_with("no PEM certificate in it"), "{e}");
        let p = file("broken.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
        assert!(BridgeTls::new(Some(&p)).is_err());
    }
}
