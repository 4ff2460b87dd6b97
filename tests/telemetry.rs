//! No secret in any telemetry (issue 27 item 4): a capturing `tracing`
//! subscriber (every level) and the `metrics` debugging recorder see every
//! public operation, failures included; no recorded field, message or label
//! holds a session token, its secret, a refresh token, a JWT or a CSRF token.
//!
//! And the write path's metrics and events (issue 27 items 1, 2): each moves
//! by what the test did (N durable creates: N commit latencies, batch ops
//! summing to N, …). The subscriber and recorder are process-global: every
//! test installs them through [`telemetry`] and runs under [`serial`]. A
//! snapshot of the debugging recorder drains it (counters and gauges read 0,
//! histograms empty, until the next sample), so each snapshot says what
//! happened since the one before.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use cloakroom::{Config, Durability, Error, ManualClock, NewSession, Reuse, Scope, Store};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// Everything the subscriber was told, as text.
#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
}

struct Lines<'a>(&'a mut String);

impl Visit for Lines<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Capture {
    fn push(&self, what: &str, name: &str, rec: impl FnOnce(&mut Lines<'_>)) {
        let mut line = format!("{what} {name}");
        rec(&mut Lines(&mut line));
        self.lines.lock().unwrap().push(line);
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.push("span", span.metadata().name(), |l| span.record(l));
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        self.push("record", "", |l| values.record(l));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        self.push("event", event.metadata().target(), |l| event.record(l));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The process-global subscriber and recorder, installed once.
struct Telemetry {
    capture: Capture,
    snapshotter: Snapshotter,
}

fn telemetry() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.clone()).unwrap();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder).unwrap();
        Telemetry { capture, snapshotter }
    })
}

/// One test at a time (they share the recorder).
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One snapshot, by `name{label=value,…}` (labels sorted).
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    hists: HashMap<String, Vec<f64>>,
}

impl Seen {
    fn take(t: &Telemetry) -> Seen {
        let mut seen = Seen::default();
        for (key, _, _, value) in t.snapshotter.snapshot().into_vec() {
            let mut labels: Vec<String> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            let name = if labels.is_empty() {
                key.key().name().to_owned()
            } else {
                format!("{}{{{}}}", key.key().name(), labels.join(","))
            };
            match value {
                DebugValue::Counter(n) => {
                    seen.counters.insert(name, n);
                }
                DebugValue::Gauge(g) => {
                    seen.gauges.insert(name, g.into_inner());
                }
                DebugValue::Histogram(v) => {
                    seen.hists.insert(name, v.into_iter().map(|f| f.into_inner()).collect());
                }
            }
        }
        seen
    }
    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges.get(name).copied()
    }
    fn count(&self, name: &str) -> usize {
        self.hists.get(name).map_or(0, Vec::len)
    }
    fn sum(&self, name: &str) -> f64 {
        self.hists.get(name).map_or(0.0, |v| v.iter().sum())
    }
}

