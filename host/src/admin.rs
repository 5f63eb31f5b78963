//! The admin HTTP endpoint, for probes, Prometheus and operators:
//!
//! - `GET /metrics` — every metric, OpenMetrics text;
//! - `GET /healthz` — 200 while the process serves requests (liveness);
//! - `GET /readyz` — 200 once partitions are assigned and their state
//!   restored, 503 with the reason otherwise (readiness);
//! - `GET /plugins` — JSON: each plugin's version, hash, file, status and
//!   last error.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::info;

use crate::plugin::Registry;
use crate::telemetry::Telemetry;

/// What the endpoint reports on.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Metrics and readiness.
    pub telemetry: Telemetry,
    /// The plugins.
    pub plugins: Arc<Registry>,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("admin.addr: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// Binds the admin address (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

impl Admin {
    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/plugins", get(plugins))
            .with_state(self)
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "Admin endpoint listening (/metrics, /healthz, /readyz, /plugins).");
        }
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.telemetry.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> Response {
    match admin.telemetry.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn plugins(State(admin): State<Admin>) -> Response {
    axum::Json(admin.plugins.statuses()).into_response()
}
