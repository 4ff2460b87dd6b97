//! The Redis baseline: a session store written the way a good Redis-backed one
//! is, and a `redis-server` started on a free loopback port. Shared by
//! `cloakroom bench --redis`, `benches/vs_redis.rs` and the tests that need a
//! server (with the check that one is installed, and a TCP proxy a test can
//! cut to partition a node from it).
//!
//! Layout: `session:<id>` → record (user, blake3(secret), expiry) with `EX ttl`;
//! `user:<user>` → set of ids (for listing and revoke-all); `refresh:<token>` →
//! session id. Tokens are `<32 hex id>.<64 hex secret>`; the secret is compared
//! as a blake3 hash in constant time, as cloakroom does.

#![allow(dead_code)] // each user of this file calls a different subset

use std::io::Write as _;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Commands as _, Connection, RedisResult};

/// Whether `redis-server` runs here: `redis-server --version` must start and
/// succeed (a name on PATH that cannot run, e.g. a file without the execute
/// bit, counts as missing). Asked once per process.
pub fn redis_installed() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        Command::new("redis-server")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// For tests: whether `redis-server` is installed ([`redis_installed`]).
/// When it is not, prints one line `SKIPPED: redis-server not installed
/// (<what>)` and returns false (the test returns without running its body),
/// unless `CLOAKROOM_REQUIRE_REDIS` is set (as `.ci/run` does): then it
/// panics, so CI never skips.
pub fn available_for_tests(what: &str) -> bool {
    let found = redis_installed();
    if !found {
        assert!(
            std::env::var_os("CLOAKROOM_REQUIRE_REDIS").is_none(),
            "redis-server not installed and CLOAKROOM_REQUIRE_REDIS is set: apt-get install redis-server"
        );
        skipped("redis-server", what);
    }
    found
}

/// Prints `SKIPPED: <tool> not installed (<what>)` straight to stderr, so
/// the line shows in `cargo test`'s output (the harness captures only the
/// `print!` family, and shows a passing test's capture to nobody). One write,
/// so the line stays whole beside the harness's own output.
pub fn skipped(tool: &str, what: &str) {
    let line = format!("SKIPPED: {tool} not installed ({what})\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A TCP proxy on 127.0.0.1 in front of a server, for tests: a node that
/// connects through it can be cut off from the server (every connection
/// through it closed, new ones closed as soon as accepted) and let back.
/// Stopped, and every connection closed, on drop.
pub struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Both ends of every connection relayed so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Relays 127.0.0.1:<new port> to `upstream` (`host:port`).
    ///
    /// # Errors
    /// If no loopback port can be bound.
    pub fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, st, o, up) = (Arc::clone(&cut), Arc::clone(&stop), Arc::clone(&open), upstream.to_owned());
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&up) else { continue };
                let pipes = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = pipes else { continue };
                if let Ok(mut list) = o.lock() {
                    list.push(c3);
                    list.push(s3);
                }
                std::thread::spawn(move || relay(client, server));
                std::thread::spawn(move || relay(s2, c2));
            }
        });
        Ok(Proxy { port, cut, stop, open, acceptor: Some(acceptor) })
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.close_all();
    }

    /// Relays new connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn close_all(&self) {
        if let Ok(mut list) = self.open.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to` until either side closes.
fn relay(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.close_all();
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

/// A `redis-server` child process on 127.0.0.1 with its own working
/// directory (AOF on), stopped on drop, pass or fail. The one runner of the
/// CLI's Redis baseline, the benches and the tests: a test can kill it and
/// start it again on the same port with the same data, stop and continue it
/// (`SIGSTOP`/`SIGCONT`), and send it commands.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    appendfsync: String,
    /// The server's working directory (AOF files); removed on drop.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server --save '' --appendonly yes --appendfsync <appendfsync>`
    /// on a free loopback port and waits until it answers `PING`.
    ///
    /// # Errors
    /// A message saying how to install Redis if `redis-server` is not on PATH,
    /// or that it did not answer.
    pub fn start(appendfsync: &str) -> Result<RedisServer, String> {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let dir = tempfile::Builder::new().prefix("cloakroom-redis-").tempdir().map_err(|e| e.to_string())?;
        let mut server = RedisServer { child: None, port, appendfsync: appendfsync.to_owned(), dir };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server again (after [`RedisServer::kill`]) on the same port
    /// with the same directory, so it loads what its AOF holds; waits until it
    /// answers `PING`.
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", &self.appendfsync, "--protected-mode", "yes", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|_| {
                "redis-server not found on PATH; install it with `apt-get install redis-server` to run the Redis side"
                    .to_string()
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5)); // waiting for a server process, not for time
        }
    }

    /// Kills the server (`SIGKILL`) and waits for it; its directory stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server process.
    ///
    /// # Errors
    /// If the server is not running or `kill` failed.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.child.as_ref().map(Child::id).ok_or("redis-server is not running")?;
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| e.to_string())?
            .success();
        if ok { Ok(()) } else { Err(format!("kill -{signal} {pid} failed")) }
    }

    /// Sends one command on a new connection (200 ms connect timeout).
    ///
    /// # Errors
    /// The connection's or the command's error.
    pub fn cmd(&self, c: &mut redis::Cmd) -> RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(200))?;
        c.query(&mut con)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `127.0.0.1:<port>` (what a [`Proxy`] relays to).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's working directory (its AOF files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.signal("CONT"); // a stopped server would not die of SIGKILL's wait
        }
        self.kill();
        // `dir` (a TempDir) removes itself after this.
    }
}

