//! Cross-node invalidation: each Redis-backed store runs one subscriber
//! thread on the store's events channel. Every revocation (`R`), change of a
//! session's data or secret (`U`) and not-before cut-off (`N`) that any node's
//! script makes is published by that script, and each node applies it to its
//! cache and revocation bitmap.
//!
//! Events can be missed (a dropped connection, a restarted server), so:
//! - while the subscriber is not connected and caught up, the node serves no
//!   cached hit ([`Coherence::synced`] is false: every validate asks Redis);
//! - on every (re)connect it subscribes first, then flushes its cache and
//!   reloads the revocation entries and cut-offs, then serves cached hits again;
//! - it pings the server when the channel is quiet for 250 ms, and a ping
//!   unanswered within 250 ms counts as a lost connection;
//! - a cached entry is re-read from Redis once it is older than the
//!   staleness bound (on this node's clock), whatever the events say;
//! - and once the follower has not been following for longer than the
//!   staleness bound, the node refuses access tokens (`Unavailable`): the
//!   revocations it may have missed are not in its bitmap.
//!
//! A wiped store is noticed here too: at every (re)connect and every ping
//! interval the follower checks that the data is still the instance this
//! node opened ([`Instance::current`]). If it is not, the node flushes its
//! cache, stops following and refuses every call (`Wiped`) until reopened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::instance::Instance;
use super::keys::{Keys, split_id_hash};
use super::pool::{Pool, unavailable};
use super::state::{RevocationState, load};
use crate::backend::coherence::Coherence;
use crate::backend::{Invalidation, Revoked};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::telemetry::{Counter, Gauge};
use crate::token::SessionId;

/// What the subscriber updates: this node's session table, through its
/// narrow invalidation interface.
pub(crate) type Targets = Arc<dyn Invalidation>;

/// How often a quiet channel is pinged (and so how soon a dead connection is noticed).
const PING_EVERY: Duration = Duration::from_millis(250);

