#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

//! Store hot paths. Run: `cargo bench --bench store`.

use std::hint::black_box;

use std::time::{Duration, Instant};

use cloakroom::{Config, Durability, NewSession, Store};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/harness.rs"]
mod harness;
#[path = "support/telemetry_env.rs"]
mod telemetry_env;

/// Deterministic xorshift so every run validates the same token sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fill(store: &Store, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            store.create(NewSession::new(format!("user-{}", i % 1000)).data(vec![7; 64])).unwrap().token.to_string()
        })
        .collect()
}

/// `n` uniformly random picks from `tokens`, laid end to end in one string.
struct TokenStream {
    all: String,
    len: usize,
    n: usize,
}

impl TokenStream {
    fn get(&self, i: usize) -> &str {
        let k = i % self.n;
        &self.all[k * self.len..(k + 1) * self.len]
    }
}

fn token_stream(tokens: &[String], n: usize, rng: &mut Rng) -> TokenStream {
    let len = tokens[0].len();
    let mut all = String::with_capacity(n * len);
    for _ in 0..n {
        all.push_str(&tokens[(rng.next() % tokens.len() as u64) as usize]);
    }
    TokenStream { all, len, n }
}

fn eventual(cache: usize, shards: usize) -> Config {
    let mut b = Config::builder();
    b.durability(Durability::Eventual).cache_capacity(cache).cache_shards(shards);
    b.build().unwrap()
}

fn validate(c: &mut Criterion) {
    telemetry_env::install();
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(1));

    let store = Store::in_memory(eventual(1_000_000, 64)).unwrap();
    let tokens = fill(&store, 100_000);
    // Measure with the setup folded into the file, not while the applier folds it.
    store.checkpoint().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // A request carries its token in a buffer that is already in CPU cache; a
    // random pick from a 100k `Vec<String>` would add two DRAM misses of harness
    // cost. So stream uniformly random picks from one contiguous buffer instead:
    // the token bytes are prefetched, the session (cache entry) is still random.
    let stream = token_stream(&tokens, 1 << 20, &mut rng);
    let mut i = 0usize;
    g.bench_function("hit", |b| {
        b.iter(|| {
            let t = stream.get(i);
            i = i.wrapping_add(1);
            black_box(store.validate(black_box(t)).unwrap());
        });
    });

    // The same over 100 sessions: everything in CPU cache; shows the compute floor.
    let small: Vec<String> = tokens[..100].to_vec();
    g.bench_function("hit/100-hot", |b| {
        b.iter(|| {
            let t = &small[(rng.next() % small.len() as u64) as usize];
            black_box(store.validate(black_box(t)).unwrap());
        });
    });
    // Well-formed tokens this store never issued (another server key, as a
    // forger without the key): refused by the keyed tag, before any lookup.
    let other = Store::in_memory(eventual(1024, 16)).unwrap();
    let forged: Vec<String> = (0..100).map(|_| other.create(NewSession::new("x")).unwrap().token.to_string()).collect();
    g.bench_function("forged", |b| {
        b.iter(|| {
            let t = &forged[(rng.next() % forged.len() as u64) as usize];
            assert!(matches!(
                store.validate(black_box(t)),
                Err(cloakroom::Error::Malformed(cloakroom::Malformed::BadChecksum))
            ));
        });
    });
    g.bench_function("parse-only", |b| {
        b.iter(|| {
            let t = &small[(rng.next() % small.len() as u64) as usize];
            black_box(cloakroom::SessionToken::parse(black_box(t)).unwrap());
        });
    });

    // Cache of 4,096 over a 200,000-session table: ~98% of validates miss.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("miss.redb"), eventual(4096, 16)).unwrap();
    let tokens = fill(&store, 200_000);
    // Measure with the setup folded into the file, not while the applier folds it.
    store.checkpoint().unwrap();
    let stream = token_stream(&tokens, 1 << 20, &mut rng);
    g.bench_function("miss", |b| {
        b.iter(|| {
            let t = stream.get(i);
            i = i.wrapping_add(1);
            black_box(store.validate(black_box(t)).unwrap());
        });
    });
    let st = store.stats();
    eprintln!("validate/miss: cache hit rate {:.3}", st.cache_hits as f64 / (st.cache_hits + st.cache_misses) as f64);
    g.finish();
}

/// Creates refused with `Error::Busy` and retried (see [`parallel_creates`]).
static BUSY_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `per_thread` creates on each of `threads` threads; returns the wall
/// time. A create refused with `Busy` is retried, as a caller must: it is the
/// store's backpressure (64 eventual creators outrun the applier on a small
/// machine, and the writer waits for a checkpoint once a million rows are
/// not yet checkpointed); the retries count in the time and are printed.
fn parallel_creates(store: &Store, threads: usize, per_thread: usize) -> Duration {
    harness::parallel(threads, per_thread, &|t, i| loop {
        match store.create(NewSession::new(format!("u{t}-{i}")).data(vec![1; 64])) {
            Ok(issued) => break drop(black_box(issued)),
            Err(cloakroom::Error::Busy) => {
                BUSY_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => panic!("create failed: {e}"),
        }
    })
}

fn create(c: &mut Criterion) {
    let mut g = c.benchmark_group("create");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();

    let store = Store::open(dir.path().join("c1.redb"), Config::default()).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("immediate/1-thread", |b| {
        b.iter(|| black_box(store.create(NewSession::new("u").data(vec![1; 64])).unwrap()));
    });
    drop(store);

    for (name, durability) in [("immediate", Durability::Immediate), ("eventual", Durability::Eventual)] {
        let mut cfg = Config::builder();
        cfg.durability(durability);
        let store = Store::open(dir.path().join(format!("c64-{name}.redb")), cfg.build().unwrap()).unwrap();
        const THREADS: usize = 64;
        const PER: usize = 100;
        g.throughput(Throughput::Elements((THREADS * PER) as u64));
        g.bench_function(format!("{name}/64-threads"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| parallel_creates(&store, THREADS, PER)).sum());
        });
        let st = store.stats();
        eprintln!(
            "create/{name}/64-threads: {} ops in {} commits ({} durable); {} creates refused Busy and retried",
            st.write_ops,
            st.commits,
            st.durable_commits,
            BUSY_RETRIES.swap(0, std::sync::atomic::Ordering::Relaxed)
        );
    }
    g.finish();
}

