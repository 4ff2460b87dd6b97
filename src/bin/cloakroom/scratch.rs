//! Scratch databases of `demo` and `bench`: created where nothing exists, reset
//! only when they are a previous scratch database, anything else refused.

use std::path::Path;

use cloakroom::{Error, ReadOnlyStore, StorageErrorKind, Store};

use crate::CliError;

/// Makes `path` ready for a new scratch database: nothing there, or a previous
/// scratch database (removed with its key files), or — with `force` — any other
/// file that no process holds open (removed). Everything else is refused.
pub(crate) fn prepare(path: &Path, force: bool) -> Result<(), CliError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CliError::Failed(format!("{}: {e}", path.display()))),
        Ok(m) => m,
    };
    if meta.is_dir() {
        return Err(CliError::Refused(format!("{} is a directory; give a file path with --db", path.display())));
    }
    match ReadOnlyStore::open(path) {
        Ok(ro) => {
            let scratch = ro.is_scratch()?;
            drop(ro);
            if scratch {
                return remove(path, true);
            }
        }
        Err(Error::Storage(s)) if s.kind() == StorageErrorKind::AlreadyOpen => {
            return Err(CliError::Refused(format!(
                "{} is held open by another process; refusing to touch it (even with --force)",
                path.display()
            )));
        }
        Err(_) => {}
    }
    if !force {
        return Err(CliError::Refused(format!(
            "{} exists and is not a database made by `cloakroom demo` or `bench`; refusing to replace it \
             (choose another --db, or pass --force to replace it)",
            path.display()
        )));
    }
    remove(path, false)
}

/// Removes the database file, and its key files when they belong to a scratch database.
fn remove(path: &Path, with_keys: bool) -> Result<(), CliError> {
    std::fs::remove_file(path).map_err(|e| CliError::Failed(format!("cannot remove {}: {e}", path.display())))?;
    // The journal belongs to the database file: never leave it to a new one.
    for p in Store::journal_paths(path) {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CliError::Failed(format!("cannot remove {}: {e}", p.display())));
            }
            _ => {}
        }
    }
    if with_keys {
        for p in [Store::server_key_path(path), Store::keys_path(path)] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CliError::Failed(format!("cannot remove {}: {e}", p.display())));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
