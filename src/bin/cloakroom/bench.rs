//! `cloakroom bench`: a load generator. Loads N sessions, runs a mix of
//! validate/create/refresh/revoke from T threads for a duration, and reports
//! throughput and latency percentiles per operation — for cloakroom, and with
//! `--redis` for the same mix against Redis, with the ratio. `--backend redis`
//! runs cloakroom itself on Redis (`Store::redis`) instead of a redb file.

mod report;

/// With the `metrics` feature: the write path's own histograms during the
/// measured run (writer queue wait, commit latency, fsyncs, batch sizes,
/// stalls between batches, checkpoints), read from an in-process recorder
/// the bench installs before it opens the store (issue 27 item 8: where an
/// acknowledgement's time goes).
#[cfg(feature = "metrics")]
pub(crate) mod write_path;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use cloakroom::{Config, Durability, Error, NewSession, RedisOptions, Store};
use indicatif::{ProgressBar, ProgressStyle};

use self::report::{Hists, OPS, hists, print_table, summarize};
use crate::CliError;
use crate::redis_side::{RedisServer, RedisSessions};

#[derive(Parser, Debug)]
pub(crate) struct Args {
    /// Sessions to load before the run.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: usize,
    /// Concurrent callers (threads; one Redis connection each), at least 1.
    #[arg(long, default_value_t = 16, value_parser = parse_threads)]
    threads: usize,
    /// Run time in seconds, per system.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operation shares in percent, summing to 100, e.g. `validate=90,create=5,refresh=4,revoke=1`.
    #[arg(long, default_value = "validate=90,create=5,refresh=4,revoke=1")]
    mix: String,
    /// Durability of creates (Redis: `always` for immediate, `everysec` for eventual).
    #[arg(long, value_enum, default_value_t = Dur::Immediate)]
    durability: Dur,
    /// Also run the mix against Redis: a URL, or `local` to start a redis-server on a free loopback port.
    /// With `--backend redis`, cloakroom's own store uses this server too (default `local`).
    #[arg(long)]
    redis: Option<String>,
    /// Where cloakroom keeps its sessions: a redb file (the default), or Redis
    /// (`Store::redis`, the scale-out backend) at the `--redis` server.
    #[arg(long, value_enum, default_value_t = Backend::Redb)]
    backend: Backend,
    /// Store file. Default: a temporary directory, removed when the run ends.
    /// A given file is created if missing, reset if it is a previous demo/bench
    /// database, and otherwise refused (see --force); it is kept after the run.
    #[arg(long)]
    db: Option<PathBuf>,
    /// With --db: replace an existing file that is not a demo/bench database
    /// (never one that another process holds open).
    #[arg(long, requires = "db")]
    force: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// The store's checkpoint interval in ms for the measured run
    /// (`Config::checkpoint_interval`; default the store's, 1000).
    #[arg(long)]
    checkpoint_ms: Option<u64>,
    /// Write a latency-distribution chart (SVG) comparing the systems.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Redb,
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Dur {
    Immediate,
    Eventual,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a thread count between 1 and 4096")),
    }
}

fn parse_mix(s: &str) -> Result<[u32; 4], CliError> {
    let bad = |m: String| CliError::Refused(format!("--mix: {m}"));
    let mut w = [0u32; 4];
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("bad entry {part:?} (want op=percent)")))?;
        let i = OPS
            .iter()
            .position(|o| *o == k.trim())
            .ok_or_else(|| bad(format!("unknown op {k:?} (ops: {})", OPS.join(", "))))?;
        w[i] = v.trim().parse().map_err(|_| bad(format!("bad share {v:?}")))?;
    }
    let total: u32 = w.iter().sum();
    if total != 100 {
        return Err(bad(format!("shares must sum to 100, these sum to {total}")));
    }
    Ok(w)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, mix: &[u32; 4]) -> usize {
        let total: u32 = mix.iter().sum();
        let mut r = (self.next() % u64::from(total)) as u32;
        for (i, w) in mix.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        0
    }
}

/// One system's operations, per thread.
trait Worker {
    fn op(&mut self, op: usize, rng: &mut Rng) -> bool;
}

struct CloakWorker<'a> {
    store: &'a Store,
    tokens: &'a [String],
    refresh: Vec<String>,
    mine: Vec<cloakroom::SessionId>,
    n: u64,
}

