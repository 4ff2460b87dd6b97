//! Several nodes on one Redis: two `Store`s in this process on one
//! `redis-server` (started here on a free 127.0.0.1 port and stopped when the
//! test ends, pass or fail), and faults: the server killed and restarted, the
//! subscriber connection dropped, the script cache flushed.
//!
//! Waits are bounded polls of 1 ms (the stores' clocks are manual where
//! expiry or staleness matters); a poll loop that runs out fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)] // the Redis baseline times its own server start
mod redis_side;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use cloakroom::{
    Clock as _, Config, Error, ManualClock, NewSession, RedisOptions, Reuse, Scope, StorageErrorKind, Store,
};

const KEY: [u8; 32] = [0x42; 32];
/// Bounded polls of 1 ms.
const POLL: Duration = Duration::from_millis(1);

/// The runner every Redis test, bench and the CLI share.
type Server = redis_side::RedisServer;

/// A fresh server for one test (AOF on, `appendfsync always`, its own
/// directory, so it can be killed and started again with its data), or
/// `None` (the test returns) where `redis_side::available_for_tests` says it
/// is skipped.
fn server() -> Option<Server> {
    redis_side::available_for_tests("multi-node Redis test").then(|| Server::start("always").unwrap())
}

/// The kind of a `Storage` error; panics on anything else. The same as
/// `tests/api/common.rs`'s: this binary cannot include that file, which
/// builds the API suites' stores from their crate's `REDIS` switch and
/// runner.
fn storage_kind<T>(r: Result<T, Error>) -> StorageErrorKind {
    match r {
        Err(Error::Storage(e)) => e.kind(),
        Err(e) => panic!("expected a Storage error, got {e:?}"),
        Ok(_) => panic!("expected a Storage error, got Ok"),
    }
}

/// Deletes every session row of prefix `app` behind the nodes' backs (no
/// event is published, as if one were lost); returns how many.
fn delete_rows_silently(server: &Server) -> usize {
    let keys: Vec<String> = redis::from_redis_value(server.cmd(redis::cmd("KEYS").arg("{app}:s:*")).unwrap()).unwrap();
    for k in &keys {
        server.cmd(redis::cmd("DEL").arg(k)).unwrap();
    }
    keys.len()
}

fn options(prefix: &str) -> RedisOptions {
    let mut o = RedisOptions::default();
    o.prefix = prefix.into();
    o.timeout = Duration::from_millis(300);
    o
}

fn config(clock: &ManualClock, reuse: Reuse) -> Config {
    Config::builder().server_key(&KEY).clock(clock.clone()).reuse(reuse).sweep_interval(None).build().unwrap()
}

/// Two nodes on one prefix, both following events.
fn two_nodes(server: &Server, reuse: Reuse) -> (Store, Store, ManualClock) {
    let clock = ManualClock::fixed();
    let a = Store::redis_with(&server.url(), options("app"), config(&clock, reuse)).unwrap();
    let b = Store::redis_with(&server.url(), options("app"), config(&clock, reuse)).unwrap();
    until("both followers are caught up", || a.stats().following == Some(true) && b.stats().following == Some(true));
    (a, b, clock)
}

/// Polls `f` every millisecond, at most 5000 times.
fn until(what: &str, mut f: impl FnMut() -> bool) -> u32 {
    for n in 0..5000 {
        if f() {
            return n;
        }
        std::thread::sleep(POLL);
    }
    panic!("never happened within 5000 polls: {what}");
}

