//! An actix-web app on actix-session (and actix-identity) with cloakroom as
//! its session store: a visit counter, sign-in (by name, no password: it is a
//! demo), and a devices page that lists the user's sessions and signs one out.
//!
//! `cargo run --example actix --features actix`, then open
//! <http://127.0.0.1:3000/>. The only line that differs from an app on
//! actix-session's Redis store is the store's construction.
//!
//! Its forms rely on the cookie's `SameSite` attribute (the framework's
//! default) against cross-site posts; cloakroom's own axum layer adds
//! synchronizer CSRF tokens.
use actix_identity::{Identity, IdentityMiddleware};
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::Key;
use actix_web::http::header::LOCATION;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use cloakroom::actix::CloakroomStore;
use cloakroom::{Config, SessionId, Store};

pub const COUNTER: &str = "counter";

/// actix-session over cloakroom. `secure` sets the cookie's `Secure` flag (off
/// only for plain HTTP on loopback); `key` signs and encrypts the cookie.
pub fn sessions(store: Store, key: Key, secure: bool) -> SessionMiddleware<CloakroomStore> {
    SessionMiddleware::builder(CloakroomStore::new(store), key).cookie_secure(secure).build()
}

/// The app's routes; the app holds the `Store` as `web::Data`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout))
        .route("/devices", web::get().to(devices))
        .route("/devices/revoke", web::post().to(revoke));
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((LOCATION, to)).finish()
}

async fn home(session: Session, user: Option<Identity>) -> actix_web::Result<HttpResponse> {
    let n = session.get::<u64>(COUNTER)?.unwrap_or(0) + 1;
    session.insert(COUNTER, n)?;
    let who = match user.map(|u| u.id()).transpose().map_err(actix_web::error::ErrorInternalServerError)? {
        Some(user) => format!(
            "<p>Signed in as <b id=user>{}</b>. <a href=/devices>Your devices</a></p>\
             <form method=post action=/logout><button>Sign out</button></form>",
            esc(&user)
        ),
        None => "<form method=post action=/login><input name=user placeholder=name>\
                 <button>Sign in</button></form>"
            .to_owned(),
    };
    Ok(HttpResponse::Ok().content_type("text/html").body(format!("<h1>Visits: <span id=count>{n}</span></h1>{who}")))
}

#[derive(serde::Deserialize)]
pub struct Login {
    user: String,
}

async fn login(req: HttpRequest, form: web::Form<Login>) -> actix_web::Result<HttpResponse> {
    // actix-identity renews the session on login: a new cookie (session fixation).
    Identity::login(&req.extensions(), form.into_inner().user).map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(see_other("/"))
}

async fn logout(user: Identity) -> HttpResponse {
    user.logout();
    see_other("/")
}

async fn devices(store: web::Data<Store>, user: Identity) -> actix_web::Result<HttpResponse> {
    let user = user.id().map_err(actix_web::error::ErrorInternalServerError)?;
    let (s, u) = (store.get_ref().clone(), user.clone());
    let list = web::block(move || s.list_user(&u)).await?.map_err(actix_web::error::ErrorInternalServerError)?;
    let mut rows = String::new();
    for s in list {
        rows += &format!(
            "<li class=device>{id} <form method=post action=/devices/revoke>\
             <input type=hidden name=id value={id}><button>Sign out</button></form></li>",
            id = s.id()
        );
    }
    Ok(HttpResponse::Ok()
        .content_type("text/html")
        .body(format!("<h1>Devices of {}</h1><ul>{rows}</ul><a href=/>Home</a>", esc(&user))))
}

#[derive(serde::Deserialize)]
pub struct Revoke {
    id: String,
}

async fn revoke(store: web::Data<Store>, user: Identity, form: web::Form<Revoke>) -> actix_web::Result<HttpResponse> {
    let user = user.id().map_err(actix_web::error::ErrorInternalServerError)?;
    let Ok(id) = form.id.parse::<SessionId>() else { return Ok(HttpResponse::BadRequest().finish()) };
    let s = store.get_ref().clone();
    // Only the user's own sessions: an id from another user's page is refused.
    let revoked = web::block(move || match s.session(id)? {
        Some(found) if found.user() == user => s.revoke(id).map(|()| true),
        _ => Ok(false),
    })
    .await?
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(if revoked { see_other("/devices") } else { HttpResponse::NotFound().finish() })
}

#[allow(dead_code)] // (the tests use `sessions` and `routes` only)
#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let store = Store::open("actix-example.redb", Config::default()).map_err(std::io::Error::other)?;
    // A real app loads its cookie key from its secrets; a fresh one signs
    // everyone out on restart.
    let key = Key::generate();
    println!("listening on http://127.0.0.1:3000");
    actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(web::Data::new(store.clone()))
            .wrap(IdentityMiddleware::default())
            // Plain HTTP on loopback for trying it out: `true` behind TLS.
            .wrap(sessions(store.clone(), key.clone(), false))
            .configure(routes)
    })
    .bind(("127.0.0.1", 3000))?
    .run()
    .await
}
