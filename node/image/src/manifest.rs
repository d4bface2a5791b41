//! The service manifest (`svc.toml`): what a service is, what it needs and the limits it runs
//! under. Stored in an image as a CBOR block; validated on publish and again on stage.

use std::collections::BTreeMap;

use agora_market::Resources;

use crate::deps::MAX_DEPENDS_ON;
use agora_runtime::{Backoff, LimitsSide, RestartPolicy, ServiceLimits};
use serde::{Deserialize, Serialize};

/// Longest service name.
const MAX_NAME: usize = 64;
/// Most device ids a manifest may claim.
const MAX_DEVICES: usize = 1024;
/// Most environment variables a manifest may grant.
const MAX_ENV: usize = 64;

/// How the service runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A wasm32-wasip1 module on the node's wasmtime host (guest ABI v1).
    #[default]
    Wasm,
    /// A container image run by docker or podman.
    Container,
}

impl ServiceKind {
    /// `"wasm"` or `"container"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Wasm => "wasm",
            ServiceKind::Container => "container",
        }
    }
}

/// When the service should be activated once staged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Start as soon as it is staged.
    #[default]
    Immediate,
    /// Stay staged (standby insurance) until a handover starts it.
    Standby,
}

/// Resources the service needs from its host (what a customer asks for in an auction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestResources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Persistent storage in MiB.
    pub storage_mb: u64,
}

impl Default for ManifestResources {
    fn default() -> Self {
        Self {
            cpu_millis: 100,
            memory_mb: 32,
            storage_mb: 1,
        }
    }
}

/// Limits the host enforces per instance (a contract may override them at stage time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestLimits {
    /// Linear-memory cap in bytes.
    pub memory_bytes: u64,
    /// CPU budget in wasmtime fuel (≈ wasm instructions) per second.
    pub fuel_per_second: u64,
    /// Wall-clock lifetime in milliseconds; absent runs until stopped.
    pub max_lifetime_ms: Option<u64>,
    /// Instances of this module that may be active at once on one host.
    pub instances: u32,
    /// Total stdout/stderr bytes one instance may write.
    pub max_output_bytes: u64,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        let d = ServiceLimits::default();
        Self {
            memory_bytes: d.memory_bytes,
            fuel_per_second: d.fuel_per_second,
            max_lifetime_ms: d.wall_clock_ms,
            instances: d.max_instances,
            max_output_bytes: d.max_output_bytes,
        }
    }
}

/// What the node does when the service fails (`[restart]` in `svc.toml`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartOn {
    /// Stay stopped (the default).
    #[default]
    Never,
    /// Restart after a trap, a non-zero exit, a limit, or (with `unhealthy_after_ms`) a health
    /// export that keeps answering non-zero.
    OnFailure,
}

/// The restart policy: `[restart] policy = "on-failure"`, at most `max_restarts` restarts over
/// the service's life, waiting `backoff_ms` before the first and doubling up to
/// `max_backoff_ms`; `unhealthy_after_ms` > 0 also restarts a guest whose `agora_health`
/// export has answered non-zero for that long (0: reported, never restarted for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestRestart {
    /// `"never"` or `"on-failure"`.
    pub policy: RestartOn,
    /// Restarts allowed over the service's life.
    pub max_restarts: u32,
    /// Wait before the first restart, in milliseconds.
    pub backoff_ms: u64,
    /// Longest wait, in milliseconds.
    pub max_backoff_ms: u64,
    /// Restart a guest unhealthy for this long, in milliseconds (0: never for that).
    pub unhealthy_after_ms: u64,
}

impl Default for ManifestRestart {
    fn default() -> Self {
        let b = Backoff::default();
        Self {
            policy: RestartOn::Never,
            max_restarts: 5,
            backoff_ms: b.initial_ms,
            max_backoff_ms: b.max_ms,
            unhealthy_after_ms: 0,
        }
    }
}