#[test]
fn a_revoke_on_one_node_is_refused_by_the_other_within_50_ms() {
    let Some(server) = server() else { return };
    let (a, b, _) = two_nodes(&server, Reuse::default());
    let issued = a.create(NewSession::new("alice")).unwrap();
    let t = issued.token.to_string();
    b.validate(&t).unwrap(); // a miss: B fills its cache
    let hits = b.stats().cache_hits;
    b.validate(&t).unwrap();
    assert_eq!(b.stats().cache_hits, hits + 1, "B answers from its cache");

    a.revoke(issued.session.id()).unwrap();
    let mut refused = None;
    for n in 0..50 {
        match b.validate(&t) {
            Ok(_) => std::thread::sleep(POLL),
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (polls, e) = refused.expect("B still accepted the session after 50 polls of 1 ms");
    assert!(matches!(e, Error::Revoked), "{e:?}");
    eprintln!("B refused after {polls} polls of 1 ms");
}

#[test]
fn sixteen_threads_on_two_nodes_refreshing_one_token_rotate_it_once() {
    let Some(server) = server() else { return };
    let (a, b, _) = two_nodes(&server, Reuse::Grace(Duration::from_secs(10)));
    let t = a.create(NewSession::new("bob")).unwrap().token.to_string();
    let refresh = a.issue_tokens(&t).unwrap().refresh.to_string();
    let gate = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (gate, refresh) = (Arc::clone(&gate), refresh.clone());
            std::thread::spawn(move || {
                gate.wait();
                node.refresh(&refresh).map(|p| p.refresh.to_string())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let new: Vec<&String> =
        results.iter().map(|r| r.as_ref().expect("every refresh within the grace window")).collect();
    // One rotation: every caller got the same next token (the winner's, or
    // the current one handed back inside the grace window).
    assert!(new.iter().all(|t| *t == new[0]), "more than one rotation: {} distinct tokens", {
        let mut d = new.clone();
        d.sort();
        d.dedup();
        d.len()
    });
    // And it is the family's only next generation: it refreshes on either node.
    b.refresh(new[0]).unwrap();
}

#[test]
fn logout_everywhere_on_one_node_kills_the_other_nodes_live_access_tokens() {
    let Some(server) = server() else { return };
    let (a, b, clock) = two_nodes(&server, Reuse::default());
    let t = b.create(NewSession::new("carol")).unwrap().token.to_string();
    let pair = b.issue_tokens(&t).unwrap();
    b.verify_access(&pair.access).unwrap();
    clock.advance(Duration::from_secs(2)); // the cut-off is later than the token's iat
    a.logout_everywhere("carol").unwrap();
    until("B refuses the access token", || b.verify_access(&pair.access).is_err());
    assert!(b.validate(&t).is_err());
    // A node that opens afterwards loads the cut-off.
    let c = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    assert!(c.verify_access(&pair.access).is_err());
}

#[test]
fn a_node_with_another_server_key_or_access_key_is_refused() {
    let Some(server) = server() else { return };
    let clock = ManualClock::fixed();
    let _a = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    let other = Config::builder().server_key(&[1; 32]).clock(clock).build().unwrap();
    assert_eq!(storage_kind(Store::redis_with(&server.url(), options("app"), other)), StorageErrorKind::KeyMismatch);
    // Access-token keys: the same kid with other material is refused; a new
    // kid (a key being rolled out) is accepted and recorded.
    let ring = |secret: &[u8], extra: bool| {
        let k = cloakroom::Keyring::new();
        k.add_hs256("main", secret).unwrap();
        if extra {
            k.add_hs256("next", &[9; 32]).unwrap();
        }
        Config::builder().server_key(&KEY).keyring(k).clock(ManualClock::fixed()).build().unwrap()
    };
    Store::redis_with(&server.url(), options("app"), ring(&[1; 32], false)).unwrap();
    match Store::redis_with(&server.url(), options("app"), ring(&[2; 32], false)) {
        Err(Error::Config(m)) => assert!(m.contains("\"main\""), "{m}"),
        other => panic!("expected a keyring mismatch, got {:?}", other.map(|_| ())),
    }
    Store::redis_with(&server.url(), options("app"), ring(&[1; 32], true)).unwrap();
    // Without a configured key at all: a config error, nothing touched.
    assert!(matches!(Store::redis(&server.url(), Config::default()), Err(Error::Config(_))));
}

#[test]
fn a_store_of_another_layout_version_is_refused_untouched() {
    let Some(server) = server() else { return };
    let clock = ManualClock::fixed();
    drop(Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap());
    assert_eq!(
        server.cmd(redis::cmd("HGET").arg("{app}:meta").arg("format")).unwrap(),
        redis::Value::BulkString(b"1".to_vec())
    );
    server.cmd(redis::cmd("HSET").arg("{app}:meta").arg("format").arg("2")).unwrap();
    let again = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default()));
    assert_eq!(storage_kind(again), StorageErrorKind::NewerFormat);
    assert_eq!(
        server.cmd(redis::cmd("HGET").arg("{app}:meta").arg("format")).unwrap(),
        redis::Value::BulkString(b"2".to_vec())
    );
}

#[test]
fn immediate_durability_needs_a_server_that_fsyncs_every_write() {
    let Some(server) = server() else { return };
    server.cmd(redis::cmd("CONFIG").arg("SET").arg("appendfsync").arg("everysec")).unwrap();
    let clock = ManualClock::fixed();
    match Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())) {
        Err(Error::Config(m)) => assert!(m.contains("appendfsync everysec"), "{m}"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
    let mut o = options("app");
    o.require_fsync_always = false;
    Store::redis_with(&server.url(), o, config(&clock, Reuse::default())).unwrap();
}

#[test]
fn a_missed_event_is_bounded_by_the_staleness_bound() {
    let Some(server) = server() else { return };
    let (a, b, clock) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("dave")).unwrap().token.to_string();
    b.validate(&t).unwrap();
    // Remove the session behind the nodes' backs: no event is published.
    assert_eq!(delete_rows_silently(&server), 1);
    b.validate(&t).unwrap(); // still cached, within the bound (1 s)
    clock.advance(Duration::from_millis(1001));
    assert!(matches!(b.validate(&t), Err(Error::NotFound)));
    // `validate_strict` never answers from the cache.
    let t2 = a.create(NewSession::new("dave")).unwrap();
    b.validate(&t2.token.to_string()).unwrap();
    assert_eq!(delete_rows_silently(&server), 1);
    assert!(matches!(b.validate_strict(&t2.token.to_string()), Err(Error::NotFound)));
}

#[test]
fn a_dropped_subscriber_connection_flushes_the_cache_before_hits_are_served_again() {
    let Some(server) = server() else { return };
    let (a, b, _) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("erin")).unwrap().token.to_string();
    b.validate(&t).unwrap();
    let resyncs = b.stats().resyncs;
    // A missed revocation: the row goes without an event, then the
    // subscriber connections are dropped.
    assert_eq!(delete_rows_silently(&server), 1);
    server.cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub")).unwrap();
    until("B's follower reconnects and resyncs", || {
        let st = b.stats();
        st.resyncs > resyncs && st.following == Some(true)
    });
    // The clock did not move: only the flush explains the refusal.
    assert!(matches!(b.validate(&t), Err(Error::NotFound)));
}

