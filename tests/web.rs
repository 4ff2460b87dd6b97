//! The axum layer and the example app, driven in-process (`oneshot`): every
//! flow of the example and the bad inputs a browser or an attacker can send.

#[path = "../examples/axum_app/app.rs"]
#[allow(dead_code)]
mod app;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum_extra::extract::cookie::CookieJar;
use cloakroom::axum::{CookieSettings, Unauthenticated, Web, WebConfig};
use cloakroom::{Config, Error, ManualClock, Store};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

/// Storage that fails on demand (`Store::open_with_backend`, feature `test-util`).
#[cfg(feature = "test-util")]
#[path = "api/support/faulty_backend.rs"]
mod faulty;

const HOST: &str = "app.test";
const ORIGIN: &str = "https://app.test";
const ALICE_PW: &str = "correct horse battery staple";
const BOB_PW: &str = "hunter2hunter2";

struct T {
    app: Router,
    web: Web,
    clock: ManualClock,
}

fn setup() -> T {
    setup_with(Store::in_memory)
}

/// The example app over the store `open` makes from the tests' config.
fn setup_with(open: impl FnOnce(Config) -> Result<Store, Error>) -> T {
    let clock = ManualClock::fixed();
    let cfg = Config::builder()
        .session_ttl(Duration::from_secs(3600))
        .idle_timeout(Some(Duration::from_secs(600)))
        .access_ttl(Duration::from_secs(300))
        .clock(clock.clone())
        .build()
        .unwrap();
    let store = open(cfg).unwrap();
    let web =
        Web::new(store, WebConfig::default().unauthenticated(Unauthenticated::RedirectPages("/login".into()))).unwrap();
    T { app: app::router(web.clone()), web, clock }
}

fn get(uri: &str) -> axum::http::request::Builder {
    Request::get(uri).header(header::HOST, HOST)
}

fn post(uri: &str) -> axum::http::request::Builder {
    Request::post(uri).header(header::HOST, HOST).header(header::ORIGIN, ORIGIN)
}

fn form(b: axum::http::request::Builder, body: &str) -> Request<Body> {
    b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(body.to_owned())).unwrap()
}

async fn send(t: &T, r: Request<Body>) -> Response<Body> {
    t.app.clone().oneshot(r).await.unwrap()
}