impl ManifestRestart {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The runtime's policy, backoff and unhealthy limit for this section.
    pub fn runtime(&self) -> (RestartPolicy, Backoff, Option<u64>) {
        let policy = match self.policy {
            RestartOn::Never => RestartPolicy::Never,
            RestartOn::OnFailure => RestartPolicy::OnFailure {
                max_restarts: self.max_restarts,
            },
        };
        let backoff = Backoff {
            initial_ms: self.backoff_ms,
            max_ms: self.max_backoff_ms,
        };
        let unhealthy = (self.policy == RestartOn::OnFailure && self.unhealthy_after_ms > 0)
            .then_some(self.unhealthy_after_ms);
        (policy, backoff, unhealthy)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.max_restarts > 1_000 {
            return Err(field("restart.max_restarts", "must be at most 1000"));
        }
        if !(10..=3_600_000).contains(&self.backoff_ms) {
            return Err(field(
                "restart.backoff_ms",
                "must be between 10 and 3600000 milliseconds",
            ));
        }
        if !(self.backoff_ms..=3_600_000).contains(&self.max_backoff_ms) {
            return Err(field(
                "restart.max_backoff_ms",
                "must be at least restart.backoff_ms and at most 3600000 milliseconds",
            ));
        }
        if self.unhealthy_after_ms != 0 && !(1_000..=86_400_000).contains(&self.unhealthy_after_ms)
        {
            return Err(field(
                "restart.unhealthy_after_ms",
                "must be 0 (never) or between 1000 and 86400000 milliseconds \
                 (health is read once a second)",
            ));
        }
        if self.unhealthy_after_ms != 0 && self.policy == RestartOn::Never {
            return Err(field(
                "restart.unhealthy_after_ms",
                "needs policy = \"on-failure\" (a policy of never restarts nothing)",
            ));
        }
        Ok(())
    }
}

/// The container to run for `kind = "container"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerImage {
    /// Image reference, e.g. `docker.io/library/alpine:3.20`.
    pub image: String,
    /// Arguments after the image.
    pub args: Vec<String>,
}

/// A service manifest, as written in `svc.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceManifest {
    /// Service name (`[a-z0-9._-]`, at most 64 characters).
    pub name: String,
    /// Service version (free text, e.g. semver).
    pub version: String,
    /// `"wasm"` (default) or `"container"`.
    #[serde(default)]
    pub kind: ServiceKind,
    /// Resources it needs.
    #[serde(default)]
    pub resources: ManifestResources,
    /// Limits it runs under.
    #[serde(default)]
    pub limits: ManifestLimits,
    /// Sensor/device ids it takes over (empty: none).
    #[serde(default)]
    pub devices: Vec<u32>,
    /// `agora_poll` is called at least this often, in milliseconds.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Environment variables granted to the guest (none by default).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Activation hint for the orchestrator.
    #[serde(default)]
    pub activation: Activation,
    /// The container to run (`kind = "container"` only).
    #[serde(default)]
    pub container: Option<ContainerImage>,
    /// What to do when it fails (default: stay stopped). Not written when default, so the
    /// images (and CIDs) of manifests without a `[restart]` section are what they were.
    #[serde(default, skip_serializing_if = "ManifestRestart::is_default")]
    pub restart: ManifestRestart,
    /// Names of services (their manifests' `name`) on the same node that must run before this
    /// one starts; stopping one of them stops this one first. Not written when empty, so the
    /// images (and CIDs) of manifests without it are what they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

fn default_tick_ms() -> u64 {
    100
}

/// Whether `name` is a service name: 1..=64 characters of a-z, 0-9, '.', '_', '-'.
fn name_ok(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    !name.is_empty() && name.len() <= MAX_NAME && name.chars().all(ok)
}

/// A manifest that cannot be used; the message names the field and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The TOML could not be parsed.
    #[error("service manifest is not valid TOML: {0}")]
    Toml(String),
    /// A field has a value the node cannot use.
    #[error("service manifest field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The manifest's name of a [`ServiceLimits`] field.
fn manifest_field(limit: &str) -> &'static str {
    match limit {
        "memory_bytes" => "limits.memory_bytes",
        "fuel_per_second" => "limits.fuel_per_second",
        "wall_clock_ms" => "limits.max_lifetime_ms",
        "max_instances" => "limits.instances",
        "max_output_bytes" => "limits.max_output_bytes",
        _ => "limits",
    }
}

fn field(field: &'static str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field,
        reason: reason.into(),
    }
}

