//! A small real app on cloakroom's axum layer.
//!
//! ```sh
//! cargo run --example axum_app --features axum,metrics
//! ```
//!
//! Serves on a printed loopback address (`CLOAKROOM_APP_ADDR`, default
//! `127.0.0.1:3000`; port 0 picks a free one) with sessions in
//! `axum_app.redb` (`CLOAKROOM_APP_DB`). Users: alice / "correct horse
//! battery staple", bob / "hunter2hunter2". `CLOAKROOM_ACCESS_TTL_SECS` sets a
//! short access-token life to watch the page refresh it.
//!
//! It serves plain HTTP, so it runs the web layer in insecure dev mode
//! (cookies without `Secure`); behind TLS, drop that line and the cookies are
//! `__Host-session` / `__Secure-refresh`, `Secure`.
//!
//! Observability: logs go to stdout through `tracing-subscriber`, filtered by
//! `RUST_LOG` (default `info`; `RUST_LOG=info,cloakroom=debug` adds a span
//! per store write), as JSON lines with `CLOAKROOM_LOG_JSON=1`. `GET
//! /metrics` serves the store's counters, gauges and histograms in
//! Prometheus text format (docs/metrics.md lists them).

mod app;
mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use cloakroom::axum::{Unauthenticated, Web, WebConfig};
use cloakroom::{Config, Store};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    telemetry::init_logging()?;
    // Before the store opens: the store describes its metrics to the recorder at open.
    let metrics = telemetry::install_recorder()?;
    telemetry::spawn_upkeep(metrics.clone());
    let addr: SocketAddr = env("CLOAKROOM_APP_ADDR").unwrap_or_else(|| "127.0.0.1:3000".into()).parse()?;
    let db = env("CLOAKROOM_APP_DB").unwrap_or_else(|| "axum_app.redb".into());
    let mut config = Config::builder();
    if let Some(s) = env("CLOAKROOM_ACCESS_TTL_SECS") {
        config.access_ttl(Duration::from_secs(s.parse()?)).leeway(Duration::ZERO);
    }
    let store = Store::open(&db, config.build()?)?;
    let web = Web::new(
        store,
        WebConfig::default()
            .insecure_dev_mode_plain_http()
            .unauthenticated(Unauthenticated::RedirectPages("/login".into())),
    )?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // A log line, not a println: in JSON mode stdout carries JSON lines only.
    tracing::info!(addr = %format_args!("http://{local}"), db, "listening; Prometheus metrics on /metrics");
    let app = telemetry::with_metrics(app::router(web.clone()), metrics);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    web.store().close()?;
    Ok(())
}
