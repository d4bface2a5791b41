//! The live dashboard in a real browser: Debian's `chromium`, headless, driven over WebDriver
//! (Debian's `chromium-driver`, spoken as plain HTTP + JSON: no new crate). On a 7-node devnet
//! (the smallest where two nodes can make a contract) the test opens node0's dashboard at the
//! address `agora devnet up --json` printed, creates an auction from node0's CLI and waits —
//! polling the DOM, never reloading — until the award and the contract appear on the page, then
//! takes a screenshot into its temp dir (and to `$AGORA_DASHBOARD_PNG` when set).
//! Without chromium or chromedriver it prints `SKIPPED dashboard browser: …`.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agora_devnet::files::CONTRACT_NODES;
use agora_tests::{TestDevnet, agora_json, dechunk, wait_until};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

/// `method path` with a JSON body on `addr` over HTTP/1.1: (status, JSON answer).
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    // chromedriver keeps the connection open despite `Connection: close`: read the head, then
    // exactly Content-Length bytes (or to the end when there is none).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(len) => {
            while raw.len() < head_end + len {
                let n = s.read(&mut buf).ok()?;
                if n == 0 {
                    return None;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut raw).ok()?;
        }
    }
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Standard base64 (the screenshot WebDriver returns).
fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in text.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    addr: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(bin: &Path, log: &Path) -> Driver {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let d = Driver {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        wait_until("chromedriver to answer", Duration::from_secs(30), || {
            http(&d.addr, "GET", "/status", None)
                .is_some_and(|(s, v)| s == 200 && v["value"]["ready"] == true)
        });
        d
    }
}

/// A WebDriver session (one headless chromium), deleted when dropped.
struct Browser<'d> {
    driver: &'d Driver,
    session: String,
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http(&self.driver.addr, "DELETE", &path, None);
    }
}

impl<'d> Browser<'d> {
    fn open(driver: &'d Driver, profile: &Path) -> Browser<'d> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1100", format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let (status, v) = http(&driver.addr, "POST", "/session", Some(&caps)).unwrap();
        assert_eq!(status, 200, "chromedriver refused the session: {v}");
        Browser {
            driver,
            session: v["value"]["sessionId"].as_str().unwrap().to_string(),
        }
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let (status, v) = http(&self.driver.addr, method, &path, body)
            .unwrap_or_else(|| panic!("chromedriver did not answer {what}"));
        assert_eq!(status, 200, "{what}: {v}");
        v["value"].clone()
    }

    fn navigate(&self, url: &str) {
        self.call("POST", "url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns its result.
    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    fn screenshot(&self, to: &Path) -> usize {
        let png = base64_decode(self.call("GET", "screenshot", None).as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::write(to, &png).unwrap();
        png.len()
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

#[test]
fn the_dashboard_shows_an_award_and_a_contract_live_in_chromium() {
    let Some(chromedriver) = which("chromedriver") else {
        agora_devnet::skipped(
            "dashboard browser",
            "no `chromedriver` on PATH (Debian: apt-get install chromium chromium-driver; \
             scripts/test.sh installs them when run as root)",
        );
        return;
    };
    if !Path::new(CHROMIUM).is_file() {
        agora_devnet::skipped(
            "dashboard browser",
            "no /usr/bin/chromium (Debian: apt-get install chromium)",
        );
        return;
    }
    let net = TestDevnet::up(CONTRACT_NODES, 120, &[]);
    let dir = &net.dir;
    let up = &net.up;
    let node0 = &up["nodes"][0];
    let url = node0["dashboard"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(dir.join("node0/api.token")).unwrap();
    assert_eq!(
        url,
        format!(
            "http://{}/#token={}",
            node0["api"].as_str().unwrap(),
            token.trim()
        )
    );

    let driver = Driver::start(&chromedriver, &net.tmp().join("chromedriver.log"));
    let browser = Browser::open(&driver, &net.tmp().join("profile"));
    browser.navigate(&url);
    wait_until("the dashboard to go live", Duration::from_secs(60), || {
        browser.eval(
            "return document.getElementById('conn').className === 'live' \
             && document.getElementById('node-name').textContent === 'node0';",
        ) == true
    });
    // The token left the address bar for the session's storage.
    assert_eq!(browser.eval("return location.hash;"), "");
    assert_eq!(
        browser.eval("return sessionStorage.getItem('agora-api-token');"),
        token.trim()
    );
    // A mark on this page load: if the page reloaded, it would be gone.
    browser.eval("window.__sameLoad = 42; return true;");
    assert_eq!(
        browser.eval("return document.querySelectorAll('[data-contract]').length;"),
        0
    );

    let node0_dir = dir.join("node0").display().to_string();
    let created = agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node0_dir,
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
        "3s",
    ]);
    let auction = created["id"].as_str().unwrap().to_string();

    let award = format!(
        "const r = document.querySelector('[data-award=\"{auction}\"]'); \
         return r ? r.textContent : null;"
    );
    wait_until("the award on the page", Duration::from_secs(90), || {
        browser
            .eval(&award)
            .as_str()
            .is_some_and(|t| t.contains("awarded"))
    });
    let contract = agora_json(&["contract", "list", "--data-dir", &node0_dir]);
    let on_page = "return Array.from(document.querySelectorAll('[data-contract]'))\
                   .map(r => r.getAttribute('data-contract'));";
    wait_until("the contract on the page", Duration::from_secs(90), || {
        browser
            .eval(on_page)
            .as_array()
            .is_some_and(|ids| !ids.is_empty())
    });
    let ids = browser.eval(on_page);
    let listed = agora_json(&["contract", "list", "--data-dir", &node0_dir]);
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for id in ids.as_array().unwrap() {
        assert!(
            listed.contains(&id.as_str().unwrap()),
            "{id} on the page but not in `agora contract list`: {listed:?} (before: {contract})"
        );
    }
    assert_eq!(
        browser.eval("return window.__sameLoad;"),
        42,
        "the page was reloaded"
    );

    let shot = net.tmp().join("dashboard.png");
    let bytes = browser.screenshot(&shot);
    assert!(
        bytes > 10_000,
        "a {bytes}-byte screenshot is too small to show the page"
    );
    eprintln!("dashboard screenshot: {} ({bytes} bytes)", shot.display());
    if let Some(to) = std::env::var_os("AGORA_DASHBOARD_PNG") {
        std::fs::copy(&shot, &to).unwrap();
    }
}