#[test]
fn scripts_missing_after_a_flush_are_loaded_again() {
    let Some(server) = server() else { return };
    let (a, _b, _) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("frank")).unwrap();
    server.cmd(redis::cmd("SCRIPT").arg("FLUSH")).unwrap();
    a.create(NewSession::new("frank")).unwrap();
    a.revoke_user("frank", Scope::Others(t.session.id())).unwrap();
    assert_eq!(a.list_user("frank").unwrap().len(), 1);
}

#[test]
fn a_user_index_is_trimmed_of_expired_sessions_at_the_next_create() {
    let Some(server) = server() else { return };
    let (a, _b, clock) = two_nodes(&server, Reuse::default());
    for _ in 0..10 {
        a.create(NewSession::new("anon").ttl(Duration::from_secs(60))).unwrap();
    }
    let live = a.create(NewSession::new("anon").ttl(Duration::from_secs(600))).unwrap();
    let card =
        || -> i64 { redis::from_redis_value(server.cmd(redis::cmd("ZCARD").arg("{app}:u:anon")).unwrap()).unwrap() };
    assert_eq!(card(), 11);
    // Expired, but within the day's margin (clock skew between nodes): kept.
    clock.advance(Duration::from_secs(61));
    a.create(NewSession::new("anon").ttl(Duration::from_secs(48 * 3600)).without_idle_timeout()).unwrap();
    assert_eq!(card(), 12);
    // A day past their deadline: dropped at the next create.
    clock.advance(Duration::from_secs(24 * 3600));
    a.create(NewSession::new("anon")).unwrap();
    assert_eq!(card(), 3, "the ten long-expired members are gone");
    let long = a.list_user("anon").unwrap();
    assert_eq!(long.len(), 2, "the two live ones (48 h, new) are listed");
    assert_eq!(a.revoke_user("anon", Scope::All).unwrap(), 3, "revoke_user still reaches every indexed session");
    assert!(matches!(a.validate(&live.token.to_string()), Err(Error::Revoked | Error::Expired)));
}

