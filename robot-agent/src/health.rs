//! A small HTTP port for operators: `GET /healthz` (the process runs), `GET /readyz` (the
//! agent link is registered and the agent is not draining: 503 otherwise), `GET /metrics`
//! (Prometheus text). HTTP/1.1 by hand on a `TcpListener`; one request per connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// Serves on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let m = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, m)).await;
        });
    }
}

/// The response to a request line's path: status, content type, body.
pub fn route(path: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    match path {
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            let up = metrics.link_up.load(Ordering::Relaxed);
            let draining = metrics.draining.load(Ordering::Relaxed);
            if up && !draining {
                (200, "text/plain", "ready\n".into())
            } else if draining {
                (503, "text/plain", "draining\n".into())
            } else {
                (503, "text/plain", "agent link not registered\n".into())
            }
        }
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

async fn handle(mut stream: TcpStream, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let r = stream.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (status, ctype, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => route(path.split('?').next().unwrap_or(path), &metrics),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_link_and_the_drain() {
        let m = Metrics::new(2);
        assert_eq!(route("/healthz", &m).0, 200);
        assert_eq!(route("/readyz", &m).0, 503);
        m.link_up.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", &m).0, 200);
        m.draining.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", &m).0, 503);
        assert!(route("/metrics", &m).2.contains("robot_capacity 2"));
        assert_eq!(route("/nope", &m).0, 404);
    }
}