impl ServiceManifest {
    /// Parses and validates a manifest from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: ServiceManifest =
            toml::from_str(text).map_err(|e| ManifestError::Toml(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// A minimal valid wasm manifest (defaults everywhere else).
    pub fn wasm(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            kind: ServiceKind::Wasm,
            resources: ManifestResources::default(),
            limits: ManifestLimits::default(),
            devices: Vec::new(),
            tick_ms: default_tick_ms(),
            env: BTreeMap::new(),
            activation: Activation::Immediate,
            container: None,
            restart: ManifestRestart::default(),
            depends_on: Vec::new(),
        }
    }

    /// The manifest `agora service publish MODULE` uses without `--manifest`: a wasm service
    /// named after the module's file (lowercased; characters a name may not hold become `-`),
    /// version 0.1.0, and the defaults of [`Self::wasm`] (the runtime's default limits, no
    /// devices, immediate activation). Fails, naming the field, when no valid name can be
    /// derived.
    pub fn for_module(file: &std::path::Path) -> Result<Self, ManifestError> {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name: String = stem
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_NAME)
            .collect();
        if !name.chars().any(|c| c.is_ascii_alphanumeric()) {
            return Err(field(
                "name",
                format!(
                    "cannot be derived from the file name `{}`; pass --manifest with name = \"...\" (a-z, 0-9, '.', '_', '-')",
                    file.display()
                ),
            ));
        }
        let m = Self::wasm(&name, "0.1.0");
        m.validate()?;
        Ok(m)
    }