#[test]
fn no_secret_reaches_any_span_event_or_metric() {
    let t = telemetry();
    let _serial = serial();
    let capture = t.capture.clone();
    let snapshotter = &t.snapshotter;

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::fixed();
    let cfg = Config::builder().reuse(Reuse::Strict).clock(clock.clone()).build().unwrap();
    let store = Store::open(dir.path().join("t.redb"), cfg).unwrap();
    let mut secrets: Vec<String> = Vec::new();

    // Every public operation, successes and failures.
    let a = store.create(NewSession::new("alice").data(b"{}".to_vec())).unwrap();
    let tok = a.token.to_string();
    secrets.push(tok.clone());
    store.validate(&tok).unwrap();
    store.validate_strict(&tok).unwrap();
    let _ = store.validate("crs_not-a-token");
    let mut claims = BTreeMap::new();
    claims.insert("role".to_owned(), serde_json::json!("admin"));
    let pair = store.issue_tokens_with(&tok, claims).unwrap();
    secrets.push(pair.access.clone());
    secrets.push(pair.refresh.to_string());
    store.verify_access(&pair.access).unwrap();
    store.authenticate(&format!("Bearer {}", pair.access)).unwrap();
    store.authenticate(&tok).unwrap();
    let next = store.refresh(&pair.refresh.to_string()).unwrap();
    secrets.push(next.access.clone());
    secrets.push(next.refresh.to_string());
    // A replay: reuse detected, the session revoked (a WARN event).
    assert!(matches!(store.refresh(&pair.refresh.to_string()), Err(Error::ReuseDetected)));
    assert!(store.verify_access(&next.access).is_err());
    let b = store.create(NewSession::new("bob")).unwrap();
    let btok = b.token.to_string();
    secrets.push(btok.clone());
    let v = store.update_data(b.session.id(), b"x".to_vec()).unwrap();
    let _ = store.update_data_if(b.session.id(), v + 7, b"y".to_vec());
    let rotated = store.rotate(&btok).unwrap();
    secrets.push(rotated.token.to_string());
    let _ = store.rotate(&btok); // the old token: refused
    let _ = store.list_user("bob").unwrap();
    let _ = store.session(b.session.id()).unwrap();
    let _ = store.refresh_families(b.session.id()).unwrap();
    let bp = store.issue_tokens(&rotated.token.to_string()).unwrap();
    secrets.push(bp.access.clone());
    secrets.push(bp.refresh.to_string());
    store.revoke(b.session.id()).unwrap();
    let _ = store.verify_access(&bp.access);
    let c = store.create(NewSession::new("carol")).unwrap();
    secrets.push(c.token.to_string());
    store.revoke_user("carol", Scope::All).unwrap();
    store.logout_everywhere("alice").unwrap();
    let _ = store.authenticate("crr_garbage");
    let _ = store.verify_access("eyJhbGciOiJub25lIn0.e30.");
    store.flush().unwrap();
    store.checkpoint().unwrap();
    clock.advance(std::time::Duration::from_secs(8 * 24 * 3600));
    store.sweep().unwrap();
    store.prune_revocations().unwrap();
    store.publish_gauges();
    let _ = store.retire_key("no-such-kid");
    store.close().unwrap();
    let _ = store.validate(&tok); // closed

    let lines = capture.lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.contains("session.create")), "no span recorded: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("reuse detected")), "no reuse warning");
    // The secret parts: whole tokens, and for tokens the part past the public
    // id (the id's base64 is the first 21 characters of the payload).
    let mut needles: Vec<String> = Vec::new();
    for s in &secrets {
        needles.push(s.clone());
        if let Some(rest) = s.strip_prefix("crs_").or_else(|| s.strip_prefix("crr_")) {
            needles.push(rest[22..].to_owned());
        }
        for part in s.split('.') {
            if part.len() >= 16 {
                needles.push(part.to_owned());
            }
        }
    }
    for l in &lines {
        for n in &needles {
            assert!(!l.contains(n.as_str()), "telemetry line holds secret material: {l}");
        }
    }
    let snapshot = snapshotter.snapshot().into_vec();
    assert!(!snapshot.is_empty(), "no metric recorded");
    assert!(snapshot.iter().any(|(k, ..)| k.key().name() == "cloakroom.ops"));
    for (key, ..) in &snapshot {
        let mut text = key.key().name().to_owned();
        for label in key.key().labels() {
            let _ = write!(text, " {}={}", label.key(), label.value());
        }
        for n in &needles {
            assert!(!text.contains(n.as_str()), "metric holds secret material: {text}");
        }
        // Labels are bounded: never a user or session id.
        for user in ["alice", "bob", "carol"] {
            assert!(!text.contains(user), "metric labelled with a user id: {text}");
        }
    }
}