#[test]
fn a_killed_server_fails_ops_fast_and_service_resumes_after_restart() {
    let Some(mut server) = server() else { return };
    let (a, b, _) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("gina")).unwrap().token.to_string();
    b.validate(&t).unwrap();
    let resyncs = b.stats().resyncs;
    server.kill();
    // Every op fails with a typed error, in bounded time, without a panic.
    until("B's follower notices the server is gone", || b.stats().following == Some(false));
    #[allow(clippy::disallowed_methods)] // measuring how long a failing op takes, not waiting for time
    let started = std::time::Instant::now();
    for r in [
        a.create(NewSession::new("gina")).map(|_| ()),
        b.validate(&t).map(|_| ()),
        a.revoke_user("gina", Scope::All).map(|_| ()),
    ] {
        assert_eq!(storage_kind(r), StorageErrorKind::Unavailable);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "failing ops took {:?}", started.elapsed());
    server.restart().unwrap();
    until("B resyncs after the restart", || {
        let st = b.stats();
        st.resyncs > resyncs && st.following == Some(true)
    });
    // Data written before the kill survived (appendfsync always); service resumes.
    b.validate(&t).unwrap();
    until("A reconnects", || a.create(NewSession::new("gina")).is_ok());
    assert_eq!(a.list_user("gina").unwrap().len(), 2);
}

#[test]
fn redis_holds_no_token_material() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some(server) = server() else { return };
    let (a, _b, _) = two_nodes(&server, Reuse::default());
    let tok = a.create(NewSession::new("hana").data(b"x".to_vec())).unwrap().token.to_string();
    let pair = a.issue_tokens(&tok).unwrap();
    let pair = a.refresh(&pair.refresh.to_string()).unwrap();
    // Everything stored under the prefix, values of every type, as bytes.
    let keys: Vec<String> = redis::from_redis_value(server.cmd(redis::cmd("KEYS").arg("{app}:*")).unwrap()).unwrap();
    let mut dump = Vec::new();
    for k in &keys {
        let v = server.cmd(redis::cmd("DUMP").arg(k)).unwrap();
        let bytes: Vec<u8> = redis::from_redis_value(v).unwrap();
        dump.extend_from_slice(&bytes);
    }
    let contains = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    let secret = &b64.decode(&tok[4..]).unwrap()[16..48];
    let mac = &b64.decode(&pair.refresh.to_string()[4..]).unwrap()[28..];
    assert!(keys.iter().any(|k| k.starts_with("{app}:s:")), "the session is stored");
    assert!(!contains(secret), "a session secret is stored");
    assert!(!contains(mac), "a refresh-token MAC is stored");
    assert!(!contains(tok.as_bytes()) && !contains(pair.refresh.to_string().as_bytes()));
    assert!(!contains(pair.access.as_bytes()));
    assert!(!contains(&KEY), "the server key is stored");
}

#[test]
fn a_silent_server_fails_ops_within_the_timeout_and_service_resumes() {
    let Some(server) = server() else { return };
    let (a, _b, _) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("ivan")).unwrap().token.to_string();
    server.signal("STOP").unwrap(); // the server accepts nothing and answers nothing
    #[allow(clippy::disallowed_methods)] // measuring how long a failing op takes, not waiting for time
    let started = std::time::Instant::now();
    assert_eq!(storage_kind(a.validate_strict(&t)), StorageErrorKind::Unavailable);
    assert_eq!(storage_kind(a.create(NewSession::new("ivan"))), StorageErrorKind::Unavailable);
    let took = started.elapsed();
    // Two ops, each bounded by the 300 ms timeout (a read, or a connect and a read).
    assert!(took < Duration::from_millis(2000), "two failing ops took {took:?}");
    server.signal("CONT").unwrap();
    until("service resumes", || a.validate_strict(&t).is_ok());
}

/// `server()` for a test that also needs `redis_side`'s proxy.
fn proxy_to(server: &Server) -> redis_side::Proxy {
    redis_side::Proxy::start(&server.addr()).unwrap()
}

/// Whether `r` is the `Storage(Wiped)` refusal.
fn is_wiped<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Wiped)
}