    /// This manifest as TOML that [`Self::from_toml`] reads back (to copy into a `svc.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot write TOML: {e}\n"))
    }

    /// Checks every field; errors say which field and what to change.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !name_ok(&self.name) {
            return Err(field(
                "name",
                format!(
                    "`{}` must be 1..=64 characters of a-z, 0-9, '.', '_', '-'",
                    self.name
                ),
            ));
        }
        self.validate_depends_on()?;
        if self.version.trim().is_empty() || self.version.len() > MAX_NAME {
            return Err(field(
                "version",
                "must be 1..=64 characters, e.g. \"0.1.0\"",
            ));
        }
        if !(1..=60_000).contains(&self.tick_ms) {
            return Err(field("tick_ms", "must be between 1 and 60000 milliseconds"));
        }
        let l = &self.limits;
        // The runtime's own ranges (fuel, memory, lifetime, instances): a manifest may ask for
        // less than a contract allows, never for a value the runtime cannot run under.
        if let Err(e) = self.service_limits().validate(LimitsSide::Requested) {
            return Err(field(
                manifest_field(e.field),
                format!("{} is unusable: {}", e.value, e.reason),
            ));
        }
        let wanted_mb = l.memory_bytes.div_ceil(1 << 20);
        if self.resources.memory_mb > 0 && wanted_mb > self.resources.memory_mb {
            return Err(field(
                "limits.memory_bytes",
                format!(
                    "{} bytes exceed resources.memory_mb = {}; raise memory_mb or lower the limit",
                    l.memory_bytes, self.resources.memory_mb
                ),
            ));
        }
        if !(1..=64).contains(&l.instances) {
            return Err(field("limits.instances", "must be between 1 and 64"));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(field("devices", "lists more than 1024 device ids"));
        }
        let mut sorted = self.devices.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(field("devices", "lists a device id twice"));
        }
        if self.env.len() > MAX_ENV {
            return Err(field("env", "grants more than 64 variables"));
        }
        if let Some(k) = self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(field(
                "env",
                format!("variable name `{k}` must be non-empty without '=' or NUL"),
            ));
        }
        self.restart.validate()?;
        match (self.kind, &self.container) {
            (ServiceKind::Wasm, Some(_)) => Err(field(
                "container",
                "is only allowed with kind = \"container\"",
            )),
            (ServiceKind::Container, None) => Err(field(
                "container",
                "kind = \"container\" needs a [container] section with `image`",
            )),
            (ServiceKind::Container, Some(c)) if c.image.is_empty() || c.image.starts_with('-') => {
                Err(field(
                    "container.image",
                    "must be an image reference such as docker.io/library/alpine:3.20",
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_depends_on(&self) -> Result<(), ManifestError> {
        if self.depends_on.len() > MAX_DEPENDS_ON {
            return Err(field(
                "depends_on",
                format!("lists more than {MAX_DEPENDS_ON} services"),
            ));
        }
        if let Some(bad) = self.depends_on.iter().find(|d| !name_ok(d)) {
            return Err(field(
                "depends_on",
                format!(
                    "`{bad}` is not a service name (1..=64 characters of a-z, 0-9, '.', '_', '-')"
                ),
            ));
        }
        if self.depends_on.contains(&self.name) {
            return Err(field(
                "depends_on",
                format!("`{}` cannot depend on itself", self.name),
            ));
        }
        let mut sorted: Vec<&String> = self.depends_on.iter().collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(field("depends_on", format!("lists `{}` twice", w[0])));
        }
        Ok(())
    }

    /// The runtime limits this manifest asks for.
    pub fn service_limits(&self) -> ServiceLimits {
        ServiceLimits {
            memory_bytes: self.limits.memory_bytes,
            fuel_per_second: self.limits.fuel_per_second,
            wall_clock_ms: self.limits.max_lifetime_ms,
            max_instances: self.limits.instances,
            max_output_bytes: self.limits.max_output_bytes,
        }
    }

    /// The manifest's needs as a market resource vector (for auctions).
    pub fn resources(&self) -> Resources {
        Resources {
            cpu_millis: self.resources.cpu_millis,
            memory_bytes: self.resources.memory_mb.saturating_mul(1 << 20),
            storage_bytes: self.resources.storage_mb.saturating_mul(1 << 20),
            ..Resources::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../runtime/examples/lora-gateway/service.toml");

    #[test]
    fn example_manifest_parses_and_converts() {
        let m = ServiceManifest::from_toml(EXAMPLE).unwrap();
        assert_eq!(m.name, "lora-gateway");
        assert_eq!(m.kind, ServiceKind::Wasm);
        assert_eq!(m.activation, Activation::Standby);
        assert!(!m.devices.is_empty());
        assert!(m.env.is_empty(), "no environment by default");
        let limits = m.service_limits();
        assert_eq!(limits.memory_bytes, m.limits.memory_bytes);
        assert_eq!(m.resources().memory_bytes, m.resources.memory_mb << 20);
    }

    #[test]
    fn defaults_fill_a_minimal_manifest() {
        let m = ServiceManifest::from_toml("name = \"x\"\nversion = \"1\"\n").unwrap();
        assert_eq!(m, ServiceManifest::wasm("x", "1"));
    }

    #[test]
    fn a_restart_section_becomes_the_runtime_policy_and_bad_ones_are_named() {
        let m = ServiceManifest::from_toml(
            "name = \"x\"\nversion = \"1\"\n[restart]\npolicy = \"on-failure\"\n\
             max_restarts = 3\nbackoff_ms = 500\nmax_backoff_ms = 8000\nunhealthy_after_ms = 5000\n",
        )
        .unwrap();
        let (policy, backoff, unhealthy) = m.restart.runtime();
        assert_eq!(policy, RestartPolicy::OnFailure { max_restarts: 3 });
        assert_eq!((backoff.initial_ms, backoff.max_ms), (500, 8000));
        assert_eq!(unhealthy, Some(5000));
        // No section: never restarted, and the CBOR (so the image CID) is what it was.
        let plain = ServiceManifest::wasm("x", "1");
        assert_eq!(plain.restart.runtime().0, RestartPolicy::Never);
        let cbor = serde_cbor::to_vec(&plain).unwrap();
        assert!(!String::from_utf8_lossy(&cbor).contains("restart"));
        assert!(String::from_utf8_lossy(&serde_cbor::to_vec(&m).unwrap()).contains("restart"));
        for (body, named) in [
            ("max_restarts = 5000", "restart.max_restarts"),
            ("backoff_ms = 1", "restart.backoff_ms"),
            (
                "backoff_ms = 2000\nmax_backoff_ms = 1000",
                "restart.max_backoff_ms",
            ),
            (
                "policy = \"on-failure\"\nunhealthy_after_ms = 10",
                "restart.unhealthy_after_ms",
            ),
            ("unhealthy_after_ms = 5000", "restart.unhealthy_after_ms"),
        ] {
            let err = ServiceManifest::from_toml(&format!(
                "name = \"x\"\nversion = \"1\"\n[restart]\n{body}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(named), "{body}: {err}");
        }
    }

    #[test]
    fn depends_on_is_checked_and_absent_from_the_encoding_when_empty() {
        let m = ServiceManifest::from_toml(
            "name = \"web\"\nversion = \"1\"\ndepends_on = [\"db\", \"cache\"]\n",
        )
        .unwrap();
        assert_eq!(m.depends_on, ["db", "cache"]);
        assert_eq!(ServiceManifest::from_toml(&m.to_toml()).unwrap(), m);
        // Without it, the CBOR (so the image CID) is what it was, and old records decode.
        let plain = ServiceManifest::wasm("web", "1");
        let cbor = serde_cbor::to_vec(&plain).unwrap();
        assert!(!String::from_utf8_lossy(&cbor).contains("depends_on"));
        assert_eq!(
            serde_cbor::from_slice::<ServiceManifest>(&cbor).unwrap(),
            plain
        );
        let with = serde_cbor::to_vec(&m).unwrap();
        assert!(String::from_utf8_lossy(&with).contains("depends_on"));
        assert_eq!(serde_cbor::from_slice::<ServiceManifest>(&with).unwrap(), m);
        let many: Vec<String> = (0..=MAX_DEPENDS_ON).map(|i| format!("\"s{i}\"")).collect();
        let many = format!("[{}]", many.join(", "));
        for (deps, why) in [
            ("[\"web\"]", "itself"),
            ("[\"db\", \"db\"]", "twice"),
            ("[\"Bad Name\"]", "not a service name"),
            ("[\"\"]", "not a service name"),
            (many.as_str(), "more than 16"),
        ] {
            let err = ServiceManifest::from_toml(&format!(
                "name = \"web\"\nversion = \"1\"\ndepends_on = {deps}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("`depends_on`") && err.contains(why),
                "{deps}: {err}"
            );
        }
    }

    #[test]
    fn a_module_alone_gets_a_manifest_named_after_it() {
        let m =
            ServiceManifest::for_module(std::path::Path::new("/x/Lora_Gateway v2.wasm")).unwrap();
        assert_eq!(m.name, "lora_gateway-v2");
        assert_eq!(m.version, "0.1.0");
        assert_eq!(m.kind, ServiceKind::Wasm);
        assert!(m.service_limits().validate(LimitsSide::Requested).is_ok());
        // What the CLI shows to copy reads back as the same manifest.
        assert_eq!(ServiceManifest::from_toml(&m.to_toml()).unwrap(), m);
        let err = ServiceManifest::for_module(std::path::Path::new("/x/@@.wasm"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`name`") && err.contains("--manifest"),
            "{err}"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("name = \"Bad Name\"\nversion = \"1\"", "name"),
            ("name = \"x\"\nversion = \"\"", "version"),
            ("name = \"x\"\nversion = \"1\"\ntick_ms = 0", "tick_ms"),
            ("name = \"x\"\nversion = \"1\"\ndevices = [1, 1]", "devices"),
            (
                "name = \"x\"\nversion = \"1\"\nkind = \"container\"",
                "container",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[limits]\nmemory_bytes = 1024",
                "limits.memory_bytes",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[resources]\nmemory_mb = 1\n[limits]\nmemory_bytes = 4194304",
                "limits.memory_bytes",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[limits]\ninstances = 0",
                "limits.instances",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[limits]\nfuel_per_second = 0",
                "limits.fuel_per_second",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[limits]\nfuel_per_second = 9999",
                "limits.fuel_per_second",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[limits]\nfuel_per_second = 100000000001",
                "limits.fuel_per_second",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[limits]\nmax_lifetime_ms = 0",
                "limits.max_lifetime_ms",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[resources]\nmemory_mb = 0\n[limits]\nmemory_bytes = 8589934592",
                "limits.memory_bytes",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[env]\n\"A=B\" = \"c\"",
                "env",
            ),
        ];
        for (text, want) in cases {
            match ServiceManifest::from_toml(text) {
                Err(ManifestError::Field { field, .. }) => assert_eq!(field, want, "{text}"),
                other => panic!("{text}: expected a `{want}` error, got {other:?}"),
            }
        }
        assert!(matches!(
            ServiceManifest::from_toml("name = \"x\"\nversion = \"1\"\nunknown = 1"),
            Err(ManifestError::Toml(_))
        ));
    }

    #[test]
    fn fuel_range_error_says_what_to_use() {
        let err = ServiceManifest::from_toml(
            "name = \"x\"\nversion = \"1\"\n[limits]\nfuel_per_second = 18446744073709551615",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`limits.fuel_per_second`"), "{err}");
        assert!(err.contains("must be at most 100000000000"), "{err}");
        // The bounds themselves are accepted.
        for fuel in [
            agora_runtime::MIN_FUEL_PER_SECOND,
            agora_runtime::MAX_FUEL_PER_SECOND,
        ] {
            let text = format!("name = \"x\"\nversion = \"1\"\n[limits]\nfuel_per_second = {fuel}");
            ServiceManifest::from_toml(&text).unwrap();
        }
    }

    #[test]
    fn container_manifest_needs_an_image() {
        let text = "name = \"c\"\nversion = \"1\"\nkind = \"container\"\n[container]\nimage = \"docker.io/library/alpine:3.20\"\n";
        let m = ServiceManifest::from_toml(text).unwrap();
        assert_eq!(m.kind, ServiceKind::Container);
        let bad = text.replace("docker.io/library/alpine:3.20", "--privileged");
        assert!(ServiceManifest::from_toml(&bad).is_err());
    }
}
