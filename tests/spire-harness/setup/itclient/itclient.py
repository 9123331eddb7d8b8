"""Stand-in for SPIRE's test/integration/setup/itclient Go package, shared by the Python
stand-ins of SPIRE's setup clients (debugclient, adminclient).

What it provides, as the Go package does:
- the package's command-line flags (-trustDomain, -socketPath, -serverAddr,
  -serverSocketPath, -expectErrors), parsed the way Go's `flag` package parses them;
- Client.new(): a gRPC connection to the server's TCP port authenticated with the default
  X509-SVID of the Workload API (go-spiffe's X509Source and tlsconfig.MTLSClientConfig with
  AuthorizeAny): the server's certificate must be an X509-SVID (one SPIFFE ID URI SAN, not a
  CA, no certSign/cRLSign key usage) that chains to the Workload API's bundle for the trust
  domain of that ID (federated bundles included); Client.new_insecure(): TLS with no
  verification and no client certificate;
- per-service clients (svid_client(), bundle_client(), ...) whose methods take and return the
  Python messages generated from SPIRE's protos, and raise RpcError (Go's status error) when
  the call fails.

gRPC is spoken by hand over HTTP/2 (h2 + ssl): the server's certificate names it by URI SAN
only, which grpcio's hostname check cannot accept. One connection carries every call, as one
grpc.ClientConn does. Certificate chains are verified with `openssl verify`.
"""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# gRPC status codes by number, with the names Go's codes.Code prints.
CODE_NAMES = [
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
]
OK, NOT_FOUND, PERMISSION_DENIED, UNIMPLEMENTED = 0, 5, 7, 12
UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE = 2, 4, 13, 14


def code_name(code):
    return CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else f"Code({code})"


class RpcError(Exception):
    """A failed call; prints as grpc-go's status errors do."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"rpc error: code = {code_name(self.code)} desc = {self.message}"


def status_code(err):
    """Go's status.Code: OK for no error, Unknown for an error that is not a status."""
    if err is None:
        return OK
    return err.code if isinstance(err, RpcError) else UNKNOWN


# --- Go's log package: "YYYY/MM/DD HH:MM:SS message" on stderr ---------------------------------

def log_print(msg):
    if not msg.endswith("\n"):
        msg += "\n"
    sys.stderr.write(time.strftime("%Y/%m/%d %H:%M:%S ") + msg)
    sys.stderr.flush()


def log_fatal(msg):
    log_print(msg)
    sys.exit(1)


# --- Go's flag package, with the flags itclient registers ---------------------------------------

FLAGS = {
    # name: (default, is_bool, usage)
    "trustDomain": ("domain.test", False, "server trust domain"),
    "socketPath": ("unix:///tmp/spire-agent/public/api.sock", False, "agent socket path"),
    "serverAddr": ("spire-server:8081", False, "server addr"),
    "serverSocketPath": ("unix:///tmp/spire-server/private/api.sock", False, "server socket path"),
    "expectErrors": (False, True, "client is used to validate permission errors"),
}


class Flags:
    pass


def parse_flags(argv, flags=FLAGS):
    """Parses argv as Go's flag.Parse does: -name, --name, -name=value, -name value (not for
    booleans), up to "--" or the first argument that is not a flag. Errors exit with status 2."""

    def usage_exit(msg):
        if msg:
            sys.stderr.write(msg + "\n")
        sys.stderr.write(f"Usage of {os.path.basename(sys.argv[0])}:\n")
        for name, (default, is_bool, usage) in sorted(flags.items()):
            kind = "" if is_bool else " string"
            dflt = "" if is_bool else f' (default "{default}")'
            sys.stderr.write(f"  -{name}{kind}\n    \t{usage}{dflt}\n")
        sys.exit(2 if msg else 0)

    out = Flags()
    for name, (default, _, _) in flags.items():
        setattr(out, name, default)
    args = list(argv)
    while args:
        arg = args[0]
        if len(arg) < 2 or arg[0] != "-":
            break
        args.pop(0)
        if arg == "--":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("h", "help"):
            usage_exit("")
        if name not in flags:
            usage_exit(f"flag provided but not defined: -{name}")
        default, is_bool, _ = flags[name]
        if is_bool:
            if value is None:
                value = True
            elif value.lower() in ("1", "t", "true"):
                value = True
            elif value.lower() in ("0", "f", "false"):
                value = False
            else:
                usage_exit(f'invalid boolean value "{value}" for -{name}: parse error')
        elif value is None:
            if not args:
                usage_exit(f"flag needs an argument: -{name}")
            value = args.pop(0)
        setattr(out, name, value)
    out.args = args
    return out


