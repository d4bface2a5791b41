//! A network lab for partition tests: every node runs in its own Linux network namespace,
//! attached by a veth pair to a bridge in the test's namespace. Cutting a link installs
//! blackhole routes in both nodes' namespaces, a real cut the nodes cannot see through.
//! Needs root and `ip` (iproute2); [`NetLab::new`] says why when it cannot run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agora_devnet::process::Launcher;

fn ip(args: &[&str]) -> Result<(), String> {
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

/// Namespaces, veths and a bridge; removed on drop.
pub struct NetLab {
    tag: String,
    subnet: String,
    n: usize,
    exe: PathBuf,
}

impl NetLab {
    /// Creates `n` namespaces on a fresh /24, or says why it cannot.
    pub fn new(n: usize, exe: PathBuf) -> Result<NetLab, String> {
        let pid = std::process::id();
        let tag = format!("ag{}", pid % 100_000);
        let subnet = format!("10.213.{}", pid % 250);
        let lab = NetLab {
            tag: tag.clone(),
            subnet: subnet.clone(),
            n: 0,
            exe,
        };
        let bridge = format!("{tag}b");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        let mut lab = lab;
        for i in 0..n {
            let ns = lab.ns(i);
            let host_end = format!("{tag}v{i}");
            ip(&["netns", "add", &ns])?;
            lab.n = i + 1;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &host_end, "master", &bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Cuts the link between nodes `i` and `j` (both directions).
    pub fn cut(&self, i: usize, j: usize) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(i),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(j)),
        ])?;
        ip(&[
            "-n",
            &self.ns(j),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(i)),
        ])
    }

    /// Restores the link between nodes `i` and `j`.
    pub fn heal(&self, i: usize, j: usize) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(i),
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.addr(j)),
        ])?;
        ip(&[
            "-n",
            &self.ns(j),
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.addr(i)),
        ])
    }
}

impl Launcher for NetLab {
    fn host(&self, i: usize) -> String {
        self.addr(i)
    }

    fn exe(&self) -> anyhow::Result<PathBuf> {
        Ok(self.exe.clone())
    }

    fn spawn(&self, i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        let log = std::fs::File::create(data_dir.join("node.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(exe)
            .args(["node", "run", "--data-dir"])
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        // `ip netns exec` execs the command in place: the pid is the node's.
        Ok(child.id())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &format!("{}b", self.tag)]);
    }
}
