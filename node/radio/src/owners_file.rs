//! The device claims of customers' live contracts here (THREATS R8), persisted in
//! `<data-dir>/radio-owners.json` (mode 0600, like the received device keys) so a restarted
//! provider keeps them. Kept in memory only, the first contract to finish staging after a
//! restart claimed its devices: a customer's cheap contract naming another customer's device
//! could win it there, and the other's contract was refused and its keys dropped. Written
//! whole after every change of a customer's claim; reloaded at start through
//! [`Owners::restore`], which makes each saved claim again as if it were new. A file readable
//! by others, too large or not JSON is ignored with a log line (the node then starts with no
//! claims: the first contract staged claims its devices, as before). Claims of contracts that
//! ended while the node was down are released once the orchestrator finds them ended on the
//! ledger (`RadioHandle::claimed_contracts`).

use std::path::Path;

use tracing::{info, warn};

use crate::keys::{read_private_json, write_private};
use crate::owners::{Caps, Owners, SavedClaim};

/// Largest claims file read back, bytes: 4,096 devices named by the few live contracts a
/// provider hosts take well under a megabyte.
pub(crate) const MAX_FILE_BYTES: u64 = 8 << 20;

/// The table reloaded from `path` (empty if there is none).
pub(crate) fn load(path: Option<&Path>, caps: Caps) -> Owners {
    let mut o = Owners::default();
    let Some(path) = path else {
        return o;
    };
    if let Some(saved) = read_private_json::<Vec<SavedClaim>>(path, MAX_FILE_BYTES) {
        let claims = saved.len();
        let refused = o.restore(saved, caps);
        if claims > 0 {
            info!(claims, refused, devices = o.len(), path = %path.display(), "device claims reloaded");
        }
    }
    o
}

/// Writes the customers' claims to `path` (a failure is logged: a restart would forget them).
pub(crate) fn save(path: Option<&Path>, o: &Owners) {
    let Some(path) = path else {
        return;
    };
    if let Err(e) = write_private(path, &o.saved()) {
        warn!(path = %path.display(), error = %e, "device claims not saved; after a restart the first contract staged claims its devices");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use agora_contracts::ContractId;
    use agora_market::NodeId;

    use super::*;

    const CAPS: Caps = Caps {
        total: 4096,
        per_customer: 1024,
    };

    #[test]
    fn claims_persist_0600_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::OWNERS_FILE);
        let mut o = load(Some(path.as_path()), CAPS);
        assert_eq!(o.len(), 0, "no file: empty");
        let (a, x) = (NodeId([1; 32]), NodeId([2; 32]));
        o.claim(ContractId([1; 32]), a, &[101, 102], CAPS).unwrap();
        save(Some(path.as_path()), &o);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut again = load(Some(path.as_path()), CAPS);
        assert_eq!((again.get(101), again.get(102)), (Some(a), Some(a)));
        assert!(
            again.claim(ContractId([2; 32]), x, &[101], CAPS).is_err(),
            "the first live claim holds across the restart"
        );
    }

    #[test]
    fn a_hostile_file_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::OWNERS_FILE);
        let write = |body: &[u8], mode: u32| {
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let mut o = Owners::default();
        o.claim(ContractId([1; 32]), NodeId([1; 32]), &[7], CAPS)
            .unwrap();
        // Readable by others: refused.
        write(&serde_json::to_vec(&o.saved()).unwrap(), 0o644);
        assert_eq!(load(Some(path.as_path()), CAPS).len(), 0);
        // Not JSON, or the wrong JSON.
        write(b"\xff{garbage", 0o600);
        assert_eq!(load(Some(path.as_path()), CAPS).len(), 0);
        write(b"[{\"contract\": 1}]", 0o600);
        assert_eq!(load(Some(path.as_path()), CAPS).len(), 0);
        // Too large: not even read.
        write(" ".repeat(MAX_FILE_BYTES as usize + 1).as_bytes(), 0o600);
        assert_eq!(load(Some(path.as_path()), CAPS).len(), 0);
        // The same claims, private: taken.
        write(&serde_json::to_vec(&o.saved()).unwrap(), 0o600);
        assert_eq!(
            load(Some(path.as_path()), CAPS).get(7),
            Some(NodeId([1; 32]))
        );
    }
}
