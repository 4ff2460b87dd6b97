//! End to end: the same minimal authenticated app served by axum four ways —
//! with cloakroom's axum layer; and one tower-sessions app (the same handlers)
//! over three stores: cloakroom's adapter (`cloakroom::tower_sessions`, redb),
//! `tower-sessions-redis-store` (fred client) on a `redis-server` this bench
//! starts on loopback, and that Redis store behind a moka cache
//! (`CachingSessionStore`, the pairing tower-sessions documents) — driven by a
//! Rust HTTP/1.1 client with keep-alive, one connection per concurrent
//! caller, at 1 and 64 connections.
//!
//! Workloads: an authenticated `GET /me`, `POST /login`, `POST /logout`.
//! Durability is like for like: cloakroom `Durability::Immediate` (journal
//! fdatasync before the ack) against Redis `appendfsync always`.
//!
//! Criterion measures time per request (so requests/s = 1 / time); a separate
//! pass per workload records every request's latency and prints
//! `LATENCY … p50 … p99 … req/s` lines. `CLOAKROOM_BENCH_QUICK=1` runs a smoke
//! pass. Without `redis-server` only the cloakroom side runs.

#![allow(clippy::disallowed_methods)] // a wall-clock benchmark: Instant::now is the point

#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(dead_code, clippy::all)]
mod redis_side;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Form, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use axum_extra::extract::cookie::CookieJar;
use cloakroom::axum::{Auth, Web, WebConfig, WebError};
use cloakroom::{Config, NewSession, Store};
use criterion::{Criterion, Throughput};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower_sessions::{CachingSessionStore, Session, SessionManagerLayer, SessionStore};
use tower_sessions_moka_store::MokaStore;
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike as _, Config as FredConfig, Pool};

type Http = Client<HttpConnector, Full<Bytes>>;

fn quick() -> bool {
    std::env::var_os("CLOAKROOM_BENCH_QUICK").is_some()
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

// ---- the cloakroom app ----

async fn c_login(State(web): State<Web>, jar: CookieJar, Form(f): Form<Login>) -> Result<Response, WebError> {
    let (jar, done) = web.login(jar, NewSession::new(f.user)).await?;
    Ok((jar, done.csrf_token).into_response())
}

async fn c_me(auth: Auth) -> String {
    format!("hello {}", auth.user())
}

async fn c_logout(State(web): State<Web>, jar: CookieJar, auth: Auth) -> Result<CookieJar, WebError> {
    web.logout(jar, &auth).await
}

fn cloakroom_app(web: Web) -> Router {
    Router::new()
        .route("/login", post(c_login))
        .route("/me", get(c_me))
        .route("/logout", post(c_logout))
        .layer(middleware::from_fn_with_state(web.clone(), cloakroom::axum::authenticate))
        .with_state(web)
}

// ---- the tower-sessions + Redis app ----

async fn t_login(session: Session, Form(f): Form<Login>) -> Response {
    // Fixation defence, as cloakroom's login does.
    if session.cycle_id().await.is_err() || session.insert("user", f.user).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    "ok".into_response()
}

async fn t_me(session: Session) -> Response {
    match session.get::<String>("user").await {
        Ok(Some(u)) => format!("hello {u}").into_response(),
        Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn t_logout(session: Session) -> Response {
    match session.get::<String>("user").await {
        Ok(Some(_)) => match session.flush().await {
            Ok(()) => "bye".into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

fn tower_sessions_app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/login", post(t_login))
        .route("/me", get(t_me))
        .route("/logout", post(t_logout))
        .layer(SessionManagerLayer::new(store).with_secure(false))
}

// ---- the client ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// cloakroom's own axum layer.
    Cloakroom,
    /// tower-sessions over cloakroom's adapter.
    TowerSessionsCloakroom,
    /// tower-sessions over its Redis store.
    TowerSessions,
    /// tower-sessions over a moka cache in front of its Redis store.
    TowerSessionsMoka,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Cloakroom => "cloakroom",
            Side::TowerSessionsCloakroom => "tower-sessions-cloakroom",
            Side::TowerSessions => "tower-sessions-redis",
            Side::TowerSessionsMoka => "tower-sessions-moka-redis",
        }
    }
    fn cookie(self) -> &'static str {
        match self {
            Side::Cloakroom => "session",
            _ => "id",
        }
    }
}

/// A signed-in client session: its cookie and (cloakroom) CSRF token.
#[derive(Clone)]
struct Signed {
    cookie: String,
    csrf: String,
}

fn client() -> Http {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build_http()
}

async fn login(http: &Http, addr: SocketAddr, side: Side, user: &str) -> Signed {
    let req = Request::post(format!("http://{addr}/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("user={user}"))))
        .unwrap();
    let r = http.request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{} login", side.name());
    let prefix = format!("{}=", side.cookie());
    let cookie = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&prefix))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Signed { cookie, csrf: String::from_utf8_lossy(&body).into_owned() }
}

async fn me(http: &Http, addr: SocketAddr, s: &Signed) {
    let req =
        Request::get(format!("http://{addr}/me")).header(header::COOKIE, &s.cookie).body(Full::default()).unwrap();
    let r = http.request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.into_body().collect().await.unwrap();
}

async fn logout(http: &Http, addr: SocketAddr, s: &Signed) {
    let req = Request::post(format!("http://{addr}/logout"))
        .header(header::COOKIE, &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .body(Full::default())
        .unwrap();
    let r = http.request(req).await.unwrap();
    assert!(r.status().is_success() || r.status().is_redirection(), "logout: {}", r.status());
    r.into_body().collect().await.unwrap();
}

#[derive(Clone, Copy)]
enum Work {
    Get,
    Login,
    Logout,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Get => "get",
            Work::Login => "login",
            Work::Logout => "logout",
        }
    }
}