/// Lowercase hex of 16-byte chunks, each one `format!` with a width.
fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            let mut w = [0u8; 16];
            w[..c.len()].copy_from_slice(c);
            let full = format!("{:032x}", u128::from_be_bytes(w));
            full[..2 * c.len()].to_owned()
        })
        .collect()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    for chunk in b.chunks_mut(8) {
        let r = rand::random::<u64>().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    b
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One connection's view of the Redis session store.
pub struct RedisSessions {
    con: Connection,
    ttl_secs: u64,
}

/// A created session: the bearer token and its id.
pub struct Created {
    pub token: String,
    pub id: String,
}

impl RedisSessions {
    /// Connects to `url`.
    pub fn connect(url: &str, ttl_secs: u64) -> RedisResult<Self> {
        Ok(Self { con: redis::Client::open(url)?.get_connection()?, ttl_secs })
    }

    fn record(user: &str, secret: &[u8; 32], expires: u64) -> Vec<u8> {
        let mut r = Vec::with_capacity(1 + user.len() + 40);
        r.push(user.len() as u8);
        r.extend_from_slice(user.as_bytes());
        r.extend_from_slice(blake3::hash(secret).as_bytes());
        r.extend_from_slice(&expires.to_le_bytes());
        r
    }

    /// `MULTI; SET session:<id> <record> EX ttl; SADD user:<u> <id>; EXPIRE user:<u> ttl; EXEC`.
    pub fn create(&mut self, user: &str) -> RedisResult<Created> {
        let (id, secret) = (hex(&random::<16>()), random::<32>());
        let rec = Self::record(user, &secret, now_ms() + self.ttl_secs * 1000);
        redis::pipe()
            .atomic()
            .set_ex(format!("session:{id}"), rec, self.ttl_secs)
            .ignore()
            .sadd(format!("user:{user}"), &id)
            .ignore()
            .expire(format!("user:{user}"), self.ttl_secs as i64)
            .ignore()
            .query::<()>(&mut self.con)?;
        Ok(Created { token: format!("{id}.{}", hex(&secret)), id })
    }

    /// Many creates in one pipeline (loading).
    pub fn create_many(&mut self, users: &[String]) -> RedisResult<Vec<Created>> {
        let mut p = redis::pipe();
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let (id, secret) = (hex(&random::<16>()), random::<32>());
            let rec = Self::record(user, &secret, now_ms() + self.ttl_secs * 1000);
            p.set_ex(format!("session:{id}"), rec, self.ttl_secs).ignore();
            p.sadd(format!("user:{user}"), &id).ignore();
            out.push(Created { token: format!("{id}.{}", hex(&secret)), id });
        }
        p.query::<()>(&mut self.con)?;
        Ok(out)
    }

    /// `GET session:<id>`, decode, constant-time secret check, expiry check.
    pub fn validate(&mut self, token: &str) -> RedisResult<bool> {
        let Some((id, secret_hex)) = token.split_once('.') else { return Ok(false) };
        let rec: Option<Vec<u8>> = self.con.get(format!("session:{id}"))?;
        let Some(rec) = rec else { return Ok(false) };
        let n = rec.first().copied().unwrap_or(0) as usize;
        if rec.len() != 1 + n + 40 {
            return Ok(false);
        }
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = secret_hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
        }
        let stored = &rec[1 + n..1 + n + 32];
        let same = subtle::ConstantTimeEq::ct_eq(blake3::hash(&secret).as_bytes().as_slice(), stored);
        let expires = u64::from_le_bytes(rec[1 + n + 32..].try_into().unwrap_or([0; 8]));
        Ok(bool::from(same) && now_ms() < expires)
    }

    /// `MULTI; DEL session:<id>; SREM user:<u> <id>; EXEC`.
    pub fn revoke(&mut self, id: &str, user: &str) -> RedisResult<()> {
        redis::pipe()
            .atomic()
            .del(format!("session:{id}"))
            .ignore()
            .srem(format!("user:{user}"), id)
            .ignore()
            .query(&mut self.con)
    }

    /// `SMEMBERS user:<u>`, then `MULTI; DEL session:<each>…; DEL user:<u>; EXEC`.
    pub fn revoke_user(&mut self, user: &str) -> RedisResult<usize> {
        let ids: Vec<String> = self.con.smembers(format!("user:{user}"))?;
        let mut p = redis::pipe();
        p.atomic();
        for id in &ids {
            p.del(format!("session:{id}")).ignore();
        }
        p.del(format!("user:{user}")).ignore();
        p.query::<()>(&mut self.con)?;
        Ok(ids.len())
    }

    /// A refresh token for session `id`: `SET refresh:<token> <id> EX ttl`.
    pub fn issue_refresh(&mut self, id: &str) -> RedisResult<String> {
        let rt = hex(&random::<32>());
        self.con.set_ex::<_, _, ()>(format!("refresh:{rt}"), id, self.ttl_secs)?;
        Ok(rt)
    }

    /// Rotation: `WATCH refresh:<rt>; GET`; then `MULTI; SET refresh:<new> <id> EX; DEL refresh:<rt>; EXEC`.
    /// `None` if the token is unknown or a concurrent rotation won.
    pub fn refresh(&mut self, rt: &str) -> RedisResult<Option<String>> {
        let key = format!("refresh:{rt}");
        redis::cmd("WATCH").arg(&key).query::<()>(&mut self.con)?;
        let id: Option<String> = self.con.get(&key)?;
        let Some(id) = id else {
            redis::cmd("UNWATCH").query::<()>(&mut self.con)?;
            return Ok(None);
        };
        let new = hex(&random::<32>());
        let done: Option<()> = redis::pipe()
            .atomic()
            .set_ex(format!("refresh:{new}"), &id, self.ttl_secs)
            .ignore()
            .del(&key)
            .ignore()
            .query(&mut self.con)?;
        Ok(done.map(|()| new))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_matches_per_byte_formatting() {
        for b in [&[0xab_u8; 32][..], &[1, 2][..], &[0, 15, 16, 255, 7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9][..]] {
            let want: String = b.iter().map(|x| format!("{x:02x}")).collect();
            assert_eq!(super::hex(b), want);
        }
    }
}