/// Starts the subscriber thread.
pub(crate) fn start(
    pool: Arc<Pool>,
    keys: Keys,
    instance: Arc<Instance>,
    targets: Targets,
    coherence: Arc<Coherence>,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("cloakroom-redis-events".into())
        .spawn(move || {
            let _thread = tracing::info_span!("follower").entered();
            let state = State {
                synced: Gauge::new("cloakroom.follower.synced"),
                resyncs: Counter::new("cloakroom.follower.resyncs"),
            };
            let mut backoff = Duration::from_millis(10);
            while !coherence.stopped() {
                let r = follow(&pool, &keys, &instance, &targets, &coherence, &state);
                if r.is_ok() {
                    backoff = Duration::from_millis(10);
                }
                let was = coherence.synced();
                coherence.set_synced(false);
                state.synced.set(0);
                if let Err(e) = &r {
                    let kind = storage_kind(e);
                    // Until it is following again this node serves no cached
                    // hit, and past the staleness bound it refuses access tokens.
                    if was {
                        tracing::warn!(
                            error = kind,
                            "follower lost the Redis event channel; failing closed until resynced"
                        );
                    } else {
                        tracing::warn!(
                            error = kind,
                            retry_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                            "follower cannot connect"
                        );
                    }
                }
                if coherence.wiped() {
                    // Nothing this node holds may answer again: the store
                    // must be reopened. Nothing more to follow.
                    tracing::warn!("follower stopped: the Redis data is not the instance this node opened (wiped)");
                    targets.flush();
                    break;
                }
                if coherence.stopped() {
                    break;
                }
                // The server is gone or the connection broke: what was cached
                // may miss events from now on.
                targets.flush();
                pool.clear();
                coherence.pause(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        })
        .map_err(|e| StorageError::with_source(StorageErrorKind::Io, e).into())
}

/// One connection's life: subscribe, check the instance, catch up, apply
/// events until it breaks (or the data turns out wiped).
/// The follower's metrics: `cloakroom.follower.synced` (1 while following)
/// and `cloakroom.follower.resyncs` (each catch-up).
struct State {
    synced: Gauge,
    resyncs: Counter,
}

/// A bounded name for why the follower stopped (never the server's text).
fn storage_kind(e: &Error) -> &'static str {
    match e {
        Error::Storage(s) => match s.kind() {
            StorageErrorKind::Unavailable => "unavailable",
            StorageErrorKind::Wiped => "wiped",
            _ => "storage",
        },
        other => crate::telemetry::error_kind(other),
    }
}

fn follow(
    pool: &Pool,
    keys: &Keys,
    instance: &Instance,
    t: &Targets,
    coherence: &Coherence,
    state: &State,
) -> Result<(), Error> {
    let mut con = pool.connect()?;
    con.set_read_timeout(Some(PING_EVERY)).map_err(unavailable)?;
    let mut sub = con.as_pubsub();
    sub.subscribe(keys.events()).map_err(unavailable)?;
    // Subscribed first, so nothing published from here on is missed; then
    // catch up on what may have been missed before. Evict, then bump: a fill
    // that read before the flush sees the bump and drops what it cached.
    t.flush();
    check_instance(pool, keys, instance, coherence)?;
    let loaded = load(pool, keys)?;
    catch_up(t.as_ref(), &loaded);
    let resyncs = coherence.resyncs.fetch_add(1, Ordering::Relaxed) + 1;
    coherence.set_synced(true);
    state.resyncs.increment(1);
    state.synced.set(1);
    tracing::info!(
        resyncs,
        revoked = loaded.revoked.len(),
        not_before = loaded.not_before.len(),
        "follower connected and caught up"
    );
    // A wipe does not drop connections (FLUSHALL): checked every interval.
    let mut checked = monotonic();
    while !coherence.stopped() {
        match sub.get_message() {
            Ok(msg) => apply(t, instance, msg.get_payload_bytes()),
            // Quiet for a whole interval: the server must answer a ping within
            // the next one, or the connection counts as lost.
            Err(e) if e.is_timeout() => {
                sub.ping::<redis::Value>().map_err(unavailable)?;
            }
            Err(e) => return Err(unavailable(e)),
        }
        if checked.elapsed() >= PING_EVERY {
            check_instance(pool, keys, instance, coherence)?;
            checked = monotonic();
        }
    }
    Ok(())
}

/// The follower's own schedule (how often it checks the instance), not a
/// time any freshness is measured by: that is the store's clock.
#[allow(clippy::disallowed_methods)]
fn monotonic() -> Instant {
    Instant::now()
}

/// Marks the node wiped (and fails) unless the data is still the instance it
/// opened.
fn check_instance(pool: &Pool, keys: &Keys, instance: &Instance, coherence: &Coherence) -> Result<(), Error> {
    if instance.current(pool, keys)? {
        return Ok(());
    }
    coherence.set_wiped();
    Err(StorageError::new(StorageErrorKind::Wiped).into())
}

/// Applies what `load` read: every revocation entry (with its secret hash, so
/// a revoked token's holder reads `Revoked`) and not-before cut-off. At open
/// and after every (re)connect of the follower.
pub(crate) fn catch_up(t: &dyn Invalidation, loaded: &RevocationState) {
    t.revoked(&loaded.revoked);
    for (user, at) in &loaded.not_before {
        t.not_before(user, *at);
    }
    t.cuts(&loaded.cuts);
}

/// Applies one event: `R<serial>:<prune-after>:<id ‖ secret hash>`,
/// `U<id>`, `N<at>:<user>`, `C<marker key>` / `c<marker key>` (a user-wide
/// revocation began / ended). Anything else is ignored.
pub(crate) fn apply(t: &Targets, instance: &Instance, payload: &[u8]) {
    match payload.split_first() {
        Some((b'R', rest)) => {
            let mut parts = rest.splitn(3, |&b| b == b':');
            let num =
                |p: Option<&[u8]>| p.and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse::<u64>().ok());
            let (serial, prune_after) = (num(parts.next()), num(parts.next()));
            if let (Some(serial), Some(prune_after), Some((id, secret_hash))) =
                (serial, prune_after, parts.next().and_then(split_id_hash))
            {
                instance.saw(serial);
                t.revoked(&[Revoked { serial, id, secret_hash, prune_after }]);
            }
        }
        Some((b'U', rest)) => {
            if let Ok(id) = <[u8; 16]>::try_from(rest) {
                t.changed(&SessionId::from_bytes(id));
            }
        }
        Some((b'N', rest)) => {
            let text = String::from_utf8_lossy(rest);
            if let Some((at, user)) = text.split_once(':')
                && let Ok(at) = at.parse::<u64>()
            {
                t.not_before(user, at);
            }
        }
        Some((tag @ (b'C' | b'c'), rest)) => {
            if let Some((user, cut)) = std::str::from_utf8(rest).ok().and_then(crate::backend::UserCut::parse) {
                t.cut(&user, cut, *tag == b'C');
            }
        }
        _ => {}
    }
}
