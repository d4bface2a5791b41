//! The control-API token file on real processes (#13.12): created 0600 even under a wide-open
//! umask, and a node refuses to start from a token that group or others can read.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use agora_tests::agora_bin;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn token_is_private_under_umask_000_and_a_readable_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("node");
    // `umask 000`: a file written with the umask and chmod-ed afterwards would be 0666 for a
    // moment; ours must be 0600 from creation.
    let init = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" init --data-dir \"$1\"")
        .arg(agora_bin())
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "agora init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let token = data_dir.join("api.token");
    assert_eq!(mode(&token), 0o600, "token created with a wider mode");

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut run = Command::new(agora_bin())
        .args(["node", "run", "--data-dir"])
        .arg(&data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit on its own at once; a node still running after the wait is the failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        status.is_some_and(|s| !s.success()),
        "node started with a readable token"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("chmod 600"),
        "error does not say what to do: {err}"
    );
}