impl Worker for CloakWorker<'_> {
    fn op(&mut self, op: usize, rng: &mut Rng) -> bool {
        self.n += 1;
        match op {
            0 => self.store.validate(&self.tokens[(rng.next() % self.tokens.len() as u64) as usize]).is_ok(),
            1 => self
                .store
                .create(NewSession::new(format!("bench-{}", rng.next() % 100_000)))
                .map(|i| self.mine.push(i.session.id()))
                .is_ok(),
            2 => {
                let k = (rng.next() % self.refresh.len() as u64) as usize;
                match self.store.refresh(&self.refresh[k]) {
                    Ok(p) => {
                        self.refresh[k] = p.refresh.to_string();
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => match self.mine.pop() {
                Some(id) => self.store.revoke(id).is_ok(),
                None => false,
            },
        }
    }
}

struct RedisWorker<'a> {
    r: RedisSessions,
    tokens: &'a [String],
    refresh: Vec<String>,
    mine: Vec<(String, String)>,
}

impl Worker for RedisWorker<'_> {
    fn op(&mut self, op: usize, rng: &mut Rng) -> bool {
        match op {
            0 => self.r.validate(&self.tokens[(rng.next() % self.tokens.len() as u64) as usize]).unwrap_or(false),
            1 => {
                let user = format!("bench-{}", rng.next() % 100_000);
                self.r.create(&user).map(|c| self.mine.push((c.id, user))).is_ok()
            }
            2 => {
                let k = (rng.next() % self.refresh.len() as u64) as usize;
                match self.r.refresh(&self.refresh[k]) {
                    Ok(Some(n)) => {
                        self.refresh[k] = n;
                        true
                    }
                    _ => false,
                }
            }
            _ => match self.mine.pop() {
                Some((id, user)) => self.r.revoke(&id, &user).is_ok(),
                None => false,
            },
        }
    }
}

/// Runs `make_worker(thread)` workers for `secs`; returns merged histograms and failures.
fn run_mix<'a, W: Worker>(
    label: &str,
    threads: usize,
    secs: f64,
    mix: &[u32; 4],
    make_worker: &(dyn Fn(usize) -> W + Sync + 'a),
) -> (Hists, [u64; 4], Duration) {
    let stop = AtomicBool::new(false);
    let bar = ProgressBar::new((secs * 10.0) as u64).with_message(format!("{label}: running"));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let results: Vec<(Hists, [u64; 4])> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let stop = &stop;
                s.spawn(move || {
                    let mut w = make_worker(t);
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                    let mut h = hists();
                    let mut failed = [0u64; 4];
                    while !stop.load(Ordering::Relaxed) {
                        let op = rng.pick(mix);
                        let t0 = Instant::now();
                        let ok = w.op(op, &mut rng);
                        let _ = h[op].record(t0.elapsed().as_nanos() as u64);
                        failed[op] += u64::from(!ok);
                    }
                    (h, failed)
                })
            })
            .collect();
        while start.elapsed().as_secs_f64() < secs {
            std::thread::sleep(Duration::from_millis(100)); // the run's own clock
            bar.set_position((start.elapsed().as_secs_f64() * 10.0) as u64);
        }
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| (hists(), [0; 4]))).collect()
    });
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let mut all = hists();
    let mut failed = [0u64; 4];
    for (h, f) in results {
        for i in 0..4 {
            let _ = all[i].add(&h[i]);
            failed[i] += f[i];
        }
    }
    (all, failed, elapsed)
}

