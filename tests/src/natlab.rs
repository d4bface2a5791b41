//! A devnet inside the NAT lab (`scripts/netlab.sh`, docs/NETLAB.md): the public nodes
//! (arbitrators with an external address, so light relays by default; node 0 also every
//! node's bootstrap peer and so the edges' relay) in the lab's public namespace, the last
//! `homes` nodes each alone behind its own NAT router (node `n-1` in home 1, node `n-2` in
//! home 2, ...). [`NatLab`] is a [`Launcher`], so `agora_devnet::process::up_with_options` and
//! the demo's `Story` run unchanged on it. [`NatLab::up_hosts`] lays out another shape: no NAT,
//! node 0 in the public namespace and every other node on a public host of its own
//! (`netlab.sh up --hosts`), each listening on `0.0.0.0:4001` — the same port on every host,
//! as a fleet of machines configured alike (or the Shadow simulator's hosts) does.
//!
//! **Management addresses.** The test process stays in the root namespace and reaches every
//! node's control API and radio over a management veth: one point-to-point /30 per lab
//! namespace (root end `10.214.L.4j+1`, namespace end `10.214.L.4j+2`, where `L` is
//! unique per lab among the labs of every process on this host: it is reserved with a lock file,
//! [`SubnetLease`], since the test runner may run several test processes side by side). The nodes' p2p transport listens only on the lab addresses (public:
//! `203.0.113.2:4001+i`, homes: `192.168.k.2:4001`), so nothing advertises a management
//! address, and the management links cannot carry p2p traffic between nodes: each namespace
//! knows only its own /30 and the root namespace does not forward (`ip_forward = 0`). Deleting
//! the lab's namespaces (`netlab.sh down`) deletes the veths with them.
//!
//! Needs root, network namespaces and nftables; [`NatLab::up`] returns `Err(reason)` otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use agora_daemon::config::NodeConfig;
use agora_devnet::process::Launcher;

use crate::netns::{SubnetLease, ip, spawn_in};

/// The public node's address in the lab (netlab.sh's `PUB_IP`).
pub const PUBLIC_IP: &str = "203.0.113.2";

/// First p2p port; public node `i` listens on `BASE_PORT + i`, edges on `BASE_PORT`.
pub const BASE_PORT: u16 = 4001;

fn netlab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netlab.sh")
}

/// Labs started by this process (two tests may run side by side).
static LABS: AtomicUsize = AtomicUsize::new(0);

/// A NAT lab holding a devnet of `n` nodes; `down` (which kills every process in the lab) on
/// drop.
pub struct NatLab {
    prefix: String,
    n: usize,
    homes: usize,
    /// Public hosts without NAT (nodes `1..=hosts`), each listening on `0.0.0.0:BASE_PORT`.
    hosts: usize,
    subnet: String,
    exe: PathBuf,
    /// Holds `subnet` for this lab; released after the lab is down.
    _lease: SubnetLease,
}

impl NatLab {
    /// Brings up a lab for `n` nodes whose last `homes` nodes sit behind NATs of kind `nat`
    /// (`cone`, `symmetric` or a comma list, as `netlab.sh up --nat`), or `Err(reason)` when it
    /// cannot run here. Panics when the lab should run but fails to come up.
    pub fn up(n: usize, homes: usize, nat: &str, exe: PathBuf) -> Result<NatLab, String> {
        assert!(homes >= 1 && homes < n, "{homes} homes for {n} nodes");
        NatLab::start(n, homes, 0, nat, exe)
    }

    /// A lab for `n` nodes without NAT: node 0 in the public namespace (bootstrap, on
    /// `203.0.113.2:4001`), node `k` alone on public host `k` (`203.0.113.(100+k)`), listening
    /// on `0.0.0.0:4001` with no external address configured, so what it announces is what
    /// identify and its listeners report. `Err(reason)` when it cannot run here.
    pub fn up_hosts(n: usize, exe: PathBuf) -> Result<NatLab, String> {
        assert!((2..=51).contains(&n), "{n} nodes");
        NatLab::start(n, 0, n - 1, "cone", exe)
    }

