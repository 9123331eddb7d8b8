#!/usr/bin/env python3
"""Hostile-client load for a cairn (or SPIRE) server's TLS port, for tests and benchmarks.

  flood.py idle    --port P --n N [--hold S] [--tls]  N TCP connections that never speak
                                                      (with --tls: after the handshake)
  flood.py streams --port P --conns C --streams K     K WatchBundle streams on each of C
                                                      TLS connections (anonymous); with
                                                      --hold-stdin held until stdin closes;
                                                      with --no-body the request message is
                                                      never sent, so every stream stays open
  flood.py probe   --port P --samples N               GetBundle latency on fresh TLS
                                                      connections: prints p50/p99 in ms

Output is one JSON object per line, so a caller can read progress and results.
The stream flood speaks HTTP/2 through the `h2` package (pip install h2); the server's
certificate is not verified (an attacker would not bother either).
"""
import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

WATCH = "/cairn.api.bundlewatch.v1.BundleWatch/WatchBundle"
GET_BUNDLE = "/spire.api.server.bundle.v1.Bundle/GetBundle"


def say(**kv):
    print(json.dumps(kv), flush=True)


def tls_connect(port, timeout=10.0):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def grpc_headers(path):
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # gRPC frame: uncompressed, length 0 (an empty protobuf)


def idle(args):
    conns = []
    failed = 0
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
    started = time.time()
    for _ in range(args.n):
        # A server that stopped accepting would make each attempt wait out its timeout: the
        # opening phase has a time budget, and what could not be opened is counted as failed.
        if time.time() - started > args.budget:
            failed += 1
            continue
        try:
            c = socket.create_connection(("127.0.0.1", args.port), timeout=2)
            if ctx is not None:
                # Finish the handshake, then never speak HTTP/2.
                c = ctx.wrap_socket(c, server_hostname="localhost")
            conns.append(c)
        except OSError:
            failed += 1
    say(event="open", open=len(conns), failed=failed)
    if args.hold > 0:
        time.sleep(args.hold)
    else:
        sys.stdin.readline()  # held until the caller writes a line or closes stdin
    closed = 0
    for c in conns:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    say(event="done", closed_by_server=closed, open=len(conns))


def streams(args):
    totals = {"attempted": 0, "refused_h2": 0, "grpc_error": 0, "watching": 0, "conn_failed": 0}
    codes = {}
    held = []
    for _ in range(args.conns):
        try:
            s, conn = tls_connect(args.port)
        except OSError:
            totals["conn_failed"] += 1
            continue
        ids = []
        for _ in range(args.streams):
            sid = conn.get_next_available_stream_id()
            try:
                conn.send_headers(sid, grpc_headers(WATCH))
                if not args.no_body:
                    conn.send_data(sid, EMPTY_MESSAGE, end_stream=True)
            except Exception:  # local flow control or stream-count refusal by h2 itself
                break
            ids.append(sid)
            totals["attempted"] += 1
            out = conn.data_to_send()
            if out:
                s.sendall(out)
        # Collect the answers for a while: a watch answers with response headers then a
        # bundle; a refusal is a reset or a trailers-only gRPC error.
        state = {}
        s.settimeout(0.5)
        deadline = time.time() + args.settle
        settled = lambda: sum(1 for v in state.values() if v != "pending")
        while time.time() < deadline and settled() < len(ids):
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamReset):
                    state[ev.stream_id] = "refused_h2"
                elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    hdrs = dict(ev.headers)
                    st = hdrs.get("grpc-status")
                    if st is not None and st != "0":
                        state[ev.stream_id] = "grpc_error"
                        codes[st] = codes.get(st, 0) + 1
                    elif ev.stream_id not in state:
                        state[ev.stream_id] = "pending"
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if state.get(ev.stream_id) in (None, "pending"):
                        state[ev.stream_id] = "watching"
            out = conn.data_to_send()
            if out:
                try:
                    s.sendall(out)
                except OSError:
                    break
        for v in state.values():
            if v in totals:
                totals[v] += 1
        held.append(s)
    say(event="flooded", grpc_codes=codes, **totals)
    if args.hold_stdin:
        sys.stdin.readline()
    for s in held:
        try:
            s.close()
        except OSError:
            pass
    say(event="released")


def probe(args):
    lat = []
    errors = 0
    for _ in range(args.samples):
        t0 = time.perf_counter()
        try:
            s, conn = tls_connect(args.port, timeout=30)
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, grpc_headers(GET_BUNDLE))
            conn.send_data(sid, EMPTY_MESSAGE, end_stream=True)
            s.sendall(conn.data_to_send())
            done = False
            ok = False
            while not done:
                data = s.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.TrailersReceived):
                        ok = dict(ev.headers).get("grpc-status") == "0"
                        done = True
                    elif isinstance(ev, h2.events.StreamReset):
                        done = True
                out = conn.data_to_send()
                if out:
                    s.sendall(out)
            s.close()
            if ok:
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
        except OSError:
            errors += 1
    lat.sort()
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None
    if args.text:
        print(f"{pick(0.5)}/{pick(0.99)} ms ({errors} err)", flush=True)
    else:
        say(event="probe", samples=len(lat), errors=errors, p50_ms=pick(0.5), p99_ms=pick(0.99))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("idle")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--n", type=int, default=10000)
    a.add_argument("--hold", type=float, default=0, help="seconds to hold; 0 = until stdin closes")
    a.add_argument("--tls", action="store_true", help="complete a TLS handshake on each, then stay silent")
    a.add_argument("--budget", type=float, default=60, help="seconds allowed for opening the connections")
    b = sub.add_parser("streams")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--conns", type=int, default=40)
    b.add_argument("--streams", type=int, default=1000)
    b.add_argument("--settle", type=float, default=3.0)
    b.add_argument("--hold-stdin", action="store_true")
    b.add_argument("--no-body", action="store_true", help="never send the request message: streams stay open")
    c = sub.add_parser("probe")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--samples", type=int, default=50)
    c.add_argument("--text", action="store_true", help="print 'p50/p99 ms (errors)' instead of JSON")
    args = ap.parse_args()
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    {"idle": idle, "streams": streams, "probe": probe}[args.mode](args)


if __name__ == "__main__":
    main()
