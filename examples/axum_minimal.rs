//! The README's "Use with axum" snippet, compiled: sign in, a protected page,
//! sign out. `cargo run --example axum_minimal --features axum`.
use axum::{
    Form, Router,
    extract::State,
    middleware,
    response::Redirect,
    routing::{get, post},
};
use axum_extra::extract::cookie::CookieJar;
use cloakroom::axum::{Auth, Web, WebConfig, WebError};
use cloakroom::{Config, NewSession, Store};

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(web): State<Web>,
    jar: CookieJar,
    Form(f): Form<Login>,
) -> Result<(CookieJar, Redirect), WebError> {
    if f.password != "let me in" {
        return Err(WebError::Unauthenticated { redirect: None }); // check a real password hash here
    }
    let (jar, _) = web.login(jar, NewSession::new(f.user)).await?; // revokes any pre-login session
    Ok((jar, Redirect::to("/me")))
}

async fn me(auth: Auth) -> String {
    format!("hello {} (csrf token for your forms: {})", auth.user(), auth.csrf_token().as_deref().unwrap_or("-"))
}

async fn logout(State(web): State<Web>, jar: CookieJar, auth: Auth) -> Result<CookieJar, WebError> {
    web.logout(jar, &auth).await // cookie POST: needs the csrf_token field or x-csrf-token header
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open("minimal.redb", Config::default())?;
    // Plain HTTP on loopback for trying it out; drop this line behind TLS.
    let web = Web::new(store, WebConfig::default().insecure_dev_mode_plain_http())?;
    let app = Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(web.clone(), cloakroom::axum::authenticate))
        .with_state(web);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}