fn load_bar(n: usize, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(n as u64).with_message(msg.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub(crate) fn run(a: &Args) -> Result<(), CliError> {
    let mix = parse_mix(&a.mix)?;
    let threads = a.threads;
    #[cfg(feature = "metrics")]
    write_path::install();
    // The Redis server of `--redis` (started here for `local`, and for
    // `--backend redis` without `--redis`), stopped when the run ends.
    let fsync = if a.durability == Dur::Immediate { "always" } else { "everysec" };
    let mut _server = None;
    let redis_url = match (a.redis.as_deref(), a.backend) {
        (Some(url), _) if url != "local" => Some(url.to_owned()),
        (Some(_), _) | (None, Backend::Redis) => {
            let s = RedisServer::start(fsync).map_err(CliError::Failed)?;
            let u = s.url();
            _server = Some(s);
            Some(u)
        }
        (None, Backend::Redb) => None,
    };
    let durability = if a.durability == Dur::Immediate { Durability::Immediate } else { Durability::Eventual };
    if a.backend == Backend::Redis {
        let url = redis_url.clone().unwrap_or_default();
        let mut b = Config::builder();
        // A fresh random server key and prefix per run: a bench never mixes
        // with an app's data on the same server.
        let key: [u8; 32] = rand::random();
        b.durability(durability).sweep_interval(None).server_key(&key);
        let mut o = RedisOptions::default();
        o.prefix = format!("cloakroom-bench-{:016x}", rand::random::<u64>());
        o.pool_size = threads.max(16);
        let store = Store::redis_with(&url, o, b.build()?)?;
        let tokens = load(&store, a.sessions, threads)?;
        return finish(a, &mix, store, &tokens, redis_url.as_deref());
    }
    // The temporary directory (when no --db is given) is removed on drop, even on failure.
    let (_tmp, db) = match &a.db {
        Some(db) => {
            crate::scratch::prepare(db, a.force)?;
            (None, db.clone())
        }
        None => {
            let t = tempfile::tempdir().map_err(|e| CliError::Failed(format!("cannot create a temp dir: {e}")))?;
            let db = t.path().join("cloakroom-bench.redb");
            (Some(t), db)
        }
    };
    let db = db.as_path();

    // Load with eventual durability (fast), then reopen with the chosen one.
    let tokens: Vec<String> = {
        let mut b = Config::builder();
        b.durability(Durability::Eventual).sweep_interval(None).scratch(true);
        let store = Store::open(db, b.build()?).map_err(|e| crate::open_error(db, e))?;
        let all = load(&store, a.sessions, threads)?;
        store.close()?;
        all
    };
    let mut b = Config::builder();
    b.durability(durability).sweep_interval(None);
    if let Some(ms) = a.checkpoint_ms {
        b.checkpoint_interval(Duration::from_millis(ms));
    }
    let store = Store::open(db, b.build()?).map_err(|e| crate::open_error(db, e))?;
    finish(a, &mix, store, &tokens, redis_url.as_deref())
}

/// Creates `sessions` sessions from `threads` threads; returns their tokens.
fn load(store: &Store, sessions: usize, threads: usize) -> Result<Vec<String>, CliError> {
    let bar = load_bar(sessions, "cloakroom: loading");
    let per = sessions.div_ceil(threads);
    let busy = std::sync::atomic::AtomicU64::new(0);
    let busy = &busy;
    let chunks: Vec<Result<Vec<String>, Error>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let bar = &bar;
                s.spawn(move || {
                    let n = per.min(sessions.saturating_sub(t * per));
                    let mut v = Vec::with_capacity(n);
                    for i in 0..n {
                        let new = || NewSession::new(format!("user-{}", (t * per + i) % 100_000));
                        // Eventual loads can outrun the applier: past the overlay's
                        // bound the writer waits for a checkpoint, and a caller
                        // that found the queue full for 1 s gets `Busy`. The
                        // load retries (counted); the measured run does not.
                        let issued = loop {
                            match store.create(new()) {
                                Err(Error::Busy) => {
                                    busy.fetch_add(1, Ordering::Relaxed);
                                }
                                other => break other?,
                            }
                        };
                        v.push(issued.token.to_string());
                        if i % 1024 == 0 {
                            bar.inc(1024.min(n - i) as u64);
                        }
                    }
                    Ok(v)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Closed))).collect()
    });
    bar.finish_and_clear();
    let busy = busy.load(Ordering::Relaxed);
    if busy > 0 {
        eprintln!("load: {busy} creates got Busy (write queue full for 1 s) and were retried");
    }
    let mut all = Vec::with_capacity(sessions);
    for c in chunks {
        all.extend(c?);
    }
    Ok(all)
}

