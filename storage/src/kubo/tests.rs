//! Tests against an in-test fake Kubo RPC server (tokio TcpListener speaking just enough
//! HTTP/1.1). The fake computes CIDs with our own importer, so these tests check the client's
//! protocol handling (multipart streaming, query args, error mapping), not Kubo's CIDs; CID
//! parity with real Kubo is covered by `tests/kubo_interop.py`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::hash::{RAW, cid_v1_sha256};
use crate::unixfs::{ImportOptions, import_file};
use crate::{BlockStore, MemoryBlockStore};

#[derive(Default)]
struct Fake {
    store: MemoryBlockStore,
    files: Mutex<HashMap<String, Vec<u8>>>,
    chunked_uploads: Mutex<u32>,
    pins: Mutex<Vec<String>>,
    /// Never answer (a daemon searching the network for content nobody has).
    hang: bool,
    /// `pin/add` reports progress 0 forever, as Kubo does while it cannot find the root.
    stuck_pin: bool,
    /// Every answer is 20 MiB of bytes without a newline or a length (a faulty daemon).
    flood: bool,
}

async fn serve(fake: Arc<Fake>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move { handle(fake, sock).await });
        }
    });
    format!("http://{addr}")
}

async fn handle(fake: Arc<Fake>, sock: TcpStream) {
    let mut reader = BufReader::new(sock);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await.unwrap();
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let (mut chunked, mut length) = (false, 0usize);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let lower = line.to_ascii_lowercase();
        if lower == "\r\n" {
            break;
        }
        chunked |= lower.starts_with("transfer-encoding: chunked");
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).await.unwrap();
    }
    if fake.hang {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
    if fake.flood {
        let mut sock = reader.into_inner();
        let chunk = vec![b'x'; 64 << 10];
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .await;
        for _ in 0..320 {
            if sock.write_all(&chunk).await.is_err() {
                return;
            }
        }
        return;
    }
    if fake.stuck_pin && target.starts_with("/api/v0/pin/add") {
        let mut sock = reader.into_inner();
        sock.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..100 {
            if sock.write_all(b"{\"Progress\":0}\n").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let args: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let (status, out) = route(&fake, path, &args, &body, chunked);
    let mut sock = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&out).await.unwrap();
    sock.shutdown().await.ok();
}

/// The single file part of a multipart body.
fn part(body: &[u8]) -> Vec<u8> {
    let start = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let end = body.windows(4).rposition(|w| w == b"\r\n--").unwrap();
    body[start..end].to_vec()
}

fn error(message: &str) -> (&'static str, Vec<u8>) {
    (
        "500 Internal Server Error",
        format!(r#"{{"Message":"{message}","Code":0,"Type":"error"}}"#).into_bytes(),
    )
}

fn route(
    fake: &Fake,
    path: &str,
    args: &HashMap<&str, &str>,
    body: &[u8],
    chunked: bool,
) -> (&'static str, Vec<u8>) {
    let arg = args.get("arg").copied().unwrap_or("");
    match path {
        "/api/v0/add" => {
            *fake.chunked_uploads.lock().unwrap() += u32::from(chunked);
            let data = part(body);
            let options = if args.get("cid-version") == Some(&"1") {
                ImportOptions::v1()
            } else {
                ImportOptions::default()
            };
            let cid = import_file(&fake.store, data.as_slice(), options)
                .unwrap()
                .to_string();
            fake.files.lock().unwrap().insert(cid.clone(), data.clone());
            (
                "200 OK",
                format!(
                    "{{\"Name\":\"file\",\"Hash\":\"{cid}\",\"Size\":\"{}\"}}\n",
                    data.len()
                )
                .into_bytes(),
            )
        }
        "/api/v0/cat" => match fake.files.lock().unwrap().get(arg) {
            Some(data) => ("200 OK", data.clone()),
            None => error(&format!(
                "block was not found locally (offline): ipld: could not find {arg}"
            )),
        },
        "/api/v0/block/get" => match arg
            .parse()
            .ok()
            .and_then(|c| fake.store.get_unchecked(&c).unwrap())
        {
            Some(data) => ("200 OK", data),
            None => error(&format!("ipld: could not find {arg}")),
        },
        "/api/v0/block/put" => {
            let data = part(body);
            let cid = cid_v1_sha256(RAW, &data);
            fake.store.put(&cid, &data).unwrap();
            (
                "200 OK",
                format!("{{\"Key\":\"{cid}\",\"Size\":{}}}\n", data.len()).into_bytes(),
            )
        }
        "/api/v0/pin/add" if fake.files.lock().unwrap().contains_key(arg) => {
            fake.pins.lock().unwrap().push(arg.to_owned());
            let body = format!("{{\"Progress\":1}}\n{{\"Pins\":[\"{arg}\"],\"Progress\":3}}\n");
            ("200 OK", body.into_bytes())
        }
        "/api/v0/pin/rm" => {
            let mut pins = fake.pins.lock().unwrap();
            match pins.iter().position(|p| p == arg) {
                Some(i) => {
                    pins.remove(i);
                    ("200 OK", format!("{{\"Pins\":[\"{arg}\"]}}").into_bytes())
                }
                None => error("not pinned or pinned indirectly"),
            }
        }
        "/api/v0/pin/ls" => {
            let keys: Vec<String> = fake
                .pins
                .lock()
                .unwrap()
                .iter()
                .map(|p| format!("\"{p}\":{{\"Type\":\"recursive\"}}"))
                .collect();
            (
                "200 OK",
                format!("{{\"Keys\":{{{}}}}}", keys.join(",")).into_bytes(),
            )
        }
        "/api/v0/repo/stat" => {
            let n = fake.store.list().unwrap().len();
            let body = format!(
                "{{\"RepoSize\":{},\"StorageMax\":10000000000,\"NumObjects\":{n},\"RepoPath\":\"/r\",\"Version\":\"fs-repo@14\"}}\n",
                n * 100
            );
            ("200 OK", body.into_bytes())
        }
        "/api/v0/pin/add" => error("pin: not found"),
        _ => ("404 Not Found", b"404 page not found".to_vec()),
    }
}

#[tokio::test]
async fn add_cat_block_pin_against_fake_daemon() {
    let fake = Arc::new(Fake::default());
    let client = KuboClient::new(serve(fake.clone()).await);
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let cid = client
        .add(std::io::Cursor::new(data.clone()), AddOptions::default())
        .await
        .unwrap();
    assert_eq!(
        cid,
        import_file(
            &MemoryBlockStore::new(),
            data.as_slice(),
            ImportOptions::default()
        )
        .unwrap()
    );
    assert_eq!(
        *fake.chunked_uploads.lock().unwrap(),
        1,
        "upload must stream (chunked), not buffer"
    );

    let v1 = client
        .add(
            &b"hello world\n"[..],
            AddOptions {
                cid_version: CidVersion::V1,
                pin: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(v1, cid_v1_sha256(RAW, b"hello world\n"));

    let mut out = Vec::new();
    assert_eq!(
        client.cat_to(&cid, &mut out).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(out, data);
    let streamed: Vec<Vec<u8>> = client.cat(&cid).await.unwrap().try_collect().await.unwrap();
    assert_eq!(streamed.concat(), data);

    let put = client
        .block_put(b"raw block".to_vec(), "raw")
        .await
        .unwrap();
    assert_eq!(put, cid_v1_sha256(RAW, b"raw block"));
    assert_eq!(client.block_get(&put).await.unwrap(), b"raw block");
    client.pin_add(&cid).await.unwrap();
    assert_eq!(client.pin_ls().await.unwrap(), vec![cid]);
    let stat = client.repo_stat().await.unwrap();
    assert_eq!(stat.num_objects, fake.store.list().unwrap().len() as u64);
    client.pin_rm(&cid).await.unwrap();
    assert!(client.pin_ls().await.unwrap().is_empty());
    assert!(matches!(
        client.pin_rm(&cid).await,
        Err(KuboError::Daemon { status: 500, message }) if message.contains("not pinned")
    ));
}

#[tokio::test]
async fn typed_block_put_checks_the_daemon_hash() {
    let fake = Arc::new(Fake::default());
    let client = KuboClient::new(serve(fake.clone()).await);
    let raw = cid_v1_sha256(RAW, b"typed");
    client
        .block_put_cid(&raw, b"typed".to_vec(), true)
        .await
        .unwrap();
    assert_eq!(client.block_get(&raw).await.unwrap(), b"typed");
    // The fake always stores raw sha2-256: a blake3 dag-cbor CID must be reported as a mismatch.
    let blake = crate::hash::cid_v1_blake3(crate::hash::DAG_CBOR, b"typed");
    let err = client
        .block_put_cid(&blake, b"typed".to_vec(), true)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KuboError::BadResponse {
                endpoint: "block/put",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn fetches_that_stall_time_out_with_advice() {
    let fake = Arc::new(Fake {
        hang: true,
        ..Fake::default()
    });
    let idle = std::time::Duration::from_millis(200);
    let client = KuboClient::new(serve(fake).await).with_idle_timeout(idle);
    let cid = cid_v1_sha256(RAW, b"nobody has this");
    let err = client.cat_to(&cid, Vec::new()).await.unwrap_err();
    assert!(
        matches!(err, KuboError::Stalled { endpoint: "cat", cid: c, .. } if c == cid),
        "{err:?}"
    );
    assert!(err.to_string().contains("fetch_idle_timeout_ms"));
    assert!(matches!(
        client.pin_add(&cid).await,
        Err(KuboError::Stalled {
            endpoint: "pin/add",
            ..
        })
    ));
    assert!(matches!(
        client.block_get(&cid).await,
        Err(KuboError::Stalled {
            endpoint: "block/get",
            ..
        })
    ));
}

#[tokio::test]
async fn pin_without_progress_stalls_although_bytes_arrive() {
    let fake = Arc::new(Fake {
        stuck_pin: true,
        ..Fake::default()
    });
    let idle = std::time::Duration::from_millis(300);
    let client = KuboClient::new(serve(fake).await).with_idle_timeout(idle);
    let cid = cid_v1_sha256(RAW, b"unfindable");
    let err = client.pin_add(&cid).await.unwrap_err();
    assert!(
        matches!(err, KuboError::Stalled { endpoint: "pin/add", cid: c, .. } if c == cid),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_endpoint_is_a_daemon_error() {
    let client = KuboClient::new(serve(Arc::new(Fake::default())).await);
    assert!(matches!(
        client.repo_gc().await,
        Err(KuboError::Daemon { status: 404, .. })
    ));
}

#[tokio::test]
async fn daemon_errors_are_surfaced() {
    let client = KuboClient::new(serve(Arc::new(Fake::default())).await);
    let missing = cid_v1_sha256(RAW, b"nope");
    match client.block_get(&missing).await {
        Err(KuboError::Daemon {
            status: 500,
            message,
        }) => assert!(message.contains("could not find"), "{message}"),
        other => panic!("expected daemon error, got {other:?}"),
    }
    assert!(matches!(
        client.pin_add(&missing).await,
        Err(KuboError::Daemon { status: 500, .. })
    ));
    assert!(matches!(
        client.cat(&missing).await.map(|_| ()),
        Err(KuboError::Daemon { .. })
    ));
}

#[tokio::test]
async fn corrupted_block_from_daemon_is_rejected() {
    let fake = Arc::new(Fake::default());
    let client = KuboClient::new(serve(fake.clone()).await);
    let cid = client.block_put(b"x".to_vec(), "raw").await.unwrap();
    fake.store.put_unchecked(&cid, b"junk").unwrap();
    assert!(
        matches!(client.block_get(&cid).await, Err(KuboError::HashMismatch { cid: c }) if c == cid)
    );
}

/// A daemon that streams without end is cut off at the reply or line limit, never buffered whole.
#[tokio::test]
async fn endless_replies_are_cut_off() {
    let fake = Arc::new(Fake {
        flood: true,
        ..Fake::default()
    });
    let client = KuboClient::new(serve(fake).await);
    let cid = cid_v1_sha256(RAW, b"x");
    let too_large = |r: Result<(), KuboError>| matches!(r, Err(KuboError::BadResponse { reason, .. }) if reason.contains("over"));
    assert!(too_large(client.block_get(&cid).await.map(|_| ())));
    assert!(too_large(client.repo_stat().await.map(|_| ())));
    assert!(too_large(client.pin_ls().await.map(|_| ())));
    assert!(too_large(client.repo_gc().await.map(|_| ())));
    assert!(too_large(client.pin_add(&cid).await.map(|_| ())));
}

#[tokio::test]
async fn refused_connection_says_how_to_fix() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = KuboClient::new(format!("http://{addr}"));
    let err = client
        .add(&b"x"[..], AddOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, KuboError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("start the daemon"));
    assert!(err.to_string().contains("storage.api"));
}
