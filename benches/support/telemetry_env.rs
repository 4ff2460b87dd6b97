//! What the telemetry-cost runs install before measuring (issue 27 item 5):
//! `CLOAKROOM_BENCH_TELEMETRY=info` a `tracing-subscriber` fmt subscriber
//! filtered at INFO, writing to a sink (the cost measured is the
//! instrumentation's and the filter's, not a terminal's);
//! `CLOAKROOM_BENCH_TELEMETRY=metrics` the Prometheus exporter's recorder
//! (needs `--features metrics`). Unset: nothing (the default cost).

/// Installs what `CLOAKROOM_BENCH_TELEMETRY` names, once per process.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match std::env::var("CLOAKROOM_BENCH_TELEMETRY").as_deref() {
        Ok("info") => {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("a subscriber was already installed");
            eprintln!("telemetry: tracing subscriber at INFO");
        }
        #[cfg(feature = "metrics")]
        Ok("metrics") => {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            metrics::set_global_recorder(recorder).expect("a recorder was already installed");
            eprintln!("telemetry: Prometheus metrics recorder");
        }
        Ok("") | Err(_) => {}
        Ok(other) => {
            panic!("CLOAKROOM_BENCH_TELEMETRY={other}: expected info or metrics (metrics needs --features metrics)")
        }
    });
}
