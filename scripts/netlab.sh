#!/usr/bin/env bash
# A NAT lab of Linux network namespaces for real-process NAT tests and benchmarks (issue #17).
# See docs/NETLAB.md for the topology, the commands and how tests use it.
#
#   netlab.sh [--prefix P] up [--homes N] [--hosts N] [--nat KIND[,KIND...]] [--rate RATE]
#                             [--udp-timeout S]
#   netlab.sh [--prefix P] down
#   netlab.sh [--prefix P] exec NS -- CMD...     NS: pub, h1, r1, s1, inet ... or a full name
#   netlab.sh [--prefix P] addr NS               the namespace's IPv4 address (pub: 203.0.113.2)
#   netlab.sh [--prefix P] status
#   netlab.sh check                              exit 0 if a lab can run here, else 77
#   netlab.sh selftest                           brings labs up, proves NAT behaviour, tears down
#
# KIND: cone (endpoint-independent mapping, address-and-port-dependent filtering: what a
# typical home router does and what hole punching needs) or symmetric (a fresh random source
# port per destination: nftables `masquerade fully-random`). One KIND applies to every home;
# a comma list gives one per home (`--nat cone,symmetric`). `--hosts N` (0..50) adds N more
# public hosts without NAT (`sK`, 203.0.113.(100+K)), beside the public node.
#
# Exit codes: 0 ok; 1 error; 77 "cannot run here" (not root, no namespaces, no nftables) with a
# line `SKIPPED netlab: <reason>` on stderr. `selftest` prints that line and exits 0 instead,
# the project's convention for tests that cannot run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY="$HERE/netlab.py"
PYTHON=python3
PREFIX=${NETLAB_PREFIX:-nl}
PREFIX_GIVEN=${NETLAB_PREFIX:-}
STATE_DIR=${NETLAB_STATE_DIR:-/run/netlab}

# Addresses (RFC 5737 documentation range for the internet, RFC 1918 for the homes).
INET_NET=203.0.113
PUB_IP=$INET_NET.2     # the public node (relay / bootstrap)
PUB_IP2=$INET_NET.3    # a second public address on the same node (mapping tests)
wan_ip() { echo "$INET_NET.$((10 + $1))"; }   # router of home i
lan_net() { echo "192.168.$1"; }              # home i: router .1, host .2
host_ip() { echo "$INET_NET.$((100 + $1))"; } # public host k (--hosts)

die() { echo "netlab: $*" >&2; exit 1; }
skip() { echo "SKIPPED netlab: $*" >&2; exit 77; }

ns() { echo "$PREFIX-$1"; }

# ---------------------------------------------------------------------------------------------
# Can a lab run here?  Prints the reason and returns 1 if not.
preflight() {
  if [ "$(id -u)" != 0 ]; then echo "not root (network namespaces and nftables need root)"; return 1; fi
  command -v ip >/dev/null 2>&1 || { echo "iproute2 (ip) not installed"; return 1; }
  command -v python3 >/dev/null 2>&1 || { echo "python3 not installed"; return 1; }
  if ! command -v nft >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables \
          || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                 --no-install-recommends nftables; }; } >/dev/null 2>&1 || true
    fi
    command -v nft >/dev/null 2>&1 || { echo "nftables (nft) not installed and could not be installed"; return 1; }
  fi
  local probe="nlprobe$$"
  if ! ip netns add "$probe" 2>/dev/null; then echo "cannot create network namespaces (ip netns add failed)"; return 1; fi
  local why=""
  ip -n "$probe" link add p0 type veth peer name p1 2>/dev/null || why="cannot create veth pairs"
  [ -n "$why" ] || ip -n "$probe" link add b0 type bridge 2>/dev/null || why="cannot create bridges"
  [ -n "$why" ] || ip netns exec "$probe" nft add table ip probe 2>/dev/null || why="nftables does not work in a namespace"
  [ -n "$why" ] || ip netns exec "$probe" nft add chain ip probe pr '{ type nat hook postrouting priority srcnat; }' 2>/dev/null \
    || why="nftables NAT chains unavailable"
  [ -n "$why" ] || ip netns exec "$probe" nft add rule ip probe pr masquerade fully-random 2>/dev/null \
    || why="nftables masquerade unavailable (nft_masq module?)"
  ip netns del "$probe" 2>/dev/null || true
  if [ -n "$why" ]; then echo "$why"; return 1; fi
  return 0
}