# --- X.509 helpers -------------------------------------------------------------------------------

def spiffe_id_of(cert):
    """The SPIFFE ID of an X509-SVID (exactly one URI SAN, a spiffe:// URI), as go-spiffe's
    x509svid.IDFromCert reads it. Raises ValueError."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise ValueError("certificate contains no URI SAN")
    if len(uris) > 1:
        raise ValueError("certificate contains more than one URI SAN")
    u = urllib.parse.urlsplit(uris[0])
    if u.scheme != "spiffe" or not u.netloc or u.query or u.fragment or u.username or u.port:
        raise ValueError(f"invalid SPIFFE ID {uris[0]!r}")
    return uris[0]


def trust_domain_of(spiffe_id):
    return urllib.parse.urlsplit(spiffe_id).netloc


def pem_of(certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def openssl_verify(leaf, roots, intermediates=(), purpose="any", partial_chain=False):
    """Verifies leaf (a cryptography Certificate) with `openssl verify`: a chain from leaf
    through intermediates to one of roots, each valid now, checked for purpose. With
    partial_chain, any certificate of roots is a trust anchor, even a non-self-signed one (so a
    leaf that is itself in roots is trusted). Returns None, or openssl's complaint."""
    if not roots:
        return "no trust anchors"
    tmp = tempfile.mkdtemp()
    try:
        paths = {}
        for name, certs in (("roots", roots), ("untrusted", intermediates), ("leaf", [leaf])):
            paths[name] = os.path.join(tmp, f"{name}.pem")
            with open(paths[name], "wb") as f:
                f.write(pem_of(certs))
        cmd = ["openssl", "verify", "-purpose", purpose, "-CAfile", paths["roots"]]
        if partial_chain:
            cmd.append("-partial_chain")
        if intermediates:
            cmd += ["-untrusted", paths["untrusted"]]
        cmd.append(paths["leaf"])
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode == 0:
            return None
        return " ".join((p.stdout + p.stderr).replace(tmp + "/", "").split())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_svid_chain(chain, bundles):
    """go-spiffe's x509svid.Verify: chain[0] must be an X509-SVID chaining (through chain[1:])
    to the bundle of its own trust domain in bundles ({trust domain name: [root certs]}), for
    any extended key usage. Returns the SPIFFE ID; raises ValueError."""
    if not chain:
        raise ValueError("x509svid: empty certificates chain")
    leaf = chain[0]
    try:
        sid = spiffe_id_of(leaf)
    except ValueError as e:
        raise ValueError(f"x509svid: could not get leaf SPIFFE ID: {e}")
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if is_ca:
        raise ValueError("x509svid: leaf certificate with CA flag set to true")
    if ku is not None and ku.key_cert_sign:
        raise ValueError("x509svid: leaf certificate with KeyCertSign key usage")
    if ku is not None and ku.crl_sign:
        raise ValueError("x509svid: leaf certificate with KeyCrlSign key usage")
    td = trust_domain_of(sid)
    if td not in bundles:
        raise ValueError(f'x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "{td}"')
    err = openssl_verify(leaf, bundles[td], chain[1:], purpose="any")
    if err:
        raise ValueError(f"x509svid: could not verify leaf certificate: {err}")
    return sid


# --- The Workload API's X509-SVID (go-spiffe's X509Source) -------------------------------------

