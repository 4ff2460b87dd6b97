#![allow(clippy::disallowed_methods)] // benchmarks measure wall time
//! Access and refresh tokens. Run: `cargo bench --bench tokens`.

use std::hint::black_box;

use std::time::Duration;

use cloakroom::{Config, Keyring, NewSession, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/harness.rs"]
mod harness;
#[path = "support/telemetry_env.rs"]
mod telemetry_env;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

const HS_SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINK3rDVMdT8c+IWEHXhnitKIa1iVl6aYQLEzc0c7NO8N\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAO9CVgYCFccdNBJb/5+7GMYxji1TY5ZmONOOUlOFb5N0=\n-----END PUBLIC KEY-----\n";

fn store(signer: &str) -> Store {
    let k = Keyring::new();
    k.add_hs256("hs", HS_SECRET).unwrap();
    k.add_eddsa("ed", ED_PRIVATE.as_bytes(), ED_PUBLIC.as_bytes()).unwrap();
    k.promote(signer).unwrap();
    Store::in_memory(Config::builder().keyring(k).build().unwrap()).unwrap()
}

/// What a careful bare `jsonwebtoken::decode` checks for the same token.
fn bare_validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&["cloakroom"]);
    v.set_audience(&["cloakroom"]);
    v.leeway = 30;
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    v
}

fn verify(c: &mut Criterion) {
    telemetry_env::install();
    let mut g = c.benchmark_group("verify_access");
    g.throughput(Throughput::Elements(1));
    for (name, alg, key) in [
        ("HS256", Algorithm::HS256, DecodingKey::from_secret(HS_SECRET)),
        ("EdDSA", Algorithm::EdDSA, DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).unwrap()),
    ] {
        let s = store(if name == "HS256" { "hs" } else { "ed" });
        let tok = s.create(NewSession::new("user-42")).unwrap().token.to_string();
        let jwt = s.issue_tokens(&tok).unwrap().access;
        let v = bare_validation(alg);
        g.bench_function(format!("{name}/cloakroom"), |b| {
            b.iter(|| black_box(s.verify_access(black_box(&jwt)).unwrap()))
        });
        g.bench_function(format!("{name}/bare-jsonwebtoken-decode"), |b| {
            b.iter(|| black_box(jsonwebtoken::decode::<serde_json::Value>(black_box(&jwt), &key, &v).unwrap()))
        });
    }
    g.finish();
}

/// Scaling of `verify_access`: N threads verifying one HS256 token at once;
/// throughput = N × per-thread calls. The 2 ÷ 1 ratio shows whether a verify
/// writes memory other threads read.
fn verify_threads(c: &mut Criterion) {
    const PER: usize = 20_000;
    let s = store("hs");
    let tok = s.create(NewSession::new("user-42")).unwrap().token.to_string();
    let jwt = s.issue_tokens(&tok).unwrap().access;
    let mut g = c.benchmark_group("verify_access/threads");
    for n in [1usize, 2] {
        g.throughput(Throughput::Elements((n * PER) as u64));
        g.bench_function(format!("{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    total += harness::parallel(n, PER, &|_, _| {
                        black_box(s.verify_access(black_box(&jwt)).unwrap());
                    });
                }
                total
            });
        });
    }
    g.finish();
}

/// The stored-row tag (format 3), as `backend/sealed/mac.rs` computes it: keyed blake3
/// over table byte, key length, key (a u64 session number) and a 180-byte
/// value (id + a record with a short user id and 64 bytes of data), truncated
/// to 16 bytes. Every row read from disk pays one; compare with `validate/miss`.
fn row_tag(c: &mut Criterion) {
    let key = [9u8; 32];
    let value = [7u8; 180];
    let mut g = c.benchmark_group("row_tag");
    g.bench_function("keyed-blake3-180B", |b| {
        b.iter(|| {
            let mut h = blake3::Hasher::new_keyed(black_box(&key));
            h.update(&[1]);
            h.update(&8u32.to_le_bytes());
            h.update(&42u64.to_le_bytes());
            h.update(black_box(&value));
            let mut t = [0u8; 16];
            t.copy_from_slice(&h.finalize().as_bytes()[..16]);
            black_box(t)
        });
    });
    g.finish();
}

fn issue_and_authenticate(c: &mut Criterion) {
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Elements(1));
    let s = store("hs");
    let tok = s.create(NewSession::new("user-42")).unwrap().token.to_string();
    g.bench_function("issue_tokens/HS256/in-memory", |b| b.iter(|| black_box(s.issue_tokens(&tok).unwrap())));
    let jwt = s.issue_tokens(&tok).unwrap().access;
    g.bench_function("authenticate/session-token", |b| b.iter(|| black_box(s.authenticate(black_box(&tok)).unwrap())));
    g.bench_function("authenticate/access-jwt", |b| b.iter(|| black_box(s.authenticate(black_box(&jwt)).unwrap())));
    g.finish();
}

/// `threads` threads each refresh their own session `per` times; returns wall time.
fn parallel_refresh(s: &Store, tokens: &mut [String], per: usize) -> Duration {
    let slots: Vec<std::sync::Mutex<&mut String>> = tokens.iter_mut().map(std::sync::Mutex::new).collect();
    harness::parallel(slots.len(), per, &|t, _| {
        let mut tok = slots[t].lock().unwrap();
        **tok = s.refresh(&tok).unwrap().refresh.to_string();
    })
}

fn refresh(c: &mut Criterion) {
    let mut g = c.benchmark_group("refresh");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("r.redb"), Config::default()).unwrap();
    for threads in [1usize, 64] {
        let mut tokens: Vec<String> = (0..threads)
            .map(|i| {
                let t = s.create(NewSession::new(format!("user-{i}"))).unwrap().token.to_string();
                s.issue_tokens(&t).unwrap().refresh.to_string()
            })
            .collect();
        let per = if threads == 1 { 20 } else { 50 };
        g.throughput(Throughput::Elements((threads * per) as u64));
        g.bench_function(format!("durable/{threads}-threads"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| parallel_refresh(&s, &mut tokens, per)).sum());
        });
    }
    g.finish();
}

criterion_group!(benches, verify, verify_threads, row_tag, issue_and_authenticate, refresh);
criterion_main!(benches);