/// Runs the mix on `store` (and on the plain Redis store at `redis_url` with
/// `--redis`), then reports.
fn finish(a: &Args, mix: &[u32; 4], store: Store, tokens: &[String], redis_url: Option<&str>) -> Result<(), CliError> {
    let threads = a.threads;
    let refresh_pools: Vec<Vec<String>> = (0..threads)
        .map(|t| {
            (0..64)
                .map(|i| {
                    let tok = &tokens[(t * 64 + i) % tokens.len().max(1)];
                    store.issue_tokens(tok).map(|p| p.refresh.to_string())
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    #[cfg(feature = "metrics")]
    write_path::reset();
    let (h, failed, el) = run_mix("cloakroom", threads, a.duration, mix, &|t| CloakWorker {
        store: &store,
        tokens,
        refresh: refresh_pools[t].clone(),
        mine: Vec::new(),
        n: 0,
    });
    let cloak = summarize(&h, &failed, el);
    #[cfg(feature = "metrics")]
    let write_path = write_path::report();
    #[cfg(not(feature = "metrics"))]
    let write_path = String::new();
    store.close()?;

    let mut redis_result = None;
    let mut redis_hists = None;
    if let (Some(url), true) = (redis_url, a.redis.is_some()) {
        let redis_err = |e: redis::RedisError| CliError::Failed(format!("redis at {url}: {e}"));
        let ttl = 7 * 24 * 3600;
        let mut loader = RedisSessions::connect(url, ttl).map_err(redis_err)?;
        let bar = load_bar(a.sessions, "redis: loading");
        let mut rtokens = Vec::with_capacity(a.sessions);
        let mut ids = Vec::new();
        for chunk in (0..a.sessions).collect::<Vec<_>>().chunks(1000) {
            let users: Vec<String> = chunk.iter().map(|i| format!("user-{}", i % 100_000)).collect();
            for c in loader.create_many(&users).map_err(redis_err)? {
                rtokens.push(c.token);
                if ids.len() < threads * 64 {
                    ids.push(c.id);
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let pools: Vec<Vec<String>> = (0..threads)
            .map(|t| {
                (0..64).map(|i| loader.issue_refresh(&ids[(t * 64 + i) % ids.len().max(1)])).collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(redis_err)?;
        let conns: Vec<RedisSessions> =
            (0..threads).map(|_| RedisSessions::connect(url, ttl)).collect::<Result<_, _>>().map_err(redis_err)?;
        let conns = std::sync::Mutex::new(conns.into_iter().map(Some).collect::<Vec<_>>());
        let (h, failed, el) = run_mix("redis", threads, a.duration, mix, &|t| RedisWorker {
            r: conns.lock().map(|mut c| c[t].take()).ok().flatten().unwrap_or_else(|| unreachable!()),
            tokens: &rtokens,
            refresh: pools[t].clone(),
            mine: Vec::new(),
        });
        redis_result = Some(summarize(&h, &failed, el));
        redis_hists = Some(h);
    }

    if let Some(path) = &a.plot {
        report::plot(path, &h, redis_hists.as_ref())
            .map_err(|e| CliError::Failed(format!("plot {}: {e}", path.display())))?;
        eprintln!("latency chart written to {}", path.display());
    }
    if a.json {
        let out = serde_json::json!({
            "sessions": a.sessions, "threads": threads, "duration_s": a.duration, "mix": a.mix,
            "durability": format!("{:?}", a.durability).to_lowercase(), "backend": format!("{:?}", a.backend).to_lowercase(),
            "cloakroom": cloak, "redis": redis_result,
        });
        println!("{out:#}");
        return Ok(());
    }
    println!(
        "cloakroom bench: {} sessions, {threads} threads, {} s per system, mix {}, durability {:?}",
        a.sessions, a.duration, a.mix, a.durability
    );
    print_table("cloakroom", &cloak);
    print!("{write_path}");
    if let Some(r) = &redis_result {
        print_table("redis", r);
        println!("\nratio cloakroom / redis   (throughput: higher is better; p50/p99: redis ÷ cloakroom)");
        for (op, c) in &cloak {
            if let Some(x) = r.get(op) {
                println!(
                    "{op:<9} throughput {:>7.1}×   p50 {:>7.1}×   p99 {:>7.1}×",
                    c.ops_per_sec / x.ops_per_sec,
                    x.p50_us / c.p50_us,
                    x.p99_us / c.p99_us
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_must_sum_to_100() {
        assert_eq!(parse_mix("validate=90,create=5,refresh=4,revoke=1").unwrap(), [90, 5, 4, 1]);
        assert!(matches!(parse_mix("validate=90,create=5"), Err(CliError::Refused(m)) if m.contains("sum to 95")));
        assert!(matches!(parse_mix("validate=0"), Err(CliError::Refused(_))));
        assert!(matches!(parse_mix("fly=100"), Err(CliError::Refused(_))));
    }

    #[test]
    fn zero_threads_are_refused() {
        assert!(parse_threads("0").is_err());
        assert!(parse_threads("x").is_err());
        assert_eq!(parse_threads("64"), Ok(64));
    }
}
