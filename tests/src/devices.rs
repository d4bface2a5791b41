//! What the firmware-job process tests share (issue #16): the gateway service's manifest that
//! makes a node manage some devices, and the `agora devnet devices` process, killed when
//! dropped.

use std::process::Child;

/// The `agora devnet devices` process (or any child) of a test, killed when dropped.
pub struct DevicesProcess(pub Child);

impl Drop for DevicesProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The manifest of the lora-gateway service naming `devices`: the node that owns it as its own
/// service manages them.
pub fn gateway_manifest(devices: &[u32]) -> String {
    format!(
        r#"name = "lora-gateway"
version = "0.1.0"
kind = "wasm"
tick_ms = 100
activation = "standby"
devices = {devices:?}

[resources]
cpu_millis = 100
memory_mb = 32
storage_mb = 1

[limits]
memory_bytes = 16777216
fuel_per_second = 200000000
instances = 1
max_output_bytes = 1048576
"#
    )
}
