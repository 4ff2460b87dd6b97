//! The example app in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, the `fantoccini` crate).
//!
//! The app is served in-process on `127.0.0.1:0` (the same router as
//! `cargo run --example axum_app`), so its store runs on a `ManualClock` and
//! the access-token expiry is reached by advancing the clock, not by waiting.
//! A second listener on another port plays the attacker's origin.
//!
//! Needs `chromium` and `chromedriver` (`.ci/run` installs Debian's
//! `chromium` and `chromium-driver`); without them the test prints
//! `SKIPPED: chromium not installed` and passes (unless
//! `CLOAKROOM_REQUIRE_BROWSER` is set, as `.ci/run` does: then it fails).

#[path = "../examples/axum_app/app.rs"]
#[allow(dead_code)]
mod app;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::response::Html;
use cloakroom::axum::{Unauthenticated, Web, WebConfig};
use cloakroom::{Config, ManualClock, Store};
use fantoccini::{Client, ClientBuilder, Locator};

const ALICE_PW: &str = "correct horse battery staple";
const ACCESS_TTL: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(15);
/// Bounded polling for the browser and driver (not for time: the store's clock is manual).
const POLL: Duration = Duration::from_millis(20);
const POLLS: u32 = 750;

/// The absolute path of the first of `names` found on `PATH`.
fn tool(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()).map(|p| p.display().to_string())
    })
}

/// chromedriver, killed when dropped (also when the test fails).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_driver(bin: &str) -> (Driver, String) {
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    // Bounded polling until it accepts connections.
    let mut tries = 0;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        tries += 1;
        assert!(tries < POLLS, "chromedriver did not start");
        tokio::time::sleep(POLL).await;
    }
    (driver, url)
}

async fn browser(driver: &str, chromium: &str, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,700", format!("--user-data-dir={}", profile.display())],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(driver).await.unwrap()
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    addr
}

async fn sign_in(c: &Client, base: &str, user: &str, pw: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Id("username")).await.unwrap().send_keys(user).await.unwrap();
    c.find(Locator::Id("password")).await.unwrap().send_keys(pw).await.unwrap();
    c.find(Locator::Id("signin")).await.unwrap().click().await.unwrap();
    let g = c.wait().at_most(WAIT).for_element(Locator::Id("greeting")).await.unwrap();
    assert!(g.text().await.unwrap().contains(&format!("Signed in as {user}")), "{}", g.text().await.unwrap());
}

async fn path(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

/// Polls `#id`'s text until `pred` holds (bounded).
async fn text_until(c: &Client, id: &str, pred: impl Fn(&str) -> bool) -> String {
    for _ in 0..POLLS {
        let t = c.find(Locator::Id(id)).await.unwrap().text().await.unwrap();
        if pred(&t) {
            return t;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("#{id} never reached the expected text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_in_headless_chromium() {
    let (Some(chromium), Some(chromedriver)) = (tool(&["chromium", "chromium-browser"]), tool(&["chromedriver"]))
    else {
        assert!(
            std::env::var_os("CLOAKROOM_REQUIRE_BROWSER").is_none(),
            "chromium/chromedriver required but not found"
        );
        // Straight to stderr in one write: the harness captures println!.
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), b"SKIPPED: chromium not installed\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::fixed();
    let cfg = Config::builder().access_ttl(ACCESS_TTL).leeway(Duration::ZERO).clock(clock.clone()).build().unwrap();
    let store = Store::open(dir.path().join("app.redb"), cfg).unwrap();
    // Plain HTTP on loopback: the example's dev mode (cookies without Secure).
    let web = Web::new(
        store,
        WebConfig::default()
            .insecure_dev_mode_plain_http()
            .unauthenticated(Unauthenticated::RedirectPages("/login".into())),
    )
    .unwrap();
    let addr = serve(app::router(web.clone())).await;
    let base = format!("http://{addr}");

    let (_driver, driver_url) = start_driver(&chromedriver).await;
    let first = browser(&driver_url, &chromium, &dir.path().join("profile-1")).await;
    let second = browser(&driver_url, &chromium, &dir.path().join("profile-2")).await;

    // Sign in; the session cookie's flags as the browser stored them.
    sign_in(&first, &base, "alice", ALICE_PW).await;
    let cookie = first.get_named_cookie("session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.secure(), Some(false), "dev mode over plain HTTP");
    let visible = first.execute("return document.cookie", vec![]).await.unwrap();
    assert!(!visible.as_str().unwrap_or_default().contains("session="), "page scripts cannot read it: {visible}");

    // The same user from a second browser; revoke the first from its devices page.
    sign_in(&second, &base, "alice", ALICE_PW).await;
    second.goto(&format!("{base}/devices")).await.unwrap();
    let rows = second.find_all(Locator::Css("tr.device")).await.unwrap();
    assert_eq!(rows.len(), 2);
    std::fs::create_dir_all("target/browser").unwrap();
    std::fs::write("target/browser/devices.png", second.screenshot().await.unwrap()).unwrap();
    second.find(Locator::Css("tr.device:not(.current) button.revoke")).await.unwrap().click().await.unwrap();
    second.wait().at_most(WAIT).for_element(Locator::Id("revoke-others")).await.unwrap();
    assert_eq!(second.find_all(Locator::Css("tr.device")).await.unwrap().len(), 1);
    first.goto(&format!("{base}/devices")).await.unwrap();
    assert_eq!(path(&first).await, "/login", "the revoked browser is sent to the login page");

    // A form posted from another origin (another port: same site, other
    // origin) is refused even with the right CSRF token, and changes nothing.
    sign_in(&first, &base, "alice", ALICE_PW).await;
    let session = first.get_named_cookie("session").await.unwrap().value().to_owned();
    let csrf = web.csrf_token(&web.store().validate(&session).unwrap());
    let evil_page = format!(
        "<!doctype html><form id=f method=post action=\"{base}/logout\">\
         <input type=hidden name=csrf_token value=\"{csrf}\"><button id=go>win a prize</button></form>"
    );
    let evil = serve(axum::Router::new().route("/", axum::routing::get(move || async move { Html(evil_page) }))).await;
    first.goto(&format!("http://{evil}/")).await.unwrap();
    first.find(Locator::Id("go")).await.unwrap().click().await.unwrap();
    let mut tries = 0;
    while !first.source().await.unwrap().contains("CSRF check failed") {
        tries += 1;
        assert!(tries < POLLS, "no refusal page: {}", first.source().await.unwrap());
        tokio::time::sleep(POLL).await;
    }
    assert!(web.store().validate(&session).is_ok(), "still signed in");

    // The SPA flow: access token, API call, expiry, refresh, API call.
    first.goto(&format!("{base}/app")).await.unwrap();
    text_until(&first, "status", |t| t == "ok 1").await;
    assert_eq!(first.find(Locator::Id("me")).await.unwrap().text().await.unwrap(), "alice");
    assert_eq!(first.find(Locator::Id("refreshes")).await.unwrap().text().await.unwrap(), "0");
    clock.advance(ACCESS_TTL + Duration::from_secs(1));
    first.find(Locator::Id("call")).await.unwrap().click().await.unwrap();
    text_until(&first, "status", |t| t == "ok 2").await;
    assert_eq!(first.find(Locator::Id("refreshes")).await.unwrap().text().await.unwrap(), "1", "refreshed once");

    first.close().await.unwrap();
    second.close().await.unwrap();
    web.store().close().unwrap();
}
