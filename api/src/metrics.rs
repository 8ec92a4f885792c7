//! Prometheus metrics: request counts and latency per route, calls, tokens, the RTC
//! channel, robot sessions, the queue and connected agents. Counters are counted where
//! things happen; gauges that describe stored state are read from the store when
//! `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder (installed on first use).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Only this function installs a recorder; if one exists, ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Middleware: counts requests and records their latency by route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("dapi_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("dapi_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    resp
}

/// Refreshes the gauges that describe stored and connected state, then renders.
pub async fn render(state: &AppState) -> String {
    let store = state.store();
    let now = state.clock().now_ms();
    match store.calls_by_state().await {
        Ok(rows) => {
            for (st, n) in rows {
                metrics::gauge!("dapi_calls", "state" => st).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: calls by state"),
    }
    match store.queue_stats(now).await {
        Ok(q) => {
            for st in crate::store::RobotState::ALL {
                let n = q
                    .by_state
                    .iter()
                    .find(|(s, _)| s == st.as_str())
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                metrics::gauge!("dapi_robot_sessions", "state" => st.as_str()).set(n as f64);
            }
            metrics::gauge!("dapi_robot_queue_depth").set(q.depth as f64);
            metrics::gauge!("dapi_robot_queue_oldest_age_seconds")
                .set(q.oldest_queued_age_ms as f64 / 1000.0);
            metrics::gauge!("dapi_robot_redispatches").set(q.redispatches as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: queue stats"),
    }
    let agents = state.dispatcher().agents();
    metrics::gauge!("dapi_agents_connected").set(agents.len() as f64);
    metrics::gauge!("dapi_agents_capacity")
        .set(agents.iter().map(|a| f64::from(a.capacity)).sum::<f64>());
    metrics::gauge!("dapi_agents_load").set(agents.iter().map(|a| f64::from(a.load)).sum::<f64>());
    for a in &agents {
        metrics::gauge!("dapi_agent_sessions", "agent" => a.agent_id.clone())
            .set(f64::from(a.load));
    }
    let (channels, peers, sockets) = state.rtc().occupancy();
    metrics::gauge!("dapi_rtc_channels").set(channels as f64);
    metrics::gauge!("dapi_rtc_peers").set(peers as f64);
    metrics::gauge!("dapi_rtc_sockets").set(sockets as f64);
    handle().render()
}
