use std::time::{Duration, Instant};

use agora_network::keys::NodeKey;
use agora_network::{Multiaddr, NetworkConfig, NetworkHandle};

use super::*;

const TOKEN: &str = "test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

async fn network(cancel: &CancellationToken) -> NetworkHandle {
    let cfg = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        ..NetworkConfig::default()
    };
    let (net, _task) = agora_network::spawn(&NodeKey::generate(), cfg, cancel.clone())
        .await
        .expect("network starts");
    net
}

async fn listen_addr(net: &NetworkHandle) -> Multiaddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(a) = net
            .listen_addrs()
            .await
            .ok()
            .and_then(|a| a.into_iter().next())
        {
            return a;
        }
        assert!(Instant::now() < deadline, "the swarm never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A control API over a bare network (no market, ledger or edge), on a free loopback port.
async fn api(cancel: &CancellationToken) -> (String, NetworkHandle) {
    let net = network(cancel).await;
    let state = ApiState {
        alone: false,
        network: net.clone(),
        token: TOKEN.into(),
        started: std::time::Instant::now(),
        cancel: cancel.clone(),
        data_dir: std::env::temp_dir(),
        name: "dash-test".into(),
        market: None,
        ledger: None,
        storage: None,
        radio: None,
        orchestrator: None,
        fleet: None,
        services: None,
        metrics: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(crate::serve(listener, state, cancel.clone()));
    (format!("http://{addr}"), net)
}

/// Reads SSE events off a response until `want` accepts one's data, or the timeout.
async fn next_snapshot(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let is_snapshot = frame.lines().any(|l| l == "event: snapshot");
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if is_snapshot {
                let snap: Snapshot = serde_json::from_str(&data).expect("snapshot is JSON");
                if want(&snap) {
                    return snap;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("no matching snapshot before the timeout")
            .expect("stream readable")
            .expect("stream still open");
        buf.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
}

#[tokio::test]
async fn the_page_is_served_without_token_and_embeds_its_code() {
    let cancel = CancellationToken::new();
    let (base, _net) = api(&cancel).await;
    for path in ["/", "/dashboard"] {
        let resp = reqwest::get(format!("{base}{path}")).await.expect("GET");
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap_or("");
        assert!(ct.starts_with("text/html"), "{ct}");
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or("");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        let body = resp.text().await.expect("body");
        assert_eq!(body, PAGE);
    }
    // Offline: nothing is loaded from elsewhere.
    for needle in ["<script src", "<link", "@import", "url(", "https:"] {
        assert!(!PAGE.contains(needle), "the page refers to {needle}");
    }
    let outside = PAGE.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !outside.contains("http:"),
        "the page refers to another origin"
    );
    assert!(PAGE.contains("/v1/events") && PAGE.contains("sessionStorage"));
    cancel.cancel();
}

#[tokio::test]
async fn the_event_stream_requires_the_token() {
    let cancel = CancellationToken::new();
    let (base, _net) = api(&cancel).await;
    let http = reqwest::Client::new();
    let none = http
        .get(format!("{base}/v1/events"))
        .send()
        .await
        .expect("GET");
    assert_eq!(none.status(), 401);
    let wrong = http
        .get(format!("{base}/v1/events"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("GET");
    assert_eq!(wrong.status(), 401);
    cancel.cancel();
}

#[tokio::test]
async fn snapshots_arrive_and_follow_changes() {
    let cancel = CancellationToken::new();
    let (base, net) = api(&cancel).await;
    let mut resp = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap_or("");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut buf = String::new();
    let first = next_snapshot(&mut resp, &mut buf, |_| true).await;
    let node = first.node.expect("node");
    assert_eq!(node.name, "dash-test");
    assert_eq!(node.peer_id, net.peer_id().to_string());
    assert!(first.peers.is_empty(), "{:?}", first.peers);
    assert_eq!(
        first.stream,
        Some(snapshot::StreamStats {
            listeners: 1,
            dropped: 0
        })
    );

    // A peer connects: the next snapshots show it, without asking again.
    let other = network(&cancel).await;
    other.dial(listen_addr(&net).await).await.expect("dial");
    let other_id = other.peer_id().to_string();
    let seen = next_snapshot(&mut resp, &mut buf, |s| {
        s.peers.iter().any(|p| p.peer_id == other_id)
    })
    .await;
    assert!(seen.peers.iter().any(|p| p.peer_id == other_id));
    cancel.cancel();
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_counted() {
    let hub = Hub::default();
    let mut slow = hub.subscribe().expect("room");
    let mut fast = hub.subscribe().expect("room");
    for i in 0..CLIENT_BUFFER {
        assert_eq!(hub.publish(format!("{i}").into()), 2);
        assert_eq!(fast.recv().await.as_deref(), Some(&*format!("{i}")));
    }
    // The slow one's buffer is full: the next event drops it, the fast one still gets it.
    assert_eq!(hub.publish("last".into()), 1);
    assert_eq!(hub.dropped(), 1);
    assert_eq!(fast.recv().await.as_deref(), Some("last"));
    // What the slow one had buffered is still delivered, then its stream ends.
    for i in 0..CLIENT_BUFFER {
        assert_eq!(slow.recv().await.as_deref(), Some(&*format!("{i}")));
    }
    assert_eq!(slow.recv().await, None);
    assert_eq!(hub.listeners(), 1);
}

#[tokio::test]
async fn listeners_are_bounded() {
    let hub = Hub::default();
    let mut held: Vec<_> = (0..MAX_CLIENTS)
        .map(|_| hub.subscribe().expect("room"))
        .collect();
    assert!(hub.subscribe().is_err(), "one past the bound is refused");
    // A client that went away frees its place.
    held.pop();
    assert!(hub.subscribe().is_ok());
}
