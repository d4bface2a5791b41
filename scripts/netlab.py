#!/usr/bin/env python3
"""Small network probes for scripts/netlab.sh (run inside the lab's namespaces).

Standard library only. Every wait has a timeout; every subcommand exits 0 on success and
prints one line of JSON, non-zero (2) on failure with a JSON line saying why.

  observer --ports 3478,3479 [--hosts A,B]
                                      UDP and TCP servers (default on 0.0.0.0) that answer every
                                      datagram / connection with the source address they
                                      saw ("ip:port"): a STUN-like mapping oracle.
  echo --port 7000                    UDP and TCP servers that answer with "echo".
  tcp HOST PORT [--timeout S]         connect, read one line; prints what the server saw.
  udp HOST PORT [--timeout S]         send, await one answer; prints what the server saw.
  mapping --bind PORT --targets H:P,H:P,...
                                      from ONE UDP socket ask several observers for the
                                      mapped address: equal answers = endpoint-independent
                                      mapping, different answers = endpoint-dependent.
  punch --bind PORT --observer H:P --me FILE --peer FILE [--timeout S]
                                      learn our mapping from the observer, publish it in FILE
                                      (the namespaces share one file system), wait for the
                                      peer's file, then both send to each other's mapping
                                      until each has heard the other (a naive UDP hole punch).
  relay --port 3480                   UDP relay: datagrams "TOKEN|NAME" are forwarded to every
                                      other address that sent the same TOKEN (at most 2 per token,
                                      64 tokens); a stand-in for a circuit relay.
  relayed --relay H:P --token T --name N [--timeout S]
                                      exchange datagrams with the other peer of token T through the
                                      relay; ok once we heard the peer and it heard us.
  sink --port 7001                    TCP server that reads each connection to its end and
                                      answers with the byte count (for `send`).
  send HOST PORT --bytes N            send N bytes over TCP to a sink; prints seconds and MB/s.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time


def out(ok, **fields):
    fields["ok"] = ok
    print(json.dumps(fields), flush=True)
    sys.exit(0 if ok else 2)


def hostport(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(hosts, ports, answer):
    """UDP and TCP servers on every host x port; answer(addr) -> bytes. Runs until killed.

    UDP binds each address separately so an answer leaves from the address that was asked
    (a socket on 0.0.0.0 would answer from the primary address and the client would drop it).
    """

    def udp(host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        while True:
            data, addr = s.recvfrom(2048)
            s.sendto(answer(addr), addr)

    def tcp(host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(64)
        while True:
            conn, addr = s.accept()
            try:
                conn.settimeout(2)
                conn.sendall(answer(addr) + b"\n")
            except OSError:
                pass
            finally:
                conn.close()

    threads = []
    for host in hosts:
        for port in ports:
            for fn in (udp, tcp):
                t = threading.Thread(target=fn, args=(host, port), daemon=True)
                t.start()
                threads.append(t)
    print(json.dumps({"ok": True, "hosts": hosts, "ports": ports}), flush=True)
    while True:
        time.sleep(3600)


def seen(addr):
    return f"{addr[0]}:{addr[1]}".encode()


def cmd_tcp(a):
    try:
        with socket.create_connection((a.host, a.port), timeout=a.timeout) as s:
            s.settimeout(a.timeout)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        out(False, proto="tcp", to=f"{a.host}:{a.port}", error=str(e) or type(e).__name__)
    out(bool(data), proto="tcp", to=f"{a.host}:{a.port}", answer=data.decode().strip())


def udp_ask(s, target, timeout, retries=3):
    """Send to target until an answer from target arrives; returns the answer or None."""
    deadline = time.monotonic() + timeout
    per_try = timeout / retries
    while time.monotonic() < deadline:
        s.sendto(b"ask", target)
        s.settimeout(max(0.01, min(per_try, deadline - time.monotonic())))
        try:
            while True:
                data, addr = s.recvfrom(2048)
                if addr == target:
                    return data.decode()
        except socket.timeout:
            continue
        except ConnectionRefusedError:
            continue
    return None


def cmd_udp(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answer = udp_ask(s, (a.host, a.port), a.timeout)
    if answer is None:
        out(False, proto="udp", to=f"{a.host}:{a.port}", error="no answer")
    out(True, proto="udp", to=f"{a.host}:{a.port}", answer=answer)


def cmd_mapping(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", a.bind))
    seen_by = {}
    for t in a.targets.split(","):
        answer = udp_ask(s, hostport(t), a.timeout)
        if answer is None:
            out(False, error=f"no answer from observer {t}", mappings=seen_by)
        seen_by[t] = answer
    distinct = sorted(set(seen_by.values()))
    out(True, local=a.bind, mappings=seen_by, distinct=len(distinct))


def cmd_punch(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", a.bind))
    mine = udp_ask(s, hostport(a.observer), 3.0)
    if mine is None:
        out(False, error="observer did not answer")
    tmp = a.me + ".tmp"
    with open(tmp, "w") as f:
        f.write(mine)
    os.replace(tmp, a.me)
    deadline = time.monotonic() + a.timeout
    peer = None
    while peer is None and time.monotonic() < deadline:
        try:
            with open(a.peer) as f:
                peer = f.read().strip() or None
        except FileNotFoundError:
            time.sleep(0.02)
    if peer is None:
        out(False, mine=mine, error="peer never published its mapping")
    target = hostport(peer)
    heard_from = None
    heard_ack = False
    sent = 0
    started = time.monotonic()
    # Keep sending until we have heard the peer AND the peer has heard us (it says "ack"),
    # or time runs out. Packets from any other source are ignored (and counted).
    stray = 0
    while time.monotonic() < deadline and not (heard_from and heard_ack):
        s.sendto(b"ack" if heard_from else b"syn", target)
        sent += 1
        s.settimeout(0.05)
        try:
            while True:
                data, addr = s.recvfrom(2048)
                if addr == target:
                    heard_from = f"{addr[0]}:{addr[1]}"
                    if data == b"ack":
                        heard_ack = True
                else:
                    stray += 1
        except (socket.timeout, ConnectionRefusedError):
            pass
    if heard_from and heard_ack:
        # a few more acks so the peer also completes if our last one crossed its "syn"
        for _ in range(5):
            s.sendto(b"ack", target)
            time.sleep(0.02)
    ok = bool(heard_from and heard_ack)
    out(
        ok,
        mine=mine,
        peer=peer,
        sent=sent,
        heard_from=heard_from,
        stray=stray,
        seconds=round(time.monotonic() - started, 3),
        **({} if ok else {"error": "no two-way traffic with the peer's mapping"}),
    )


def cmd_relay(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", a.port))
    print(json.dumps({"ok": True, "relay": a.port}), flush=True)
    peers = {}  # token -> [addr, ...]; bounded: 64 tokens, 2 addresses each
    while True:
        data, addr = s.recvfrom(2048)
        token = data.split(b"|", 1)[0]
        members = peers.get(token)
        if members is None:
            if len(peers) >= 64:
                peers.pop(next(iter(peers)))  # evict the oldest token
            members = peers[token] = []
        if addr not in members and len(members) < 2:
            members.append(addr)
        if addr in members:
            for other in members:
                if other != addr:
                    s.sendto(data, other)


def cmd_relayed(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay = hostport(a.relay)
    deadline = time.monotonic() + a.timeout
    started = time.monotonic()
    heard, heard_ack = None, False
    while time.monotonic() < deadline and not (heard and heard_ack):
        flag = "ack" if heard else "syn"
        s.sendto(f"{a.token}|{a.name}|{flag}".encode(), relay)
        s.settimeout(0.05)
        try:
            while True:
                data, addr = s.recvfrom(2048)
                parts = data.decode(errors="replace").split("|")
                if addr == relay and len(parts) == 3 and parts[0] == a.token and parts[1] != a.name:
                    heard = parts[1]
                    heard_ack = heard_ack or parts[2] == "ack"
        except (socket.timeout, ConnectionRefusedError):
            pass
    if heard and heard_ack:
        for _ in range(5):
            s.sendto(f"{a.token}|{a.name}|ack".encode(), relay)
            time.sleep(0.02)
    ok = bool(heard and heard_ack)
    out(ok, heard=heard, seconds=round(time.monotonic() - started, 3),
        **({} if ok else {"error": "no two-way traffic through the relay"}))


def cmd_sink(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", a.port))
    s.listen(16)
    print(json.dumps({"ok": True, "sink": a.port}), flush=True)
    while True:
        conn, _ = s.accept()
        total = 0
        try:
            conn.settimeout(60)
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
            conn.sendall(f"{total}\n".encode())
        except OSError:
            pass
        finally:
            conn.close()


def cmd_send(a):
    block = b"\0" * (1 << 16)
    started = time.monotonic()
    try:
        with socket.create_connection((a.host, a.port), timeout=a.timeout) as s:
            s.settimeout(a.timeout)
            left = a.bytes
            while left > 0:
                n = s.send(block[: min(left, len(block))])
                left -= n
            s.shutdown(socket.SHUT_WR)
            answer = s.makefile().readline().strip()
    except OSError as e:
        out(False, error=str(e) or type(e).__name__)
    seconds = time.monotonic() - started
    ok = answer == str(a.bytes)
    out(ok, bytes=a.bytes, received=answer, seconds=round(seconds, 3),
        mbit_per_s=round(a.bytes * 8 / seconds / 1e6, 2))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("observer")
    o.add_argument("--ports", default="3478")
    o.add_argument("--hosts", default="0.0.0.0", help="comma list of local addresses")
    e = sub.add_parser("echo")
    e.add_argument("--ports", default="7000")
    e.add_argument("--hosts", default="0.0.0.0", help="comma list of local addresses")
    for name in ("tcp", "udp"):
        c = sub.add_parser(name)
        c.add_argument("host")
        c.add_argument("port", type=int)
        c.add_argument("--timeout", type=float, default=2.0)
    m = sub.add_parser("mapping")
    m.add_argument("--bind", type=int, required=True)
    m.add_argument("--targets", required=True)
    m.add_argument("--timeout", type=float, default=2.0)
    u = sub.add_parser("punch")
    u.add_argument("--bind", type=int, required=True)
    u.add_argument("--observer", required=True)
    u.add_argument("--me", required=True)
    u.add_argument("--peer", required=True)
    u.add_argument("--timeout", type=float, default=4.0)
    r = sub.add_parser("relay")
    r.add_argument("--port", type=int, default=3480)
    rd = sub.add_parser("relayed")
    rd.add_argument("--relay", required=True)
    rd.add_argument("--token", required=True)
    rd.add_argument("--name", required=True)
    rd.add_argument("--timeout", type=float, default=4.0)
    k = sub.add_parser("sink")
    k.add_argument("--port", type=int, default=7001)
    d = sub.add_parser("send")
    d.add_argument("host")
    d.add_argument("port", type=int)
    d.add_argument("--bytes", type=int, default=1 << 20)
    d.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    if a.cmd == "observer":
        serve(a.hosts.split(","), [int(x) for x in a.ports.split(",")], seen)
    elif a.cmd == "echo":
        serve(a.hosts.split(","), [int(x) for x in a.ports.split(",")], lambda addr: b"echo")
    elif a.cmd == "tcp":
        cmd_tcp(a)
    elif a.cmd == "udp":
        cmd_udp(a)
    elif a.cmd == "mapping":
        cmd_mapping(a)
    elif a.cmd == "punch":
        cmd_punch(a)
    elif a.cmd == "relay":
        cmd_relay(a)
    elif a.cmd == "relayed":
        cmd_relayed(a)
    elif a.cmd == "sink":
        cmd_sink(a)
    elif a.cmd == "send":
        cmd_send(a)


if __name__ == "__main__":
    main()
