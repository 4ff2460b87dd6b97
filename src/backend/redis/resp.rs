//! Commands of the hot paths, written straight into Redis's wire format
//! (RESP) in one buffer and sent with one write.
//!
//! The `redis` crate's `Cmd`/`Pipeline`/`ScriptInvocation` builders copy every
//! argument into growing vectors, format each number and key on the heap and
//! encode the whole pipeline again into a new vector before sending. Under 64
//! callers that builder work cost about 16 µs of CPU per create, a third of
//! the client's CPU per op, on a machine where the callers and the server
//! share two vCPUs (docs/benchmarks-history.md, round 11). Here each op writes its
//! keys (prefix and hex id), numbers and blobs once, into one buffer sized up
//! front; replies are still read and parsed by the `redis` crate.

use redis::{Connection, ConnectionLike as _, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, Value};

/// One argument of a command.
#[derive(Clone, Copy)]
pub(crate) enum Arg<'a> {
    /// Bytes as they are.
    B(&'a [u8]),
    /// A number, as its decimal text.
    U(u64),
    /// A key prefix followed by more bytes (`{p}:u:` ‖ user).
    Cat(&'a str, &'a [u8]),
    /// A key prefix followed by the lowercase hex of bytes (`{p}:s:` ‖ hex id).
    Hex(&'a str, &'a [u8]),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::B(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(b: &'a [u8]) -> Self {
        Arg::B(b)
    }
}

impl From<u64> for Arg<'_> {
    fn from(n: u64) -> Self {
        Arg::U(n)
    }
}

/// The decimal digits of a number, on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(mut n: u64) -> Digits {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            #[allow(clippy::cast_possible_truncation)] // a digit
            {
                buf[i] = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits { buf, start: i }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends the lowercase hex of `b` to `out`.
pub(crate) fn push_hex(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(2 * b.len());
    for x in b {
        out.push(HEX[usize::from(x >> 4)]);
        out.push(HEX[usize::from(x & 0xf)]);
    }
}

/// Commands packed into one buffer, sent together.
pub(crate) struct Packed {
    buf: Vec<u8>,
    /// Commands written, not counting `MULTI`.
    cmds: usize,
    transaction: bool,
}

impl Packed {
    /// An empty batch of plain commands.
    pub(crate) fn new() -> Packed {
        Packed { buf: Vec::with_capacity(1024), cmds: 0, transaction: false }
    }

    /// A `MULTI` … `EXEC` transaction: [`Packed::exec`] sends it.
    pub(crate) fn transaction() -> Packed {
        let mut p = Packed::new();
        p.buf.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        p.transaction = true;
        p
    }

    fn head(&mut self, marker: u8, n: usize) {
        self.buf.push(marker);
        self.buf.extend_from_slice(Digits::of(n as u64).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    fn arg(&mut self, a: Arg<'_>) {
        // Each argument as a prefix and a body (hex-encoded for `Hex`), so a
        // number is formatted once for both its length and its bytes.
        let digits;
        let (prefix, body, hex): (&[u8], &[u8], bool) = match a {
            Arg::B(b) => (b"", b, false),
            Arg::U(n) => {
                digits = Digits::of(n);
                (b"", digits.as_bytes(), false)
            }
            Arg::Cat(p, b) => (p.as_bytes(), b, false),
            Arg::Hex(p, b) => (p.as_bytes(), b, true),
        };
        self.head(b'$', prefix.len() + if hex { 2 * body.len() } else { body.len() });
        self.buf.extend_from_slice(prefix);
        if hex {
            push_hex(&mut self.buf, body);
        } else {
            self.buf.extend_from_slice(body);
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Appends one command (its name first).
    pub(crate) fn cmd(&mut self, args: &[Arg<'_>]) -> &mut Packed {
        self.head(b'*', args.len());
        for a in args {
            self.arg(*a);
        }
        self.cmds += 1;
        self
    }

    /// Appends `EVALSHA` of `script` with these keys and arguments.
    pub(crate) fn evalsha(&mut self, script: &Script, keys: &[Arg<'_>], args: &[Arg<'_>]) -> &mut Packed {
        self.head(b'*', 3 + keys.len() + args.len());
        self.arg(Arg::B(b"EVALSHA"));
        self.arg(Arg::B(script.get_hash().as_bytes()));
        self.arg(Arg::U(keys.len() as u64));
        for a in keys.iter().chain(args) {
            self.arg(*a);
        }
        self.cmds += 1;
        self
    }

    /// Sends one command and converts its reply (a server error is an error).
    pub(crate) fn query<T: FromRedisValue>(&self, con: &mut Connection) -> RedisResult<T> {
        debug_assert!(self.cmds == 1 && !self.transaction);
        let v = con.req_packed_command(&self.buf)?;
        Ok(redis::from_redis_value(v.extract_error()?)?)
    }

    /// Sends one `EVALSHA` of `script`; if the server does not have the script
    /// (a restarted or flushed server: `NOSCRIPT`), loads it and sends again.
    pub(crate) fn invoke<T: FromRedisValue>(&self, con: &mut Connection, script: &Script) -> RedisResult<T> {
        match self.query(con) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load(con)?;
                self.query(con)
            }
            other => other,
        }
    }

    /// Sends the transaction (`EXEC` appended) and checks that every command
    /// of it succeeded.
    pub(crate) fn exec(mut self, con: &mut Connection) -> RedisResult<()> {
        debug_assert!(self.transaction);
        self.buf.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        // `req_packed_commands` is the call the crate's own `Pipeline` makes
        // (public, hidden from its docs); every Redis test of the store
        // goes through here. Replies: +OK to MULTI, +QUEUED per command
        // (skipped), then EXEC's array. A command refused while queued aborts the transaction (the
        // `redis` crate reports it as an error).
        let mut out = con.req_packed_commands(&self.buf, self.cmds + 1, 1)?;
        match out.pop() {
            Some(v @ Value::Array(_)) => v.extract_error().map(drop),
            _ => Err((ErrorKind::UnexpectedReturnType, "EXEC did not answer with an array").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_in_resp() {
        let mut p = Packed::new();
        p.cmd(&[Arg::B(b"HSET"), Arg::Hex("{c}:s:", &[0xab, 0x01]), "n".into(), Arg::U(0), Arg::U(1234567890)]);
        assert_eq!(p.buf, b"*5\r\n$4\r\nHSET\r\n$10\r\n{c}:s:ab01\r\n$1\r\nn\r\n$1\r\n0\r\n$10\r\n1234567890\r\n");
        let mut t = Packed::transaction();
        t.cmd(&[Arg::B(b"ZADD"), Arg::Cat("{c}:u:", b"alice"), Arg::U(u64::MAX), Arg::B(b"")]);
        assert_eq!(
            t.buf,
            b"*1\r\n$5\r\nMULTI\r\n*4\r\n$4\r\nZADD\r\n$11\r\n{c}:u:alice\r\n$20\r\n18446744073709551615\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn evalsha_names_the_script_and_counts_keys() {
        let s = Script::new("return 1");
        let mut p = Packed::new();
        p.evalsha(&s, &[Arg::B(b"k")], &[Arg::U(7), Arg::B(b"x")]);
        let want =
            format!("*6\r\n$7\r\nEVALSHA\r\n$40\r\n{}\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\n7\r\n$1\r\nx\r\n", s.get_hash());
        assert_eq!(p.buf, want.as_bytes());
    }

    #[test]
    fn hex_is_lowercase_per_byte() {
        let mut v = Vec::new();
        push_hex(&mut v, &[0, 9, 10, 15, 16, 255]);
        assert_eq!(v, b"00090a0f10ff");
    }
}