/// Issue 24 item 3: node B is partitioned from Redis (a proxy between them,
/// cut after the tokens were issued); A revokes. Within the staleness bound B
/// cannot know and answers from its bitmap; past it, B fails closed on
/// `verify_access` and `authenticate` (`Storage(Unavailable)`), and once it
/// follows again it refuses the revoked token as `Revoked`.
#[test]
fn a_node_cut_off_from_redis_refuses_access_tokens_past_the_staleness_bound() {
    let Some(server) = server() else { return };
    let proxy = proxy_to(&server);
    let clock = ManualClock::fixed();
    let a = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    let b = Store::redis_with(&proxy.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    until("both followers are caught up", || a.stats().following == Some(true) && b.stats().following == Some(true));
    let issued = a.create(NewSession::new("kim")).unwrap();
    let pair = a.issue_tokens(&issued.token.to_string()).unwrap();
    let bearer = format!("Bearer {}", pair.access);
    b.verify_access(&pair.access).unwrap();

    proxy.cut();
    until("B's follower notices the partition", || b.stats().following == Some(false));
    a.revoke(issued.session.id()).unwrap();
    a.logout_everywhere("kim").unwrap();
    assert!(matches!(a.verify_access(&pair.access), Err(Error::Revoked)));
    // Within the bound B answers from what it holds (it cannot know).
    b.verify_access(&pair.access).unwrap();
    clock.advance(Duration::from_millis(1001));
    assert_eq!(storage_kind(b.verify_access(&pair.access)), StorageErrorKind::Unavailable);
    assert_eq!(storage_kind(b.authenticate(&bearer)), StorageErrorKind::Unavailable);
    assert_eq!(storage_kind(b.authenticate(&issued.token.to_string())), StorageErrorKind::Unavailable);
    a.verify_access(&a.issue_tokens(&a.create(NewSession::new("lou")).unwrap().token.to_string()).unwrap().access)
        .unwrap();

    proxy.heal();
    until("B follows again", || b.stats().following == Some(true));
    assert!(matches!(b.verify_access(&pair.access), Err(Error::Revoked)));
    assert!(matches!(b.authenticate(&bearer), Err(Error::Revoked)));
}

/// Issue 24 item 8: the node that wrote a session runs 120 s ahead; the node
/// that reads it measures freshness on its own clock, so a row deleted behind
/// its back (no event) is refused within twice the staleness bound.
#[test]
fn freshness_is_measured_on_the_reading_nodes_clock_not_the_writers() {
    let Some(server) = server() else { return };
    let early = ManualClock::fixed();
    let ahead = ManualClock::new(early.now() + Duration::from_secs(120));
    let a = Store::redis_with(&server.url(), options("app"), config(&early, Reuse::default())).unwrap();
    let b = Store::redis_with(&server.url(), options("app"), config(&ahead, Reuse::default())).unwrap();
    until("both followers are caught up", || a.stats().following == Some(true) && b.stats().following == Some(true));
    let t = b.create(NewSession::new("skew")).unwrap().token.to_string();
    a.validate(&t).unwrap(); // a miss: A reads a row whose times are 120 s in A's future
    let hits = a.stats().cache_hits;
    a.validate(&t).unwrap();
    assert_eq!(a.stats().cache_hits, hits + 1, "A answers from its cache within the bound");
    assert_eq!(delete_rows_silently(&server), 1);
    early.advance(Duration::from_secs(2)); // twice the bound (1 s), on A's clock
    assert!(matches!(a.validate(&t), Err(Error::NotFound)), "A served a deleted session past 2x the bound");
}

/// Issue 24 item 9: `FLUSHALL` under two live nodes. Both notice (their
/// follower checks the store's instance identity every 250 ms), drop what
/// they cached and refuse every call with `Storage(Wiped)`, writing nothing
/// to the wiped server; a reopened node records a new identity and serves,
/// and the old nodes stay refused until reopened.
#[test]
fn flushall_under_two_live_nodes_is_noticed_and_they_refuse_service_until_reopened() {
    let Some(server) = server() else { return };
    let (a, b, clock) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("lee")).unwrap().token.to_string();
    let pair = a.issue_tokens(&t).unwrap();
    b.validate(&t).unwrap();
    b.validate(&t).unwrap(); // cached on B too
    server.cmd(&mut redis::cmd("FLUSHALL")).unwrap();
    for node in [&a, &b] {
        let polls = until("the node notices the wipe", || is_wiped(&node.validate(&t)));
        eprintln!("noticed after {polls} polls of 1 ms");
        assert!(is_wiped(&node.validate_strict(&t)));
        assert!(is_wiped(&node.verify_access(&pair.access)));
        assert!(is_wiped(&node.create(NewSession::new("lee"))));
        assert!(is_wiped(&node.list_user("lee")));
        assert!(is_wiped(&node.refresh(&pair.refresh.to_string())));
        assert_eq!(node.stats().following, Some(false));
    }
    let left: Vec<String> = redis::from_redis_value(server.cmd(redis::cmd("KEYS").arg("{app}:*")).unwrap()).unwrap();
    assert!(left.is_empty(), "a wiped node wrote to the server: {left:?}");
    // Reopened: a new instance, where the old session is unknown.
    let c = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    assert!(matches!(c.validate(&t), Err(Error::NotFound)));
    let fresh = c.create(NewSession::new("lee")).unwrap().token.to_string();
    // The old nodes stay refused, now that the store has an identity again.
    assert!(is_wiped(&a.validate(&fresh)));
    assert!(is_wiped(&b.create(NewSession::new("lee"))));
    let a = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    a.validate(&fresh).unwrap();
}

