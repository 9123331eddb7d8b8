"""Stand-in for SPIRE's setup/debugagent and setup/debugserver Go clients (same flags, test
cases and output), so SPIRE's suites can call /opt/spire/conf/{agent,server}/debugclient.

- agent mode (debugagent): -debugSocketPath (default unix:///opt/debug.sock),
  -testCase printDebugPage | agentEndpoints | serverWithWorkload | serverWithInsecure;
- server mode (debugserver): -socket (default unix:///tmp/spire-server/private/api.sock),
  prints the server Debug API's GetInfo.

GetInfo answers are printed as protojson (protobuf's MessageToJson: lowerCamelCase names,
default values left out), as the Go clients print them. The server-over-TCP cases go through
../itclient (gRPC over HTTP/2 by hand, mTLS with the Workload API's X509-SVID); this client
also requires the server to present spiffe://<its own trust domain>/spire/server.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
import itclient  # noqa: E402
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


def validate(err):
    """The Go client's check of a Debug GetInfo call over TCP: it must fail, as Unimplemented."""
    code = itclient.status_code(err)
    if code == itclient.OK:
        fail("connection using TCP must fails")
    if code == itclient.UNIMPLEMENTED:
        print("success!", file=sys.stderr)
        return
    fail(f"unexpected error: grpc status {code} ({err})")


def debug_over_tcp(client):
    """GetInfo of the server Debug API over the client's TCP connection: its error or None."""
    from spire.api.server.debug.v1 import debug_pb2

    try:
        client.debug_client().GetInfo(debug_pb2.GetInfoRequest())
    except itclient.RpcError as e:
        return e
    finally:
        client.release()
    return None


def server_with_workload(args):
    client = None

    def authorize(sid):
        want = f"spiffe://{itclient.trust_domain_of(client.source.spiffe_id)}/spire/server"
        if sid != want:
            raise ValueError(f"server presented {sid}, not {want}")

    client = itclient.Client.new(args, time.time() + 120, authorize)
    validate(debug_over_tcp(client))


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
        validate(debug_over_tcp(itclient.Client.new_insecure(args, time.time() + 120)))
    else:
        fail("unsupported test case")


if __name__ == "__main__":
    main()
