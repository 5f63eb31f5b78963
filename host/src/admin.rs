//! The admin HTTP endpoint, for probes, Prometheus and operators:
//!
//! - `GET /metrics` — every metric, OpenMetrics text;
//! - `GET /healthz` — 200 while the process serves requests (liveness);
//! - `GET /readyz` — 200 once partitions are assigned and their state
//!   restored, 503 with the reason otherwise (readiness);
//! - `GET /plugins` — JSON: each plugin's version, hash, file, status and
//!   last error.
//!
//! Whoever reaches the port is untrusted: it keeps at most
//! [`MAX_CONNECTIONS`] open (so a flood cannot take the file descriptors
//! the pipeline needs), one request per connection, whose headers must
//! arrive within [`HEADER_TIMEOUT`], and no connection lives longer than
//! [`CONNECTION_LIFETIME`]. At the bound a new connection is still
//! accepted, and the oldest one still sending its request is closed for it
//! (or, if every one has sent its request, the oldest): clients that hold
//! connections open cannot make a probe wait behind them, since a probe
//! sends its request at once. At shutdown requests in flight get
//! [`SHUTDOWN_GRACE`], so no client can hold the daemon's exit up.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tower_service::Service as _;
use tracing::{debug, info, warn};

/// Connections kept open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The most a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is kept, response included (a slow reader of
/// `/metrics`).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long requests in flight may finish once shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// The pause after a failed accept (out of file descriptors, say), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// The most a connection buffers of a request (hyper's least is 8 KiB; a
/// probe's or a scrape's request is a few hundred bytes).
const MAX_REQUEST_BUFFER: usize = 16 * 1024;

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

    /// Serves on `listener` until `shutdown` resolves, within the bounds in
    /// the module's documentation; then requests in flight get
    /// [`SHUTDOWN_GRACE`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "Admin endpoint listening (/metrics, /healthz, /readyz, /plugins).");
        }
        let cut = self.telemetry.admin_connections_cut.clone();
        let router = self.router();
        let mut open = Connections::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut accept_failing = false;
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    if std::mem::take(&mut accept_failing) {
                        info!("Admin endpoint accepting connections again.");
                    }
                    open.reap();
                    if open.len() >= MAX_CONNECTIONS {
                        open.close_one();
                        cut.inc();
                    }
                    open.serve(stream, router.clone());
                }
                // The client left before it was accepted.
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    // Out of descriptors, say: said once, tried every second.
                    if !std::mem::replace(&mut accept_failing, true) {
                        warn!(error = %err, "Admin endpoint cannot accept connections; trying again every second.");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
        drop(listener);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while open.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            debug!(
                open = open.tasks.len(),
                "Admin connections dropped at shutdown."
            );
        }
        // Dropping the set aborts what is left.
    }
}

/// The connections being served, oldest first.
#[derive(Default)]
struct Connections {
    /// Each connection's task.
    tasks: JoinSet<()>,
    /// The open ones in the order they were accepted.
    slots: VecDeque<Slot>,
}

/// One open connection.
struct Slot {
    /// Its task, to close it.
    task: AbortHandle,
    /// Whether its request has arrived (set when it is handed to the
    /// router).
    asked: Arc<AtomicBool>,
}

impl Connections {
    /// Connections open.
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Serves `stream` within the endpoint's bounds.
    fn serve(&mut self, stream: TcpStream, router: Router) {
        let asked = Arc::new(AtomicBool::new(false));
        let task = self.tasks.spawn(connection(stream, router, asked.clone()));
        self.slots.push_back(Slot { task, asked });
    }

    /// Forgets the connections that have ended, so the set stays as small
    /// as the bound.
    fn reap(&mut self) {
        let mut ended = false;
        while self.tasks.try_join_next().is_some() {
            ended = true;
        }
        if ended {
            self.slots.retain(|slot| !slot.task.is_finished());
        }
    }

    /// Closes the oldest connection still sending its request, or the
    /// oldest if every one has sent it.
    fn close_one(&mut self) {
        let at = self
            .slots
            .iter()
            .position(|slot| !slot.asked.load(Ordering::Relaxed))
            .unwrap_or(0);
        if let Some(slot) = self.slots.remove(at) {
            slot.task.abort();
        }
    }
}

/// Serves one connection within the endpoint's bounds, noting in `asked`
/// when its request has arrived.
async fn connection(stream: TcpStream, router: Router, asked: Arc<AtomicBool>) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        asked.store(true, Ordering::Relaxed);
        router.clone().call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(error = %err, "Admin connection ended in error."),
        Err(_) => debug!("Admin connection closed at its time limit."),
    }
}

/// Whether an accept failed for the one connection only (as axum judges).
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
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