/// Issue 24 item 9: a server restarted without its data (the AOF lost) is a
/// wipe too: the followers notice the missing identity when they reconnect.
#[test]
fn a_server_restarted_without_its_data_is_noticed_as_a_wipe() {
    let Some(mut server) = server() else { return };
    let (a, b, _) = two_nodes(&server, Reuse::default());
    let t = a.create(NewSession::new("max")).unwrap().token.to_string();
    b.validate(&t).unwrap();
    server.kill();
    for entry in std::fs::read_dir(server.dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.unwrap();
    }
    server.restart().unwrap();
    for node in [&a, &b] {
        until("the node notices the lost data", || is_wiped(&node.validate(&t)));
    }
}

/// Issue 24 item 9: a server restarted from an older copy of its data (writes
/// it acknowledged are lost, the identity is not): the serial counter is
/// behind a block the node reserved, which it notices when it reconnects.
#[test]
fn a_server_restarted_from_older_data_is_noticed_by_the_node_that_reserved_past_it() {
    let Some(mut server) = server() else { return };
    let (a, _b, _) = two_nodes(&server, Reuse::default());
    a.create(NewSession::new("ned")).unwrap(); // the first serial block
    let old = tempfile::tempdir().unwrap();
    copy_dir(server.dir(), old.path());
    // Past half of the block, the next one is reserved ahead.
    for _ in 0..600 {
        a.create(NewSession::new("ned")).unwrap();
    }
    server.kill();
    std::fs::remove_dir_all(server.dir().join("appendonlydir")).unwrap();
    copy_dir(old.path(), server.dir());
    server.restart().unwrap();
    until("A notices the counter went back", || is_wiped(&a.create(NewSession::new("ned"))));
}

/// Copies the files under `from` into `to` (recursively).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Review of issue 25 item 1: nodes with different access TTLs on one Redis.
/// A node that opened with a 5-minute TTL revokes a session whose access
/// token a 1-hour node issued; the 1-hour node's prune must keep the entry
/// until that token could have expired, though the entry was written under
/// the shorter horizon.
#[test]
fn a_long_ttl_node_keeps_a_revocation_written_by_a_short_ttl_node() {
    let Some(server) = server() else { return };
    let clock = ManualClock::fixed();
    let short = Store::redis_with(&server.url(), options("ttl"), config(&clock, Reuse::default())).unwrap();
    let long_cfg = config(&clock, Reuse::default()).to_builder().access_ttl(Duration::from_secs(3600)).build().unwrap();
    let long = Store::redis_with(&server.url(), options("ttl"), long_cfg).unwrap();
    until("both followers are caught up", || {
        short.stats().following == Some(true) && long.stats().following == Some(true)
    });
    let issued = long.create(NewSession::new("ttl")).unwrap();
    let pair = long.issue_tokens(&issued.token.to_string()).unwrap();
    short.revoke(issued.session.id()).unwrap();
    until("the revocation reached the long node", || matches!(long.verify_access(&pair.access), Err(Error::Revoked)));
    clock.advance(Duration::from_secs(331));
    long.prune_revocations().unwrap();
    short.prune_revocations().unwrap();
    assert!(matches!(long.verify_access(&pair.access), Err(Error::Revoked)), "pruned under the short node's horizon");
}