/// Runs `total` requests of `work` over `conns` connections; returns the wall
/// time of the measured requests and each one's latency.
async fn run(addr: SocketAddr, side: Side, work: Work, conns: usize, total: usize) -> (Duration, Vec<Duration>) {
    let per = total.div_ceil(conns);
    // Setup outside the timing: connections, and the sessions to use or end.
    let mut lanes = Vec::new();
    for c in 0..conns {
        let http = client();
        let sessions = match work {
            Work::Get => vec![login(&http, addr, side, &format!("u{c}")).await],
            Work::Login => Vec::new(),
            Work::Logout => {
                let mut v = Vec::with_capacity(per);
                for i in 0..per {
                    v.push(login(&http, addr, side, &format!("u{c}-{i}")).await);
                }
                v
            }
        };
        lanes.push((http, sessions));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let mut tasks = Vec::new();
    for (c, (http, sessions)) in lanes.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                match work {
                    Work::Get => me(&http, addr, &sessions[0]).await,
                    Work::Login => {
                        login(&http, addr, side, &format!("n{c}-{i}")).await;
                    }
                    Work::Logout => logout(&http, addr, &sessions[i]).await,
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Vec::with_capacity(per * conns);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (start.elapsed(), all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis = match redis_side::RedisServer::start("always") {
        Ok(r) => Some(r),
        Err(m) => {
            eprintln!("web: {m}\nweb: running the cloakroom side only");
            None
        }
    };
    let store = Store::open(dir.path().join("web.redb"), Config::default()).unwrap();
    let web = Web::new(store, WebConfig::default().insecure_dev_mode_plain_http()).unwrap();
    // The adapter's store: its own file, the same (default) durability.
    let adapted = Store::open(dir.path().join("tower-sessions.redb"), Config::default()).unwrap();
    let mut sides = vec![
        (Side::Cloakroom, rt.block_on(serve(cloakroom_app(web.clone())))),
        (
            Side::TowerSessionsCloakroom,
            rt.block_on(serve(tower_sessions_app(cloakroom::tower_sessions::CloakroomStore::new(adapted.clone())))),
        ),
    ];
    let _pool = redis.as_ref().map(|r| {
        let pool = Pool::new(FredConfig::from_url(&r.url()).unwrap(), None, None, None, 8).unwrap();
        rt.block_on(async {
            pool.init().await.unwrap();
        });
        sides.push((Side::TowerSessions, rt.block_on(serve(tower_sessions_app(RedisStore::new(pool.clone()))))));
        let cached = CachingSessionStore::new(MokaStore::new(Some(100_000)), RedisStore::new(pool.clone()));
        sides.push((Side::TowerSessionsMoka, rt.block_on(serve(tower_sessions_app(cached)))));
        pool
    });

    let sample = if quick() { 200 } else { 5_000 };
    for work in [Work::Get, Work::Login, Work::Logout] {
        for conns in [1usize, 64] {
            let mut g = c.benchmark_group(format!("web/{}/{conns}-conns", work.name()));
            g.throughput(Throughput::Elements(1));
            if quick() {
                g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(1));
            } else {
                g.sample_size(10).measurement_time(Duration::from_secs(6));
            }
            for &(side, addr) in &sides {
                // Latency pass: `sample` requests, every latency kept.
                let n = match work {
                    Work::Get => sample,
                    _ => sample / 5,
                };
                let (wall, mut lat) = rt.block_on(run(addr, side, work, conns, n.max(conns)));
                lat.sort();
                #[allow(clippy::cast_precision_loss)]
                let rps = lat.len() as f64 / wall.as_secs_f64();
                println!(
                    "LATENCY web/{}/{conns}-conns/{}: p50 {:.0} µs, p99 {:.0} µs, {rps:.0} req/s over {} requests",
                    work.name(),
                    side.name(),
                    pct(&lat, 0.50).as_secs_f64() * 1e6,
                    pct(&lat, 0.99).as_secs_f64() * 1e6,
                    lat.len()
                );
                g.bench_function(side.name(), |b| {
                    b.iter_custom(|iters| {
                        let total = usize::try_from(iters).unwrap_or(usize::MAX).max(conns);
                        let (wall, lat) = rt.block_on(run(addr, side, work, conns, total));
                        #[allow(clippy::cast_possible_truncation)]
                        let per = wall / u32::try_from(lat.len()).unwrap_or(u32::MAX);
                        per * u32::try_from(iters).unwrap_or(u32::MAX)
                    })
                });
            }
            g.finish();
        }
    }
    c.final_summary();
    web.store().close().unwrap();
    adapted.close().unwrap();
}
