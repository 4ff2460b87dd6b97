//! No secret in any telemetry (issue 27 item 4): a capturing `tracing`
//! subscriber (every level) and the `metrics` debugging recorder see every
//! public operation, failures included; no recorded field, message or label
//! holds a session token, its secret, a refresh token, a JWT or a CSRF token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cloakroom::{Config, Error, ManualClock, NewSession, Reuse, Scope, Store};
use metrics_util::debugging::DebuggingRecorder;
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

#[test]
fn no_secret_reaches_any_span_event_or_metric() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();

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
