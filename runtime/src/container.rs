//! Containers as an alternative to Wasm services: an [`Executor`] trait and a Docker/Podman
//! CLI implementation. Containers get no network, a read-only root and no capabilities unless
//! the spec grants them. The CLI calls block; call them from a blocking task.

use std::process::{Command, Output};

use serde::{Deserialize, Serialize};

/// Errors from the container executor.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No usable engine was found.
    #[error(
        "no running container engine: {0}; install docker or podman and start its daemon/socket"
    )]
    NoEngine(String),
    /// The CLI ran but the command failed.
    #[error("`{program} {action}` failed for {target}: {stderr}")]
    Command {
        /// `docker` or `podman`.
        program: String,
        /// The subcommand.
        action: &'static str,
        /// Container name or id.
        target: String,
        /// The CLI's error output.
        stderr: String,
    },
    /// The CLI could not be run at all.
    #[error("running `{program}`: {source}")]
    Spawn {
        /// `docker` or `podman`.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A spec field would be passed to the CLI as a flag.
    #[error("container spec field `{field}` must not start with '-': {value}")]
    BadSpec {
        /// The field name.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
}

/// What to run and with which limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name (the service id).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (e.g. 0.5).
    pub cpus: Option<f64>,
    /// Environment granted to the container.
    pub env: Vec<(String, String)>,
    /// Arguments after the image.
    pub args: Vec<String>,
    /// Grant network access (default: `--network none`).
    pub network: bool,
}

/// Runs containerised services.
pub trait Executor: Send + Sync {
    /// Starts a detached container; returns its id.
    fn start(&self, spec: &ContainerSpec) -> Result<String, ContainerError>;
    /// Stops (and removes) a container.
    fn stop(&self, id: &str) -> Result<(), ContainerError>;
    /// Whether the container is running.
    fn is_running(&self, id: &str) -> Result<bool, ContainerError>;
    /// The container's logs.
    fn logs(&self, id: &str) -> Result<String, ContainerError>;
}

/// [`Executor`] driving the `docker` or `podman` CLI.
#[derive(Clone, Debug)]
pub struct CliExecutor {
    program: String,
}

impl CliExecutor {
    /// Finds `docker` or `podman` with a reachable engine, in that order.
    pub fn detect() -> Result<Self, ContainerError> {
        let mut reasons = Vec::new();
        for program in ["docker", "podman"] {
            match Command::new(program)
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
            {
                Ok(out) if out.status.success() => {
                    return Ok(Self {
                        program: program.to_string(),
                    });
                }
                Ok(out) => reasons.push(format!(
                    "{program}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => reasons.push(format!("{program}: {e}")),
            }
        }
        Err(ContainerError::NoEngine(reasons.join("; ")))
    }

    /// Uses `program` (e.g. a full path to podman) without probing it.
    pub fn with_program(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// The `run` arguments for `spec`.
    pub fn run_args(spec: &ContainerSpec) -> Result<Vec<String>, ContainerError> {
        for (field, value) in [("name", &spec.name), ("image", &spec.image)] {
            if value.starts_with('-') || value.is_empty() {
                return Err(ContainerError::BadSpec {
                    field,
                    value: value.clone(),
                });
            }
        }
        let mut args: Vec<String> = ["run", "-d", "--rm", "--read-only", "--cap-drop", "ALL"]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        args.extend(["--name".into(), spec.name.clone()]);
        if !spec.network {
            args.extend(["--network".into(), "none".into()]);
        }
        if let Some(bytes) = spec.memory_bytes {
            args.extend(["--memory".into(), format!("{bytes}b")]);
        }
        if let Some(cpus) = spec.cpus {
            args.extend(["--cpus".into(), format!("{cpus}")]);
        }
        for (k, v) in &spec.env {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(spec.image.clone());
        args.extend(spec.args.iter().cloned());
        Ok(args)
    }

    fn run(
        &self,
        action: &'static str,
        target: &str,
        args: &[String],
    ) -> Result<Output, ContainerError> {
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .map_err(|source| ContainerError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ContainerError::Command {
                program: self.program.clone(),
                action,
                target: target.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

impl Executor for CliExecutor {
    fn start(&self, spec: &ContainerSpec) -> Result<String, ContainerError> {
        let out = self.run("run", &spec.name, &Self::run_args(spec)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn stop(&self, id: &str) -> Result<(), ContainerError> {
        self.run(
            "stop",
            id,
            &["stop".into(), "-t".into(), "5".into(), id.into()],
        )
        .map(|_| ())
    }

    fn is_running(&self, id: &str) -> Result<bool, ContainerError> {
        let args = ["inspect", "-f", "{{.State.Running}}", id].map(String::from);
        let out = self.run("inspect", id, &args)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "true")
    }

    fn logs(&self, id: &str) -> Result<String, ContainerError> {
        let out = self.run("logs", id, &["logs".into(), id.into()])?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_grant_nothing_by_default() {
        let spec = ContainerSpec {
            name: "svc1".into(),
            image: "alpine:3".into(),
            memory_bytes: Some(1 << 20),
            args: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        let args = CliExecutor::run_args(&spec).unwrap();
        let joined = args.join(" ");
        assert!(joined.contains("--network none"));
        assert!(joined.contains("--read-only"));
        assert!(joined.contains("--cap-drop ALL"));
        assert!(joined.contains("--memory 1048576b"));
        assert!(joined.ends_with("alpine:3 echo hi"));
    }

    #[test]
    fn flag_injection_is_rejected() {
        let spec = ContainerSpec {
            name: "--privileged".into(),
            image: "alpine".into(),
            ..Default::default()
        };
        assert!(matches!(
            CliExecutor::run_args(&spec),
            Err(ContainerError::BadSpec { field: "name", .. })
        ));
    }

    #[test]
    fn start_with_engine_or_clear_error() {
        match CliExecutor::detect() {
            Err(err) => {
                eprintln!("skipping container start test: {err}");
                assert!(err.to_string().contains("install docker or podman"));
            }
            Ok(exec) => {
                let spec = ContainerSpec {
                    name: format!("agora-test-{}", std::process::id()),
                    image: "busybox".into(),
                    args: vec!["sleep".into(), "30".into()],
                    ..Default::default()
                };
                match exec.start(&spec) {
                    Ok(id) => {
                        assert!(exec.is_running(&id).unwrap());
                        exec.stop(&id).unwrap();
                    }
                    // Offline CI cannot pull the image; that is an environment limit, not ours.
                    Err(err) => eprintln!("skipping container start test: {err}"),
                }
            }
        }
    }
}
