//! The `cloakroom` command-line tool.
//!
//! `cloakroom demo` runs the main job on the embedded default (a redb file in
//! the current directory); the admin commands work on a `--db PATH` file that no
//! other process holds; `cloakroom bench` is a load generator.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 the command line or the
//! target file was refused before anything was changed.

#![allow(clippy::disallowed_methods)] // wall-clock timings for reports

mod admin;
mod bench;
mod demo;
mod redis_side;
mod scratch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use cloakroom::{Error, StorageErrorKind};

#[derive(Parser)]
#[command(name = "cloakroom", version, about = "Embedded session and token store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Walk through the session lifecycle on a redb file and print a report.
    Demo {
        /// Database file. Created if missing; a previous demo/bench database is
        /// reset; any other existing file is refused (see --force).
        #[arg(long, default_value = "cloakroom-demo.redb")]
        db: PathBuf,
        /// Replace an existing file that is not a demo database (never one that
        /// another process holds open).
        #[arg(long)]
        force: bool,
    },
    /// Check every stored row's authentication tag and decoding, and the
    /// indexes, without writing (read-only). Exits 1 if any row fails.
    Verify {
        /// Database file (its `<db>.key` server key file must be beside it).
        #[arg(long)]
        db: PathBuf,
    },
    /// Counters of a store file (read-only).
    Stats {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// Print one JSON object (for scripts) instead of the aligned text.
        #[arg(long)]
        json: bool,
    },
    /// A user's live sessions as a table (read-only).
    Sessions {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Revoke one session (--session ID), or all of a user's (--user U).
    #[command(group(ArgGroup::new("target").required(true).args(["session", "user"])))]
    Revoke {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// A session id (as shown by `sessions`).
        #[arg(long)]
        session: Option<String>,
        /// A user id: revoke all their sessions.
        #[arg(long)]
        user: Option<String>,
        /// Only with --user: also set a not-before cut-off, so the user's live
        /// access tokens (JWTs) die now too, not only their sessions.
        #[arg(long, requires = "user", conflicts_with = "session")]
        everywhere: bool,
        /// Start over with a new server key if the `<db>.key` file is lost
        /// (ends every refresh token and default-key access token).
        #[arg(long)]
        new_server_key: bool,
    },
    /// Remove expired sessions and prune the revocation set now.
    Sweep {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// Start over with a new server key if the `<db>.key` file is lost.
        #[arg(long)]
        new_server_key: bool,
    },
    /// List access-token keys (ids, algorithms, states; read-only); `--rotate` adds
    /// a new HS256 signing key and retires the old one (written to `<db>.keys`).
    Keys {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// Generate a new HS256 key, make it sign, retire the previous signing key.
        #[arg(long)]
        rotate: bool,
        /// With --rotate: start over with a new server key if `<db>.key` is lost.
        #[arg(long, requires = "rotate")]
        new_server_key: bool,
    },
    /// Load generator: a mix of validate/create/refresh/revoke, optionally against Redis too.
    Bench(bench::Args),
}

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Refused before anything changed (bad arguments, a file we will not touch): exit 2.
    Refused(String),
    /// The operation failed: exit 1.
    Failed(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Refused(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Failed(match e {
            // The store's Display says "storage error: ..."; the CLI names the file instead.
            Error::Storage(s) => s.to_string(),
            e => e.to_string(),
        })
    }
}

/// A failure while opening `db`, said in terms of the file.
pub(crate) fn open_error(db: &Path, e: Error) -> CliError {
    match &e {
        Error::Storage(s) if s.kind() == StorageErrorKind::AlreadyOpen => CliError::Failed(format!(
            "{} is in use by another process; stop it first (admin commands need the file to themselves)",
            db.display()
        )),
        Error::Storage(s) => CliError::Failed(format!("{}: {s}", db.display())),
        _ => CliError::from(e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { db, force } => demo::run(&db, force),
        Command::Stats { db, json } => admin::stats(&db, json),
        Command::Verify { db } => admin::verify(&db),
        Command::Sessions { db, user } => admin::sessions(&db, &user),
        Command::Revoke { db, session, user, everywhere, new_server_key } => {
            admin::revoke(&db, session.as_deref(), user.as_deref(), everywhere, new_server_key)
        }
        Command::Sweep { db, new_server_key } => admin::sweep(&db, new_server_key),
        Command::Keys { db, rotate, new_server_key } => admin::keys(&db, rotate, new_server_key),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                CliError::Refused(_) => 2,
                CliError::Failed(_) => 1,
            })
        }
    }
}
