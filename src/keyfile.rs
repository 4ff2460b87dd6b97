//! Secret files (the server key, the access-token key file): read only if
//! no one else may read them, written with mode 0600 and atomically.

use std::io::{Read as _, Write as _};
use std::path::Path;

use crate::error::{Error, StorageError, StorageErrorKind};

pub(crate) fn io_err(e: std::io::Error) -> Error {
    Error::Storage(StorageError::with_source(StorageErrorKind::Io, e))
}

/// Reads a secret file, refusing one that others can read.
pub(crate) fn read_private_file(path: &Path) -> Result<Vec<u8>, Error> {
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = f.metadata().map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let mut buf = Vec::new();
    std::io::Read::by_ref(&mut f).take(1 << 20).read_to_end(&mut buf).map_err(io_err)?;
    Ok(buf)
}

/// A temp file (mode 0600) in `path`'s directory holding `data`, synced.
fn private_temp(path: &Path, data: &[u8]) -> Result<tempfile::NamedTempFile, Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates files with mode 0600 on Unix.
    let mut tmp = tempfile::Builder::new().prefix(".cloakroom-key").tempfile_in(dir).map_err(io_err)?;
    tmp.write_all(data).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    Ok(tmp)
}

/// Writes a secret file with mode 0600, atomically replacing any previous one.
pub(crate) fn write_private_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    private_temp(path, data)?.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// Writes a secret file with mode 0600 only if `path` does not exist yet.
/// `Ok(false)` if another writer got there first (its file is left as it is).
pub(crate) fn create_private_file(path: &Path, data: &[u8]) -> Result<bool, Error> {
    match private_temp(path, data)?.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(e.error)),
    }
}
