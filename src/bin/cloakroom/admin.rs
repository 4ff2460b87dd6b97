//! Admin commands on a store file: stats, sessions, revoke, sweep, keys.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cloakroom::{Config, Error, ReadOnlyStore, Scope, SessionId, StorageErrorKind, Store};

use crate::{CliError, open_error};

fn no_such_file(db: &Path) -> CliError {
    CliError::Failed(format!("{}: no such database file", db.display()))
}

/// Opens an existing store read-write for an admin command that writes (no
/// background sweeper). Never creates a database.
fn open(db: &Path, new_server_key: bool) -> Result<Store, CliError> {
    if std::fs::symlink_metadata(db).is_err() {
        return Err(no_such_file(db));
    }
    let mut b = Config::builder();
    b.sweep_interval(None);
    if new_server_key {
        b.replace_lost_server_key();
    }
    Store::open(db, b.build()?).map_err(|e| open_error(db, e))
}

/// Opens an existing store read-only: the command changes no byte of the file.
fn open_read_only(db: &Path) -> Result<ReadOnlyStore, CliError> {
    ReadOnlyStore::open(db).map_err(|e| match &e {
        Error::Storage(s) if s.kind() == cloakroom::StorageErrorKind::Missing => no_such_file(db),
        _ => open_error(db, e),
    })
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `cloakroom stats`: aligned text, or with `json` one JSON object on one
/// line (`{"db":…,"sessions_stored":…,"revoked_serials":…,"format_version":…,
/// "file_bytes":…}`) for scripts. Every figure is read before anything is
/// printed, so a failure prints no partial object.
pub(crate) fn stats(db: &Path, json: bool) -> Result<(), CliError> {
    let s = open_read_only(db)?;
    let (sessions, revoked, format) = (s.sessions_stored()?, s.revoked_serials()?, s.format_version()?);
    let file_bytes = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    if json {
        let out = serde_json::json!({
            "db": db.display().to_string(),
            "sessions_stored": sessions,
            "revoked_serials": revoked,
            "format_version": format,
            "file_bytes": file_bytes,
        });
        println!("{out}");
    } else {
        println!("sessions stored    {sessions}");
        println!("revoked serials    {revoked}");
        println!("format version     {format}");
        println!("file size          {file_bytes} bytes");
    }
    Ok(())
}

/// `cloakroom verify`: a full read-only scan; non-zero exit if any row fails.
pub(crate) fn verify(db: &Path) -> Result<(), CliError> {
    let s = open_read_only(db)?;
    let report = s.verify()?;
    println!("{:<14} {:>12} {:>8}", "table", "rows", "failed");
    for t in &report.tables {
        println!("{:<14} {:>12} {:>8}", t.table, t.rows, t.bad);
    }
    match report.bad_rows() {
        0 => {
            println!("ok: every row authenticates and decodes");
            Ok(())
        }
        n => Err(CliError::Failed(format!(
            "{n} rows failed their authentication tag, decoding or index check: the file was damaged or \
             edited without the server key; restore it from a backup"
        ))),
    }
}

pub(crate) fn sessions(db: &Path, user: &str) -> Result<(), CliError> {
    let s = open_read_only(db)?;
    let listing = s.list_user(user, SystemTime::now())?;
    let list = listing.sessions;
    let mut damaged_families = 0u64;
    println!(
        "{:<22}  {:<19}  {:<19}  {:<19}  {:<15}  {:<24}  label",
        "id", "created", "last seen", "expires", "ip", "user agent"
    );
    for x in &list {
        let m = x.meta();
        let ua: String = m.user_agent.as_deref().unwrap_or("-").chars().take(24).collect();
        println!(
            "{:<22}  {:<19}  {:<19}  {:<19}  {:<15}  {:<24}  {}",
            x.id(),
            utc(x.created_at()),
            utc(x.last_seen()),
            utc(x.idle_deadline()),
            m.ip.map_or("-".into(), |i| i.to_string()),
            ua,
            m.label.as_deref().unwrap_or("-")
        );
        let families = match s.refresh_families(x) {
            Ok(f) => f,
            // One damaged refresh row: say so and list the rest.
            Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Corrupt => {
                damaged_families += 1;
                println!("  refresh families: row damaged, not listed");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for f in families {
            println!(
                "  refresh family {:<4} generation {:<6} last rotated {}  expires {}",
                f.family,
                f.generation,
                utc(f.last_rotated),
                utc(f.expires_at)
            );
        }
    }
    println!("{} live session(s) for {user}", list.len());
    if listing.damaged_rows > 0 {
        eprintln!(
            "warning: {} damaged session row(s) could not be read and are not listed (their user is unknown): \
             run `cloakroom verify`, and restore the file from a backup",
            listing.damaged_rows
        );
    }
    if damaged_families > 0 {
        eprintln!(
            "warning: the refresh-family rows of {damaged_families} session(s) are damaged and not listed: \
             run `cloakroom verify`, and restore the file from a backup"
        );
    }
    Ok(())
}

pub(crate) fn revoke(
    db: &Path,
    session: Option<&str>,
    user: Option<&str>,
    everywhere: bool,
    new_server_key: bool,
) -> Result<(), CliError> {
    // Check the arguments before touching the file.
    let id = match session {
        Some(text) => Some(text.parse::<SessionId>().map_err(|_| {
            CliError::Refused(format!(
                "invalid session id {text:?}: expected the 22-character id shown by `cloakroom sessions`"
            ))
        })?),
        None => None,
    };
    let s = open(db, new_server_key)?;
    match (id, user) {
        (Some(id), _) => {
            if s.session(id)?.is_some() {
                s.revoke(id)?;
                println!("revoked session {id}");
            } else {
                println!("no live session with id {id} (unknown, expired or already revoked); nothing to revoke");
            }
        }
        (None, Some(u)) if everywhere => println!("logged {u} out everywhere: {} session(s)", s.logout_everywhere(u)?),
        (None, Some(u)) => println!("revoked {} session(s) of {u}", s.revoke_user(u, Scope::All)?),
        (None, None) => return Err(CliError::Refused("give --session ID or --user U".into())),
    }
    Ok(s.close()?)
}

pub(crate) fn sweep(db: &Path, new_server_key: bool) -> Result<(), CliError> {
    let s = open(db, new_server_key)?;
    let r = s.sweep()?;
    println!(
        "removed {} expired session(s) ({} absolute, {} idle), {} refresh famil(ies); pruned {} revocation(s); {:?}",
        r.sessions_removed(),
        r.expired_absolute,
        r.expired_idle,
        r.refresh_families,
        r.revocations_pruned,
        r.duration
    );
    Ok(s.close()?)
}

fn print_keys(keys: &[cloakroom::KeyInfo]) {
    println!("{:<24}  {:<6}  state", "kid", "alg");
    for k in keys {
        let state = match k.state {
            cloakroom::KeyState::Signing => "signing".to_owned(),
            cloakroom::KeyState::Verifying => "verifying".to_owned(),
            cloakroom::KeyState::Retired { until } => format!("retired, verifies until {} UTC", utc(until)),
            _ => format!("{:?}", k.state),
        };
        println!("{:<24}  {:<6}  {state}", k.kid, k.algorithm.name());
    }
}

pub(crate) fn keys(db: &Path, rotate: bool, new_server_key: bool) -> Result<(), CliError> {
    if rotate {
        let s = open(db, new_server_key)?;
        let ring = s.keyring();
        let old: Vec<String> =
            ring.keys().into_iter().filter(|k| k.state == cloakroom::KeyState::Signing).map(|k| k.kid).collect();
        let mut secret = [0u8; 32];
        for c in secret.chunks_mut(8) {
            c.copy_from_slice(&rand::random::<u64>().to_le_bytes());
        }
        let kid = format!("hs256-{:08x}", rand::random::<u32>());
        ring.add_hs256(&kid, &secret)?;
        ring.promote(&kid)?;
        for k in &old {
            s.retire_key(k)?;
        }
        ring.prune(SystemTime::now());
        let path = Store::keys_path(db);
        ring.save(&path)?;
        println!("new signing key {kid}; retired {old:?} (verifies until access TTL + leeway have passed)");
        println!("written to {} (mode 0600); the server loads it at its next start\n", path.display());
        print_keys(&ring.keys());
        s.close()?;
    } else {
        let s = open_read_only(db)?;
        match s.keys()? {
            Some(keys) => print_keys(&keys),
            None => println!(
                "no key files: neither {} nor {} exists (a server that opens this file needs its key file restored)",
                Store::keys_path(db).display(),
                Store::server_key_path(db).display()
            ),
        }
    }
    println!(
        "\nKeys come from the application's Keyring if it sets one, else from {} (written by\n\
         --rotate), else one HS256 key derived from the server key file {}.",
        Store::keys_path(db).display(),
        Store::server_key_path(db).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(utc(UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600)), "2026-01-01 00:00:00");
        assert_eq!(utc(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)), "2000-02-29 00:00:00");
    }
}
