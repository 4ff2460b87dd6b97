//! An axum app on tower-sessions with cloakroom as its session store: a visit
//! counter, sign-in (by name, no password: it is a demo), and a devices page
//! that lists the user's sessions and signs one out.
//!
//! `cargo run --example tower_sessions --features tower-sessions,axum`, then
//! open <http://127.0.0.1:3000/>. The only line that differs from an app on
//! tower-sessions' Redis or SQL stores is the store's construction.
//!
//! Its forms rely on the cookie's `SameSite` attribute (the framework's
//! default) against cross-site posts; cloakroom's own axum layer adds
//! synchronizer CSRF tokens.
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use cloakroom::tower_sessions::CloakroomStore;
use cloakroom::{Config, SessionId, Store};
use tower_sessions::cookie::time::Duration;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The session keys of this app.
pub const USER: &str = "user";
pub const COUNTER: &str = "counter";

#[derive(Clone)]
pub struct App {
    sessions: CloakroomStore,
}

/// The app's routes over `store`. `secure` sets the cookie's `Secure` flag
/// (off only for plain HTTP on loopback).
pub fn router(store: Store, secure: bool) -> Router {
    // This app keeps its user id under "user" (an axum-login app needs no
    // `user_from`: the default reads axum-login's entry).
    let sessions = CloakroomStore::new(store).user_from(|data| data.get(USER)?.as_str().map(str::to_owned));
    let layer = SessionManagerLayer::new(sessions.clone())
        .with_secure(secure)
        .with_expiry(Expiry::OnInactivity(Duration::hours(8)));
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/devices", get(devices))
        .route("/devices/revoke", post(revoke))
        .layer(layer)
        .with_state(App { sessions })
}

/// An error page (the store's message, never a token: cloakroom errors hold none).
pub struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn home(session: Session) -> Result<Html<String>, Failure> {
    let n = session.get::<u64>(COUNTER).await?.unwrap_or(0) + 1;
    session.insert(COUNTER, n).await?;
    let who = match session.get::<String>(USER).await? {
        Some(user) => format!(
            "<p>Signed in as <b id=user>{}</b>. <a href=/devices>Your devices</a></p>\
             <form method=post action=/logout><button>Sign out</button></form>",
            esc(&user)
        ),
        None => "<form method=post action=/login><input name=user placeholder=name>\
                 <button>Sign in</button></form>"
            .to_owned(),
    };
    Ok(Html(format!("<h1>Visits: <span id=count>{n}</span></h1>{who}")))
}

#[derive(serde::Deserialize)]
pub struct Login {
    user: String,
}

async fn login(session: Session, Form(f): Form<Login>) -> Result<Redirect, Failure> {
    session.cycle_id().await?; // a new cookie on sign-in (session fixation)
    session.insert(USER, f.user).await?;
    Ok(Redirect::to("/"))
}

async fn logout(session: Session) -> Result<Redirect, Failure> {
    session.flush().await?;
    Ok(Redirect::to("/"))
}

async fn devices(State(app): State<App>, session: Session) -> Result<Response, Failure> {
    let Some(user) = session.get::<String>(USER).await? else { return Ok(Redirect::to("/").into_response()) };
    let this = session.id().map(|id| app.sessions.session_id(id.0));
    let store = app.sessions.store().clone();
    let u = user.clone();
    let list = tokio::task::spawn_blocking(move || store.list_user(&u)).await??;
    let mut rows = String::new();
    for s in list {
        let mark = if Some(s.id()) == this { " (this device)" } else { "" };
        rows += &format!(
            "<li class=device>{id}{mark} <form method=post action=/devices/revoke>\
             <input type=hidden name=id value={id}><button>Sign out</button></form></li>",
            id = s.id()
        );
    }
    Ok(Html(format!("<h1>Devices of {}</h1><ul>{rows}</ul><a href=/>Home</a>", esc(&user))).into_response())
}

#[derive(serde::Deserialize)]
pub struct Revoke {
    id: String,
}

async fn revoke(State(app): State<App>, session: Session, Form(f): Form<Revoke>) -> Result<Response, Failure> {
    let Some(user) = session.get::<String>(USER).await? else { return Ok(StatusCode::UNAUTHORIZED.into_response()) };
    let Ok(id) = f.id.parse::<SessionId>() else { return Ok(StatusCode::BAD_REQUEST.into_response()) };
    let store = app.sessions.store().clone();
    // Only the user's own sessions: an id from another user's page is refused.
    let revoked = tokio::task::spawn_blocking(move || match store.session(id)? {
        Some(s) if s.user() == user => store.revoke(id).map(|()| true),
        _ => Ok(false),
    })
    .await??;
    Ok(if revoked { Redirect::to("/devices").into_response() } else { StatusCode::NOT_FOUND.into_response() })
}

#[allow(dead_code)] // (the tests use `router` only)
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open("tower-sessions-example.redb", Config::default())?;
    // Plain HTTP on loopback for trying it out: `true` behind TLS.
    let app = router(store, false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app).await?;
    Ok(())
}
