//! The example app's logs and metrics: a `tracing-subscriber` log (plain text,
//! or JSON lines with `CLOAKROOM_LOG_JSON=1`; filter from `RUST_LOG`, default
//! `info`) and a Prometheus recorder whose text is served on `GET /metrics`.
//! Shared by `main.rs` and the tests, which serve the same routes in-process.
//!
//! cloakroom itself links only the `tracing` and `metrics` facades (feature
//! `metrics`; see docs/metrics.md): what is collected, and where it goes, is
//! decided here, by the application.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable that switches the log to JSON lines.
pub const LOG_JSON_VAR: &str = "CLOAKROOM_LOG_JSON";

/// The content type of Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder's upkeep runs (drains histogram samples).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Whether `value` (of [`LOG_JSON_VAR`]) asks for JSON lines: `1`, `true`,
/// `yes` or `on`, in any case. Unset, empty or anything else: plain text.
pub fn wants_json(value: Option<&str>) -> bool {
    value.is_some_and(|v| ["1", "true", "yes", "on"].iter().any(|t| v.trim().eq_ignore_ascii_case(t)))
}

/// The log filter: `RUST_LOG` if set (an invalid directive is an error, not
/// silently ignored), else `info`.
///
/// # Errors
/// `RUST_LOG` does not parse.
pub fn filter_from_env() -> Result<EnvFilter, tracing_subscriber::filter::FromEnvError> {
    EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env()
}

/// A log subscriber writing to `writer`: JSON lines when `json`, else plain
/// text (no colours: logs usually go to a file or a collector).
pub fn subscriber<W>(json: bool, filter: EnvFilter, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false);
    if json { Box::new(fmt.json().finish()) } else { Box::new(fmt.finish()) }
}

/// Installs the process's log subscriber on stdout, as the environment says
/// ([`LOG_JSON_VAR`], `RUST_LOG`).
///
/// # Errors
/// `RUST_LOG` does not parse, or a global subscriber is already installed.
pub fn init_logging() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let json = wants_json(std::env::var(LOG_JSON_VAR).ok().as_deref());
    let filter = filter_from_env().map_err(|e| format!("RUST_LOG: {e}"))?;
    tracing::subscriber::set_global_default(subscriber(json, filter, std::io::stdout))?;
    Ok(())
}

/// The handle of the Prometheus recorder this module installed, if any.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder as the process's global `metrics`
/// recorder and returns its handle; a second call returns the same handle
/// (a process has one global recorder). Call it before opening the store, so
/// the store's metric descriptions (units, help text) reach it.
///
/// # Errors
/// Another recorder (not this module's) is already installed.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let mut installed = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = installed.as_ref() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new().install_recorder()?;
    *installed = Some(h.clone());
    Ok(h)
}

/// Runs the recorder's upkeep every few seconds on the current tokio runtime
/// (`install_recorder` leaves it to the caller); ends with the runtime.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    })
}

/// `app` plus `GET /metrics`: the recorder's Prometheus text. The route sits
/// outside the app's authentication layer (a scrape touches no session); in
/// production serve it on an internal port, or behind the proxy's access
/// rules, rather than to the internet.
pub fn with_metrics(app: Router, handle: PrometheusHandle) -> Router {
    app.route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], handle.render()).into_response() }
        }),
    )
}