async fn text(r: Response<Body>) -> String {
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn set_cookies(r: &Response<Body>) -> Vec<String> {
    r.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// The value `r` sets for cookie `name` (None if it does not set it, "" if it deletes it).
fn cookie(r: &Response<Body>, name: &str) -> Option<String> {
    set_cookies(r).iter().find_map(|c| {
        let (n, rest) = c.split_once('=')?;
        (n == name).then(|| rest.split(';').next().unwrap_or_default().to_owned())
    })
}

fn location(r: &Response<Body>) -> &str {
    r.headers().get(header::LOCATION).map_or("", |v| v.to_str().unwrap())
}

fn with_cookie(b: axum::http::request::Builder, name: &str, value: &str) -> axum::http::request::Builder {
    b.header(header::COOKIE, format!("{name}={value}"))
}

fn bearer(b: axum::http::request::Builder, credential: &str) -> axum::http::request::Builder {
    b.header(header::AUTHORIZATION, format!("Bearer {credential}"))
}

fn empty(b: axum::http::request::Builder) -> Request<Body> {
    b.body(Body::empty()).unwrap()
}

/// A `fetch`-style POST: cookie `name=value` and the `x-csrf-token` header.
fn csrf_post(uri: &str, name: &str, value: &str, csrf: &str) -> Request<Body> {
    empty(with_cookie(post(uri), name, value).header("x-csrf-token", csrf))
}

const SESSION: &str = "__Host-session";
const REFRESH: &str = "__Secure-refresh";

/// Signs in through the form; returns the session cookie value.
async fn login(t: &T, user: &str, pw: &str) -> String {
    let r = send(t, form(post("/login"), &format!("username={user}&password={}", pw.replace(' ', "+")))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "login of {user}");
    assert_eq!(location(&r), "/");
    cookie(&r, SESSION).expect("session cookie set")
}

fn csrf(t: &T, session_cookie: &str) -> String {
    let s = t.web.store().validate(session_cookie).unwrap();
    t.web.csrf_token(&s)
}

#[tokio::test]
async fn login_sets_a_host_prefixed_httponly_secure_lax_cookie() {
    let t = setup();
    let r = send(&t, form(post("/login"), &format!("username=alice&password={}", ALICE_PW.replace(' ', "+")))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let c = set_cookies(&r).into_iter().find(|c| c.starts_with("__Host-session=")).unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(c.split("; ").any(|a| a == attr), "{attr} missing in {c}");
    }
    assert!(!c.contains("Domain"), "{c}");
    assert!(c.contains("Max-Age=3600"), "lives until the session's absolute deadline: {c}");
    let token = cookie(&r, SESSION).unwrap();
    let home = text(send(&t, empty(with_cookie(get("/"), SESSION, &token))).await).await;
    assert!(home.contains("Signed in as <b>alice</b>"), "{home}");
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_sets_no_cookie() {
    let t = setup();
    for body in ["username=alice&password=nope", "username=mallory&password=x", "username=bob&password="] {
        let r = send(&t, form(post("/login"), body)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{body}");
        assert!(cookie(&r, SESSION).is_none());
    }
}

#[tokio::test]
async fn no_cookie_redirects_pages_and_refuses_apis() {
    let t = setup();
    let r = send(&t, empty(get("/devices").header(header::ACCEPT, "text/html"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/login");
    let r = send(&t, empty(get("/api/me"))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
}

#[tokio::test]
async fn forged_tampered_expired_and_revoked_cookies_are_refused_and_deleted() {
    let t = setup();
    let good = login(&t, "alice", ALICE_PW).await;
    let forged = {
        let other = setup();
        login(&other, "alice", ALICE_PW).await // well-formed, issued by another store
    };
    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (what, value) in [("forged", forged.as_str()), ("tampered", &tampered), ("garbage", "crs_%%%"), ("empty", "")] {
        let r = send(&t, empty(with_cookie(get("/api/me"), SESSION, value))).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        if !value.is_empty() {
            assert_eq!(cookie(&r, SESSION).as_deref(), Some(""), "{what}: the dead cookie is deleted");
        }
    }
    // Expired: idle timeout passes.
    let r = send(&t, empty(with_cookie(get("/api/me"), SESSION, &good))).await;
    assert_eq!(r.status(), StatusCode::OK);
    t.clock.advance(Duration::from_secs(601));
    let r = send(&t, empty(with_cookie(get("/api/me"), SESSION, &good))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "idle-expired");
    // Revoked.
    let fresh = login(&t, "alice", ALICE_PW).await;
    let id = t.web.store().validate(&fresh).unwrap().id();
    t.web.store().revoke(id).unwrap();
    let r = send(&t, empty(with_cookie(get("/api/me"), SESSION, &fresh))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "revoked");
}

#[tokio::test]
async fn a_cookie_and_a_bearer_of_different_sessions_are_refused() {
    let t = setup();
    let alice = login(&t, "alice", ALICE_PW).await;
    let bob = login(&t, "bob", BOB_PW).await;
    let r = send(&t, empty(bearer(with_cookie(get("/api/me"), SESSION, &alice), &bob))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(text(r).await.contains("disagree"));
    // The same session by both: fine, and the bearer wins (no CSRF needed).
    let r = send(&t, empty(bearer(with_cookie(get("/api/me"), SESSION, &alice), &alice))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_posts_need_the_csrf_token_and_a_same_origin() {
    let t = setup();
    let s = login(&t, "alice", ALICE_PW).await;
    let token = csrf(&t, &s);
    let alive = |t: &T| t.web.store().validate(&s).is_ok();
    // Missing, wrong, another session's token.
    let other = login(&t, "bob", BOB_PW).await;
    for body in [String::new(), "csrf_token=wrong".into(), format!("csrf_token={}", csrf(&t, &other))] {
        let r = send(&t, form(with_cookie(post("/logout"), SESSION, &s), &body)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{body:?}");
        assert!(text(r).await.contains("CSRF"), "a clear body");
        assert!(alive(&t), "no state change");
    }
    let r = send(&t, csrf_post("/logout", SESSION, &s, "nope")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The right token from another origin, or a cross-site fetch.
    let r = send(
        &t,
        form(
            with_cookie(Request::post("/logout").header(header::HOST, HOST), SESSION, &s)
                .header(header::ORIGIN, "https://evil.test"),
            &format!("csrf_token={token}"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "cross-origin");
    let r = send(
        &t,
        form(
            with_cookie(Request::post("/logout").header(header::HOST, HOST), SESSION, &s)
                .header("sec-fetch-site", "same-site"),
            &format!("csrf_token={token}"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "Sec-Fetch-Site: same-site");
    assert!(alive(&t));
    // Correct: the form field, with the form body handed on intact.
    let r = send(&t, form(with_cookie(post("/logout"), SESSION, &s), &format!("a=1&csrf_token={token}"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(cookie(&r, SESSION).as_deref(), Some(""), "logout deletes the cookie");
    assert!(matches!(t.web.store().validate(&s), Err(Error::Revoked)));
}

/// Issue 24 item 10: the CSRF token is bound to the session's serial, so a
/// rotation (privilege change) retires the token a session-fixation attacker
/// may know; the new one works, and the pages and the token endpoint hand it out.
#[tokio::test]
async fn a_rotation_retires_the_csrf_token_and_the_new_one_works() {
    let t = setup();
    let s = login(&t, "alice", ALICE_PW).await;
    let before = csrf(&t, &s);
    let rotated = t.web.store().rotate(&s).unwrap().token.to_string();
    let after = csrf(&t, &rotated);
    assert_ne!(before, after);
    let r = send(&t, csrf_post("/auth/token", SESSION, &rotated, &before)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "the pre-rotation token in the header");
    let r = send(&t, form(with_cookie(post("/logout"), SESSION, &rotated), &format!("csrf_token={before}"))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "the pre-rotation token in a form");
    assert!(t.web.store().validate(&rotated).is_ok(), "nothing done");
    let home = text(send(&t, empty(with_cookie(get("/"), SESSION, &rotated))).await).await;
    assert!(home.contains(&after) && !home.contains(&before), "the page's forms carry the new token");
    let r = send(&t, csrf_post("/auth/token", SESSION, &rotated, &after)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let refresh = cookie(&r, REFRESH).unwrap();
    let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(body["csrf_token"].as_str(), Some(after.as_str()));
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &refresh, &before)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "the refresh endpoint refuses the old token too");
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &refresh, &after)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(body["csrf_token"].as_str(), Some(after.as_str()));
    let r = send(&t, form(with_cookie(post("/logout"), SESSION, &rotated), &format!("csrf_token={after}"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(t.web.store().validate(&rotated).is_err());
}

#[tokio::test]
async fn a_cross_origin_login_post_is_refused() {
    let t = setup();
    let r = send(
        &t,
        form(
            Request::post("/login").header(header::HOST, HOST).header(header::ORIGIN, "https://evil.test"),
            "username=alice&password=x",
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "login CSRF");
}

#[tokio::test]
async fn bearer_requests_are_exempt_from_csrf() {
    let t = setup();
    let s = login(&t, "alice", ALICE_PW).await;
    let r = send(&t, empty(bearer(Request::post("/auth/token").header(header::HOST, HOST), &s))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_endpoint_refresh_rotation_and_replay() {
    let t = setup();
    let s = login(&t, "alice", ALICE_PW).await;
    let token = csrf(&t, &s);
    let r = send(&t, csrf_post("/auth/token", SESSION, &s, &token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let rc = set_cookies(&r).into_iter().find(|c| c.starts_with("__Secure-refresh=")).unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/auth/refresh"] {
        assert!(rc.split("; ").any(|a| a == attr), "{attr} missing in {rc}");
    }
    let refresh1 = cookie(&r, REFRESH).unwrap();
    let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);

    let me = |access: String| empty(bearer(get("/api/me"), &access));
    let r = send(&t, me(access.clone())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let j: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!((j["user"].as_str(), j["via"].as_str()), (Some("alice"), Some("access token")));

    // The access token expires; the refresh cookie gets a new one.
    t.clock.advance(Duration::from_secs(331));
    assert_eq!(send(&t, me(access)).await.status(), StatusCode::UNAUTHORIZED);
    let refresh = |value: &str, csrf: &str| csrf_post("/auth/refresh", REFRESH, value, csrf);
    // CSRF applies to the refresh endpoint too.
    let r = send(&t, refresh(&refresh1, "wrong")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&t, refresh(&refresh1, &token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let refresh2 = cookie(&r, REFRESH).unwrap();
    assert_ne!(refresh2, refresh1, "rotated");
    let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(send(&t, me(body["access_token"].as_str().unwrap().to_owned())).await.status(), StatusCode::OK);

    // A replay of the old one (past the grace window) revokes the session.
    t.clock.advance(Duration::from_secs(11));
    let r = send(&t, refresh(&refresh1, &token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cookie(&r, REFRESH).as_deref(), Some(""), "the refresh cookie is deleted");
    assert!(t.web.store().validate(&s).is_err(), "session revoked on reuse");
    assert_eq!(send(&t, refresh(&refresh2, &token)).await.status(), StatusCode::UNAUTHORIZED);
}

/// Signs alice in and has the token endpoint set a refresh cookie; returns
/// (session cookie, CSRF token, refresh cookie).
async fn with_refresh_cookie(t: &T) -> (String, String, String) {
    let s = login(t, "alice", ALICE_PW).await;
    let token = csrf(t, &s);
    let r = send(t, csrf_post("/auth/token", SESSION, &s, &token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let refresh = cookie(&r, REFRESH).unwrap();
    (s, token, refresh)
}

/// Issue 25 item 8: a refresh that fails because the store could not answer
/// (here: it is closed) is no verdict on the refresh token, so its cookie stays.
#[tokio::test]
async fn a_refresh_the_store_could_not_answer_keeps_the_refresh_cookie() {
    let t = setup();
    let (_, token, refresh) = with_refresh_cookie(&t).await;
    t.web.store().close().unwrap();
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &refresh, &token)).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(cookie(&r, REFRESH), None, "the refresh cookie is neither deleted nor replaced");
}

/// Issue 25 item 8: after a 5xx from a storage fault the client retries with
/// the same refresh cookie, and the retry succeeds once the fault clears.
#[cfg(feature = "test-util")]
#[tokio::test]
async fn a_refresh_that_hit_a_storage_fault_can_be_retried_with_the_same_cookie() {
    let rig = faulty::Rig::new();
    let t = setup_with(|cfg| rig.open(cfg));
    let (_, token, refresh) = with_refresh_cookie(&t).await;
    rig.fail(true);
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &refresh, &token)).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(cookie(&r, REFRESH), None, "the refresh cookie is kept for the retry");
    rig.fail(false);
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &refresh, &token)).await;
    assert_eq!(r.status(), StatusCode::OK, "the retry with the same cookie works");
    assert_ne!(cookie(&r, REFRESH).as_deref(), Some(refresh.as_str()), "and rotates it");
    // A refusal still deletes it: the token just rotated away, replayed past the grace window.
    t.clock.advance(Duration::from_secs(11));
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &refresh, &token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cookie(&r, REFRESH).as_deref(), Some(""));
}

#[tokio::test]
async fn a_refresh_token_never_authenticates_anywhere_else() {
    let t = setup();
    let s = login(&t, "alice", ALICE_PW).await;
    let token = csrf(&t, &s);
    let r = send(&t, csrf_post("/auth/token", SESSION, &s, &token)).await;
    let refresh = cookie(&r, REFRESH).unwrap();
    // Sent as a cookie to another path, as the session cookie, or as a bearer.
    for req in [
        empty(with_cookie(get("/api/me"), REFRESH, &refresh)),
        empty(with_cookie(get("/api/me"), SESSION, &refresh)),
        empty(bearer(get("/api/me"), &refresh)),
        csrf_post("/auth/token", REFRESH, &refresh, &token),
    ] {
        assert_eq!(send(&t, req).await.status(), StatusCode::UNAUTHORIZED);
    }
    // A session token in the refresh cookie is not a refresh token.
    let r = send(&t, csrf_post("/auth/refresh", REFRESH, &s, &token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_megabyte_header_is_refused_without_work() {
    let t = setup();
    let big = "a".repeat(1 << 20);
    let r = send(&t, empty(with_cookie(get("/api/me"), SESSION, &big))).await;
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let r = send(&t, empty(bearer(get("/api/me"), &big))).await;
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A big form body on a cookie POST without the header token: 413, nothing done.
    let s = login(&t, "alice", ALICE_PW).await;
    let r = send(&t, form(with_cookie(post("/logout"), SESSION, &s), &format!("x={big}"))).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(t.web.store().validate(&s).is_ok());
}

#[tokio::test]
async fn two_logins_racing_on_one_pre_login_session() {
    let t = setup();
    let pre = login(&t, "alice", ALICE_PW).await;
    let token = csrf(&t, &pre);
    let attempt = || {
        send(
            &t,
            form(
                with_cookie(post("/login"), SESSION, &pre),
                &format!("username=alice&password={}&csrf_token={token}", ALICE_PW.replace(' ', "+")),
            ),
        )
    };
    let (a, b) = tokio::join!(attempt(), attempt());
    assert_eq!((a.status(), b.status()), (StatusCode::SEE_OTHER, StatusCode::SEE_OTHER));
    let (a, b) = (cookie(&a, SESSION).unwrap(), cookie(&b, SESSION).unwrap());
    assert_ne!(a, b, "each login gets its own session");
    assert_ne!(a, pre);
    assert!(t.web.store().validate(&pre).is_err(), "the pre-login token is dead (fixation defence)");
    let (sa, sb) = (t.web.store().validate(&a).unwrap(), t.web.store().validate(&b).unwrap());
    assert_ne!(sa.id(), sb.id(), "two sessions, not one shared id");
}

#[tokio::test]
async fn devices_page_revoke_one_others_and_everywhere() {
    let t = setup();
    let one = login(&t, "alice", ALICE_PW).await;
    let two = login(&t, "alice", ALICE_PW).await;
    let three = login(&t, "alice", ALICE_PW).await;
    let bob = login(&t, "bob", BOB_PW).await;
    let page = text(send(&t, empty(with_cookie(get("/devices"), SESSION, &two))).await).await;
    assert_eq!(page.matches("<tr class=\"device").count(), 3, "{page}");
    assert_eq!(page.matches("this device").count(), 1);
    let id_one = t.web.store().validate(&one).unwrap().id();
    let token = csrf(&t, &two);
    // Revoke another of alice's devices; refuse bob's.
    let r = send(
        &t,
        form(with_cookie(post(&format!("/devices/{id_one}/revoke")), SESSION, &two), &format!("csrf_token={token}")),
    )
    .await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/devices"));
    assert!(t.web.store().validate(&one).is_err());
    let id_bob = t.web.store().validate(&bob).unwrap().id();
    let r = send(
        &t,
        form(with_cookie(post(&format!("/devices/{id_bob}/revoke")), SESSION, &two), &format!("csrf_token={token}")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(t.web.store().validate(&bob).is_ok());
    // Sign out everywhere else.
    let r = send(&t, form(with_cookie(post("/devices/revoke-others"), SESSION, &two), &format!("csrf_token={token}")))
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(t.web.store().validate(&three).is_err());
    assert!(t.web.store().validate(&two).is_ok());
    // Everywhere: the session and its live access tokens.
    let r = send(&t, csrf_post("/auth/token", SESSION, &two, &token)).await;
    let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let r =
        send(&t, form(with_cookie(post("/logout-everywhere"), SESSION, &two), &format!("csrf_token={token}"))).await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/login"));
    assert!(t.web.store().validate(&two).is_err());
    let r = send(&t, empty(bearer(get("/api/me"), &access))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(t.web.store().validate(&bob).is_ok(), "other users untouched");
}

#[tokio::test]
async fn html_from_the_user_agent_is_escaped_on_the_devices_page() {
    let t = setup();
    let r = send(
        &t,
        form(
            post("/login").header(header::USER_AGENT, "<script>alert(1)</script>"),
            &format!("username=alice&password={}", ALICE_PW.replace(' ', "+")),
        ),
    )
    .await;
    let s = cookie(&r, SESSION).unwrap();
    let page = text(send(&t, empty(with_cookie(get("/devices"), SESSION, &s))).await).await;
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

/// Issue 24 item 10 (S6): `LoggedIn`'s Debug names the session, never its CSRF token.
#[tokio::test]
async fn logged_in_debug_output_redacts_the_csrf_token() {
    let t = setup();
    let (_, done) = t.web.login(CookieJar::new(), cloakroom::NewSession::new("alice")).await.unwrap();
    let printed = format!("{done:?} {done:#?}");
    assert!(!done.csrf_token.is_empty());
    assert!(!printed.contains(&done.csrf_token), "{printed}");
    assert!(printed.contains(&done.session.id().to_string()), "the session id is still shown: {printed}");
}

#[test]
fn cookie_settings_a_browser_would_drop_are_refused() {
    let store = || Store::in_memory(Config::default()).unwrap();
    let base = WebConfig::default();
    let mut insecure = base.session_cookie_settings().clone();
    insecure.secure = false;
    assert!(matches!(Web::new(store(), base.clone().session_cookie(insecure)), Err(Error::Config(_))));
    let mut domain = base.session_cookie_settings().clone();
    domain.domain = Some("example.com".into());
    assert!(
        matches!(Web::new(store(), base.clone().session_cookie(domain)), Err(Error::Config(_))),
        "__Host- with Domain"
    );
    let mut readable = base.session_cookie_settings().clone();
    readable.http_only = false;
    assert!(matches!(Web::new(store(), base.clone().session_cookie(readable)), Err(Error::Config(_))));
    let plain = CookieSettings { name: "sid".into(), secure: false, ..base.session_cookie_settings().clone() };
    assert!(Web::new(store(), base.clone().session_cookie(plain.clone())).is_err(), "plain HTTP only by name");
    assert!(Web::new(store(), base.clone().insecure_dev_mode_plain_http().session_cookie(plain)).is_ok());
    assert!(Web::new(store(), base.clone().unauthenticated(Unauthenticated::RedirectPages("//evil".into()))).is_err());
    assert!(Web::new(store(), base.allowed_origin("http://app.example")).is_err(), "http origin outside dev mode");
}

/// The README's axum snippet is `examples/axum_minimal.rs`, which CI compiles.
#[test]
fn readme_axum_snippet_is_the_compiled_example() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/axum_minimal.rs")).unwrap();
    assert!(readme.contains(&format!("```rust,ignore\n{example}```")), "README's snippet differs from the example");
}
