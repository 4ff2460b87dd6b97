//! The example app's routes: cookie login (argon2 password hashes), a home
//! page, a "your devices" page, logout, and a JSON API with an access JWT and
//! a rotating refresh token. Shared by `main.rs` and the tests, which serve it
//! in-process.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router, middleware};
use axum_extra::extract::cookie::CookieJar;
use cloakroom::axum::{Auth, Web, WebError};
use cloakroom::{Meta, NewSession, SessionId};
use serde::Deserialize;

/// The fixed user table: (user, argon2id PHC string). Passwords:
/// alice → "correct horse battery staple", bob → "hunter2hunter2".
pub const USERS: &[(&str, &str)] = &[
    ("alice", "$argon2id$v=19$m=19456,t=2,p=1$W7aXyIyNqjDIA2noShLX+A$O/jsEcXZHt6Fardihhtczr0blfLxc/bfHOQPUY4wOPU"),
    ("bob", "$argon2id$v=19$m=19456,t=2,p=1$g6rc7NuY6W5RiBrB8z1dVg$FIRhipfTxaCCir3iTn9MijviDeZ6TdXYRcNS/ObiPw4"),
];

/// The app's router over `web` (whose middleware it installs).
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/devices", get(devices))
        .route("/devices/{id}/revoke", post(revoke_device))
        .route("/devices/revoke-others", post(revoke_others))
        .route("/app", get(spa))
        .route("/auth/token", post(token))
        .route("/auth/refresh", post(refresh))
        .route("/api/me", get(me))
        .layer(middleware::from_fn_with_state(web.clone(), cloakroom::axum::authenticate))
        .with_state(web)
}

/// Escapes text for HTML element content and quoted attributes.
fn esc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.current{{font-weight:bold}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
}

/// A hidden CSRF field for forms posted by a signed-in session.
fn csrf_field(auth: Option<&Auth>) -> String {
    auth.and_then(Auth::csrf_token)
        .map(|t| format!("<input type=hidden name=csrf_token value=\"{}\">", esc(&t)))
        .unwrap_or_default()
}

async fn home(auth: Option<Auth>) -> Html<String> {
    match auth {
        Some(a) => page(
            "Home",
            &format!(
                "<p id=greeting>Signed in as <b>{}</b>.</p>\
                 <p><a href=/devices>Your devices</a> · <a href=/app>API demo</a></p>\
                 <form method=post action=/logout>{f}<button id=logout>Sign out</button></form>\
                 <form method=post action=/logout-everywhere>{f}<button>Sign out everywhere</button></form>",
                esc(a.user()),
                f = csrf_field(Some(&a))
            ),
        ),
        None => page("Home", "<p id=greeting>Not signed in. <a href=/login>Sign in</a></p>"),
    }
}

async fn login_page(auth: Option<Auth>) -> Html<String> {
    page(
        "Sign in",
        &format!(
            "<form method=post action=/login>{}\
             <p><label>User <input name=username id=username autocomplete=username></label></p>\
             <p><label>Password <input name=password id=password type=password autocomplete=current-password></label></p>\
             <p><button id=signin>Sign in</button></p></form>",
            csrf_field(auth.as_ref())
        ),
    )
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// Checks a password against the table on the blocking pool (argon2 is slow
/// on purpose). Unknown users cost the same as wrong passwords.
async fn check_password(user: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let phc = USERS.iter().find(|(u, _)| *u == user).map_or(USERS[0].1, |(_, h)| *h);
        let ok =
            PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        ok && USERS.iter().any(|(u, _)| *u == user)
    })
    .await
    .unwrap_or(false)
}

