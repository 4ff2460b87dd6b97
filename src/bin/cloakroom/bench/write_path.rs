//! The write path's own histograms, read from an in-process recorder the
//! bench installs (see the `mod write_path` line in `bench.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use hdrhistogram::Histogram as Hdr;
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// One histogram: samples scaled (seconds to µs) into an HDR histogram.
struct H {
    hdr: Mutex<Hdr<u64>>,
    scale: f64,
}

impl HistogramFn for H {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // scaled, non-negative samples
    fn record(&self, v: f64) {
        if let Ok(mut h) = self.hdr.lock() {
            let _ = h.record((v * self.scale).max(0.0) as u64);
        }
    }
}

#[derive(Default)]
struct Rec {
    hists: Mutex<BTreeMap<String, Arc<H>>>,
}

impl Recorder for Rec {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let name = key.name();
        // Only the background threads' histograms (one writer each): the
        // callers' own latencies are the bench's table.
        if !["cloakroom.writer.", "cloakroom.journal.", "cloakroom.applier."].iter().any(|p| name.starts_with(p)) {
            return Histogram::noop();
        }
        let mut label = name.to_owned();
        for l in key.labels() {
            let _ = write!(label, "{{{}={}}}", l.key(), l.value());
        }
        let scale = if name.ends_with("duration") || name.ends_with("wait") { 1e6 } else { 1.0 };
        let Ok(mut hists) = self.hists.lock() else { return Histogram::noop() };
        let h = hists
            .entry(label)
            .or_insert_with(|| Arc::new(H { hdr: Mutex::new(Hdr::new(3).unwrap_or_else(|_| unreachable!())), scale }));
        Histogram::from_arc(Arc::clone(h))
    }
}

static REC: OnceLock<&'static Rec> = OnceLock::new();

/// Installs the recorder (once; before the store opens).
pub(crate) fn install() {
    let rec: &'static Rec = Box::leak(Box::default());
    if metrics::set_global_recorder(rec).is_ok() {
        let _ = REC.set(rec);
    }
}

/// Forgets every sample (the load phase's).
pub(crate) fn reset() {
    if let Some(Ok(hists)) = REC.get().map(|r| r.hists.lock()) {
        for h in hists.values() {
            if let Ok(mut hdr) = h.hdr.lock() {
                hdr.reset();
            }
        }
    }
}

/// The table: count, p50, p90, p99, p99.9 and max of each histogram.
pub(crate) fn report() -> String {
    let mut out = String::from("\nwrite path (durations in µs; batch.ops in ops, batch.bytes in bytes)\n");
    let _ = writeln!(
        out,
        "{:<52} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "histogram", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    if let Some(Ok(hists)) = REC.get().map(|r| r.hists.lock()) {
        for (name, h) in hists.iter() {
            let Ok(hdr) = h.hdr.lock() else { continue };
            if hdr.is_empty() {
                continue;
            }
            let q = |x: f64| hdr.value_at_quantile(x);
            let _ = writeln!(
                out,
                "{name:<52} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                hdr.len(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                hdr.max()
            );
        }
    }
    out
}
