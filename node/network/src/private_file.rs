//! Private files in a node's data dir (the API token, `config.toml`, the radio's keys, counters
//! and hand-offs, the deployer's saved deployments): written whole through a temporary file
//! created with mode 0600 and renamed into place, so a reader sees the old file or the whole new
//! one and never a wider mode; read back as hostile input, refused when others can read it or
//! when it is larger than the caller's bound.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a private file was not read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Readable (or writable) by others than the node's user.
    #[error("{path} is readable by others (mode {mode:o}): refused; chmod 600 it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Larger than any honest file.
    #[error("{path} is {bytes} bytes, more than the {max}-byte limit: refused")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// Not readable.
    #[error("{path} unreadable: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// Writes `bytes` to `path` through a temporary file created with mode 0600 and renamed into
/// place.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A leftover from a crashed start: created by us with 0600, safe to replace.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads the private file at `path`: `Ok(None)` when there is none; refused when others can
/// read it or it holds more than `max_bytes` (also when it grew between the check and the read).
pub fn read(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(ReadError::Io {
                path: path.into(),
                error,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ReadError::Permissions {
            path: path.into(),
            mode,
        });
    }
    let too_large = |bytes: u64| ReadError::TooLarge {
        path: path.into(),
        bytes,
        max: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    let mut body = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max_bytes.saturating_add(1)).read_to_end(&mut body))
        .map_err(|error| ReadError::Io {
            path: path.into(),
            error,
        })?;
    if body.len() as u64 > max_bytes {
        return Err(too_large(body.len() as u64));
    }
    Ok(Some(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_is_0600_and_reads_back_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, b"hello").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path, 5).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(matches!(read(&path, 4), Err(ReadError::TooLarge { .. })));
        assert!(read(&dir.path().join("none"), 5).unwrap().is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path, 5), Err(ReadError::Permissions { .. })));
    }
}
