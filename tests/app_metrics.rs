//! The example app's observability (issue 27 item 3), served for real on a
//! free loopback port: `GET /metrics` (Prometheus text) moves by exactly what
//! the requests did, and `CLOAKROOM_LOG_JSON` logs JSON lines.
//!
//! One test in its own binary (`[[test]] app_metrics`): the `metrics`
//! recorder is global to the process, so no other test may open a store here
//! and move the counters this one checks.

#[path = "../examples/axum_app/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "../examples/axum_app/telemetry.rs"]
#[allow(dead_code)]
mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode, header};
use cloakroom::axum::{Unauthenticated, Web, WebConfig};
use cloakroom::{Config, Store};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing_subscriber::EnvFilter;

const ALICE_PW: &str = "correct horse battery staple";
const BOB_PW: &str = "hunter2hunter2";
const SESSION: &str = "session"; // the cookie's name in plain-HTTP dev mode

/// The app served on `127.0.0.1:0`; stopped when dropped, also when the test fails.
struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(app: axum::Router) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Server { addr, shutdown: Some(tx), task }
    }

    /// Graceful stop: in-flight requests finish, the listener closes.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    host: String,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            host: addr.to_string(),
        }
    }

    /// A request as a same-origin browser page sends it.
    fn request(&self, method: &str, path: &str, cookie: Option<&str>) -> axum::http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.host)
            .header(header::ORIGIN, &self.base);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("{SESSION}={c}"));
        }
        b
    }

    async fn send(&self, r: Request<Full<Bytes>>) -> (Response<Body>, String) {
        let resp = self.client.request(r).await.unwrap();
        let (parts, body) = resp.into_parts();
        let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (Response::from_parts(parts, Body::empty()), text)
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> (Response<Body>, String) {
        self.send(self.request("GET", path, cookie).body(Full::default()).unwrap()).await
    }

    async fn post_form(&self, path: &str, cookie: Option<&str>, form: &str) -> (Response<Body>, String) {
        let r = self
            .request("POST", path, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        self.send(r).await
    }

    /// Signs in through the form; the session cookie's value.
    async fn login(&self, user: &str, pw: &str) -> String {
        let (r, _) =
            self.post_form("/login", None, &format!("username={user}&password={}", pw.replace(' ', "+"))).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "login of {user}");
        set_cookie(&r, SESSION).expect("a session cookie")
    }

    /// One scrape of `/metrics`, parsed.
    async fn scrape(&self) -> Samples {
        let (r, text) = self.get("/metrics", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], telemetry::PROMETHEUS_TEXT);
        assert!(set_cookie(&r, SESSION).is_none(), "a scrape touches no session");
        Samples::parse(&text)
    }
}

fn set_cookie(r: &Response<Body>, name: &str) -> Option<String> {
    r.headers().get_all(header::SET_COOKIE).iter().find_map(|v| {
        let (n, rest) = v.to_str().ok()?.split_once('=')?;
        (n == name).then(|| rest.split(';').next().unwrap_or_default().to_owned())
    })
}

/// The CSRF token of the page's first form.
fn csrf_field(html: &str) -> String {
    let (_, rest) = html.split_once("name=csrf_token value=\"").expect("a CSRF field");
    rest.split('"').next().unwrap().to_owned()
}

/// A Prometheus text scrape: series (name and sorted labels) to value, and
/// the `# TYPE` / `# HELP` lines.
struct Samples {
    series: BTreeMap<(String, Vec<(String, String)>), f64>,
    text: String,
}

