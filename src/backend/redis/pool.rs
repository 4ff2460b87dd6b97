//! The connection pool, and a Redis failure as the store reports it.

use std::time::Duration;

use parking_lot::Mutex;
use redis::{Client, Connection};

use crate::error::{Error, StorageError, StorageErrorKind};

/// A Redis failure as the store reports it: the server could not be reached
/// or did not answer in time (`Unavailable`), or it answered with an error.
pub(crate) fn unavailable(e: redis::RedisError) -> Error {
    StorageError::with_source(StorageErrorKind::Unavailable, e).into()
}

/// A small pool of connections, each with the configured timeouts.
pub(crate) struct Pool {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    cap: usize,
    timeout: Duration,
    /// `cloakroom.redis.round_trips`: one per request sent through the pool.
    round_trips: crate::telemetry::Counter,
}

impl Pool {
    pub(crate) fn new(url: &str, cap: usize, timeout: Duration) -> Result<Pool, Error> {
        let client = Client::open(url).map_err(|e| Error::Config(format!("bad Redis URL: {e}")))?;
        let round_trips = crate::telemetry::Counter::new("cloakroom.redis.round_trips");
        Ok(Pool { client, idle: Mutex::new(Vec::new()), cap, timeout, round_trips })
    }

    /// A new connection with the pool's timeouts (not pooled).
    pub(crate) fn connect(&self) -> Result<Connection, Error> {
        let con = self.client.get_connection_with_timeout(self.timeout).map_err(unavailable)?;
        con.set_read_timeout(Some(self.timeout)).map_err(unavailable)?;
        con.set_write_timeout(Some(self.timeout)).map_err(unavailable)?;
        Ok(con)
    }

    /// Runs `f` on a pooled connection. A connection that saw an I/O error is
    /// dropped, not returned to the pool.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, Error> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        // One request (a command, a pipeline or a transaction: one round trip).
        self.round_trips.increment(1);
        let out = f(&mut con);
        let healthy = out.as_ref().err().is_none_or(|e| {
            !e.is_io_error() && !e.is_timeout() && !e.is_connection_dropped() && !e.is_unrecoverable_error()
        });
        if healthy {
            let mut idle = self.idle.lock();
            if idle.len() < self.cap {
                idle.push(con);
            }
        }
        out.map_err(unavailable)
    }

    /// Drops every idle connection (after the server went away).
    pub(crate) fn clear(&self) {
        self.idle.lock().clear();
    }
}

/// Sets `field` of hash `key` to `value` unless it is set already; returns
/// what is recorded there now (this value, or the one recorded first).
pub(super) fn record_once(pool: &Pool, key: &str, field: &str, value: &str) -> Result<Option<String>, Error> {
    pool.with(|c| {
        redis::pipe()
            .cmd("HSETNX")
            .arg(key)
            .arg(field)
            .arg(value)
            .ignore()
            .cmd("HGET")
            .arg(key)
            .arg(field)
            .query::<(Option<String>,)>(c)
            .map(|(v,)| v)
    })
}