    fn start(
        n: usize,
        homes: usize,
        hosts: usize,
        nat: &str,
        exe: PathBuf,
    ) -> Result<NatLab, String> {
        let pid = std::process::id();
        let seq = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nd{}x{seq}", pid % 100_000);
        let script = netlab_script();
        let lease = SubnetLease::take("10.214", pid as usize * 7 + seq)?;
        // A lab with this prefix can only be a crashed run's whose pid was reused.
        let _ = Command::new("bash")
            .arg(&script)
            .args(["--prefix", &prefix, "down"])
            .output();
        let out = Command::new("bash")
            .arg(&script)
            .args(["--prefix", &prefix, "up", "--homes", &homes.to_string()])
            .args(["--hosts", &hosts.to_string()])
            .args(["--nat", nat])
            .output()
            .map_err(|e| format!("cannot run netlab.sh: {e}"))?;
        let lab = NatLab {
            prefix,
            n,
            homes,
            hosts,
            subnet: lease.subnet.clone(),
            exe,
            _lease: lease,
        };
        if out.status.code() == Some(77) {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        assert!(
            out.status.success(),
            "netlab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for j in 0..=homes + hosts {
            if let Err(e) = lab.add_mgmt(j) {
                panic!("management veth for {}: {e}", lab.ns_name(j));
            }
        }
        Ok(lab)
    }

    /// The lab's prefix (`netlab.sh --prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Namespace slot of node `i`: 0 = public, k in `1..=homes` = home k, `homes + k` = public
    /// host k.
    fn slot(&self, i: usize) -> usize {
        if i + self.homes >= self.n {
            self.n - i
        } else if (1..=self.hosts).contains(&i) {
            self.homes + i
        } else {
            0
        }
    }

    /// Whether node `i` is behind a NAT.
    pub fn is_edge(&self, i: usize) -> bool {
        self.home(i).is_some()
    }

    /// The home (1-based) node `i` sits in, `None` for a public node.
    pub fn home(&self, i: usize) -> Option<usize> {
        Some(self.slot(i)).filter(|k| (1..=self.homes).contains(k))
    }

    /// The public host (1-based) node `i` runs on, `None` for the public node and the homes.
    pub fn public_host(&self, i: usize) -> Option<usize> {
        Some(self.slot(i))
            .filter(|j| *j > self.homes)
            .map(|j| j - self.homes)
    }

    /// Full namespace name of slot `j`.
    fn ns_name(&self, j: usize) -> String {
        if j == 0 {
            format!("{}-pub", self.prefix)
        } else if j <= self.homes {
            format!("{}-h{j}", self.prefix)
        } else {
            format!("{}-s{}", self.prefix, j - self.homes)
        }
    }

    /// The namespace node `i` runs in.
    pub fn ns(&self, i: usize) -> String {
        self.ns_name(self.slot(i))
    }

    /// Node `i`'s p2p address inside the lab (what it listens on; a public host listens on
    /// every interface, `0.0.0.0`).
    pub fn p2p_addr(&self, i: usize) -> String {
        if self.public_host(i).is_some() {
            return format!("/ip4/0.0.0.0/tcp/{BASE_PORT}");
        }
        match self.slot(i) {
            0 => format!("/ip4/{PUBLIC_IP}/tcp/{}", BASE_PORT as usize + i),
            k => format!("/ip4/192.168.{k}.2/tcp/{BASE_PORT}"),
        }
    }

    /// Public host `k`'s address (`netlab.sh`'s `host_ip`).
    pub fn host_ip(k: usize) -> String {
        format!("203.0.113.{}", 100 + k)
    }

    /// The public address of home `k`'s router (what peers see of an edge there).
    pub fn router_ip(k: usize) -> String {
        format!("203.0.113.{}", 10 + k)
    }

    /// A veth from the root namespace into slot `j`'s namespace, a /30 of its own.
    fn add_mgmt(&self, j: usize) -> Result<(), String> {
        let ns = self.ns_name(j);
        let root_end = format!("{}m{j}", self.prefix);
        let root_ip = format!("{}.{}", self.subnet, 4 * j + 1);
        let ns_ip = format!("{}.{}", self.subnet, 4 * j + 2);
        ip(&[
            "link", "add", &root_end, "type", "veth", "peer", "name", "mgmt", "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &root_end])?;
        ip(&["link", "set", &root_end, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            "mgmt",
        ])?;
        ip(&["-n", &ns, "link", "set", "mgmt", "up"])
    }
}

impl Launcher for NatLab {
    /// The management address of node `i`'s namespace (control API and radio).
    fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 4 * self.slot(i) + 2)
    }

    fn configure(&self, i: usize, config: &mut NodeConfig) {
        let p2p = self.p2p_addr(i);
        config.network.listen = vec![p2p.clone()];
        // The lab's "internet" is the documentation range, which AutoNAT otherwise skips.
        config.network.autonat_only_global_ips = false;
        if self.public_host(i).is_some() {
            // Announces what it finds: no external address, the market as on any devnet.
            return;
        }
        if !self.is_edge(i) {
            // With an external address, an arbitrator serves a light relay v2 by default
            // (`[network] relay_server` stays unset, as an operator's would): node 0, every
            // node's bootstrap peer, is the edges' relay.
            config.network.external = vec![p2p];
            // Only edges bid: the contract is between two NATed edges.
            let provider = &mut config.market.engine.dmu.provider;
            provider.auto_bid = false;
            provider.auto_accept_award = false;
        }
    }

    fn exe(&self) -> anyhow::Result<PathBuf> {
        Ok(self.exe.clone())
    }

    fn spawn(&self, i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        spawn_in(&self.ns(i), exe, data_dir, "NAT_RUST_LOG")
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(netlab_script())
            .args(["--prefix", &self.prefix, "down"])
            .output();
    }
}
