"""Stand-in for SPIRE's setup/debugagent and setup/debugserver Go clients (same flags, test
cases and output), so SPIRE's suites can call /opt/spire/conf/{agent,server}/debugclient.

- agent mode (debugagent): -debugSocketPath (default unix:///opt/debug.sock),
  -testCase printDebugPage | agentEndpoints | serverWithWorkload | serverWithInsecure;
- server mode (debugserver): -socket (default unix:///tmp/spire-server/private/api.sock),
  prints the server Debug API's GetInfo.

GetInfo answers are printed as protojson (protobuf's MessageToJson: lowerCamelCase names,
default values left out), as the Go clients print them. The server-over-TCP cases speak gRPC
over HTTP/2 by hand (h2 + ssl): the server's certificate names it by URI SAN only, which
grpcio's hostname check cannot accept, and SPIRE's client checks the SPIFFE ID instead, as
this does.
"""

import argparse
import os
import socket
import ssl
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402


def fail(msg):
    sys.stderr.write(f"Debug client failed: {msg}\n")
    sys.exit(1)


def channel(addr):
    return grpc.insecure_channel(addr)


def agent_page(addr):
    from spire.api.agent.debug.v1 import debug_pb2, debug_pb2_grpc

    try:
        resp = debug_pb2_grpc.DebugStub(channel(addr)).GetInfo(debug_pb2.GetInfoRequest(), timeout=120)
    except grpc.RpcError as e:
        fail(f"failed to get info: rpc error: code = {e.code().name} desc = {e.details()}")
    return json_format.MessageToJson(resp, indent=1)


def server_page(addr):
    from spire.api.server.debug.v1 import debug_pb2, debug_pb2_grpc

    try:
        resp = debug_pb2_grpc.DebugStub(channel(addr)).GetInfo(debug_pb2.GetInfoRequest(), timeout=120)
    except grpc.RpcError as e:
        fail(f"failed to get info: rpc error: code = {e.code().name} desc = {e.details()}")
    return json_format.MessageToJson(resp, indent=1)


def grpc_status_over_tls(server_addr, cert_pem=None, key_pem=None, roots_pem=None, want_id=None):
    """Calls the server Debug API's GetInfo over TLS by hand; returns the grpc-status code."""
    import h2.connection
    import h2.events

    host, port = server_addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    tmp = tempfile.mkdtemp()
    if roots_pem:
        roots = os.path.join(tmp, "roots.pem")
        open(roots, "wb").write(roots_pem)
        ctx.load_verify_locations(roots)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert_pem:
        c, k = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        open(c, "wb").write(cert_pem)
        open(k, "wb").write(key_pem)
        ctx.load_cert_chain(c, k)
    raw = socket.create_connection((host, int(port)), timeout=30)
    s = ctx.wrap_socket(raw)
    if want_id:
        sans = [v for (t, v) in s.getpeercert().get("subjectAltName", ()) if t == "URI"]
        if want_id not in sans:
            fail(f"server presented {sans}, not {want_id}")
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", server_addr),
                            (":path", "/spire.api.server.debug.v1.Debug/GetInfo"),
                            ("content-type", "application/grpc"), ("te", "trailers")])
    conn.send_data(sid, struct.pack(">BI", 0, 0), end_stream=True)
    s.sendall(conn.data_to_send())
    status = None
    while status is None:
        data = s.recv(65536)
        if not data:
            fail("connection closed before a grpc-status")
        for ev in conn.receive_data(data):
            if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                for k, v in ev.headers:
                    k = k.decode() if isinstance(k, bytes) else k
                    v = v.decode() if isinstance(v, bytes) else v
                    if k == "grpc-status":
                        status = int(v)
            elif isinstance(ev, h2.events.StreamReset):
                fail(f"stream reset: {ev.error_code}")
        out = conn.data_to_send()
        if out:
            s.sendall(out)
    s.close()
    return status


def validate(status):
    if status == 0:
        fail("connection using TCP must fails")
    if status == 12:
        print("success!", file=sys.stderr)
        return
    fail(f"unexpected error: grpc status {status}")


def server_with_workload(args):
    from spiffe import WorkloadApiClient
    from cryptography.hazmat.primitives import serialization

    sock = args.socketPath
    with WorkloadApiClient(sock) as client:
        ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    cert = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    td = svid.spiffe_id.trust_domain
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
    roots = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle.x509_authorities)
    validate(grpc_status_over_tls(args.serverAddr, cert, key, roots, f"spiffe://{td.name}/spire/server"))


def main():
    mode = os.environ.get("CAIRN_DEBUGCLIENT_MODE") or open(os.path.join(HERE, "mode")).read().strip()
    p = argparse.ArgumentParser(prefix_chars="-")
    p.add_argument("-debugSocketPath", default="unix:///opt/debug.sock")
    p.add_argument("-socket", default="unix:///tmp/spire-server/private/api.sock")
    p.add_argument("-testCase", default="agentEndpoints")
    p.add_argument("-trustDomain", default="domain.test")
    p.add_argument("-socketPath", default="unix:///tmp/spire-agent/public/api.sock")
    p.add_argument("-serverAddr", default="spire-server:8081")
    args = p.parse_args()
    if mode == "server":
        print(f"Debug info: {server_page(args.socket)}", file=sys.stderr)
        return
    case = args.testCase
    if case == "printDebugPage":
        print(agent_page(args.debugSocketPath))
    elif case == "agentEndpoints":
        print(f"Debug info: {agent_page(args.debugSocketPath)}", file=sys.stderr)
    elif case == "serverWithWorkload":
        server_with_workload(args)
    elif case == "serverWithInsecure":
        validate(grpc_status_over_tls(args.serverAddr))
    else:
        fail("unsupported test case")


if __name__ == "__main__":
    main()