impl Samples {
    fn parse(text: &str) -> Samples {
        let mut series = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let (name, labels) = match key.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"))),
                None => (key, ""),
            };
            let mut labels: Vec<(String, String)> = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad label {kv:?}: {line}"));
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            labels.sort();
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
            series.insert((name.to_owned(), labels), v);
        }
        Samples { series, text: text.to_owned() }
    }

    /// The value of `name{labels}` (0 if the scrape has no such series: a
    /// counter appears at its first increment).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        l.sort();
        self.series.get(&(name.to_owned(), l)).copied().unwrap_or(0.0)
    }

    /// Every `name` series whose value differs from `before`, with the difference.
    fn moved(&self, before: &Samples, name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
        let keys: std::collections::BTreeSet<_> =
            self.series.keys().chain(before.series.keys()).filter(|(n, _)| n == name).cloned().collect();
        keys.into_iter()
            .filter_map(|k| {
                let d = self.series.get(&k).copied().unwrap_or(0.0) - before.series.get(&k).copied().unwrap_or(0.0);
                (d != 0.0).then_some((k.1, d))
            })
            .collect()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    l.sort();
    l
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_exactly_the_logins_and_logouts_done() {
    // The switch: only these values turn JSON on.
    for (v, json) in [(None, false), (Some(""), false), (Some("0"), false), (Some("1"), true), (Some("TRUE"), true)] {
        assert_eq!(telemetry::wants_json(v), json, "{v:?}");
    }

    let metrics = telemetry::install_recorder().unwrap();
    let again = telemetry::install_recorder().expect("a second install returns the same recorder");

    // The store opens under the JSON log (on this thread) and after the recorder, as in main.rs.
    let logs = Captured::default();
    let sink = logs.clone();
    let log =
        tracing::subscriber::set_default(telemetry::subscriber(true, EnvFilter::new("info"), move || sink.clone()));
    let dir = tempfile::tempdir().unwrap();
    // No background sweeper: only the requests below move the counters.
    let config = Config::builder().sweep_interval(None).build().unwrap();
    let store = Store::open(dir.path().join("app.redb"), config).unwrap();
    drop(log);
    let out = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let opened: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .find(|v| v["fields"]["message"] == "store opened")
        .unwrap_or_else(|| panic!("no `store opened` event in {out}"));
    assert_eq!(opened["level"], "INFO");
    assert_eq!(opened["fields"]["backend"], "redb");

    let web = Web::new(
        store,
        WebConfig::default()
            .insecure_dev_mode_plain_http()
            .unauthenticated(Unauthenticated::RedirectPages("/login".into())),
    )
    .unwrap();
    let server = Server::start(telemetry::with_metrics(app::router(web.clone()), metrics)).await;
    let http = Http::new(server.addr);

    let before = http.scrape().await;

    // Three sign-ins, one refused password, one page view and one sign-out.
    let first = http.login("alice", ALICE_PW).await;
    http.login("bob", BOB_PW).await;
    http.login("alice", ALICE_PW).await;
    let (r, _) = http.post_form("/login", None, "username=alice&password=wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (r, home) = http.get("/", Some(&first)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(home.contains("Signed in as <b>alice</b>"), "{home}");
    let (r, _) = http.post_form("/logout", Some(&first), &format!("csrf_token={}", csrf_field(&home))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/login");

    let after = http.scrape().await;
    // (A series appears at its first sample, with the description the store gave at open.)
    assert!(after.text.contains("# TYPE cloakroom_ops counter"), "{}", after.text);
    assert!(after.text.contains("# HELP cloakroom_ops Store operations by op and outcome."), "{}", after.text);
    let ops = after.moved(&before, "cloakroom_ops");
    let expected: BTreeMap<_, f64> = [
        (labels(&[("op", "session.create"), ("outcome", "ok")]), 3.0),
        // The page view's and the sign-out's cookie: `authenticate`, and the
        // `session.validate` it runs inside (each op is counted, nested or not).
        (labels(&[("op", "authenticate"), ("outcome", "ok")]), 2.0),
        (labels(&[("op", "session.validate"), ("outcome", "ok")]), 2.0),
        (labels(&[("op", "session.revoke"), ("outcome", "ok")]), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(ops, expected, "cloakroom_ops moved by exactly what was done (the refused password reached no store)");
    assert_eq!(
        after.get("cloakroom_sessions_revoked", &[]) - before.get("cloakroom_sessions_revoked", &[]),
        1.0,
        "{}",
        after.text
    );
    let timed = |s: &Samples| s.get("cloakroom_op_duration_count", &[("op", "session.create")]);
    assert_eq!(timed(&after) - timed(&before), 3.0, "each create timed once:\n{}", after.text);
    let create = [("op", "session.create"), ("outcome", "ok")];
    assert_eq!(
        Samples::parse(&again.render()).get("cloakroom_ops", &create),
        after.get("cloakroom_ops", &create),
        "one recorder behind both handles"
    );

    // The signed-out cookie no longer works, and the scrape says so too.
    let (r, _) = http.get("/", Some(&first)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(set_cookie(&r, SESSION).as_deref(), Some(""), "the dead cookie is deleted");
    let last = http.scrape().await;
    let refused: BTreeMap<_, f64> = [
        (labels(&[("op", "authenticate"), ("outcome", "revoked")]), 1.0),
        (labels(&[("op", "session.validate"), ("outcome", "revoked")]), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(last.moved(&after, "cloakroom_ops"), refused);

    server.stop().await;
    web.store().close().unwrap();
}