/// Issue 27 item 2: the writer's, journal's and applier's metrics move by
/// what was done; item 1: their events are there (and bounded).
#[test]
fn write_path_metrics_move_by_what_was_done() {
    let t = telemetry();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::fixed();
    let cfg = Config::builder()
        .durability(Durability::Immediate)
        .max_data_len(1 << 20)
        .sweep_interval(None)
        .clock(clock.clone())
        .build()
        .unwrap();
    let store = Store::open(dir.path().join("w.redb"), cfg).unwrap();
    let _ = Seen::take(t); // drains the histograms
    // Segment fsyncs run on a helper thread (nothing waits for them): summed
    // over every snapshot, the last one taken after `close` (which joins it).
    let mut segment_fsyncs = 0;
    let fsyncs = |s: &Seen| s.count("cloakroom.journal.fsync.duration{sync=segment}");

    const N: usize = 12;
    for i in 0..N {
        store.create(NewSession::new(format!("w{i}")).data(vec![1; 100])).unwrap();
    }
    let seen = Seen::take(t);
    segment_fsyncs += fsyncs(&seen);
    // One durable job each: N commit latencies and N queue waits; every
    // journal record's ops sum to N (one caller: one create per record).
    assert_eq!(seen.count("cloakroom.writer.commit.duration"), N);
    assert!(seen.hists["cloakroom.writer.commit.duration"].iter().all(|&s| s > 0.0 && s < 60.0));
    assert_eq!(seen.count("cloakroom.writer.queue.wait"), N);
    assert_eq!(seen.sum("cloakroom.writer.batch.ops") as usize, N);
    assert!(seen.sum("cloakroom.writer.batch.bytes") >= (N * 100) as f64);
    assert!(seen.count("cloakroom.journal.fsync.duration{sync=batch}") >= 1);
    assert!(seen.gauge("cloakroom.writer.queue.depth").is_some_and(|d| d >= 1.0));
    assert!(seen.gauge("cloakroom.overlay.rows").is_some_and(|r| r >= N as f64));
    assert!(seen.gauge("cloakroom.journal.bytes").is_some_and(|b| b >= (N * 100) as f64));

    // A checkpoint folds them (≥ one row each) and the next batch prunes
    // the overlay (the writer's prune time is recorded, the gauge drops).
    store.checkpoint().unwrap();
    let seen = Seen::take(t);
    segment_fsyncs += fsyncs(&seen);
    assert_eq!(seen.count("cloakroom.applier.checkpoint.duration{trigger=request}"), 1);
    assert!(seen.sum("cloakroom.applier.checkpoint.rows") >= N as f64);
    assert_eq!(seen.count("cloakroom.checkpoint.duration"), 1);
    store.create(NewSession::new("after")).unwrap();
    let seen = Seen::take(t);
    segment_fsyncs += fsyncs(&seen);
    assert_eq!(seen.count("cloakroom.writer.stall.duration{cause=overlay_prune}"), 1);
    assert_eq!(seen.gauge("cloakroom.overlay.rows"), Some(1.0));

    // 9 MiB of journal: the active segment passes 8 MiB and appends move to
    // the other one, prepared by a helper thread (its fsync is recorded).
    for i in 0..9 {
        store.create(NewSession::new(format!("big{i}")).data(vec![2; 1 << 20])).unwrap();
    }
    store.create(NewSession::new("next")).unwrap();
    let seen = Seen::take(t);
    segment_fsyncs += fsyncs(&seen);
    assert!(seen.count("cloakroom.writer.stall.duration{cause=segment}") >= 1);
    assert!(seen.sum("cloakroom.writer.batch.bytes") >= (9 << 20) as f64);

    // A sweep counts exactly the sessions it removed.
    for i in 0..5 {
        store.create(NewSession::new(format!("short{i}")).ttl(Duration::from_secs(60))).unwrap();
    }
    clock.advance(Duration::from_secs(120));
    let report = store.sweep().unwrap();
    assert_eq!(report.sessions_removed(), 5);
    let seen = Seen::take(t);
    segment_fsyncs += fsyncs(&seen);
    assert_eq!(seen.counter("cloakroom.sweep.removed"), 5);
    store.close().unwrap();
    segment_fsyncs += fsyncs(&Seen::take(t));
    assert!(segment_fsyncs >= 1, "no segment preparation fsync recorded");

    let lines = t.capture.lines.lock().unwrap().clone();
    let has = |what: &str| lines.iter().any(|l| l.contains(what));
    assert!(has("writer batch") && has(" ops=") && has(" fsync_us="), "no writer batch event");
    assert!(has("checkpoint committed") && has(" rows=") && has(" overlay_rows="), "no checkpoint event");
    assert!(has("journal segment switched"), "no segment switch event");
}

#[cfg(feature = "redis")]
#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)] // the test starts its own server
mod redis_side;

/// Issue 27 items 1, 2 on Redis: round trips are counted; the follower's
/// state is a gauge (1 while following, 0 once its connection is cut) and
/// its catch-ups a counter; connecting is an INFO event, losing it a WARN.
#[cfg(feature = "redis")]
#[test]
#[allow(clippy::disallowed_methods)] // a deadline for a background thread's event, not a wait for time
fn redis_round_trips_and_follower_state_are_measured() {
    if !redis_side::available_for_tests("tests/telemetry.rs: the Redis metrics test") {
        return;
    }
    let t = telemetry();
    let _serial = serial();
    let server = redis_side::RedisServer::start("always").unwrap();
    let proxy = redis_side::Proxy::start(&server.addr()).unwrap();
    let cfg = Config::builder().server_key(&[7u8; 32]).sweep_interval(None).build().unwrap();
    let store = Store::redis(&proxy.url(), cfg).unwrap();
    // The follower connects on its own thread: wait for that event (not for time).
    let synced = |want: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while store.stats().following != Some(want) {
            assert!(std::time::Instant::now() < deadline, "follower never reached following={want}");
            std::thread::yield_now();
        }
    };
    synced(true);
    let seen = Seen::take(t);
    assert_eq!(seen.gauge("cloakroom.follower.synced"), Some(1.0));
    assert!(seen.counter("cloakroom.follower.resyncs") >= 1);
    assert!(seen.counter("cloakroom.redis.round_trips") >= 1, "the open's loads are round trips");
    for i in 0..3 {
        store.create(NewSession::new(format!("r{i}"))).unwrap();
    }
    let trips = Seen::take(t).counter("cloakroom.redis.round_trips");
    assert!(trips >= 3, "3 creates, {trips} round trips");

    // Cut: the follower loses the channel (a WARN) and stops following; healed,
    // it reconnects, catches up (one more resync) and the gauge is 1 again.
    // (A 0 cannot be told from the debugging recorder's drain: the WARN and
    // `Stats::following` say it.)
    proxy.cut();
    synced(false);
    proxy.heal();
    synced(true);
    let seen = Seen::take(t);
    assert_eq!(seen.counter("cloakroom.follower.resyncs"), 1);
    assert_eq!(seen.gauge("cloakroom.follower.synced"), Some(1.0));
    drop(store);

    let lines = t.capture.lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.contains("follower connected and caught up")));
    assert!(lines.iter().any(|l| l.contains("follower lost the Redis event channel")));
}
