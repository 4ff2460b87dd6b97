//! The actix-session adapter through actix-web itself: the example app
//! (`SessionMiddleware` over `CloakroomStore`, actix-identity for sign-in),
//! driven in-process with `actix_web::test`; plus the store trait called
//! directly for what a request cannot reach in order.

#[path = "../examples/actix.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::collections::HashMap;
use std::time::Duration;

use actix_identity::IdentityMiddleware;
use actix_session::storage::{SessionKey, SessionStore as _};
use actix_web::cookie::{Cookie, Key, time::Duration as Ttl};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use cloakroom::actix::{ANONYMOUS, CloakroomStore, IDENTITY_KEY};
use cloakroom::{Config, ManualClock, Scope, Store};

fn store(server_key: u8) -> (Store, ManualClock) {
    let clock = ManualClock::fixed();
    let cfg = Config::builder().server_key(&[server_key; 32]).clock(clock.clone()).build().unwrap();
    (Store::in_memory(cfg).unwrap(), clock)
}

/// The cookie-signing key every app in these tests shares (so a refusal is
/// cloakroom's, not actix-session's cookie check).
fn cookie_key() -> Key {
    Key::from(&[7u8; 64])
}

macro_rules! app {
    ($store:expr) => {
        test::init_service(
            App::new()
                .app_data(web::Data::new($store.clone()))
                .wrap(IdentityMiddleware::default())
                .wrap(example::sessions($store.clone(), cookie_key(), true))
                .configure(example::routes),
        )
        .await
    };
}

/// The `id` cookie a response sets (an empty value when it removes it).
fn set_id(r: &ServiceResponse) -> Option<Cookie<'static>> {
    r.response().cookies().find(|c| c.name() == "id").map(|c| c.into_owned())
}

async fn body(r: ServiceResponse) -> String {
    String::from_utf8(test::read_body(r).await.to_vec()).unwrap()
}

fn count(page: &str) -> u64 {
    let start = page.find("<span id=count>").unwrap() + "<span id=count>".len();
    page[start..].split('<').next().unwrap().parse().unwrap()
}

/// A visit with `cookie`: the page and the cookie to use next.
async fn visit<S>(app: &S, cookie: Option<&Cookie<'static>>) -> (String, Cookie<'static>)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut req = test::TestRequest::get().uri("/");
    if let Some(c) = cookie {
        req = req.cookie(c.clone());
    }
    let r = test::call_service(app, req.to_request()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let next = set_id(&r).or(cookie.cloned()).unwrap();
    (body(r).await, next)
}

async fn post<S>(app: &S, uri: &str, cookie: Option<&Cookie<'static>>, form: &str) -> ServiceResponse
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut req = test::TestRequest::post()
        .uri(uri)
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(form.to_owned());
    if let Some(c) = cookie {
        req = req.cookie(c.clone());
    }
    test::call_service(app, req.to_request()).await
}

async fn sign_in<S>(app: &S, cookie: Option<&Cookie<'static>>, user: &str) -> Cookie<'static>
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let r = post(app, "/login", cookie, &format!("user={user}")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    set_id(&r).unwrap()
}

#[actix_web::test]
async fn data_is_written_and_read_back_and_the_key_is_a_cloakroom_token() {
    let (s, _) = store(1);
    let app = app!(s);
    let (page, c) = visit(&app, None).await;
    assert_eq!(count(&page), 1);
    let (page, c2) = visit(&app, Some(&c)).await;
    assert_eq!(count(&page), 2);
    assert_eq!(count(&visit(&app, Some(&c2)).await.0), 3);
    let list = s.list_user(ANONYMOUS).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].data(), br#"{"counter":"3"}"#, "actix-session's state as JSON");
}

#[actix_web::test]
async fn sign_in_renews_the_key_keeps_the_data_and_kills_the_old_cookie() {
    let (s, _) = store(1);
    let app = app!(s);
    let (_, anon) = visit(&app, None).await;
    let (_, anon) = visit(&app, Some(&anon)).await;
    let signed = sign_in(&app, Some(&anon), "alice").await;
    assert_ne!(signed.value(), anon.value());
    let (page, _) = visit(&app, Some(&signed)).await;
    assert_eq!(count(&page), 3, "state carried over the renewal");
    assert!(page.contains("<b id=user>alice</b>"));
    assert_eq!(s.list_user("alice").unwrap().len(), 1);
    // The pre-login key is revoked: a new, empty session.
    let (page, _) = visit(&app, Some(&anon)).await;
    assert_eq!(count(&page), 1);
}