class X509Source:
    """The Workload API's X.509 context: the default (first) X509-SVID and every bundle,
    federated ones included. Like go-spiffe's NewX509Source, waits (retrying) for a first
    answer until the deadline."""

    def __init__(self, socket_path, deadline):
        from spiffe import WorkloadApiClient

        last = None
        while True:
            try:
                with WorkloadApiClient(socket_path) as client:
                    ctx = client.fetch_x509_context()
                break
            except Exception as e:  # noqa: BLE001 (py-spiffe raises several kinds)
                last = e
                if time.time() + 1 >= deadline:
                    raise RuntimeError(f"context deadline exceeded (last error: {last})")
                time.sleep(1)
        svid = ctx.default_svid
        self.spiffe_id = str(svid.spiffe_id)
        self.cert_chain = list(svid.cert_chain)
        self.private_key = svid.private_key
        self.bundles = {b.trust_domain.name: list(b.x509_authorities) for b in ctx.x509_bundle_set.bundles}


# --- gRPC over HTTP/2 ------------------------------------------------------------------------------

def _peer_chain(sock):
    """The certificates the peer sent, leaf first (SSLSocket.get_unverified_chain from Python
    3.13 on, the same method of the private _sslobj before)."""
    get = getattr(sock, "get_unverified_chain", None) or sock._sslobj.get_unverified_chain
    ders = [c if isinstance(c, bytes) else c.public_bytes(2) for c in (get() or [])]  # 2: DER
    return [x509.load_der_x509_certificate(d) for d in ders]


class _Stream:
    def __init__(self):
        self.headers = {}
        self.trailers = {}
        self.buf = bytearray()
        self.ended = False
        self.reset = None
        self.conn_error = None

    def status(self):
        """The call's RpcError, or None if it ended OK."""
        if self.conn_error:
            return RpcError(UNAVAILABLE, self.conn_error)
        meta = self.trailers if "grpc-status" in self.trailers else self.headers
        if "grpc-status" in meta:
            code = int(meta["grpc-status"])
            if code == OK:
                return None
            return RpcError(code, urllib.parse.unquote(meta.get("grpc-message", "")))
        if self.reset is not None:
            code = {8: 1, 7: UNAVAILABLE}.get(int(self.reset), INTERNAL)  # CANCEL, REFUSED_STREAM
            return RpcError(code, f"stream terminated by RST_STREAM with error code: {int(self.reset)}")
        http = self.headers.get(":status", "")
        if http and http != "200":
            code = {"400": INTERNAL, "401": 16, "403": PERMISSION_DENIED, "404": UNIMPLEMENTED,
                    "429": UNAVAILABLE, "502": UNAVAILABLE, "503": UNAVAILABLE,
                    "504": UNAVAILABLE}.get(http, UNKNOWN)
            return RpcError(code, f"unexpected HTTP status code received from server: {http}")
        return RpcError(INTERNAL, "server closed the stream without sending trailers")

    def take_message(self):
        """The next whole length-prefixed message's bytes, or None."""
        if len(self.buf) < 5:
            return None
        flag, n = struct.unpack(">BI", bytes(self.buf[:5]))
        if len(self.buf) < 5 + n:
            return None
        if flag != 0:
            raise RpcError(INTERNAL, "grpc: received a compressed message the client did not ask for")
        data = bytes(self.buf[5:5 + n])
        del self.buf[:5 + n]
        return data


