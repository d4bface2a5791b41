//! Process tests of operators' metrics: `agora devnet up --metrics` serves `/metrics`,
//! `/health` and `/ready` on every node, and a real Prometheus server scrapes the devnet.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use agora_api::metrics::parse_exposition;
use agora_tests::{DevnetGuard, agora_json, dechunk, wait_until};

/// `GET path` on `addr` over plain HTTP/1.1: (status, body), or `None` if nothing answered.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get_as(addr, addr, path)
}

/// [`http_get`] with the `Host` header `host` (a web page that rebinds its name to loopback
/// sends its own name).
fn http_get_as(addr: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        return None;
    }
    Some(parse_exposition(&body).unwrap_or_else(|e| panic!("bad exposition from {addr}: {e}")))
}

fn devnet_with_metrics(dir: &Path, nodes: usize) -> Vec<serde_json::Value> {
    let dir_s = dir.display().to_string();
    let n = nodes.to_string();
    let up = agora_json(&[
        "devnet",
        "up",
        "--nodes",
        &n,
        "--metrics",
        "--dir",
        &dir_s,
        "--timeout",
        "90",
    ]);
    up["nodes"].as_array().unwrap().clone()
}

fn create_auction(data_dir: &str) {
    agora_json(&[
        "auction",
        "create",
        "--data-dir",
        data_dir,
        "--cpu",
        "500m",
        "--memory",
        "256MiB",
        "--interfaces",
        "lora",
        "--duration",
        "2h",
        "--max-price",
        "100",
        "--kind",
        "standby",
        "--window",
        "2s",
    ]);
}

#[test]
fn devnet_nodes_serve_metrics_health_and_readiness() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let _guard = DevnetGuard(dir.clone());
    let nodes = devnet_with_metrics(&dir, 3);
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| n["metrics"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs.len(), 3);

    // The scrape config lists every node.
    let yml = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    for (n, a) in nodes.iter().zip(&addrs) {
        assert!(yml.contains(a.as_str()), "{yml}");
        assert!(yml.contains(n["name"].as_str().unwrap()), "{yml}");
    }

    // Liveness without a token, on the metrics port and on the API port.
    for (n, a) in nodes.iter().zip(&addrs) {
        assert_eq!(http_get(a, "/health").unwrap().0, 200);
        // THREATS L4: a web page that rebinds its own name to 127.0.0.1 reads nothing.
        assert_eq!(
            http_get_as(a, "evil.example", "/metrics").unwrap().0,
            421,
            "a rebinding page's Host is refused"
        );
        let port = a.rsplit(':').next().unwrap();
        assert_eq!(
            http_get_as(a, &format!("localhost:{port}"), "/health")
                .unwrap()
                .0,
            200
        );
        assert_eq!(
            http_get(n["api"].as_str().unwrap(), "/health").unwrap().0,
            200
        );
        // The rest of the control API still wants the token.
        assert_eq!(
            http_get(n["api"].as_str().unwrap(), "/v1/status")
                .unwrap()
                .0,
            401
        );
    }

    // Every node sees its two peers and reports a ledger.
    for a in &addrs {
        wait_until(
            "each node's metrics to show 2 connected peers",
            Duration::from_secs(60),
            || scrape(a).is_some_and(|m| m.get("agora_peers_connected") == Some(&2.0)),
        );
        let m = scrape(a).unwrap();
        assert!(m.contains_key("agora_ledger_height"), "{m:?}");
        assert!(m.contains_key("agora_mempool_transactions"));
        assert_eq!(m["agora_ledger_committee_size"], 3.0);
        // Funded at genesis, the three vouch for each other; no operator trusts anyone here.
        wait_until(
            "the ledger to vouch for the nodes",
            Duration::from_secs(60),
            || scrape(a).is_some_and(|m| m.get("agora_vouched_peers{by=\"ledger\"}") >= Some(&3.0)),
        );
        assert_eq!(m.get("agora_vouched_peers{by=\"operator\"}"), Some(&0.0));
        assert!(m.contains_key("agora_gossip_messages_total{outcome=\"accepted\"}"));
        assert!(m.contains_key("agora_market_book_total{event=\"snapshots_refused\"}"));
        assert!(m.contains_key("agora_bitswap_total{event=\"blocks_sent\"}"));
        assert!(m.contains_key("agora_bitswap_bytes_total{direction=\"received\"}"));
        assert!(m.contains_key("agora_storage_gc_total{event=\"removed_blocks\"}"));
        assert!(m.contains_key("agora_probe_image_loads_total{event=\"refused\"}"));
        // libp2p's own series share the registry (the `metrics` feature of libp2p).
        for prefix in ["libp2p_swarm_connections_established", "libp2p_identify_"] {
            assert!(
                m.keys().any(|k| k.starts_with(prefix)),
                "no {prefix}… series: {:?}",
                m.keys()
                    .filter(|k| k.starts_with("libp2p"))
                    .collect::<Vec<_>>()
            );
        }
    }

    // Ready once connected, at the tip and synced; the answer says what was checked.
    for a in &addrs {
        wait_until("every node to be ready", Duration::from_secs(90), || {
            http_get(a, "/ready").is_some_and(|(s, _)| s == 200)
        });
        let (_, body) = http_get(a, "/ready").unwrap();
        let r: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["ledger_at_tip"], true, "{r}");
        assert_eq!(r["orchestrator_synced"], true, "{r}");
        assert_eq!(r["market_restored"], true, "{r}");
    }

    // An auction from the CLI shows up in the customer's series as bids and an award.
    let node0 = dir.join("node0").display().to_string();
    create_auction(&node0);
    wait_until(
        "node0's metrics to count an awarded auction",
        Duration::from_secs(60),
        || {
            scrape(&addrs[0]).is_some_and(|m| {
                m.get("agora_auctions{status=\"awarded\"}") == Some(&1.0)
                    && m.get("agora_market_events_total{kind=\"awarded\"}") >= Some(&1.0)
                    && m.get("agora_market_events_total{kind=\"bid-received\"}") >= Some(&1.0)
            })
        },
    );
}