#[actix_web::test]
async fn the_ttl_is_the_deadline_and_each_update_moves_it() {
    let (s, clock) = store(1);
    let app = app!(s);
    let (_, c) = visit(&app, None).await;
    // actix-session's default state TTL is one day; every visit changes the
    // counter, so every visit moves the deadline a day ahead.
    clock.advance(Duration::from_secs(20 * 3600));
    assert_eq!(count(&visit(&app, Some(&c)).await.0), 2);
    clock.advance(Duration::from_secs(20 * 3600));
    assert_eq!(count(&visit(&app, Some(&c)).await.0), 3);
    clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert_eq!(count(&visit(&app, Some(&c)).await.0), 1, "expired: a new session");
}

#[actix_web::test]
async fn sign_out_and_revoke_user_make_the_next_request_anonymous() {
    let (s, _) = store(1);
    let app = app!(s);
    let a = sign_in(&app, None, "bob").await;
    let b = sign_in(&app, None, "bob").await;
    let c = sign_in(&app, None, "bob").await;
    assert_eq!(s.list_user("bob").unwrap().len(), 3);
    let r = post(&app, "/logout", Some(&a), "").await;
    assert_eq!(set_id(&r).unwrap().value(), "", "cookie removed");
    assert_eq!(s.list_user("bob").unwrap().len(), 2);
    assert!(visit(&app, Some(&a)).await.0.contains("Sign in"));
    assert!(visit(&app, Some(&b)).await.0.contains("<b id=user>bob</b>"));
    assert_eq!(s.revoke_user("bob", Scope::All).unwrap(), 2);
    for k in [&b, &c] {
        let (page, _) = visit(&app, Some(k)).await;
        assert!(page.contains("Sign in") && !page.contains("bob"), "{page}");
    }
}

#[actix_web::test]
async fn the_devices_page_lists_and_signs_out_the_users_sessions_only() {
    let (s, _) = store(1);
    let app = app!(s);
    let phone = sign_in(&app, None, "dave").await;
    let laptop = sign_in(&app, None, "dave").await;
    let eve = sign_in(&app, None, "eve").await;
    let r = test::call_service(&app, test::TestRequest::get().uri("/devices").cookie(phone.clone()).to_request()).await;
    let page = body(r).await;
    assert_eq!(page.matches("class=device").count(), 2, "{page}");
    let ids: Vec<_> = s.list_user("dave").unwrap().iter().map(|x| x.id()).collect();
    let eve_id = s.list_user("eve").unwrap()[0].id();
    // Eve cannot sign out Dave's sessions.
    assert_eq!(
        post(&app, "/devices/revoke", Some(&eve), &format!("id={}", ids[1])).await.status(),
        StatusCode::NOT_FOUND
    );
    // Dave can (the list is in creation order: phone, laptop).
    assert_eq!(
        post(&app, "/devices/revoke", Some(&phone), &format!("id={}", ids[1])).await.status(),
        StatusCode::SEE_OTHER
    );
    assert!(visit(&app, Some(&laptop)).await.0.contains("Sign in"));
    assert!(visit(&app, Some(&phone)).await.0.contains("<b id=user>dave</b>"));
    assert!(s.session(eve_id).unwrap().is_some());
}

#[actix_web::test]
async fn a_cookie_from_another_store_is_refused() {
    let (a, _) = store(1);
    let (b, _) = store(2);
    let app_a = app!(a);
    let app_b = app!(b);
    let c = sign_in(&app_a, None, "frank").await;
    let (page, _) = visit(&app_b, Some(&c)).await;
    assert!(page.contains("Sign in") && count(&page) == 1, "{page}");
    // Store A still knows it.
    assert!(visit(&app_a, Some(&c)).await.0.contains("frank"));
}

