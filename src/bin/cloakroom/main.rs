//! The `cloakroom` command-line tool.
//!
//! `cloakroom demo` runs the main job on the embedded default (a redb file in
//! the current directory); the admin commands work on a `--db PATH` file that no
//! other process holds; `cloakroom bench` is a load generator.

#![allow(clippy::disallowed_methods)] // wall-clock timings for reports

mod admin;
mod bench;
mod demo;
mod redis_side;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// Database file (recreated by the demo).
        #[arg(long, default_value = "cloakroom-demo.redb")]
        db: PathBuf,
    },
    /// Counters of a store file.
    Stats {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
    },
    /// A user's live sessions as a table.
    Sessions {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Revoke one session, or all of a user's.
    Revoke {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// A session id (as shown by `sessions`).
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        session: Option<String>,
        /// A user id: revoke all their sessions.
        #[arg(long)]
        user: Option<String>,
        /// With --user: also set a not-before that kills live access tokens.
        #[arg(long, requires = "user")]
        everywhere: bool,
    },
    /// Remove expired sessions and prune the revocation set now.
    Sweep {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
    },
    /// List access-token keys (ids, algorithms, states); `--rotate` adds a new HS256
    /// signing key and retires the old one (written to the `<db>.keys` file).
    Keys {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// Generate a new HS256 key, make it sign, retire the previous signing key.
        #[arg(long)]
        rotate: bool,
    },
    /// Load generator: a mix of validate/create/refresh/revoke, optionally against Redis too.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { db } => demo::run(&db),
        Command::Stats { db } => admin::stats(&db),
        Command::Sessions { db, user } => admin::sessions(&db, &user),
        Command::Revoke { db, session, user, everywhere } => {
            admin::revoke(&db, session.as_deref(), user.as_deref(), everywhere)
        }
        Command::Sweep { db } => admin::sweep(&db),
        Command::Keys { db, rotate } => admin::keys(&db, rotate),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