fn revoke(c: &mut Criterion) {
    let mut g = c.benchmark_group("revoke");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("r.redb"), Config::default()).unwrap();
    g.bench_function("one/immediate", |b| {
        b.iter_batched(
            || store.create(NewSession::new("u")).unwrap().session.id(),
            |id| store.revoke(id).unwrap(),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

/// Worker threads that live across criterion's samples: each sample hands
/// every worker the iteration count and takes the slowest worker's time, so
/// thread start-up (a fresh allocator arena, first-touch page faults, new
/// thread-local slots) is never inside a measurement.
struct Crew {
    go: Vec<std::sync::mpsc::Sender<u64>>,
    took: std::sync::mpsc::Receiver<Duration>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Crew {
    /// `n` workers; worker `t` runs `work(t, iters)` per sample.
    fn new(n: usize, work: std::sync::Arc<dyn Fn(usize, u64) + Send + Sync>) -> Self {
        let (done, took) = std::sync::mpsc::channel();
        let start = std::sync::Arc::new(std::sync::Barrier::new(n));
        let mut go = Vec::new();
        let mut handles = Vec::new();
        for t in 0..n {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            let (work, done, start) = (work.clone(), done.clone(), start.clone());
            handles.push(std::thread::spawn(move || {
                for iters in rx {
                    start.wait();
                    let t0 = Instant::now();
                    work(t, iters);
                    let _ = done.send(t0.elapsed());
                }
            }));
            go.push(tx);
        }
        Self { go, took, handles }
    }

    fn run(&self, iters: u64) -> Duration {
        for g in &self.go {
            g.send(iters).unwrap();
        }
        (0..self.go.len()).map(|_| self.took.recv().unwrap()).max().unwrap_or_default()
    }

    fn stop(self) {
        drop(self.go);
        for h in self.handles {
            h.join().unwrap();
        }
    }
}

/// Scaling of the hit path: N threads validating at once, (a) uniformly over
/// 100,000 sessions, (b) all on one hot session. Throughput = N validates per
/// iteration; the 2÷1 ratio shows whether a hit writes memory other threads read.
fn validate_threads(c: &mut Criterion) {
    let store = Store::in_memory(eventual(1_000_000, 64)).unwrap();
    let tokens = fill(&store, 100_000);
    // Measure with the setup folded into the file, not while the applier folds it.
    store.checkpoint().unwrap();
    let streams: std::sync::Arc<Vec<TokenStream>> = std::sync::Arc::new(
        (0..2).map(|t| token_stream(&tokens, 1 << 18, &mut Rng(0x9E37_79B9_7F4A_7C15 + t))).collect(),
    );
    let hot = tokens[0].clone();
    let mut g = c.benchmark_group("validate/threads");
    for n in [1usize, 2] {
        g.throughput(Throughput::Elements(n as u64));
        let (s, st) = (store.clone(), streams.clone());
        let uniform = Crew::new(
            n,
            std::sync::Arc::new(move |t, iters| {
                for i in 0..iters as usize {
                    black_box(s.validate(st[t].get(i)).unwrap());
                }
            }),
        );
        g.bench_function(format!("{n}"), |b| b.iter_custom(|iters| uniform.run(iters)));
        uniform.stop();
        let (s, h) = (store.clone(), hot.clone());
        let one_session = Crew::new(
            n,
            std::sync::Arc::new(move |_, iters| {
                for _ in 0..iters {
                    black_box(s.validate(black_box(&h)).unwrap());
                }
            }),
        );
        g.bench_function(format!("hot/{n}"), |b| b.iter_custom(|iters| one_session.run(iters)));
        one_session.stop();
    }
    g.finish();
}

/// Opening a file of 1,000,000 sessions: the open rebuilds the in-memory id
/// and user indexes with one scan of the sessions table. Also prints the
/// indexes' memory per session.
fn open(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let mut g = c.benchmark_group("open");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.redb");
    let mut cfg = Config::builder();
    cfg.durability(Durability::Eventual).sweep_interval(None).server_key(&[4; 32]);
    let cfg = cfg.build().unwrap();
    {
        let s = Store::open(&path, cfg.clone()).unwrap();
        for i in 0..N {
            s.create(NewSession::new(format!("user-{}", i % 200_000)).data(vec![1; 64])).unwrap();
        }
        s.close().unwrap();
    }
    let s = Store::open(&path, cfg.clone()).unwrap();
    let st = s.stats();
    eprintln!(
        "open/1M-sessions: {} sessions, indexes {} bytes ({} bytes per session)",
        st.sessions_stored.unwrap_or(0),
        st.index_bytes,
        st.index_bytes / N
    );
    s.close().unwrap();
    g.bench_function("1M-sessions", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = Store::open(&path, cfg.clone()).unwrap();
                total += t.elapsed();
                s.close().unwrap();
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, validate, validate_threads, create, revoke, open);
criterion_main!(benches);