#[actix_web::test]
async fn concurrent_requests_on_one_session() {
    let (s, _) = store(1);
    let app = app!(s);
    let (_, c) = visit(&app, None).await;
    let reqs =
        (0..32).map(|_| test::call_service(&app, test::TestRequest::get().uri("/").cookie(c.clone()).to_request()));
    let mut returned = Vec::new();
    for r in futures_util::future::join_all(reqs).await {
        assert_eq!(r.status(), StatusCode::OK);
        // (The cookie is encrypted afresh each time it is set: same key, new value.)
        returned.extend(set_id(&r));
    }
    for k in &returned {
        assert!(count(&visit(&app, Some(k)).await.0) >= 2);
    }
    assert_eq!(s.list_user(ANONYMOUS).unwrap().len(), 1, "no request lost the session or started another");
    assert!(count(&visit(&app, Some(&c)).await.0) >= 3);
}

fn copy(k: &SessionKey) -> SessionKey {
    SessionKey::try_from(k.as_ref().to_owned()).unwrap()
}

fn state(user: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::from([("counter".to_owned(), "1".to_owned())]);
    if let Some(u) = user {
        m.insert(IDENTITY_KEY.to_owned(), serde_json::to_string(u).unwrap());
    }
    m
}

#[actix_web::test]
async fn the_store_trait_keeps_revocations_and_refiles_a_new_user() {
    let (s, clock) = store(1);
    let st = CloakroomStore::new(s.clone());
    let day = Ttl::days(1);
    let key = st.save(state(Some("gina")), &day).await.unwrap();
    assert!(key.as_ref().starts_with("crs_"));
    assert_eq!(st.load(&key).await.unwrap().unwrap(), state(Some("gina")));
    assert_eq!(s.list_user("gina").unwrap().len(), 1);

    // An update racing a revocation does not bring the session back (nor
    // save the state, user included, under a fresh key).
    s.revoke_user("gina", Scope::All).unwrap();
    let back = st.update(copy(&key), state(Some("gina")), &day).await.unwrap();
    assert_eq!(back.as_ref(), key.as_ref());
    assert!(st.load(&key).await.unwrap().is_none());
    assert!(s.list_user("gina").unwrap().is_empty());
    st.update_ttl(&key, &day).await.unwrap();
    assert!(st.load(&key).await.unwrap().is_none());

    // A user written without renewal: a new key under the new user, the old one dead.
    let anon = st.save(state(None), &day).await.unwrap();
    let signed = st.update(copy(&anon), state(Some("hana")), &day).await.unwrap();
    assert_ne!(signed.as_ref(), anon.as_ref());
    assert!(st.load(&anon).await.unwrap().is_none());
    assert_eq!(st.load(&signed).await.unwrap().unwrap(), state(Some("hana")));
    assert!(s.list_user(ANONYMOUS).unwrap().is_empty());
    assert_eq!(s.list_user("hana").unwrap().len(), 1);

    // A user change whose create fails (a user id the store refuses): the
    // old session is revoked first, so the caller gets the error, signed
    // out, and no session is left that nobody holds a key to.
    let before = st.save(state(Some("ines")), &day).await.unwrap();
    let stored = s.stats().sessions_stored.unwrap();
    let too_long = "u".repeat(cloakroom::MAX_USER_ID_LEN + 1);
    assert!(st.update(copy(&before), state(Some(&too_long)), &day).await.is_err());
    assert!(st.load(&before).await.unwrap().is_none(), "the old session was revoked");
    assert!(s.list_user("ines").unwrap().is_empty());
    assert_eq!(s.stats().sessions_stored, Some(stored - 1), "one session fewer, none created");

    // update_ttl moves the deadline; delete revokes.
    clock.advance(Duration::from_secs(20 * 3600));
    st.update_ttl(&signed, &day).await.unwrap();
    clock.advance(Duration::from_secs(20 * 3600));
    assert!(st.load(&signed).await.unwrap().is_some(), "alive 40 h in: the TTL was extended");
    st.delete(&signed).await.unwrap();
    assert!(st.load(&signed).await.unwrap().is_none());

    // Keys that are not this store's tokens load nothing and delete nothing.
    for bad in ["", "crs_nope", "x".repeat(4000).as_str()] {
        let k = SessionKey::try_from(bad.to_owned()).unwrap();
        assert!(st.load(&k).await.unwrap().is_none());
        st.delete(&k).await.unwrap();
    }
    assert!(!format!("{st:?}").contains("crs_"));
}
