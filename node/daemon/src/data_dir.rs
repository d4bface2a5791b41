//! A node's data directory: creating it (key, API token, `config.toml`) for `agora init` and
//! the devnet, and reading or writing a genesis file.

use std::path::{Path, PathBuf};

use agora_contracts::Genesis;
use agora_network::keys::{KeyError, NodeKey};

use crate::config::{CONFIG_FILE, NodeConfig};
use crate::{DaemonError, load_or_create_token};

/// Errors reading or writing a genesis file.
#[derive(Debug, thiserror::Error)]
pub enum GenesisFileError {
    /// Unreadable or not a genesis.
    #[error("genesis file {0} is not valid: {1}")]
    Invalid(PathBuf, String),
    /// Write failure.
    #[error("cannot write genesis file {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Writes a genesis file (JSON).
pub fn save_genesis(path: &Path, genesis: &Genesis) -> Result<(), GenesisFileError> {
    let text = serde_json::to_string_pretty(genesis)
        .map_err(|e| GenesisFileError::Invalid(path.into(), e.to_string()))?;
    std::fs::write(path, text).map_err(|e| GenesisFileError::Io(path.into(), e))
}

/// Reads a genesis file (JSON).
pub fn load_genesis(path: &Path) -> Result<Genesis, GenesisFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GenesisFileError::Invalid(path.into(), e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| GenesisFileError::Invalid(path.into(), e.to_string()))
}

/// Errors initialising a data directory.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Directory problem.
    #[error("cannot create data dir {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// Key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Token problem.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Config write problem.
    #[error("cannot write {0}: {1}")]
    Config(PathBuf, std::io::Error),
}

/// Creates the data dir with key (0600), API token (0600) and `config.toml` (unless present).
pub fn init_data_dir(data_dir: &Path, config: &NodeConfig) -> Result<NodeKey, InitError> {
    std::fs::create_dir_all(data_dir).map_err(|e| InitError::Dir(data_dir.into(), e))?;
    let key = NodeKey::load_or_create(data_dir)?;
    load_or_create_token(data_dir)?;
    write_config(data_dir, config)?;
    Ok(key)
}

/// Overwrites `config.toml`, with mode 0600 (it may hold secrets: the owner's radio device keys
/// in `[[radio.device_keys]]`), written atomically like the token.
pub fn write_config(data_dir: &Path, config: &NodeConfig) -> Result<(), InitError> {
    let path = data_dir.join(CONFIG_FILE);
    agora_network::private_file::write(&path, config.to_toml().as_bytes())
        .map_err(|e| InitError::Config(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_config_is_written_0600_because_it_may_hold_device_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        // Even over an existing world-readable file.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_config(dir.path(), &NodeConfig::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!std::fs::read_to_string(&path).unwrap().is_empty());
    }
}
