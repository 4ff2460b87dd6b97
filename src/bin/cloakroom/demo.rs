//! `cloakroom demo`: the session and token lifecycle on a redb file, with timings.

use std::path::Path;
use std::time::{Duration, Instant};

use cloakroom::{Config, Error, Meta, NewSession, Scope, Store};

/// Times `f`, printing one report line.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let t = Instant::now();
    let r = f()?;
    println!("  {:<52} {:>10}", what, fmt(t.elapsed()));
    Ok(r)
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

pub(crate) fn run(path: &Path, force: bool) -> Result<(), crate::CliError> {
    crate::scratch::prepare(path, force)?;
    Ok(lifecycle(path)?)
}

fn lifecycle(path: &Path) -> Result<(), Error> {
    println!("cloakroom demo — database: {}", path.display());
    println!("\n[1] sessions (durability: Immediate, one fsync per commit)");
    let store = step("open (create) store", || Store::open(path, Config::builder().scratch(true).build()?))?;
    let users = ["alice", "bob", "carol"];
    let mut issued = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for device in ["laptop", "phone"] {
            let meta = Meta {
                ip: Some(format!("192.0.2.{}", 10 + i).parse().map_err(|_| Error::Closed)?),
                user_agent: Some(format!("demo-{device}/1.0")),
                label: Some(device.to_string()),
            };
            let new = NewSession::new(*u).data(format!("{{\"theme\":\"dark\",\"user\":\"{u}\"}}")).meta(meta);
            issued.push(step(&format!("create session for {u} ({device})"), || store.create(new))?);
        }
    }
    let alice = issued[0].token.to_string();
    println!("  issued token (shown once, as a client would get it): {}…", &alice[..12]);

    println!("\n[2] validate (hot path)");
    step("validate alice/laptop (first)", || store.validate(&alice))?;
    let n = 100_000u32;
    let t = Instant::now();
    for _ in 0..n {
        store.validate(&alice)?;
    }
    println!("  {:<52} {:>10}", format!("validate ×{n}, mean per call"), fmt(t.elapsed() / n));

    println!("\n[3] rotate, update, revoke");
    let rotated = step("rotate alice/laptop (privilege change)", || store.rotate(&alice))?;
    match store.validate(&alice) {
        Err(e) => println!("  old token after rotate -> {e}"),
        Ok(_) => println!("  UNEXPECTED: old token still valid"),
    }
    let s = store.validate(&rotated.token.to_string())?;
    let v = step("update_data_if (compare-and-swap)", || {
        store.update_data_if(s.id(), s.version(), b"{\"theme\":\"light\"}".to_vec())
    })?;
    match store.update_data_if(s.id(), s.version(), b"stale".to_vec()) {
        Err(Error::Conflict { current }) => println!(
            "  stale update_data_if (expected version {}) -> refused: version {current} is stored",
            s.version()
        ),
        Err(e) => println!("  UNEXPECTED: stale update (expected version {}) -> {e}", s.version()),
        Ok(_) => println!("  UNEXPECTED: stale update accepted (the stored version was {v})"),
    }
    let bob_phone = issued[3].session.id();
    step("revoke bob/phone", || store.revoke(bob_phone))?;
    match store.validate(&issued[3].token.to_string()) {
        Err(e) => println!("  bob/phone after revoke -> {e}"),
        Ok(_) => println!("  UNEXPECTED: revoked session valid"),
    }
    let n = step("revoke_user(carol, All)", || store.revoke_user("carol", Scope::All))?;
    println!("  carol: {n} sessions revoked");

    println!("\n[4] access + refresh tokens");
    let dave = step("create session for dave", || store.create(NewSession::new("dave")))?.token.to_string();
    let pair = step("issue_tokens (JWT + refresh, durable)", || store.issue_tokens(&dave))?;
    let claims = step("verify_access (HS256)", || store.verify_access(&pair.access))?;
    println!(
        "  access token: sub={} sid={} exp-iat={}s kid={}",
        claims.sub,
        claims.sid,
        claims.exp - claims.iat,
        store.keyring().keys().first().map(|k| k.kid.clone()).unwrap_or_default()
    );
    let n = 10_000u32;
    let t = Instant::now();
    for _ in 0..n {
        store.verify_access(&pair.access)?;
    }
    println!("  {:<52} {:>10}", format!("verify_access ×{n}, mean per call"), fmt(t.elapsed() / n));
    let who = step("authenticate(\"Bearer <jwt>\")", || store.authenticate(&format!("Bearer {}", pair.access)))?;
    println!("  principal: user={} source={:?}", who.user, who.source);
    let pair2 = step("refresh (rotate: generation 1 -> 2)", || store.refresh(&pair.refresh.to_string()))?;
    println!("  refresh generation now {}", pair2.refresh.generation());
    let strict_note = "replay of generation 1 after a newer rotation";
    let pair3 = store.refresh(&pair2.refresh.to_string())?;
    match store.refresh(&pair.refresh.to_string()) {
        Err(e) => println!("  {strict_note} -> {e}"),
        Ok(_) => println!("  UNEXPECTED: replay accepted"),
    }
    match store.verify_access(&pair3.access) {
        Err(e) => println!("  dave's newest access token after reuse detection -> {e}"),
        Ok(_) => println!("  UNEXPECTED: access token still valid"),
    }
    let eve = store.create(NewSession::new("eve"))?.token.to_string();
    let eve_pair = store.issue_tokens(&eve)?;
    let n = step("logout_everywhere(eve)", || store.logout_everywhere("eve"))?;
    match store.verify_access(&eve_pair.access) {
        Err(e) => println!("  eve: {n} session(s) revoked; her live access token -> {e}"),
        Ok(_) => println!("  UNEXPECTED: access token survived logout_everywhere"),
    }

    println!("\n[5] devices page for alice");
    for s in store.list_user("alice")? {
        let m = s.meta();
        println!(
            "  {}  label={:<7} ip={:<12} ua={}",
            s.id(),
            m.label.as_deref().unwrap_or("-"),
            m.ip.map(|i| i.to_string()).unwrap_or_default(),
            m.user_agent.as_deref().unwrap_or("-"),
        );
    }
    step("close (flush, join writer)", || store.close())?;

    println!("\n[6] reopen: persistence");
    let store = step("reopen store", || Store::open(path, Config::default()))?;
    let s = step("validate rotated alice token (cache miss -> disk)", || store.validate(&rotated.token.to_string()))?;
    println!("  alice data after reopen: {}", String::from_utf8_lossy(s.data()));
    for (label, tok) in [("bob/phone (revoked)", &issued[3]), ("carol/laptop (revoked)", &issued[4])] {
        match store.validate(&tok.token.to_string()) {
            Err(e) => println!("  {label} after reopen -> {e}"),
            Ok(_) => println!("  UNEXPECTED: {label} valid after reopen"),
        }
    }
    match store.verify_access(&eve_pair.access) {
        Err(e) => println!("  eve's access token after reopen -> {e}"),
        Ok(_) => println!("  UNEXPECTED: eve's access token valid after reopen"),
    }
    match store.refresh(&pair3.refresh.to_string()) {
        Err(e) => println!("  dave's refresh token after reopen -> {e}"),
        Ok(_) => println!("  UNEXPECTED: dave's refresh token valid after reopen"),
    }
    let st = store.stats();
    println!(
        "\nstats: {} sessions stored, {} revoked serials, {} cached",
        st.sessions_stored.unwrap_or(0),
        st.revoked_serials,
        st.cached_sessions
    );
    store.close()?;
    println!("done; file kept at {}", path.display());
    Ok(())
}
