//! Linux network namespaces for process tests: the `ip` helper, a subnet reserved per lab on
//! this host ([`SubnetLease`]: nextest runs tests as separate processes side by side), starting
//! a node inside a namespace, and the partition lab ([`PartitionLab`]). The NAT lab
//! ([`crate::natlab::NatLab`], `scripts/netlab.sh`) builds on the same pieces.
//!
//! Needs root and `ip` (iproute2); every constructor returns `Err(reason)` when it cannot run,
//! so its test says SKIPPED instead of passing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agora_devnet::process::Launcher;

/// Runs `ip ARGS`; `Err` with the command and its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts `exe node run --data-dir DATA_DIR` inside namespace `ns`, its output in
/// `DATA_DIR/node.log`, `RUST_LOG` from the environment variable `log_var` (default `info`).
/// Returns the node's pid (`ip netns exec` execs the command in place).
pub fn spawn_in(ns: &str, exe: &Path, data_dir: &Path, log_var: &str) -> anyhow::Result<u32> {
    let log = std::fs::File::create(data_dir.join("node.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["node", "run", "--data-dir"])
        .arg(data_dir)
        .env(
            "RUST_LOG",
            std::env::var(log_var).unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    Ok(child.id())
}

/// A `/24` reserved for one lab on this host, `BASE.L` for the first free `L` from `start`:
/// the lock file `agora-lab-BASE.L.lock` in the temp dir, created exclusively and holding the
/// owner's pid, removed on drop. A lock whose pid no longer runs (a crashed run's) is taken
/// over. `L` also names the lab's interfaces and namespaces, so two labs never share one.
pub struct SubnetLease {
    /// `BASE.L`.
    pub subnet: String,
    /// `L`.
    pub index: usize,
    lock: PathBuf,
}

impl SubnetLease {
    /// Reserves the first free `BASE.L` (`L` in 0..250, tried from `start`).
    pub fn take(base: &str, start: usize) -> Result<SubnetLease, String> {
        let me = std::process::id();
        for k in 0..250 {
            let l = (start + k) % 250;
            let subnet = format!("{base}.{l}");
            let lock = std::env::temp_dir().join(format!("agora-lab-{subnet}.lock"));
            for _ in 0..2 {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lock)
                {
                    Ok(mut f) => {
                        use std::io::Write;
                        let _ = write!(f, "{me}");
                        return Ok(SubnetLease {
                            subnet,
                            index: l,
                            lock,
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let owner = std::fs::read_to_string(&lock).unwrap_or_default();
                        let alive = owner
                            .trim()
                            .parse::<u32>()
                            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                        // Written but not yet filled in by a live process: leave it.
                        if alive || owner.is_empty() {
                            break;
                        }
                        let _ = std::fs::remove_file(&lock);
                    }
                    Err(e) => return Err(format!("cannot reserve {subnet}: {e}")),
                }
            }
        }
        Err(format!("every {base}.L subnet is reserved by another lab"))
    }
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// A lab for partition tests: every node in its own namespace, attached by a veth pair to a
/// bridge in the test's namespace, on a `10.213.L.0/24` of its own (node `i` at
/// `10.213.L.(i+1)`). Cutting a link installs blackhole routes in both nodes' namespaces, a
/// real cut the nodes cannot see through. Namespaces, veths and the bridge are removed on drop.
pub struct PartitionLab {
    tag: String,
    n: usize,
    exe: PathBuf,
    lease: SubnetLease,
}

impl PartitionLab {
    /// Creates `n` namespaces on a fresh /24, or says why it cannot.
    pub fn new(n: usize, exe: PathBuf) -> Result<PartitionLab, String> {
        let lease = SubnetLease::take("10.213", std::process::id() as usize)?;
        let tag = format!("agp{}", lease.index);
        let mut lab = PartitionLab {
            tag,
            n: 0,
            exe,
            lease,
        };
        // A crashed run's lab with this tag (its lock was taken over): remove it first.
        lab.remove(n);
        let bridge = lab.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", lab.lease.subnet),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = lab.ns(i);
            let host_end = format!("{}v{i}", lab.tag);
            ip(&["netns", "add", &ns])?;
            lab.n = i + 1;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &host_end, "master", &bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            let addr = format!("{}/24", lab.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.lease.subnet, i + 1)
    }

    /// Cuts the link between nodes `i` and `j` (both directions).
    pub fn cut(&self, i: usize, j: usize) -> Result<(), String> {
        self.blackhole("add", i, j)
    }

    /// Restores the link between nodes `i` and `j`.
    pub fn heal(&self, i: usize, j: usize) -> Result<(), String> {
        self.blackhole("del", i, j)
    }

    fn blackhole(&self, op: &str, i: usize, j: usize) -> Result<(), String> {
        for (from, to) in [(i, j), (j, i)] {
            let dst = format!("{}/32", self.addr(to));
            ip(&["-n", &self.ns(from), "route", op, "blackhole", &dst])?;
        }
        Ok(())
    }

    /// Deletes namespaces `0..n` and the bridge (with the veths on it).
    fn remove(&self, n: usize) {
        for i in 0..n {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Launcher for PartitionLab {
    fn host(&self, i: usize) -> String {
        self.addr(i)
    }

    fn exe(&self) -> anyhow::Result<PathBuf> {
        Ok(self.exe.clone())
    }

    fn spawn(&self, i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        spawn_in(&self.ns(i), exe, data_dir, "RUST_LOG")
    }
}

impl Drop for PartitionLab {
    fn drop(&mut self) {
        self.remove(self.n);
    }
}
