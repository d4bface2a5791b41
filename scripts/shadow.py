#!/usr/bin/env python3
"""Runs the real `agora` binary on the Shadow network simulator and reports what it measured.

Shadow (https://shadow.github.io) runs unmodified Linux programs on a simulated network and
clock; it is a benchmark tool here, never a CI dependency. Build it from source
(docs/PERFORMANCE.md, "Shadow") so that `shadow` is on PATH or pass --shadow.

    python3 scripts/shadow.py --nodes 100 [--arbitrators 7] [--auctions 20] [--stop 150]
        [--agora target/release/agora] [--shadow ~/.local/bin/shadow] [--out DIR] [--no-run]

What it generates in DIR (default: a new temp dir):
- one data dir per node (`agora init`), a genesis naming the first --arbitrators nodes
  (`agora genesis create`), every node bootstrapping from nodes 0 and 1;
- shadow.yaml: a network of four regions (one-way latencies 2 ms inside a region, 20-150 ms
  between them; 100 Mbit down / 20 Mbit up per host; 0.1 % loss between regions), one host per
  node, hosts spread over the regions, node processes started 5 ms apart;
- a market workload: --auctions auctions created by different customers (the last nodes) from
  t = 60 s, one every 2 s, each with a 3 s bidding window; every other node's decision unit
  bids on its own.

What it reports, from the nodes' logs (simulated time):
- gossip time-to-all: per auction, from its creation (the customer's `auction create` process
  start) until the last node logged it entering its book; p50 / p99 / max over auctions, and
  how many nodes it reached;
- window close -> award: from the customer's `auction-closed` to its `awarded` market event;
- the simulation's wall-clock time and peak memory (`/usr/bin/time`), for the cost per node.
Not generated yet: ledger finality with 4/7/10 arbitrators and a failover (see PERFORMANCE.md).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REGIONS = ["eu", "us", "asia", "sa"]
# One-way latency in ms between regions (self-loops: inside a region).
LATENCY = {
    ("eu", "eu"): 2, ("us", "us"): 2, ("asia", "asia"): 2, ("sa", "sa"): 2,
    ("eu", "us"): 40, ("eu", "asia"): 110, ("eu", "sa"): 95,
    ("us", "asia"): 75, ("us", "sa"): 60, ("asia", "sa"): 150,
}
AUCTION_START_S = 60
AUCTION_EVERY_S = 2


def ip_of(i):
    return f"11.0.{i // 250}.{i % 250 + 1}"


def agora(bin_path, *args):
    out = subprocess.run([bin_path, *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"agora {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def graph_gml():
    lines = ["graph [", "  directed 0"]
    for i, r in enumerate(REGIONS):
        lines += ["  node [", f"    id {i}", f'    label "{r}"',
                  '    host_bandwidth_down "100 Mbit"', '    host_bandwidth_up "20 Mbit"', "  ]"]
    for i, a in enumerate(REGIONS):
        for j, b in enumerate(REGIONS):
            if j < i:
                continue
            ms = LATENCY.get((a, b)) or LATENCY[(b, a)]
            loss = 0.0 if i == j else 0.001
            lines += ["  edge [", f"    source {i}", f"    target {j}", f'    latency "{ms} ms"',
                      f"    packet_loss {loss}", "  ]"]
    lines.append("]")
    return "\n".join(lines)


def customers_of(args):
    """The nodes that each create one auction: the last --auctions nodes."""
    return [args.nodes - 1 - k for k in range(min(args.auctions, args.nodes - 1))]


def generate(args, out):
    bin_path = os.path.abspath(args.agora)
    data = os.path.join(out, "data")
    os.makedirs(data, exist_ok=True)
    ids, peers = [], []
    for i in range(args.nodes):
        d = os.path.join(data, f"node{i}")
        r = agora(bin_path, "init", "--data-dir", d, "--listen", "/ip4/0.0.0.0/tcp/4001",
                  "--api-listen", "127.0.0.1:7700")
        ids.append(r["node_id"])
        peers.append(r["peer_id"])
    genesis = os.path.join(out, "genesis.json")
    g = ["genesis", "create", "--out", genesis, "--faucet", "--chain-id", "shadow", "--force"]
    for node_id in ids[: args.arbitrators]:
        g += ["--arbitrator", node_id]
    for node_id in ids[args.arbitrators:]:
        g += ["--account", f"{node_id}=100000"]
    agora(bin_path, *g)
    boot = [f"/ip4/{ip_of(i)}/tcp/4001/p2p/{peers[i]}" for i in range(min(2, args.nodes))]
    for i in range(args.nodes):
        d = os.path.join(data, f"node{i}")
        extra = []
        for b in boot:
            if not b.endswith(peers[i]):
                extra += ["--bootstrap", b]
        agora(bin_path, "init", "--data-dir", d, "--genesis", genesis, *extra)
        # Every node is a provider that bids on its own (what `agora devnet up` sets too).
        cfg = os.path.join(d, "config.toml")
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            # `agora init` advertises no capacity (an operator states it); devnets give each
            # node some, and so does this: 4 cores, 4 GiB per simulated edge.
            text = text.replace("auto_bid = false", "auto_bid = true", 1)
            text = text.replace("cpu_millis = 0", "cpu_millis = 4000", 1)
            text = text.replace("memory_bytes = 0", "memory_bytes = 4294967296", 1)
            # Shadow answers a second socket bound to the listening port (libp2p's TCP port
            # reuse) with "address in use": every dial after the first failed, so nodes never
            # got beyond their bootstrap connections. Dial from fresh ports here.
            text = text.replace("tcp_port_reuse = true", "tcp_port_reuse = false", 1)
            assert "tcp_port_reuse = false" in text, "config.toml has no [network] tcp_port_reuse"
            f.write(text)
    customers = customers_of(args)
    env = {"RUST_LOG": args.rust_log, "AGORA_NO_PROGRESS": "1"}
    hosts = {}
    for i in range(args.nodes):
        d = os.path.join(data, f"node{i}")
        procs = [{
            "path": bin_path,
            "args": ["node", "run", "--data-dir", d],
            "environment": env,
            "start_time": f"{1000 + 5 * i} ms",
            "expected_final_state": "running",
        }]
        if i in customers:
            k = customers.index(i)
            procs.append({
                "path": bin_path,
                "args": ["auction", "create", "--cpu", "100m", "--duration", "1h",
                         "--max-price", "100000", "--window", "3s", "--data-dir", d, "--json"],
                "environment": env,
                "start_time": f"{AUCTION_START_S + AUCTION_EVERY_S * k} s",
            })
        hosts[f"node{i}"] = {
            "network_node_id": i % len(REGIONS),
            "ip_addr": ip_of(i),
            "processes": procs,
        }
    config = {
        "general": {
            "stop_time": f"{args.stop} s",
            "model_unblocked_syscall_latency": True,
            "progress": False,
            "data_directory": os.path.join(out, "shadow.data"),
        },
        "network": {"graph": {"type": "gml", "inline": graph_gml()}},
        # sled's `Lazy` spins on an atomic while another thread initialises it; Shadow runs one
        # thread of a host at a time and only switches at syscalls, so without preemption
        # that spin never ends (the first runs stalled at simulated 1.01 s, `sled-io-0` at
        # 100 % CPU in `sled::lazy::Lazy::deref`). Native preemption breaks such loops at the
        # cost of determinism.
        "experimental": {
            "use_memory_manager": False,
            "native_preemption_enabled": True,
        },
        "hosts": hosts,
    }
    path = os.path.join(out, "shadow.yaml")
    with open(path, "w") as f:
        # JSON is valid YAML.
        json.dump(config, f, indent=1)
    return path, customers


TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def stamp(line):
    m = TS.match(ANSI.sub("", line))
    if not m:
        return None
    t = time.strptime(m.group(1).split(".")[0], "%Y-%m-%dT%H:%M:%S")
    frac = float("0." + m.group(1).split(".")[1])
    return time.mktime(t) - time.mktime(time.strptime("2000-01-01", "%Y-%m-%d")) + frac


def logs_of(out, i):
    host = os.path.join(out, "shadow.data", "hosts", f"node{i}")
    if not os.path.isdir(host):
        return []
    lines = []
    for name in sorted(os.listdir(host)):
        if name.endswith(".stderr") or name.endswith(".stdout"):
            with open(os.path.join(host, name), errors="replace") as f:
                lines += [(name, l) for l in f]
    return lines


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def report(args, out, customers, wall, rss_kib):
    created = {}   # auction id -> sim time of the create process start
    award = []     # per customer: its auction-closed -> its awarded (one auction each)
    for k, c in enumerate(customers):
        closed_at = awarded_at = None
        for name, line in logs_of(out, c):
            plain = ANSI.sub("", line)
            # The `auction create --json` process prints the new auction's id on its stdout.
            m = re.search(r'^\s*"id":\s*"([0-9a-f]+)"', plain)
            if m and name.endswith(".stdout"):
                created[m.group(1)] = AUCTION_START_S + AUCTION_EVERY_S * k
            t = stamp(line)
            if t is None:
                continue
            if re.search(r'event="?auction-closed', plain) and closed_at is None:
                closed_at = t
            if re.search(r'event="?awarded', plain) and awarded_at is None:
                awarded_at = t
        if closed_at is not None and awarded_at is not None:
            award.append(awarded_at - closed_at)
    seen = {}      # auction id -> [sim times it entered a book]
    for i in range(args.nodes):
        for _, line in logs_of(out, i):
            plain = ANSI.sub("", line)
            m = re.search(r"auction entered the book from gossip auction=(\w+)", plain)
            if m:
                t = stamp(line)
                if t is not None:
                    seen.setdefault(m.group(1), []).append(t)
    to_all, reach = [], []
    for a, t0 in created.items():
        times = seen.get(a, [])
        reach.append(len(times))
        if times:
            to_all.append(max(times) - t0)
    rows = [
        ("nodes", args.nodes), ("arbitrators", args.arbitrators),
        ("auctions created", len(created)),
        ("nodes an auction reached (min / max of N-1)",
         f"{min(reach) if reach else 0} / {max(reach) if reach else 0}"),
        ("gossip time-to-all p50 / p99 / max (s)",
         " / ".join(f"{pct(to_all, p):.3f}" for p in (50, 99, 100))),
        ("window close -> award p50 / p99 / max (s)",
         " / ".join(f"{pct(award, p):.3f}" for p in (50, 99, 100))),
        ("auctions awarded", len(award)),
        ("simulated seconds", args.stop), ("wall-clock seconds", f"{wall:.0f}"),
        ("peak resident memory of the simulation (MiB)", f"{rss_kib / 1024:.0f}"),
    ]
    for k, v in rows:
        print(f"{k:<48} {v}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--arbitrators", type=int, default=7)
    p.add_argument("--auctions", type=int, default=20)
    p.add_argument("--stop", type=int, default=150, help="simulated seconds")
    p.add_argument("--agora", default="target/release/agora")
    p.add_argument("--shadow", default=shutil.which("shadow") or os.path.expanduser("~/.local/bin/shadow"))
    p.add_argument("--out")
    p.add_argument("--no-run", action="store_true", help="only generate the configuration")
    p.add_argument("--rust-log", default="warn,agora_market_driver=debug",
                   help="RUST_LOG of every node (the report needs agora_market_driver=debug)")
    p.add_argument("--report-only", action="store_true",
                   help="only report on the finished run in --out (same --nodes/--auctions)")
    args = p.parse_args()
    if args.nodes < 2 or args.arbitrators < 1 or args.arbitrators > args.nodes:
        sys.exit("need --nodes >= 2 and 1 <= --arbitrators <= --nodes")
    last_auction = AUCTION_START_S + AUCTION_EVERY_S * max(args.auctions - 1, 0)
    if args.stop <= last_auction:
        sys.exit(f"--stop {args.stop} ends the simulation before the last of {args.auctions} "
                 f"auctions starts (at {last_auction} s): use --stop {last_auction + 30} or more")
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="agora-shadow-"))
    if args.report_only:
        customers = customers_of(args)
        report(args, out, customers, float("nan"), 0)
        return
    path, customers = generate(args, out)
    print(f"generated {path} ({args.nodes} nodes)")
    if args.no_run:
        return
    if not os.path.exists(args.shadow):
        sys.exit(f"shadow not found at {args.shadow}; build it (docs/PERFORMANCE.md) or pass --shadow")
    shutil.rmtree(os.path.join(out, "shadow.data"), ignore_errors=True)
    start = time.monotonic()
    run = subprocess.run(["/usr/bin/time", "-f", "%M", args.shadow, path],
                         capture_output=True, text=True, cwd=out)
    wall = time.monotonic() - start
    with open(os.path.join(out, "shadow.log"), "w") as f:
        f.write(run.stdout)
        f.write(run.stderr)
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "0"
    rss = int(last) if last.isdigit() else 0
    if run.returncode != 0:
        print(f"shadow exited {run.returncode}; see {out}/shadow.log", file=sys.stderr)
    report(args, out, customers, wall, rss)
    print(f"files: {out}")


if __name__ == "__main__":
    main()