/// Issue 24 items 2 and 7: a user-wide revocation runs in bounded steps (256
/// sessions each); another node sees it all at once. While node A revokes
/// 1,500 sessions, node B validates them from its cache in a loop: once B
/// has refused one, it never accepts another. Fails without the marker
/// (B accepts the sessions of the steps not yet run).
#[test]
fn a_user_revocation_in_steps_is_all_at_once_on_another_node() {
    let Some(server) = server() else { return };
    let (a, b, _) = two_nodes(&server, Reuse::default());
    let tokens: Vec<String> =
        (0..1500).map(|_| a.create(NewSession::new("victim")).unwrap().token.to_string()).collect();
    for t in &tokens {
        b.validate(t).unwrap(); // cached on B
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut refused, mut accepted_after, mut rounds) = (0usize, 0usize, 0usize);
    std::thread::scope(|s| {
        let (a, done) = (&a, &done);
        s.spawn(move || {
            assert_eq!(a.revoke_user("victim", Scope::All).unwrap(), 1500);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            rounds += 1;
            for t in &tokens {
                match b.validate(t) {
                    Ok(_) if refused > 0 => accepted_after += 1,
                    Ok(_) => {}
                    Err(_) => refused += 1,
                }
            }
        }
    });
    eprintln!("B: {rounds} rounds over 1500 sessions during the revocation, {refused} refusals");
    assert_eq!(accepted_after, 0, "B accepted sessions of the user after refusing one (half-revoked view)");
    until("B refuses every session", || tokens.iter().all(|t| b.validate(t).is_err()));
}

/// Issue 24 items 2 and 7: a node that died after the first step of a
/// user-wide revocation leaves its marker in Redis (emulated here: the
/// marker the first step stores and publishes, without its deletes). The
/// other nodes refuse every covered session at once, and the next node to
/// open finishes the revocation and removes the marker. While it stands
/// the marker refuses every session of the user (the steps take all of
/// them, also one signed in meanwhile: no session validates and is then
/// revoked); after it is gone the user signs in again.
#[test]
fn a_user_revocation_left_half_done_by_a_dead_node_is_refused_and_finished_by_the_next_open() {
    let Some(server) = server() else { return };
    let (a, b, clock) = two_nodes(&server, Reuse::default());
    let tokens: Vec<String> =
        (0..300).map(|_| a.create(NewSession::new("victim")).unwrap().token.to_string()).collect();
    let keep = a.create(NewSession::new("bystander")).unwrap().token.to_string();
    for t in &tokens {
        b.validate(t).unwrap();
    }
    let at = clock.now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let marker = format!("{at}::0:victim");
    server.cmd(redis::cmd("HSET").arg("{app}:cuts").arg(&marker).arg("1")).unwrap();
    server.cmd(redis::cmd("PUBLISH").arg("{app}:ev").arg(format!("C{marker}"))).unwrap();
    until("B refuses every covered session", || tokens.iter().all(|t| b.validate(t).is_err()));
    b.validate(&keep).unwrap();
    clock.advance(Duration::from_millis(5));
    let during = b.create(NewSession::new("victim")).unwrap().token.to_string();
    assert!(b.validate(&during).is_err(), "a sign-in while the marker stands is refused, never served");

    let c = Store::redis_with(&server.url(), options("app"), config(&clock, Reuse::default())).unwrap();
    let left: i64 = redis::from_redis_value(server.cmd(redis::cmd("HLEN").arg("{app}:cuts")).unwrap()).unwrap();
    assert_eq!(left, 0, "the opening node finished the revocation and removed its marker");
    for node in [&a, &b, &c] {
        until("every covered session is refused", || tokens.iter().all(|t| node.validate(t).is_err()));
    }
    assert!(c.validate(&during).is_err(), "the finishing steps revoke all of the user's sessions");
    c.validate(&keep).unwrap();
    let after = a.create(NewSession::new("victim")).unwrap().token.to_string();
    until("the marker is gone on every node", || [&a, &b, &c].iter().all(|n| n.validate(&after).is_ok()));
}
