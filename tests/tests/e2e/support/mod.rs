//! Shared pieces of the handover tests.

use std::path::{Path, PathBuf};

use agora_devnet::process::{Launcher, spawn_node};

/// Loopback nodes running the test build's `agora` binary.
pub struct Bin(pub PathBuf);

impl Launcher for Bin {
    fn host(&self, _i: usize) -> String {
        "127.0.0.1".into()
    }

    fn spawn(&self, _i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        spawn_node(exe, data_dir)
    }

    fn exe(&self) -> anyhow::Result<PathBuf> {
        Ok(self.0.clone())
    }
}