class Channel:
    """One HTTP/2 connection to target, made on first use by dial() (a connected ssl socket,
    or an exception). Calls fail with Unavailable while it cannot be made, as grpc-go's do."""

    def __init__(self, target, dial):
        self.target = target
        self.dial = dial
        self.sock = None
        self.conn = None
        self.streams = {}

    def close(self):
        if self.sock is not None:
            try:
                self.conn.close_connection()
                self.sock.sendall(self.conn.data_to_send())
            except Exception:  # noqa: BLE001 (closing anyway)
                pass
            self.sock.close()
            self.sock = None

    def _connect(self):
        import h2.config
        import h2.connection

        try:
            sock = self.dial()
        except RpcError:
            raise
        except Exception as e:  # noqa: BLE001 (dial errors of every kind end the call)
            raise RpcError(UNAVAILABLE, f'connection error: desc = "transport: {e}"')
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self._write()

    def _write(self):
        data = self.conn.data_to_send()
        if not data:
            return
        try:
            self.sock.sendall(data)
        except OSError as e:
            why = self._alert() or e
            self._lost(why)
            raise RpcError(UNAVAILABLE, f"connection error: {why}")

    def _alert(self):
        """What the server said when it closed the connection under us (with TLS 1.3 it
        refuses a client certificate only after the client's side of the handshake is done)."""
        try:
            self.sock.settimeout(1)
            self.sock.recv(1)
        except OSError as e:
            return e
        return None

    def _lost(self, why):
        for st in self.streams.values():
            if not st.ended:
                st.ended = True
                st.conn_error = f"error reading from server: {why}"
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def _pump(self, deadline):
        """Reads what the server sent and files it under its streams."""
        import h2.events

        left = deadline - time.time()
        if left <= 0:
            raise RpcError(DEADLINE_EXCEEDED, "context deadline exceeded")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise RpcError(DEADLINE_EXCEEDED, "context deadline exceeded")
        except OSError as e:
            self._lost(e)
            return
        if not data:
            self._lost("EOF")
            return
        for ev in self.conn.receive_data(data):
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and st:
                st.headers = dict(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived) and st:
                st.trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                if st:
                    st.buf += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st.ended = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st.ended, st.reset = True, ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._lost(f"connection terminated by the server (GOAWAY {ev.error_code})")
                return
        self._write()

    def _open(self, path, deadline):
        if self.sock is None:
            self._connect()
        sid = self.conn.get_next_available_stream_id()
        ms = max(1, int((deadline - time.time()) * 1000))
        self.conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", self.target),
            ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", f"{ms}m"),
            ("user-agent", "cairn-itclient"),
        ])
        self._write()
        self.streams[sid] = _Stream()
        return sid

    def _send(self, sid, msg, end_stream, deadline):
        data = struct.pack(">BI", 0, len(msg)) + msg
        while True:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room >= len(data):
                self.conn.send_data(sid, data, end_stream=end_stream)
                self._write()
                return
            if room > 0:
                self.conn.send_data(sid, data[:room])
                self._write()
                data = data[room:]
            else:
                self._pump(deadline)
                if self.streams[sid].ended:
                    return

    def _recv(self, sid, deadline):
        """The stream's next message bytes, or None once it has ended."""
        st = self.streams[sid]
        while True:
            msg = st.take_message()
            if msg is not None:
                return msg
            if st.ended or self.sock is None:
                st.ended = True
                return None
            self._pump(deadline)

    def unary(self, path, request, response_cls, deadline):
        sid = self._open(path, deadline)
        self._send(sid, request.SerializeToString(), True, deadline)
        first = self._recv(sid, deadline)
        while not self.streams[sid].ended and self.sock is not None:
            if self._recv(sid, deadline) is not None:
                raise RpcError(INTERNAL, "cardinality violation: expected <EOF> for non server-streaming RPCs, but received another message")
        st = self.streams.pop(sid)
        err = st.status()
        if err:
            raise err
        if first is None:
            raise RpcError(INTERNAL, "cardinality violation: expected <{}> but received <EOF>".format(response_cls.DESCRIPTOR.name))
        resp = response_cls()
        resp.ParseFromString(first)
        return resp

    def stream(self, path, response_cls, deadline):
        return ClientStream(self, self._open(path, deadline), response_cls, deadline)


class ClientStream:
    """A streaming call: send() messages (the stream stays open), recv() the next answer."""

    def __init__(self, channel, sid, response_cls, deadline):
        self.channel, self.sid, self.response_cls, self.deadline = channel, sid, response_cls, deadline

    def send(self, request):
        self.channel._send(self.sid, request.SerializeToString(), False, self.deadline)

    def recv(self):
        data = self.channel._recv(self.sid, self.deadline)
        if data is None:
            err = self.channel.streams[self.sid].status()
            raise err or EOFError("EOF")
        resp = self.response_cls()
        resp.ParseFromString(data)
        return resp


