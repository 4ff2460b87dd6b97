//! The tower-sessions adapter through tower-sessions itself: the example app
//! (`SessionManagerLayer` over `CloakroomStore`) and an axum-login app, driven
//! in-process with `oneshot`; plus the store trait called directly for what a
//! request cannot reach in order (a save racing a revocation).

#[path = "../examples/tower_sessions.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use cloakroom::tower_sessions::{ANONYMOUS, AXUM_LOGIN_KEY, CloakroomStore};
use cloakroom::{Clock as _, Config, ManualClock, Scope, Store};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use tower_sessions::cookie::time;
use tower_sessions::session::{Id, Record};
use tower_sessions::{ExpiredDeletion as _, SessionStore as _};

fn config(clock: &ManualClock, key: u8) -> Config {
    Config::builder().server_key(&[key; 32]).clock(clock.clone()).build().unwrap()
}

/// A store on a clock that starts at the real time (tower-sessions computes
/// expiry dates from the system clock) and then only moves when told.
fn store(key: u8) -> (Store, ManualClock) {
    let clock = ManualClock::new(cloakroom::SystemClock.now());
    (Store::in_memory(config(&clock, key)).unwrap(), clock)
}

async fn send(app: &Router, r: Request<Body>) -> Response<Body> {
    app.clone().oneshot(r).await.unwrap()
}

async fn text(r: Response<Body>) -> String {
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The `id` cookie a response sets: Some("") when it deletes it.
fn set_id(r: &Response<Body>) -> Option<String> {
    r.headers().get_all(header::SET_COOKIE).iter().find_map(|v| {
        let c = v.to_str().unwrap();
        let rest = c.strip_prefix("id=")?;
        Some(if c.contains("Max-Age=0") { String::new() } else { rest.split(';').next().unwrap().to_owned() })
    })
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("id={c}"));
    }
    b.body(Body::empty()).unwrap()
}

fn post(uri: &str, cookie: Option<&str>, form: &str) -> Request<Body> {
    let mut b = Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("id={c}"));
    }
    b.body(Body::from(form.to_owned())).unwrap()
}

/// The visit count a page shows.
fn count(page: &str) -> u64 {
    let start = page.find("<span id=count>").unwrap() + "<span id=count>".len();
    page[start..].split('<').next().unwrap().parse().unwrap()
}