fn meta(headers: &HeaderMap, peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> Meta {
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    Meta {
        ip: peer.map(|Extension(ConnectInfo(a))| a.ip()),
        user_agent: ua.map(|s| s.chars().take(512).collect()),
        label: None,
    }
}

async fn login(
    State(web): State<Web>,
    jar: CookieJar,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(c): Form<Credentials>,
) -> Response {
    if !check_password(c.username.clone(), c.password).await {
        // No user name: a mistyped password often lands in that field.
        tracing::info!("sign-in refused: wrong user or password");
        let body = page("Sign in", "<p id=error>Wrong user or password. <a href=/login>Try again</a></p>");
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    match web.login(jar, NewSession::new(c.username).meta(meta(&headers, peer))).await {
        Ok((jar, signed_in)) => {
            // Ids only, never the cookie's token (S6).
            tracing::info!(user = signed_in.session.user(), session = %signed_in.session.id(), "signed in");
            (jar, Redirect::to("/")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn logout(State(web): State<Web>, jar: CookieJar, auth: Auth) -> Result<impl IntoResponse, WebError> {
    let jar = web.logout(jar, &auth).await?;
    tracing::info!(user = auth.user(), session = auth.session_id().map(tracing::field::display), "signed out");
    Ok((jar, Redirect::to("/login")))
}

async fn logout_everywhere(State(web): State<Web>, jar: CookieJar, auth: Auth) -> Result<impl IntoResponse, WebError> {
    Ok((web.logout_everywhere(jar, &auth).await?.0, Redirect::to("/login")))
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

async fn devices(State(web): State<Web>, auth: Auth) -> Result<Html<String>, WebError> {
    let (store, user) = (web.store().clone(), auth.user().to_owned());
    let list = tokio::task::spawn_blocking(move || store.list_user(&user))
        .await
        .map_err(|_| WebError::Internal("devices listing task failed"))??;
    let f = csrf_field(Some(&auth));
    let mut rows = String::new();
    for s in &list {
        let current = Some(s.id()) == auth.session_id();
        let m = s.meta();
        rows += &format!(
            "<tr class=\"device{c}\" data-id=\"{id}\"><td>{ua}</td><td>{ip}</td><td>{created}</td><td>{seen}</td><td>{mark}</td>\
             <td><form method=post action=\"/devices/{id}/revoke\">{f}<button class=revoke>Sign out</button></form></td></tr>",
            c = if current { " current" } else { "" },
            id = s.id(),
            ua = esc(m.user_agent.as_deref().unwrap_or("-")),
            ip = m.ip.map_or("-".into(), |i| i.to_string()),
            created = utc(s.created_at()),
            seen = utc(s.last_seen()),
            mark = if current { "this device" } else { "" },
        );
    }
    Ok(page(
        "Your devices",
        &format!(
            "<p>{n} signed-in device(s) for <b>{u}</b>.</p>\
             <table><tr><th>Browser</th><th>IP</th><th>Signed in</th><th>Last seen</th><th></th><th></th></tr>{rows}</table>\
             <form method=post action=/devices/revoke-others>{f}<button id=revoke-others>Sign out everywhere else</button></form>\
             <p><a href=/>Home</a></p>",
            n = list.len(),
            u = esc(auth.user())
        ),
    ))
}

async fn revoke_device(State(web): State<Web>, auth: Auth, Path(id): Path<String>) -> Result<Redirect, WebError> {
    let id: SessionId = id.parse().map_err(|_| WebError::BadRequest("not a session id".into()))?;
    web.revoke_device(&auth, id).await?;
    Ok(Redirect::to(if Some(id) == auth.session_id() { "/login" } else { "/devices" }))
}

async fn revoke_others(State(web): State<Web>, auth: Auth) -> Result<Redirect, WebError> {
    web.revoke_others(&auth).await?;
    Ok(Redirect::to("/devices"))
}

/// A single page that gets an access token, calls the API with it, and
/// refreshes it when the API answers 401.
async fn spa(auth: Auth) -> Html<String> {
    let csrf = esc(&auth.csrf_token().unwrap_or_default());
    page(
        "API demo",
        &format!(
            r#"<p>User: <span id=me>…</span> · refreshes: <span id=refreshes>0</span> · status: <span id=status>starting</span></p>
<button id=call onclick="me()">Call /api/me</button>
<script>
let access = null, csrf = "{csrf}", refreshes = 0;
async function token() {{
  const r = await fetch('/auth/token', {{method: 'POST', headers: {{'x-csrf-token': csrf}}}});
  if (!r.ok) {{ document.getElementById('status').textContent = 'token ' + r.status; return; }}
  const j = await r.json(); access = j.access_token; csrf = j.csrf_token;
}}
async function refresh() {{
  const r = await fetch('/auth/refresh', {{method: 'POST', headers: {{'x-csrf-token': csrf}}}});
  if (!r.ok) {{ document.getElementById('status').textContent = 'refresh ' + r.status; return false; }}
  const j = await r.json(); access = j.access_token; refreshes++; return true;
}}
async function me() {{
  document.getElementById('status').textContent = 'calling';
  const call = () => fetch('/api/me', {{headers: {{'Authorization': 'Bearer ' + access}}}});
  let r = await call();
  if (r.status === 401 && await refresh()) r = await call();
  if (!r.ok) {{ document.getElementById('status').textContent = 'api ' + r.status; return; }}
  const j = await r.json();
  document.getElementById('me').textContent = j.user;
  document.getElementById('refreshes').textContent = refreshes;
  document.getElementById('status').textContent = 'ok ' + (++window.calls || (window.calls = 1));
}}
token().then(me);
</script>"#
        ),
    )
}

async fn token(State(web): State<Web>, jar: CookieJar, auth: Auth) -> Response {
    web.issue_tokens(jar, &auth).await.into_response()
}

async fn refresh(State(web): State<Web>, jar: CookieJar, headers: HeaderMap) -> Response {
    web.refresh(jar, &headers).await.into_response()
}

async fn me(auth: Auth) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "user": auth.user(),
        "serial": auth.serial(),
        "via": if auth.claims().is_some() { "access token" } else if auth.via_cookie() { "cookie" } else { "session token" },
    }))
}