/// Percent-encodes a PromQL query for a URL.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The Prometheus server started by the test; killed when dropped.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `query` through Prometheus's HTTP API: the instant vector's (labels, value) pairs.
fn prom_query(addr: &str, query: &str) -> Vec<(serde_json::Value, f64)> {
    let path = format!("/api/v1/query?query={}", url_encode(query));
    let Some((200, body)) = http_get(addr, &path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| {
                    let value = s["value"][1].as_str()?.parse().ok()?;
                    Some((s["metric"].clone(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_a_devnet_and_answers_queries() {
    let Ok(out) = std::process::Command::new("prometheus")
        .arg("--version")
        .output()
    else {
        agora_devnet::skipped(
            "prometheus",
            "no `prometheus` binary on PATH (Debian: apt-get install prometheus; \
             scripts/test.sh installs it when run as root)",
        );
        return;
    };
    assert!(out.status.success(), "prometheus --version failed");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let _guard = DevnetGuard(dir.clone());
    let nodes = devnet_with_metrics(&dir, 3);

    let web = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prom = Prometheus(
        std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // Prometheus scraped all three nodes and stores their peer counts.
    wait_until(
        "Prometheus to report 2 peers for each of the 3 nodes",
        Duration::from_secs(90),
        || {
            let r = prom_query(&web, "agora_peers_connected");
            r.len() == 3 && r.iter().all(|(_, v)| *v == 2.0)
        },
    );
    let up = prom_query(&web, "up{job=\"agora-devnet\"}");
    let mut names: Vec<String> = up
        .iter()
        .map(|(m, _)| m["node"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["node0", "node1", "node2"]);

    // Something happens on the devnet; Prometheus sees the award through node0's series.
    let node0 = nodes[0]["data_dir"].as_str().unwrap().to_string();
    create_auction(&node0);
    wait_until(
        "Prometheus to see node0's awarded auction",
        Duration::from_secs(90),
        || {
            prom_query(
                &web,
                "agora_market_events_total{kind=\"awarded\",node=\"node0\"}",
            )
            .first()
            .is_some_and(|(_, v)| *v >= 1.0)
        },
    );
}
