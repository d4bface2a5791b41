#!/bin/bash
# What a running hosted contract costs each node (docs/PERFORMANCE.md "What a running contract
# costs"): `bash scripts/contract_cost.sh [NODES] [BINARY]` starts a devnet of NODES (default 20)
# real processes, measures 30 s of idle CPU per process, deploys the lora-gateway guest to every
# node but node0 (push), and once all are healthy measures 30 s more; then removes the devnet.
# WINDOW (seconds measured, default 30) and SETTLE (seconds waited before each window, default
# 20) shorten it; it exits non-zero when not every replica became healthy within 240 s.
set -u
N=${1:-20}
A=${2:-target/release/agora}
A=$(realpath "$A")
D=$(mktemp -d "${TMPDIR:-/tmp}/agora-contract-cost.XXXXXX")
trap '"$A" devnet down --clean --dir "$D/net" >/dev/null 2>&1; rm -rf "$D"' EXIT
$A devnet up --nodes $N --dir $D/net --timeout 300 --json > $D/up.json || { echo up failed; exit 1; }
WASM=/tmp/agora-lora-gateway-target/wasm32-wasip1/release/lora_gateway.wasm
[ -f "$WASM" ] || (cd "$(dirname "$0")/.." && cargo build -q --release --target wasm32-wasip1 --manifest-path runtime/examples/lora-gateway/Cargo.toml --target-dir /tmp/agora-lora-gateway-target)
cp "$WASM" $D/gw.wasm
cat > $D/gw.toml <<M
name = "gw"
version = "0.1.0"
kind = "wasm"
tick_ms = 100
activation = "immediate"
devices = []

[resources]
cpu_millis = 250
memory_mb = 64
storage_mb = 1

[limits]
memory_bytes = 16777216
fuel_per_second = 200000000
instances = 1
max_output_bytes = 1048576
M
python3 - $D $A <<'P'
import json,os,sys,time,subprocess
D=sys.argv[1]
up=json.load(open(D+"/up.json"))
pids=[n["pid"] for n in up["nodes"]]
ids=[n["node_id"] for n in up["nodes"]]
gen=json.load(open(D+"/net/genesis.json"))
arb=set(gen["committee"])
def ticks(p):
    f=open(f"/proc/{p}/stat").read().rsplit(")",1)[1].split()
    return int(f[11])+int(f[12])
WINDOW=float(os.environ.get("WINDOW","30")); SETTLE=float(os.environ.get("SETTLE","20"))
def window(label,secs=None):
    secs=WINDOW if secs is None else secs
    b=[ticks(p) for p in pids]; t=time.time(); time.sleep(secs); a=[ticks(p) for p in pids]; dt=time.time()-t
    mc=[(x-y)/100/dt*1000 for x,y in zip(a,b)]
    am=sorted(m for m,i in zip(mc,ids) if i in arb); om=sorted(m for m,i in zip(mc,ids) if i not in arb)
    def p50(v): return f"p50 {v[len(v)//2]:.1f} mc (max {v[-1]:.1f})" if v else "none"
    print(f"{label}: arbitrators {p50(am)}; others {p50(om)}; total {sum(mc)/1000:.2f} cores; load {open('/proc/loadavg').read().split()[0]}",flush=True)
    return mc
time.sleep(SETTLE)
window("idle")
A=sys.argv[2]
img=json.loads(subprocess.check_output([A,"service","publish",D+"/gw.wasm","--manifest",D+"/gw.toml","--data-dir",D+"/net/node0","--json"]))["image"]
dep=json.loads(subprocess.check_output([A,"deploy","create",img,"--to","","--all","--strategy","push","--name","gw","--cpu","250m","--memory","64MiB","--data-dir",D+"/net/node0","--json"]))["id"]
t0=time.time()
while time.time()-t0<240:
    st=json.loads(subprocess.check_output([A,"deploy","status",dep,"--data-dir",D+"/net/node0","--json"]))
    h=sum(1 for t in st.get("targets",[]) if t.get("phase")=="healthy")
    if h>=len(pids)-1: break
    time.sleep(2)
print(f"{h} of {len(pids)-1} healthy after {time.time()-t0:.1f} s",flush=True)
if h<len(pids)-1: sys.exit(1)
time.sleep(SETTLE)
window("running")
P
