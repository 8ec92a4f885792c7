//! The HTTP client of the push providers: hyper over rustls (ring provider), with one
//! timeout around each request, connect included, and a cap on what is read back.
//!
//! hyper directly rather than reqwest: enabling reqwest's rustls without aws-lc means
//! every reqwest client built anywhere in the workspace would then need a process-wide
//! crypto provider installed first.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An answer: status, headers and at most the capped body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The body, empty when it was longer than the cap.
    pub body: Bytes,
}

/// Which protocols a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTPS with HTTP/2 only (APNs).
    Http2Only,
    /// HTTP or HTTPS, HTTP/1.1 or HTTP/2 as ALPN decides (the webhook).
    Any,
}

/// A pooled client for one provider.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// TLS for the push clients: rustls on ring, Mozilla's roots plus `extra_ca` (PEM).
pub fn tls_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading DAPI_PUSH_CA_FILE {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("a certificate of {}", path.display()))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "{} holds no PEM certificate", path.display());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl HttpClient {
    /// A client with `tls`, speaking `protocols`; each request (connect included) ends
    /// after `timeout`.
    pub fn new(tls: rustls::ClientConfig, protocols: Protocols, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let https = match protocols {
            Protocols::Http2Only => builder.https_only().enable_http2().wrap_connector(http),
            Protocols::Any => builder
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            // APNs wants long-lived connections.
            .pool_idle_timeout(Duration::from_secs(600))
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true)
            .http2_only(protocols == Protocols::Http2Only);
        Self {
            inner: b.build(https),
            timeout,
        }
    }

    /// POSTs `body` to `url` with `headers`; reads at most `cap` bytes of the answer.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        cap: usize,
    ) -> Result<HttpAnswer, String> {
        let mut req = http::Request::post(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| super::error_chain(&e))?;
            let (parts, body) = resp.into_parts();
            let body = match Limited::new(body, cap).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok(HttpAnswer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", self.timeout.as_secs())),
        }
    }
}