/// A visit with `cookie`: the count shown and the cookie to use next.
async fn visit(app: &Router, cookie: Option<&str>) -> (u64, String) {
    let r = send(app, get("/", cookie)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let next = set_id(&r).or(cookie.map(str::to_owned)).unwrap();
    (count(&text(r).await), next)
}

async fn sign_in(app: &Router, cookie: Option<&str>, user: &str) -> String {
    let r = send(app, post("/login", cookie, &format!("user={user}"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    set_id(&r).unwrap()
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_written_and_read_back_across_requests() {
    let (s, _) = store(1);
    let app = example::router(s.clone(), true);
    let (n, c) = visit(&app, None).await;
    assert_eq!(n, 1);
    let (n, c2) = visit(&app, Some(&c)).await;
    assert_eq!((n, c2.as_str()), (2, c.as_str()), "same cookie, count kept");
    assert_eq!(visit(&app, Some(&c)).await.0, 3);
    // Filed under the anonymous placeholder until sign-in.
    assert_eq!(blocking(|| s.list_user(ANONYMOUS)).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cycles_the_id_keeps_the_data_and_kills_the_old_cookie() {
    let (s, _) = store(1);
    let app = example::router(s.clone(), true);
    let (_, anon) = visit(&app, None).await;
    visit(&app, Some(&anon)).await;
    let signed = sign_in(&app, Some(&anon), "alice").await;
    assert_ne!(signed, anon, "cycle_id gives a new cookie");
    let (n, _) = visit(&app, Some(&signed)).await;
    assert_eq!(n, 3, "the data carried over the cycle");
    // The pre-login cookie is dead: it starts a new, empty session.
    let r = send(&app, get("/", Some(&anon))).await;
    assert!(set_id(&r).is_some_and(|c| !c.is_empty() && c != anon));
    assert_eq!(count(&text(r).await), 1);
    // Listed under the user, and the old anonymous session is gone.
    let list = blocking(|| s.list_user("alice")).unwrap();
    assert_eq!(list.len(), 1);
    let id: Id = signed.parse().unwrap();
    assert_eq!(list[0].id(), CloakroomStore::new(s.clone()).session_id(id.0));
    assert_eq!(blocking(|| s.list_user(ANONYMOUS)).unwrap().len(), 1, "only the session the dead cookie started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_after_the_inactivity_window() {
    let (s, clock) = store(1);
    let app = example::router(s.clone(), true);
    let (_, c) = visit(&app, None).await;
    clock.advance(Duration::from_secs(7 * 3600));
    assert_eq!(visit(&app, Some(&c)).await.0, 2, "within 8 h of the last save");
    // The save moved the deadline: 8 h from the last visit, not the first.
    clock.advance(Duration::from_secs(7 * 3600));
    assert_eq!(visit(&app, Some(&c)).await.0, 3);
    clock.advance(Duration::from_secs(8 * 3600 + 60));
    let (n, c2) = visit(&app, Some(&c)).await;
    assert_eq!(n, 1, "expired: a new session");
    assert_ne!(c2, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_deletes_the_session() {
    let (s, _) = store(1);
    let app = example::router(s.clone(), true);
    let c = sign_in(&app, None, "bob").await;
    let r = send(&app, post("/logout", Some(&c), "")).await;
    assert_eq!(set_id(&r).as_deref(), Some(""), "cookie removed");
    assert!(blocking(|| s.list_user("bob")).unwrap().is_empty());
    let (n, c2) = visit(&app, Some(&c)).await;
    assert_eq!(n, 1);
    assert_ne!(c2, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_user_makes_the_next_request_anonymous() {
    let (s, _) = store(1);
    let app = example::router(s.clone(), true);
    let phone = sign_in(&app, None, "carol").await;
    let laptop = sign_in(&app, None, "carol").await;
    assert!(text(send(&app, get("/", Some(&phone))).await).await.contains("<b id=user>carol</b>"));
    assert_eq!(blocking(|| s.revoke_user("carol", Scope::All)).unwrap(), 2);
    for c in [&phone, &laptop] {
        let page = text(send(&app, get("/", Some(c))).await).await;
        assert!(!page.contains("carol") && page.contains("Sign in"), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_page_lists_and_signs_out_the_users_sessions_only() {
    let (s, _) = store(1);
    let app = example::router(s.clone(), true);
    let phone = sign_in(&app, None, "dave").await;
    let laptop = sign_in(&app, None, "dave").await;
    let eve = sign_in(&app, None, "eve").await;
    let page = text(send(&app, get("/devices", Some(&phone))).await).await;
    assert_eq!(page.matches("class=device").count(), 2, "{page}");
    assert_eq!(page.matches("(this device)").count(), 1);
    let sessions = CloakroomStore::new(s.clone());
    let laptop_id = sessions.session_id(laptop.parse::<Id>().unwrap().0);
    let eve_id = sessions.session_id(eve.parse::<Id>().unwrap().0);
    // Eve cannot sign out Dave's laptop.
    let r = send(&app, post("/devices/revoke", Some(&eve), &format!("id={laptop_id}"))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Dave can; the laptop's cookie then arrives anonymous. Eve's session is untouched.
    let r = send(&app, post("/devices/revoke", Some(&phone), &format!("id={laptop_id}"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(text(send(&app, get("/", Some(&laptop))).await).await.contains("Sign in"));
    assert!(blocking(|| s.session(eve_id)).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_from_another_store_or_a_forged_one_is_refused() {
    let (a, _) = store(1);
    let (b, _) = store(2);
    let (app_a, app_b) = (example::router(a, true), example::router(b, true));
    let c = sign_in(&app_a, None, "frank").await;
    for bad in [c.as_str(), "AAAAAAAAAAAAAAAAAAAAAA", "not-an-id", ""] {
        let page = text(send(&app_b, get("/", Some(bad))).await).await;
        assert!(page.contains("Sign in") && count(&page) == 1, "{bad}: {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_one_session_and_many_new_ones() {
    let (s, _) = store(1);
    let app = example::router(s.clone(), true);
    let (_, c) = visit(&app, None).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (app, c) = (app.clone(), c.clone());
            tokio::spawn(async move { visit(&app, Some(&c)).await })
        })
        .collect();
    for t in tasks {
        let (n, next) = t.await.unwrap();
        assert!((2..=33).contains(&n));
        assert_eq!(next, c, "no request lost the session");
    }
    // Last writer wins: the count is whatever one of the racing saves wrote.
    assert!((3..=34).contains(&visit(&app, Some(&c)).await.0));
    let fresh: Vec<_> = (0..64)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { visit(&app, None).await.1 })
        })
        .collect();
    let mut cookies = std::collections::HashSet::new();
    for t in fresh {
        cookies.insert(t.await.unwrap());
    }
    assert_eq!(cookies.len(), 64);
    assert_eq!(blocking(|| s.list_user(ANONYMOUS)).unwrap().len(), 65);
}

/// The store never holds tower-sessions' id (the cookie): neither its bytes
/// nor its text is in the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_file_holds_no_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::new(cloakroom::SystemClock.now());
    let s = Store::open(&path, config(&clock, 1)).unwrap();
    let app = example::router(s.clone(), true);
    let mut cookies = Vec::new();
    for i in 0..20 {
        cookies.push(sign_in(&app, None, &format!("user{i}")).await);
    }
    blocking(|| {
        s.flush().unwrap();
        s.checkpoint().unwrap();
        s.close().unwrap();
    });
    let mut bytes = std::fs::read(&path).unwrap();
    for p in Store::journal_paths(&path) {
        bytes.extend(std::fs::read(p).unwrap_or_default());
    }
    assert!(bytes.windows(5).any(|w| w == b"user7"), "the check reads the file's contents");
    for c in &cookies {
        let id: Id = c.parse().unwrap();
        let raw = id.0.to_le_bytes();
        assert!(!bytes.windows(16).any(|w| w == raw), "raw id in the file");
        assert!(!bytes.windows(c.len()).any(|w| w == c.as_bytes()), "cookie text in the file");
    }
    // Reopened, the cookies still work (nothing lost).
    let s = Store::open(&path, config(&clock, 1)).unwrap();
    let app = example::router(s, true);
    assert!(text(send(&app, get("/", Some(&cookies[3]))).await).await.contains("<b id=user>user3</b>"));
}

fn record(user: Option<&str>, clock: &ManualClock, secs: i64) -> Record {
    let mut data = HashMap::new();
    if let Some(u) = user {
        data.insert(AXUM_LOGIN_KEY.to_owned(), serde_json::json!({ "user_id": u, "auth_hash": [1, 2] }));
    }
    data.insert("n".to_owned(), serde_json::json!(1));
    let now = clock.now_for_test();
    Record { id: Id::default(), data, expiry_date: now + time::Duration::seconds(secs) }
}

trait Now {
    fn now_for_test(&self) -> time::OffsetDateTime;
}

impl Now for ManualClock {
    fn now_for_test(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::from(self.now())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_trait_keeps_revocations_and_files_by_user() {
    let (s, clock) = store(1);
    let st = CloakroomStore::new(s.clone());
    let mut r = record(Some("gina"), &clock, 600);
    st.create(&mut r).await.unwrap();
    let back = st.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back.data, r.data);
    // (Within the real time this test took: tower-sessions' dates are on the system clock.)
    assert!((back.expiry_date - r.expiry_date).abs() < time::Duration::seconds(5));
    assert_eq!(s.list_user("gina").unwrap().len(), 1);

    // A save racing a revocation does not bring the session back.
    s.revoke_user("gina", Scope::All).unwrap();
    r.data.insert("n".to_owned(), serde_json::json!(2));
    st.save(&r).await.unwrap();
    assert!(st.load(&r.id).await.unwrap().is_none());
    assert!(s.list_user("gina").unwrap().is_empty());

    // A user written without cycle_id: re-filed under the new user, same cookie.
    let mut r = record(None, &clock, 600);
    st.create(&mut r).await.unwrap();
    assert_eq!(s.list_user(ANONYMOUS).unwrap().len(), 1);
    r.data.insert(AXUM_LOGIN_KEY.to_owned(), serde_json::json!({ "user_id": 42, "auth_hash": [] }));
    st.save(&r).await.unwrap();
    assert!(s.list_user(ANONYMOUS).unwrap().is_empty());
    assert_eq!(s.list_user("42").unwrap().len(), 1, "a numeric user id as its JSON text");
    assert_eq!(st.load(&r.id).await.unwrap().unwrap().data, r.data);

    // An expiry date in the past deletes; delete_expired runs a sweep.
    r.expiry_date = clock.now_for_test() - time::Duration::seconds(1);
    st.save(&r).await.unwrap();
    assert!(st.load(&r.id).await.unwrap().is_none());
    let mut short = record(None, &clock, 5);
    st.create(&mut short).await.unwrap();
    clock.advance(Duration::from_secs(6));
    assert!(st.load(&short.id).await.unwrap().is_none());
    st.delete_expired().await.unwrap();
    assert!(s.list_user(ANONYMOUS).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_the_store_cannot_take_is_an_encode_error() {
    let (s, clock) = store(1);
    let st = CloakroomStore::new(s);
    let mut r = record(Some(&"x".repeat(cloakroom::MAX_USER_ID_LEN + 1)), &clock, 600);
    let e = st.create(&mut r).await.unwrap_err();
    assert!(matches!(e, tower_sessions::session_store::Error::Encode(_)), "{e:?}");
    // Debug shows no key material or cookie.
    assert!(!format!("{st:?}").contains(&r.id.to_string()));
}

mod login {
    //! axum-login 0.18 on top of the adapter: its default user key, login
    //! (which cycles the id), logout, and an admin revocation.
    use super::*;
    use axum::routing;
    use axum_login::{AuthManagerLayerBuilder, AuthSession, AuthUser, AuthnBackend, UserId};
    use tower_sessions::SessionManagerLayer;

    #[derive(Clone, Debug)]
    pub struct User {
        id: i64,
        name: String,
        pw_hash: Vec<u8>,
    }

    impl AuthUser for User {
        type Id = i64;
        fn id(&self) -> i64 {
            self.id
        }
        fn session_auth_hash(&self) -> &[u8] {
            &self.pw_hash
        }
    }

    #[derive(Clone)]
    pub struct Users(Vec<User>);

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    pub struct Never;

    impl AuthnBackend for Users {
        type User = User;
        type Credentials = (String, String);
        type Error = Never;
        async fn authenticate(&self, (name, pw): (String, String)) -> Result<Option<User>, Never> {
            Ok(self.0.iter().find(|u| u.name == name && u.pw_hash == pw.as_bytes()).cloned())
        }
        async fn get_user(&self, id: &UserId<Self>) -> Result<Option<User>, Never> {
            Ok(self.0.iter().find(|u| u.id == *id).cloned())
        }
    }

    type Auth = AuthSession<Users>;

    async fn login(mut auth: Auth, body: String) -> StatusCode {
        let (name, pw) = body.split_once(':').unwrap();
        match auth.authenticate((name.to_owned(), pw.to_owned())).await.unwrap() {
            Some(u) => {
                auth.login(&u).await.unwrap();
                StatusCode::OK
            }
            None => StatusCode::UNAUTHORIZED,
        }
    }

    async fn me(auth: Auth) -> Result<String, StatusCode> {
        auth.user.map(|u| u.name).ok_or(StatusCode::UNAUTHORIZED)
    }

    async fn logout(mut auth: Auth) -> StatusCode {
        auth.logout().await.unwrap();
        StatusCode::OK
    }

    fn app(store: Store) -> Router {
        let users = Users(vec![
            User { id: 7, name: "hana".into(), pw_hash: b"pw-hana".to_vec() },
            User { id: 8, name: "ivan".into(), pw_hash: b"pw-ivan".to_vec() },
        ]);
        let sessions = SessionManagerLayer::new(CloakroomStore::new(store));
        Router::new()
            .route("/login", routing::post(login))
            .route("/me", routing::get(me))
            .route("/logout", routing::post(logout))
            .layer(AuthManagerLayerBuilder::new(users, sessions).build())
    }

    async fn sign_in(app: &Router, who: &str) -> String {
        let r = send(app, Request::post("/login").body(Body::from(who.to_owned())).unwrap()).await;
        assert_eq!(r.status(), StatusCode::OK);
        set_id(&r).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn login_logout_and_revoke_user_through_axum_login() {
        let (s, _) = store(1);
        let app = app(s.clone());
        let r = send(&app, Request::post("/login").body(Body::from("hana:wrong")).unwrap()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let a = sign_in(&app, "hana:pw-hana").await;
        let b = sign_in(&app, "hana:pw-hana").await;
        let other = sign_in(&app, "ivan:pw-ivan").await;
        assert_eq!(text(send(&app, get("/me", Some(&a))).await).await, "hana");
        // Filed under axum-login's user id (7), with no configuration.
        assert_eq!(blocking(|| s.list_user("7")).unwrap().len(), 2);
        // Logout ends that session only.
        assert_eq!(send(&app, post("/logout", Some(&a), "")).await.status(), StatusCode::OK);
        assert_eq!(send(&app, get("/me", Some(&a))).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(send(&app, get("/me", Some(&b))).await.status(), StatusCode::OK);
        // "Sign out everywhere" from an admin tool.
        assert_eq!(blocking(|| s.logout_everywhere("7")).unwrap(), 1);
        assert_eq!(send(&app, get("/me", Some(&b))).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(text(send(&app, get("/me", Some(&other))).await).await, "ivan");
    }
}

#[cfg(feature = "redis")]
#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)] // (it times its own server start)
mod redis_side;

#[cfg(feature = "redis")]
mod on_redis {
    //! The adapter over a Redis-backed store: two nodes (two `Store`s on one
    //! `redis-server`, started here and stopped when the test ends) serve
    //! the same cookies; a save moves the deadline on Redis too.
    use super::*;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::task::Poll;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_serve_the_same_cookies_and_revocations_reach_both() {
        if !redis_side::available_for_tests("tower-sessions on Redis") {
            return;
        }
        let server = redis_side::RedisServer::start("always").unwrap();
        let clock = ManualClock::new(cloakroom::SystemClock.now());
        let node = || blocking(|| Store::redis(&server.url(), config(&clock, 9)).unwrap());
        let (a, b) = (node(), node());
        let (app_a, app_b) = (example::router(a.clone(), true), example::router(b.clone(), true));
        let c = sign_in(&app_a, None, "jo").await;
        assert_eq!(visit(&app_a, Some(&c)).await.0, 1);
        assert_eq!(visit(&app_b, Some(&c)).await.0, 2, "node B reads what node A wrote");
        // 7 h, a visit (a save: deadline moved to 8 h from now), 7 h more: alive.
        clock.advance(Duration::from_secs(7 * 3600));
        assert_eq!(visit(&app_a, Some(&c)).await.0, 3);
        clock.advance(Duration::from_secs(7 * 3600));
        assert_eq!(blocking(|| b.list_user("jo")).unwrap().len(), 1);
        assert_eq!(visit(&app_b, Some(&c)).await.0, 4);
        // Kept alive by a visit every 7 h, on either node, for 35 h.
        for (i, app) in [&app_a, &app_b, &app_a].into_iter().enumerate() {
            clock.advance(Duration::from_secs(7 * 3600));
            assert_eq!(visit(app, Some(&c)).await.0, 5 + i as u64);
        }
        // A second sign-in trims the user index of sessions a day past their
        // deadline: the first session's entry was moved with its deadline
        // (its first one, 8 h, is 27 h ago), so it stays listed.
        sign_in(&app_b, None, "jo").await;
        assert_eq!(blocking(|| a.list_user("jo")).unwrap().len(), 2);
        // Revoked on A: once B's follower has applied the event (bounded poll),
        // B's next request is anonymous.
        assert_eq!(blocking(|| a.revoke_user("jo", Scope::All)).unwrap(), 2);
        let id = CloakroomStore::new(b.clone()).session_id(c.parse::<Id>().unwrap().0);
        let mut gone = false;
        for _ in 0..1000 {
            if blocking(|| b.session(id)).unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await; // bounded poll for B's follower
        }
        assert!(gone, "node B still had the session after 1000 polls");
        let page = text(send(&app_b, get("/", Some(&c))).await).await;
        assert!(page.contains("Sign in"), "{page}");
        blocking(|| {
            a.close().unwrap();
            b.close().unwrap();
        });
    }

    /// A store on `url` once its follower is caught up (bounded poll of 1 ms).
    fn following(url: &str, clock: &ManualClock) -> Store {
        let s = Store::redis(url, config(clock, 9)).unwrap();
        for _ in 0..5000 {
            if s.stats().following == Some(true) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(1)); // waiting for a thread to subscribe, not for time
        }
        panic!("the follower did not catch up within 5000 polls of 1 ms");
    }

    /// Polls `f` once: `Ready` with its output, or `Pending` (`f` kept).
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    /// Issue 24 item 6, deterministic: the adapter answers a load inline only
    /// when the validate would do no I/O. With the blocking pool's only thread
    /// taken, a load that must read Redis cannot finish on its first poll: a
    /// fresh cached session does; one past the staleness bound (manual clock),
    /// or any while the node is not following (cut off by a proxy), does not.
    #[test]
    fn a_stale_or_unfollowed_cached_session_is_not_answered_inline() {
        if !redis_side::available_for_tests("tower-sessions on Redis") {
            return;
        }
        let server = redis_side::RedisServer::start("always").unwrap();
        let proxy = redis_side::Proxy::start(&server.addr()).unwrap();
        let clock = ManualClock::new(cloakroom::SystemClock.now());
        let rt = tokio::runtime::Builder::new_current_thread().max_blocking_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let s = following(&proxy.url(), &clock);
            let cs = CloakroomStore::new(s.clone());
            let mut rec = record(None, &clock, 3600);
            cs.create(&mut rec).await.unwrap();
            cs.load(&rec.id).await.unwrap().unwrap(); // read and cached
            let occupy = || {
                let (release, wait) = std::sync::mpsc::channel::<()>();
                (release, tokio::task::spawn_blocking(move || wait.recv().is_ok()))
            };

            let (release, busy) = occupy();
            let fresh = poll_once(&mut cs.load(&rec.id)).await;
            assert!(matches!(fresh, Poll::Ready(Ok(Some(_)))), "a fresh cached session is answered inline");
            clock.advance(Duration::from_millis(1001)); // past the staleness bound (1 s)
            let mut stale = cs.load(&rec.id);
            assert!(poll_once(&mut stale).await.is_pending(), "a stale cached session was answered inline");
            release.send(()).unwrap();
            busy.await.unwrap();
            stale.await.unwrap().unwrap(); // read again on the pool: fresh again
            let (release, busy) = occupy();
            assert!(poll_once(&mut cs.load(&rec.id)).await.is_ready());

            proxy.cut();
            for _ in 0..5000 {
                if s.stats().following == Some(false) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1)); // bounded poll for the follower
            }
            assert_eq!(s.stats().following, Some(false));
            let mut cut_off = cs.load(&rec.id);
            assert!(poll_once(&mut cut_off).await.is_pending(), "a node not following answered inline");
            release.send(()).unwrap();
            busy.await.unwrap();
            assert!(cut_off.await.is_err(), "Redis is out of reach through the cut proxy");
            s.close().unwrap();
        });
    }

    /// Issue 24 item 6, end to end: on a `current_thread` runtime, requests
    /// whose cached sessions are past the staleness bound arrive while Redis
    /// holds every client (`CLIENT PAUSE 700 ALL`). Their validates wait on
    /// the blocking pool, never on the runtime's one thread: a 10 ms ticker
    /// task keeps ticking through the pause.
    #[test]
    fn a_paused_redis_never_stalls_the_runtime_thread() {
        if !redis_side::available_for_tests("tower-sessions on Redis") {
            return;
        }
        let server = redis_side::RedisServer::start("always").unwrap();
        let clock = ManualClock::new(cloakroom::SystemClock.now());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = following(&server.url(), &clock);
            let app = example::router(s.clone(), true);
            // A read-only page (an anonymous session's /devices redirects
            // home, nothing saved): its load fills the cache, and no write of
            // this node's evicts the entry afterwards.
            let read = |c: &str| send(&app, get("/devices", Some(c)));
            let mut cookies = Vec::new();
            for _ in 0..8 {
                let (_, c) = visit(&app, None).await;
                assert_eq!(read(&c).await.status(), StatusCode::SEE_OTHER); // cached now
                cookies.push(c);
            }
            assert_eq!(s.stats().cached_sessions, 8);
            clock.advance(Duration::from_millis(1500)); // every cached copy is stale
            let mut con = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
            redis::cmd("CLIENT").arg("PAUSE").arg(700).arg("ALL").query::<()>(&mut con).unwrap();

            let ticks = Arc::new(AtomicU64::new(0));
            let done = Arc::new(AtomicBool::new(false));
            let (t, d) = (Arc::clone(&ticks), Arc::clone(&done));
            let ticker = tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(10));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !d.load(Ordering::SeqCst) {
                    every.tick().await;
                    t.fetch_add(1, Ordering::SeqCst);
                }
            });
            #[allow(clippy::disallowed_methods)] // measuring the pause, not waiting for time
            let started = std::time::Instant::now();
            let pages = futures_util::future::join_all(cookies.iter().map(|c| read(c))).await;
            let took = started.elapsed();
            done.store(true, Ordering::SeqCst);
            let n = ticks.load(Ordering::SeqCst);
            ticker.await.unwrap();
            assert!(pages.iter().all(|r| r.status() == StatusCode::SEE_OTHER), "every session was read");
            for c in &cookies {
                assert_eq!(visit(&app, Some(c)).await.0, 2, "every session kept its data");
            }
            assert!(took >= Duration::from_millis(400), "the requests did not wait for Redis ({took:?})");
            eprintln!("{n} ticks of 10 ms while {} requests waited {took:?} for a paused Redis", cookies.len());
            assert!(n >= 20, "the runtime thread stalled: {n} ticks in {took:?}");
            s.close().unwrap();
        });
    }
}

#[cfg(feature = "tower-sessions-015")]
mod v015 {
    //! The same `CloakroomStore` under tower-sessions 0.15 (feature
    //! `tower-sessions-015`): a counter app on its `SessionManagerLayer`.
    use super::*;
    use tower_sessions_015 as ts;

    async fn counter(session: ts::Session) -> String {
        let n = session.get::<u64>("n").await.unwrap().unwrap_or(0) + 1;
        session.insert("n", n).await.unwrap();
        format!("<span id=count>{n}</span>")
    }

    async fn cycle(session: ts::Session) -> &'static str {
        session.cycle_id().await.unwrap();
        "ok"
    }

    async fn flush(session: ts::Session) -> &'static str {
        session.flush().await.unwrap();
        "ok"
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_serves_tower_sessions_0_15() {
        let (s, _) = store(1);
        let app = Router::new()
            .route("/", axum::routing::get(counter))
            .route("/login", axum::routing::post(cycle))
            .route("/logout", axum::routing::post(flush))
            .layer(ts::SessionManagerLayer::new(CloakroomStore::new(s.clone())));
        let (n, c) = visit(&app, None).await;
        assert_eq!(n, 1);
        assert_eq!(visit(&app, Some(&c)).await.0, 2);
        let r = send(&app, post("/login", Some(&c), "")).await;
        let cycled = set_id(&r).unwrap();
        assert_ne!(cycled, c);
        assert_eq!(visit(&app, Some(&cycled)).await.0, 3, "data kept over cycle_id");
        assert_eq!(visit(&app, Some(&c)).await.0, 1, "the old id is dead");
        assert_eq!(blocking(|| s.list_user(ANONYMOUS)).unwrap().len(), 2);
        send(&app, post("/logout", Some(&cycled), "")).await;
        assert_eq!(visit(&app, Some(&cycled)).await.0, 1);
        // Revocation through the store reaches 0.15 apps as well.
        let (_, c) = visit(&app, None).await;
        assert_eq!(blocking(|| s.revoke_user(ANONYMOUS, Scope::All)).unwrap(), 3);
        assert_eq!(visit(&app, Some(&c)).await.0, 1);
    }
}