# ---------------------------------------------------------------------------------------------
# Every namespace of this prefix that exists now (whatever state `up` reached).
lab_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}-(inet|pub|r[0-9]+|h[0-9]+|s[0-9]+)\$" | sort -V || true
}

nsx() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

ns_base() {  # create namespace NAME with loopback up, IPv6 off
  local n; n=$(ns "$1")
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

nat_rules() {  # nft ruleset of a home router of KIND
  local masq
  case "$1" in
    cone) masq="masquerade" ;;
    symmetric) masq="masquerade fully-random" ;;
    *) die "unknown NAT kind '$1' (cone or symmetric)" ;;
  esac
  cat <<EOF
table ip netlab {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masq
  }
  # Like a home router: nothing from the internet starts a flow, to the router or the LAN.
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" counter drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" counter drop
  }
}
EOF
}

cmd_up() {
  local homes=2 hosts=0 nat=cone rate="" udp_timeout=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --homes) homes=${2:?}; shift 2 ;;
      --hosts) hosts=${2:?}; shift 2 ;;
      --nat) nat=${2:?}; shift 2 ;;
      --rate) rate=${2:?}; shift 2 ;;
      --udp-timeout) udp_timeout=${2:?}; [[ $udp_timeout =~ ^[1-9][0-9]*$ ]] || die "--udp-timeout: seconds"; shift 2 ;;
      *) die "up: unknown option '$1'" ;;
    esac
  done
  [[ $homes =~ ^[0-9][0-9]?$ ]] && [ "$homes" -le 50 ] || die "--homes must be 0..50"
  [[ $hosts =~ ^[0-9][0-9]?$ ]] && [ "$hosts" -le 50 ] || die "--hosts must be 0..50"
  local reason
  if ! reason=$(preflight); then skip "$reason"; fi
  [ -z "$(lab_namespaces)" ] || die "a lab with prefix '$PREFIX' exists; run 'netlab.sh --prefix $PREFIX down' first"
  local -a kinds
  IFS=, read -r -a kinds <<<"$nat"
  local i k
  for ((i = 1; i <= homes; i++)); do
    k=${kinds[$((i - 1))]:-${kinds[$((${#kinds[@]} - 1))]}}
    [ "$k" = cone ] || [ "$k" = symmetric ] || die "unknown NAT kind '$k' (cone or symmetric)"
  done
  # From here on a failure leaves a partial lab: tear it down before reporting.
  trap 'echo "netlab: up failed; removing the partial lab" >&2; cmd_down >/dev/null 2>&1' ERR
  trap 'echo "netlab: up interrupted; removing the partial lab" >&2; cmd_down >/dev/null 2>&1; exit 130' INT TERM
  set -E

  # The "internet": a bridge in its own namespace, so the lab never touches the root namespace's
  # interfaces, routes or firewall (Docker's FORWARD policy, br_netfilter), and parallel labs
  # with different prefixes cannot collide: all device names live inside the lab's namespaces.
  ns_base inet
  ip -n "$(ns inet)" link add br0 type bridge
  ip -n "$(ns inet)" link set br0 up

  ns_base pub
  ip -n "$(ns inet)" link add pub type veth peer name eth0 netns "$(ns pub)"
  ip -n "$(ns inet)" link set pub master br0 up
  ip -n "$(ns pub)" addr add "$PUB_IP/24" dev eth0
  ip -n "$(ns pub)" addr add "$PUB_IP2/24" dev eth0
  ip -n "$(ns pub)" link set eth0 up
  ip -n "$(ns pub)" route add default dev eth0

  # Public hosts without NAT: a namespace each on the bridge, all equally reachable.
  for ((i = 1; i <= hosts; i++)); do
    ns_base "s$i"
    ip -n "$(ns inet)" link add "s$i" type veth peer name eth0 netns "$(ns "s$i")"
    ip -n "$(ns inet)" link set "s$i" master br0 up
    ip -n "$(ns "s$i")" addr add "$(host_ip "$i")/24" dev eth0
    ip -n "$(ns "s$i")" link set eth0 up
    # No default route: the lab's /24 is on-link, and a host must not reach another
    # namespace's management address (a test's /30 into the root namespace) over the bridge.
  done

  local lan wan
  for ((i = 1; i <= homes; i++)); do
    k=${kinds[$((i - 1))]:-${kinds[$((${#kinds[@]} - 1))]}}
    lan=$(lan_net "$i"); wan=$(wan_ip "$i")
    ns_base "r$i"
    ns_base "h$i"
    ip -n "$(ns inet)" link add "r$i" type veth peer name wan netns "$(ns "r$i")"
    ip -n "$(ns inet)" link set "r$i" master br0 up
    ip -n "$(ns "r$i")" link add lan type veth peer name eth0 netns "$(ns "h$i")"
    ip -n "$(ns "r$i")" addr add "$wan/24" dev wan
    ip -n "$(ns "r$i")" addr add "$lan.1/24" dev lan
    ip -n "$(ns "r$i")" link set wan up
    ip -n "$(ns "r$i")" link set lan up
    ip -n "$(ns "r$i")" route add default dev wan
    ip netns exec "$(ns "r$i")" sysctl -qw net.ipv4.ip_forward=1
    nat_rules "$k" | ip netns exec "$(ns "r$i")" nft -f -
    if [ -n "$udp_timeout" ]; then  # how long an idle UDP mapping lives (kernel default 30 s / 120 s)
      ip netns exec "$(ns "r$i")" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$udp_timeout" \
        net.netfilter.nf_conntrack_udp_timeout_stream="$udp_timeout"
    fi
    ip -n "$(ns "h$i")" addr add "$lan.2/24" dev eth0
    ip -n "$(ns "h$i")" link set eth0 up
    ip -n "$(ns "h$i")" route add default via "$lan.1"
    if [ -n "$rate" ]; then  # tbf: upload on the WAN side, download on the LAN side
      ip netns exec "$(ns "r$i")" tc qdisc add dev wan root tbf rate "$rate" burst 32kbit latency 100ms
      ip netns exec "$(ns "r$i")" tc qdisc add dev lan root tbf rate "$rate" burst 32kbit latency 100ms
    fi
  done
  mkdir -p "$STATE_DIR"
  {
    echo "homes=$homes"
    echo "hosts=$hosts"
    echo "nat=$nat"
    echo "rate=$rate"
    echo "udp_timeout=$udp_timeout"
  } >"$STATE_DIR/$PREFIX.env"
  trap - ERR INT TERM
  echo "netlab '$PREFIX' up: public node $(ns pub) $PUB_IP; $hosts public host(s); $homes home(s) (nat $nat${rate:+, rate $rate})"
}

cmd_down() {
  local n pids
  for n in $(lab_namespaces); do
    # Processes started in the lab (netlab.sh exec) would keep a deleted namespace alive.
    pids=$(ip netns pids "$n" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
    fi
  done
  for n in $(lab_namespaces); do
    pids=$(ip netns pids "$n" 2>/dev/null || true)
    local tries=0
    while [ -n "$pids" ] && [ $tries -lt 20 ]; do
      sleep 0.1; tries=$((tries + 1))
      pids=$(ip netns pids "$n" 2>/dev/null || true)
    done
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    # Deleting the namespace removes its veths (both ends), bridge and nft tables with it.
    ip netns del "$n" 2>/dev/null || true
  done
  rm -f "$STATE_DIR/$PREFIX.env"
  local left; left=$(lab_namespaces)
  [ -z "$left" ] || die "down: could not remove: $left"
  echo "netlab '$PREFIX' down"
}

cmd_exec() {
  [ $# -ge 1 ] || die "exec NS -- CMD..."
  local n=$1; shift
  [ "${1:-}" = "--" ] && shift
  [ $# -ge 1 ] || die "exec $n: no command"
  case "$n" in "$PREFIX"-*) ;; *) n=$(ns "$n") ;; esac
  ip netns list | awk '{print $1}' | grep -qx "$n" || die "no namespace '$n' (is the lab up? netlab.sh --prefix $PREFIX status)"
  exec ip netns exec "$n" "$@"
}

cmd_addr() {
  [ $# -eq 1 ] || die "addr NS"
  local n=$1
  case "$n" in "$PREFIX"-*) ;; *) n=$(ns "$n") ;; esac
  local a
  a=$(ip -n "$n" -4 -o addr show 2>/dev/null | awk '$2 != "lo" {sub("/.*", "", $4); print $4; exit}')
  [ -n "$a" ] || die "no address for '$n' (is the lab up?)"
  echo "$a"
}

cmd_status() {
  local list n
  list=$(lab_namespaces)
  if [ -z "$list" ]; then echo "netlab '$PREFIX': nothing exists"; return 0; fi
  if [ -f "$STATE_DIR/$PREFIX.env" ]; then echo "netlab '$PREFIX': $(paste -sd' ' "$STATE_DIR/$PREFIX.env")"; fi
  printf '%-14s %-40s %-10s %s\n' NAMESPACE ADDRESSES NFT PROCS
  for n in $list; do
    local addrs tables procs
    addrs=$(ip -n "$n" -4 -o addr show 2>/dev/null | awk '$2 != "lo" {print $2"="$4}' | paste -sd' ')
    tables=$(ip netns exec "$n" nft list tables 2>/dev/null | awk '{print $3}' | paste -sd, )
    procs=$(ip netns pids "$n" 2>/dev/null | wc -l)
    printf '%-14s %-40s %-10s %s\n' "$n" "${addrs:--}" "${tables:--}" "$procs"
  done
}

# ---------------------------------------------------------------------------------------------
# selftest

ST_FAIL=0
ST_ROWS=""
row() {  # lab check expected got detail
  local verdict=PASS
  [ "$3" = "$4" ] || { verdict=FAIL; ST_FAIL=1; }
  ST_ROWS+=$(printf '%-10s %-44s %-9s %-9s %-5s %s' "$1" "$2" "$3" "$4" "$verdict" "$5")$'\n'
}

# Probes run concurrently (each negative one waits out its timeout): start them all, then read.
probe_bg() {  # key ns proto host port timeout: result in $ST_TMP/key.out, exit status in key.rc
  local key=$1 n=$2 proto=$3 host=$4 port=$5 t=$6
  ( if nsx "$n" "$PYTHON" "$PY" "$proto" "$host" "$port" --timeout "$t" >"$ST_TMP/$key.out" 2>&1
    then echo yes >"$ST_TMP/$key.rc"; else echo no >"$ST_TMP/$key.rc"; fi ) &
}
probe_get() {  # key -> P_OK (yes / no / error), P_OUT (json line)
  # "no" only when the probe ran and reported a network failure (its JSON says ok: false);
  # a probe that never finished or crashed is "error", which fails positive and negative checks.
  P_OK=$(cat "$ST_TMP/$1.rc" 2>/dev/null || echo error)
  P_OUT=$(cat "$ST_TMP/$1.out" 2>/dev/null || true)
  if [ "$P_OK" = no ] && [ "$(json_field ok <<<"$P_OUT")" != False ]; then P_OK=error; fi
}

json_field() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1]).get(sys.argv[1], ""))' "$1" 2>/dev/null || true; }

wait_listening() {  # ns addr port: wait (<= 10 s) until a TCP listener answers
  nsx "$1" "$PYTHON" -c "
import socket, sys, time
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        socket.create_connection(('$2', $3), timeout=0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)"
}

selftest_lab() {  # kind: runs one lab of two homes of this NAT kind under $PREFIX
  local kind=$1 lab=$1
  cmd_up --nat "$kind" >/dev/null
  ST_TMP=$(mktemp -d)
  # servers: the observer (STUN-like) on both public addresses, an echo server on each LAN host
  nsx pub "$PYTHON" "$PY" observer --hosts "$PUB_IP,$PUB_IP2" --ports 3478,3479 >"$ST_TMP/observer.log" 2>&1 &
  nsx pub "$PYTHON" "$PY" relay --port 3480 >"$ST_TMP/relay.log" 2>&1 &
  nsx h1 "$PYTHON" "$PY" echo --ports 7000 >"$ST_TMP/echo1.log" 2>&1 &
  nsx h2 "$PYTHON" "$PY" echo --ports 7000 >"$ST_TMP/echo2.log" 2>&1 &
  if ! { wait_listening pub "$PUB_IP" 3479 && wait_listening pub "$PUB_IP2" 3478 \
         && wait_listening h1 127.0.0.1 7000 && wait_listening h2 127.0.0.1 7000; }; then
    row "$lab" "servers start" yes no "observer/echo did not listen"
    cmd_down >/dev/null; rm -rf "$ST_TMP"; return
  fi

  local i proto seen
  # Reachability, all at once. Even with a route to h1's LAN through r1 (an attacker on the same
  # segment), r1 lets nothing new in.
  nsx pub ip route add "$(lan_net 1).0/24" via "$(wan_ip 1)"
  for proto in tcp udp; do
    probe_bg "h1pub$proto" h1 "$proto" "$PUB_IP" 3478 3
    probe_bg "h2pub$proto" h2 "$proto" "$PUB_IP" 3478 3
    probe_bg "pubwan$proto" pub "$proto" "$(wan_ip 1)" 7000 1
    probe_bg "publan$proto" pub "$proto" "$(lan_net 1).2" 7000 1
    probe_bg "h1h2lan$proto" h1 "$proto" "$(lan_net 2).2" 7000 1
    probe_bg "h1h2wan$proto" h1 "$proto" "$(wan_ip 2)" 7000 1
    # controls: the echo servers the negative probes aim at do answer from inside each home
    probe_bg "r1h1$proto" r1 "$proto" "$(lan_net 1).2" 7000 3
    probe_bg "r2h2$proto" r2 "$proto" "$(lan_net 2).2" 7000 3
  done
  wait_probes
  nsx pub ip route del "$(lan_net 1).0/24" via "$(wan_ip 1)"
  for i in 1 2; do
    for proto in tcp udp; do
      probe_get "h${i}pub$proto"
      seen=$(json_field answer <<<"$P_OUT")
      row "$lab" "h$i -> pub $proto" yes "$P_OK" "pub saw ${seen:-$(json_field error <<<"$P_OUT")}"
      # the public node must see the router's address, not the LAN one
      if [ "$P_OK" = yes ]; then
        row "$lab" "h$i -> pub $proto: source is r$i's WAN address" yes \
          "$([ "${seen%:*}" = "$(wan_ip "$i")" ] && echo yes || echo no)" "$seen"
      fi
    done
  done
  for proto in tcp udp; do
    probe_get "r1h1$proto"; row "$lab" "r1 -> h1 echo $proto (control)" yes "$P_OK" "$(json_field answer <<<"$P_OUT")$(json_field error <<<"$P_OUT")"
    probe_get "r2h2$proto"; row "$lab" "r2 -> h2 echo $proto (control)" yes "$P_OK" "$(json_field answer <<<"$P_OUT")$(json_field error <<<"$P_OUT")"
  done
  for proto in tcp udp; do
    probe_get "pubwan$proto"; row "$lab" "pub -> r1 WAN:7000 $proto (no port forward)" no "$P_OK" "$(json_field error <<<"$P_OUT")"
    probe_get "publan$proto"; row "$lab" "pub -> h1 LAN addr $proto (routed via r1)" no "$P_OK" "$(json_field error <<<"$P_OUT")"
    probe_get "h1h2lan$proto"; row "$lab" "h1 -> h2 LAN addr $proto" no "$P_OK" "$(json_field error <<<"$P_OUT")"
    probe_get "h1h2wan$proto"; row "$lab" "h1 -> r2 WAN:7000 $proto" no "$P_OK" "$(json_field error <<<"$P_OUT")"
  done

  # Mapping behaviour: one socket, three destinations (same address other port, other address).
  local out distinct want
  out=$(nsx h1 "$PYTHON" "$PY" mapping --bind 40001 --targets "$PUB_IP:3478,$PUB_IP:3479,$PUB_IP2:3478" 2>&1) || true
  distinct=$(json_field distinct <<<"$out")
  if [ "$kind" = cone ]; then want=1; else want=3; fi
  row "$lab" "h1 mappings for 3 destinations (distinct)" "$want" "${distinct:-error}" \
    "$("$PYTHON" -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); print(" ".join(d.get("mappings",{}).values()), d.get("error",""))' <<<"$out" 2>/dev/null || echo "$out")"

  # Naive UDP hole punch: both learn their mapping from the observer, then send to each other's.
  local expect_punch; if [ "$kind" = cone ]; then expect_punch=yes; else expect_punch=no; fi
  nsx h1 "$PYTHON" "$PY" punch --bind 40000 --observer "$PUB_IP:3478" --me "$ST_TMP/m1" --peer "$ST_TMP/m2" --timeout 3 >"$ST_TMP/p1" 2>&1 &
  local p1=$!
  nsx h2 "$PYTHON" "$PY" punch --bind 40000 --observer "$PUB_IP:3478" --me "$ST_TMP/m2" --peer "$ST_TMP/m1" --timeout 3 >"$ST_TMP/p2" 2>&1 &
  local p2=$! r1=yes r2=yes
  wait "$p1" || r1=no
  wait "$p2" || r2=no
  # a failed punch counts as "no" only if both mappings were learned (else it is an error)
  [ "$r1" = yes ] || [ -n "$(json_field peer <"$ST_TMP/p1")" ] || r1=error
  [ "$r2" = yes ] || [ -n "$(json_field peer <"$ST_TMP/p2")" ] || r2=error
  local summary='import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); print("me", d.get("mine"), "peer", d.get("peer"), "heard", d.get("heard_from"), "after", d.get("seconds"), "s")'
  row "$lab" "hole punch h1 <-> h2 (h1 side)" "$expect_punch" "$r1" "$("$PYTHON" -c "$summary" <"$ST_TMP/p1" 2>/dev/null || tail -1 "$ST_TMP/p1")"
  row "$lab" "hole punch h1 <-> h2 (h2 side)" "$expect_punch" "$r2" "$("$PYTHON" -c "$summary" <"$ST_TMP/p2" 2>/dev/null || tail -1 "$ST_TMP/p2")"

  # Whatever the NAT, the two hosts can talk through a relay on the public node.
  nsx h1 "$PYTHON" "$PY" relayed --relay "$PUB_IP:3480" --token "$lab" --name h1 --timeout 3 >"$ST_TMP/q1" 2>&1 &
  p1=$!
  nsx h2 "$PYTHON" "$PY" relayed --relay "$PUB_IP:3480" --token "$lab" --name h2 --timeout 3 >"$ST_TMP/q2" 2>&1 &
  p2=$!; r1=yes; r2=yes
  wait "$p1" || r1=no
  wait "$p2" || r2=no
  row "$lab" "h1 <-> h2 through a UDP relay on pub (h1)" yes "$r1" "heard $(json_field heard <"$ST_TMP/q1") after $(json_field seconds <"$ST_TMP/q1") s $(json_field error <"$ST_TMP/q1")"
  row "$lab" "h1 <-> h2 through a UDP relay on pub (h2)" yes "$r2" "heard $(json_field heard <"$ST_TMP/q2") after $(json_field seconds <"$ST_TMP/q2") s $(json_field error <"$ST_TMP/q2")"

  cmd_down >/dev/null
  rm -rf "$ST_TMP"
}

wait_probes() {  # wait for the probe subshells (not the servers, which run until `down`)
  local i
  for i in $(seq 1 150); do
    [ "$(find "$ST_TMP" -name '*.rc' | wc -l)" -ge 16 ] && return 0
    sleep 0.1
  done
}

cmd_selftest() {
  local reason
  if ! reason=$(preflight); then echo "SKIPPED netlab: $reason"; exit 0; fi
  PYTHON=$(python3 -c 'import sys; print(sys.executable)')  # skip pyenv's shim on every call
  ST_BASE=${PREFIX_GIVEN:-nlst$$}  # two labs: ${ST_BASE}c (cone) and ${ST_BASE}s (symmetric)
  local base=$ST_BASE start=$SECONDS
  trap 'PREFIX=${ST_BASE}c cmd_down >/dev/null 2>&1; PREFIX=${ST_BASE}s cmd_down >/dev/null 2>&1; [ -z "${ST_TMP:-}" ] || rm -rf "$ST_TMP"' EXIT
  trap 'echo "netlab selftest: interrupted" >&2; exit 130' INT TERM
  PREFIX=${base}c selftest_lab cone
  PREFIX=${base}s selftest_lab symmetric
  printf '%-10s %-44s %-9s %-9s %-5s %s\n' LAB CHECK EXPECTED GOT OK DETAIL
  printf '%s' "$ST_ROWS"
  local leftover; leftover=$(ip netns list | awk '{print $1}' | grep -E "^${base}[cs]-" || true)
  if [ -n "$leftover" ]; then echo "LEFTOVER namespaces after down: $leftover"; ST_FAIL=1; fi
  echo "netlab selftest: $([ $ST_FAIL = 0 ] && echo PASSED || echo FAILED) in $((SECONDS - start)) s"
  return $ST_FAIL
}

# ---------------------------------------------------------------------------------------------
main() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix)
        PREFIX=${2:?--prefix NAME}; PREFIX_GIVEN=$PREFIX
        [[ $PREFIX =~ ^[A-Za-z0-9_]{1,12}$ ]] || die "--prefix: 1-12 letters, digits or _ (no '-')"
        shift 2 ;;
      -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
      *) break ;;
    esac
  done
  local cmd=${1:-}; [ $# -gt 0 ] && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    exec) cmd_exec "$@" ;;
    status) cmd_status ;;
    addr) cmd_addr "$@" ;;
    check) local reason; if ! reason=$(preflight); then skip "$reason"; fi; echo "netlab: usable" ;;
    selftest) cmd_selftest ;;
    *) sed -n '2,21p' "$0"; [ -z "$cmd" ] && exit 1; die "unknown command '$cmd'" ;;
  esac
}
main "$@"