class ServiceClient:
    """The methods of one service of a generated *_pb2 module, called over a Channel: a
    unary method takes its request and returns its response; a streaming one takes nothing
    and returns a ClientStream."""

    def __init__(self, channel, pb2, service, deadline):
        self._channel = channel
        self._service = pb2.DESCRIPTOR.services_by_name[service]
        self._deadline = deadline

    def __getattr__(self, name):
        from google.protobuf import message_factory

        method = self._service.methods_by_name[name]
        path = f"/{self._service.full_name}/{method.name}"
        out = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming or method.server_streaming:
            return lambda: self._channel.stream(path, out, self._deadline)
        return lambda request: self._channel.unary(path, request, out, self._deadline)


class Client:
    """itclient.Client: a Channel to the server and the trust domain and expectErrors flags."""

    def __init__(self, channel, deadline, td=None, expect_errors=False, source=None):
        self.channel = channel
        self.deadline = deadline
        self.td = td
        self.expect_errors = expect_errors
        self.source = source

    @classmethod
    def new(cls, flags, deadline, authorize=None):
        """mTLS with the Workload API's X509-SVID (see the module's docstring). authorize, if
        given, is called with the server's SPIFFE ID and raises ValueError to refuse it (Go's
        itclient authorizes any ID)."""
        try:
            source = X509Source(flags.socketPath, deadline)
        except RuntimeError as e:
            log_fatal(f"Unable to create X509Source: {e}")
        host, port = flags.serverAddr.rsplit(":", 1)

        def dial():
            tmp = tempfile.mkdtemp()
            try:
                cert, key = os.path.join(tmp, "svid.pem"), os.path.join(tmp, "key.pem")
                with open(cert, "wb") as f:
                    f.write(pem_of(source.cert_chain))
                with open(key, "wb") as f:
                    f.write(source.private_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # verified below, as go-spiffe does
                ctx.set_alpn_protocols(["h2"])
                ctx.load_cert_chain(cert, key)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            raw = socket.create_connection((host, int(port)), timeout=max(1, deadline - time.time()))
            s = ctx.wrap_socket(raw)
            try:
                sid = verify_svid_chain(_peer_chain(s), source.bundles)
                if authorize:
                    authorize(sid)
            except ValueError as e:
                s.close()
                raise RpcError(UNAVAILABLE, f'connection error: desc = "transport: authentication handshake failed: {e}"')
            return s

        return cls(Channel(flags.serverAddr, dial), deadline, flags.trustDomain,
                   getattr(flags, "expectErrors", False), source)

    @classmethod
    def new_insecure(cls, flags, deadline):
        """TLS without verifying the server and without a client certificate."""
        host, port = flags.serverAddr.rsplit(":", 1)

        def dial():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            raw = socket.create_connection((host, int(port)), timeout=max(1, deadline - time.time()))
            return ctx.wrap_socket(raw)

        return cls(Channel(flags.serverAddr, dial), deadline, expect_errors=getattr(flags, "expectErrors", False))

    def release(self):
        self.channel.close()

    def _service(self, module, service):
        import importlib

        return ServiceClient(self.channel, importlib.import_module(module), service, self.deadline)

    def svid_client(self):
        return self._service("spire.api.server.svid.v1.svid_pb2", "SVID")

    def bundle_client(self):
        return self._service("spire.api.server.bundle.v1.bundle_pb2", "Bundle")

    def entry_client(self):
        return self._service("spire.api.server.entry.v1.entry_pb2", "Entry")

    def agent_client(self):
        return self._service("spire.api.server.agent.v1.agent_pb2", "Agent")

    def trust_domain_client(self):
        return self._service("spire.api.server.trustdomain.v1.trustdomain_pb2", "TrustDomain")

    def debug_client(self):
        return self._service("spire.api.server.debug.v1.debug_pb2", "Debug")
