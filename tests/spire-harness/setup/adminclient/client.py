"""Stand-in for SPIRE's setup/adminclient Go program (test/integration/setup/adminclient), run
by SPIRE's admin-endpoints suite as /opt/spire/conf/agent/adminclient.

It connects to the server's TCP port with the caller's X509-SVID from the Workload API
(itclient.py) and calls the server APIs that need an admin identity, in the Go program's
order, with its requests, and makes its checks. Flags are itclient's: -trustDomain,
-socketPath, -serverAddr (and -serverSocketPath, unused here), -expectErrors. With
-expectErrors every call must fail with PermissionDenied and nothing else is checked.

Output, like the Go program's `log` output on stderr: "Admin client finished successfully",
or one `RPC "<name>": <error>` line per failed call and exit status 1. Where the Go program
would dereference a missing message (and panic), this exits with status 2 and Go's panic line.

Checks use independent implementations: protobuf message equality (which, like Go's
proto.Equal, tells an unset message field from an empty one and compares unknown fields, so
fields newer than the spire-api-sdk protos used here still count), `openssl verify` for the
minted X509-SVID, PyJWT to read the minted JWT-SVID.
"""

import base64
import json
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from google.protobuf import text_format

import itclient
from itclient import PERMISSION_DENIED, NOT_FOUND, OK, RpcError, status_code

from spire.api.server.agent.v1 import agent_pb2
from spire.api.server.bundle.v1 import bundle_pb2
from spire.api.server.entry.v1 import entry_pb2
from spire.api.server.svid.v1 import svid_pb2
from spire.api.server.trustdomain.v1 import trustdomain_pb2
from spire.api.types import attestation_pb2, bundle_pb2 as bundle_types, entry_pb2 as entry_types
from spire.api.types import federationrelationship_pb2 as fr_types, selector_pb2, spiffeid_pb2

# The same fixed inputs as the Go program: an X.509 authority (P-521, expired in 2018), a JWT
# authority's public key, and the key that signs the CSRs.
TEST_BUNDLE = b"""
-----BEGIN CERTIFICATE-----
MIICOTCCAZqgAwIBAgIBATAKBggqhkjOPQQDBDAeMQswCQYDVQQGEwJVUzEPMA0G
A1UECgwGU1BJRkZFMB4XDTE4MDIxMDAwMzQ0NVoXDTE4MDIxMDAxMzQ1NVowHjEL
MAkGA1UEBhMCVVMxDzANBgNVBAoTBlNQSUZGRTCBmzAQBgcqhkjOPQIBBgUrgQQA
IwOBhgAEAZ6nXrNctKHNjZT7ZkP7xwfpMfvc/DAHc39GdT3qi8mmowY0/XuFQmlJ
cXXwv8ZlOSoGvtuLAEx1lvHNZwv4BuuPALILcIW5tyC8pjcbfqs8PMQYwiC+oFKH
BTxXzolpLeHuFLAD9ccfwWhkT1z/t4pvLkP4FCkkBosG9PVg5JQVJuZJo4GFMIGC
MA4GA1UdDwEB/wQEAwIBhjAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBT4RuNt
x6E70yjV0wIvUyrGkMKczzAfBgNVHSMEGDAWgBRGyozl9Mjue0Y3w4c2Q+3u+wVk
CjAfBgNVHREEGDAWhhRzcGlmZmU6Ly9leGFtcGxlLm9yZzAKBggqhkjOPQQDBAOB
jAAwgYgCQgHOtx4sNCioAQnpEx3J/A9M6Lutth/ND/h8D+7luqEkd4tMrBQgnMj4
E0xLGUNtoFNRIrEUlgwksWvKZ3BksIIOMwJCAc8VPA/QYrlJDeQ58FKyQyrOIlPk
Q0qBJEOkL6FrAngY5218TCNUS30YS5HjI2lfyyjB+cSVFXX8Szu019dDBMhV
-----END CERTIFICATE-----
"""
BUNDLE_DER = x509.load_pem_x509_certificate(TEST_BUNDLE).public_bytes(serialization.Encoding.DER)
PKIX_BYTES = base64.b64decode(
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYSlUVLqTD8DEnA4F1EWMTf5RXc5lnCxw+5WKJwngEL3rPc9i4Tgzz9riR3I/"
    "NiSlkgRO1WsxBusqpC284j9dXA==")
KEY = serialization.load_pem_private_key(b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgs/CcKxAEIyBBEQ9h
ES2kJbWTz79ut45qAb0UgqrGqmOhRANCAARssWdfmS3D4INrpLBdSBxzso5kPPSX
F21JuznwCuYKNV5LnzhUA3nt2+6e18ZIXUDxl+CpkvCYc10MO6SYg6AE
-----END PRIVATE KEY-----""", password=None)

# JWS algorithms SPIRE's jwtsvid package accepts when it parses a JWT-SVID.
ALLOWED_JWT_ALGS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]

# Carried from one call to the next, as in the Go program: the entry that BatchCreateEntry
# made, and the agent that CreateJoinToken's token attested (an empty ID until then).
state = {"entry_id": "", "agent_id": spiffeid_pb2.SPIFFEID()}


class Failure(Exception):
    """A failed check: its text is what the Go program's error would print."""


class GoPanic(Exception):
    """Where the Go program dereferences a message that is not there (a nil pointer)."""


def need(msg, *path):
    """msg.a.b... for the message fields named in path, each of which must be set."""
    for name in path:
        if not msg.HasField(name):
            raise GoPanic("runtime error: invalid memory address or nil pointer dereference")
        msg = getattr(msg, name)
    return msg


def show(msg):
    """A message as Go's %v prints it (its text form on one line)."""
    return text_format.MessageToString(msg, as_one_line=True)


def quote(s):
    """Go's %q."""
    return json.dumps(s, ensure_ascii=False)


def go_v(value):
    """Go's %v of a value json.Unmarshal decoded into an `any`."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(go_v(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_v(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (int, float)):
        f = float(value)
        return str(int(f)) if f.is_integer() and abs(f) < 1e21 else repr(f)
    return str(value)


def spiffe_id(td, path):
    return spiffeid_pb2.SPIFFEID(trust_domain=td, path=path)


def jwt_key(key_id):
    return bundle_types.JWTKey(public_key=PKIX_BYTES, expires_at=int(time.time()) + 60, key_id=key_id)


def permission_denied(err):
    """With -expectErrors: the call must have failed with PermissionDenied."""
    if err is None:
        raise Failure("no error returned")
    if status_code(err) != PERMISSION_DENIED:
        raise Failure(f"unnexpected error returned: {err}")


def call(fn, *args):
    """(response, None) or (None, RpcError)."""
    try:
        return fn(*args), None
    except RpcError as e:
        return None, e


def expect_ok_or_denied(c, fn, *args):
    """Makes the call; returns its response when the call is meant to succeed (raising its
    error if it failed), or None when -expectErrors had it fail as it must."""
    resp, err = call(fn, *args)
    if c.expect_errors:
        permission_denied(err)
        return None
    if err is not None:
        raise Failure(str(err))
    return resp


def check_status_ok(result):
    status = need(result, "status")
    if status.code != OK:
        raise Failure(f"unexpected status: {show(status)}")


def contains_x509(authorities, der):
    return any(a.asn1 == der for a in authorities)


def contains_jwt_key(keys, key):
    return any(k == key for k in keys)


def csr(uris=()):
    """A CSR signed with KEY: empty subject, the given URI SANs."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# --- SVID ------------------------------------------------------------------------------------------

def mint_x509_svid(c):
    expected_id = spiffe_id(c.td, "/new_workload")
    req = svid_pb2.MintX509SVIDRequest(csr=csr([f"spiffe://{c.td}/new_workload"]))
    resp = expect_ok_or_denied(c, c.svid_client().MintX509SVID, req)
    if resp is None:
        return
    svid = need(resp, "svid")
    if svid.expires_at < time.time():
        raise Failure("invalid ExpiresAt")
    if svid.id != expected_id:
        raise Failure(f"unexpected Id: {show(svid.id)}")
    if not svid.cert_chain:
        raise Failure("empty CertChain")
    try:
        leaf = x509.load_der_x509_certificate(svid.cert_chain[0])
    except ValueError as e:
        raise Failure(f"unable to parse cert: {e}")
    pool = []
    for der in svid.cert_chain:
        try:
            pool.append(x509.load_der_x509_certificate(der))
        except ValueError as e:
            raise Failure(f"unable to parse bundle: {e}")
    # Every certificate of the returned chain is a trust anchor (the leaf included), and the
    # leaf must be usable for TLS servers: Go's Certificate.Verify with only Roots set.
    err = itclient.openssl_verify(leaf, pool, purpose="sslserver", partial_chain=True)
    if err:
        raise Failure(err)


def mint_jwt_svid(c):
    import jwt

    want_id = spiffe_id(c.td, "/new_workload")
    req = svid_pb2.MintJWTSVIDRequest(id=want_id, audience=["myAud"])
    resp = expect_ok_or_denied(c, c.svid_client().MintJWTSVID, req)
    if resp is None:
        return
    svid = need(resp, "svid")
    if svid.id != want_id:
        raise Failure(f"unexpected Id: {show(svid.id)}")
    if svid.expires_at < time.time():
        raise Failure("jwt SVID is expired")
    # Read, not verified (neither does the Go program verify the signature): a compact JWS
    # with one of SPIRE's accepted algorithms, whose payload is a JSON object of claims.
    try:
        alg = jwt.get_unverified_header(svid.token).get("alg")
    except jwt.PyJWTError as e:
        raise Failure(f"failed to parse token: {e}")
    if alg not in ALLOWED_JWT_ALGS:
        expected = " ".join(quote(a) for a in ALLOWED_JWT_ALGS)
        raise Failure(f"failed to parse token: unexpected signature algorithm {quote(alg)}; expected [{expected}]")
    try:
        claims = jwt.decode(svid.token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise Failure(f"claims verification failed: {e}")
    aud = claims.get("aud")
    if aud is None:
        raise Failure("missing aud")
    if go_v(aud) != "[myAud]":
        raise Failure(f"uexpected aud {go_v(aud)}")
    # The Go program also compares "exp" and "iat" with 0, but as an `any` holding a float64
    # (or nil) against an int: never equal, so those checks cannot fail, nor are they made here.
    want_sub = f"spiffe://{c.td}/new_workload"
    if claims.get("sub") != want_sub:
        sub = claims.get("sub")
        raise Failure(f"unexpected sub: {quote(sub) if isinstance(sub, str) else go_v(sub)}, spiffe://{quote(c.td)}/new_workload")


# --- Bundle ----------------------------------------------------------------------------------------

def append_bundle(c):
    key = jwt_key("authority1")
    req = bundle_pb2.AppendBundleRequest(x509_authorities=[bundle_types.X509Certificate(asn1=BUNDLE_DER)],
                                         jwt_authorities=[key])
    resp = expect_ok_or_denied(c, c.bundle_client().AppendBundle, req)
    if resp is None:
        return
    if resp.trust_domain != c.td:
        raise Failure(f"unexpected td: {resp.trust_domain}")
    if not resp.jwt_authorities:
        raise Failure("missing JWT authorities")
    if not resp.x509_authorities:
        raise Failure("missing X509 authorities")
    if not contains_x509(resp.x509_authorities, BUNDLE_DER):
        raise Failure("no append x509 authority")
    if not contains_jwt_key(resp.jwt_authorities, key):
        raise Failure("no append jwt key")


def check_one_bundle_result(resp, td):
    if len(resp.results) != 1:
        raise Failure(f"unexpected response size: {len(resp.results)}")
    r = resp.results[0]
    check_status_ok(r)
    bundle = need(r, "bundle")
    if bundle.trust_domain != td:
        raise Failure(f"unexpected trust domain: {quote(bundle.trust_domain)}")
    return bundle


def check_full_bundle(bundle, key):
    if not bundle.jwt_authorities:
        raise Failure("missing JWT authorities")
    if not bundle.x509_authorities:
        raise Failure("missing X509 authorities")
    if not contains_x509(bundle.x509_authorities, BUNDLE_DER):
        raise Failure("no X509 authority")
    if not contains_jwt_key(bundle.jwt_authorities, key):
        raise Failure("no JWT key")


def batch_create_federated_bundle(c):
    key = jwt_key("authority1")
    req = bundle_pb2.BatchCreateFederatedBundleRequest(bundle=[bundle_types.Bundle(
        trust_domain="foo", jwt_authorities=[key],
        x509_authorities=[bundle_types.X509Certificate(asn1=BUNDLE_DER)])])
    resp = expect_ok_or_denied(c, c.bundle_client().BatchCreateFederatedBundle, req)
    if resp is None:
        return
    check_full_bundle(check_one_bundle_result(resp, "foo"), key)


def batch_update_federated_bundle(c):
    key = jwt_key("authority2")
    req = bundle_pb2.BatchUpdateFederatedBundleRequest(bundle=[bundle_types.Bundle(
        trust_domain="foo", jwt_authorities=[key])])
    resp = expect_ok_or_denied(c, c.bundle_client().BatchUpdateFederatedBundle, req)
    if resp is None:
        return
    bundle = check_one_bundle_result(resp, "foo")
    if not bundle.jwt_authorities:
        raise Failure("missing JWT authorities")
    if bundle.x509_authorities:
        raise Failure("unexpected x509 authorities")
    if not contains_jwt_key(bundle.jwt_authorities, key):
        raise Failure("no updated jwt key")


def batch_set_federated_bundle(c):
    key = jwt_key("authority1")
    req = bundle_pb2.BatchSetFederatedBundleRequest(bundle=[bundle_types.Bundle(
        trust_domain="bar", jwt_authorities=[key],
        x509_authorities=[bundle_types.X509Certificate(asn1=BUNDLE_DER)])])
    resp = expect_ok_or_denied(c, c.bundle_client().BatchSetFederatedBundle, req)
    if resp is None:
        return
    check_full_bundle(check_one_bundle_result(resp, "bar"), key)


def count_bundles(c):
    resp = expect_ok_or_denied(c, c.bundle_client().CountBundles, bundle_pb2.CountBundlesRequest())
    if resp is not None and resp.count != 4:
        raise Failure(f"unexpected bundle count: {resp.count}")


def list_federated_bundles(c):
    resp = expect_ok_or_denied(c, c.bundle_client().ListFederatedBundles, bundle_pb2.ListFederatedBundlesRequest())
    if resp is None:
        return
    if len(resp.bundles) != 3:
        raise Failure(f"unexpected bundles size: {len(resp.bundles)}")
    for td in ("foo", "bar"):
        if not any(b.trust_domain == td for b in resp.bundles):
            raise Failure(f"bundle for trust domain {quote(td)} not found")


def get_federated_bundle(c):
    resp = expect_ok_or_denied(c, c.bundle_client().GetFederatedBundle,
                               bundle_pb2.GetFederatedBundleRequest(trust_domain="bar"))
    if resp is None:
        return
    if resp.trust_domain != "bar":
        raise Failure(f"unexpected trust domain: {quote(resp.trust_domain)}")
    if not resp.jwt_authorities:
        raise Failure("missing JWT authorities")
    if not resp.x509_authorities:
        raise Failure("missing X509 authorities")


def batch_delete_federated_bundle(c):
    tds = ["foo", "bar"]
    resp = expect_ok_or_denied(c, c.bundle_client().BatchDeleteFederatedBundle,
                               bundle_pb2.BatchDeleteFederatedBundleRequest(trust_domains=tds))
    if resp is None:
        return
    # No check of the number of results; one result too many indexes past the list in Go.
    for i, r in enumerate(resp.results):
        check_status_ok(r)
        if i >= len(tds):
            raise GoPanic(f"runtime error: index out of range [{i}] with length {len(tds)}")
        if r.trust_domain != tds[i]:
            raise Failure(f"unexpected trust domain: {quote(r.trust_domain)}")


# --- Entry -----------------------------------------------------------------------------------------

def bar_entry(c, uids=("1001",), **fields):
    """The entry the Entry calls create, read and update: /bar under /foo."""
    return entry_types.Entry(
        parent_id=spiffe_id(c.td, "/foo"), spiffe_id=spiffe_id(c.td, "/bar"),
        selectors=[selector_pb2.Selector(type="unix", value=f"uid:{u}") for u in uids], **fields)


def batch_create_entry(c):
    entry = bar_entry(c)
    resp = expect_ok_or_denied(c, c.entry_client().BatchCreateEntry, entry_pb2.BatchCreateEntryRequest(entries=[entry]))
    if resp is None:
        return
    if len(resp.results) != 1:
        raise Failure(f"unexpected response size: {len(resp.results)}")
    r = resp.results[0]
    got = need(r, "entry")
    expected = entry_types.Entry()
    expected.CopyFrom(entry)
    expected.id, expected.created_at = got.id, got.created_at
    check_status_ok(r)
    if got != expected:
        raise Failure(f"unexpected entry: {show(got)}")
    state["entry_id"] = got.id


def count_entries(c):
    resp = expect_ok_or_denied(c, c.entry_client().CountEntries, entry_pb2.CountEntriesRequest())
    if resp is not None and resp.count < 3:
        raise Failure(f"unexpected entry count: {resp.count}")


def list_entries(c):
    allowed = [spiffe_id(c.td, p) for p in ("/admin", "/agent-alias", "/workload", "/bar")]
    resp = expect_ok_or_denied(c, c.entry_client().ListEntries, entry_pb2.ListEntriesRequest())
    if resp is None:
        return
    if len(resp.entries) < 3:
        raise Failure(f"unexpected entries size: {len(resp.entries)}")
    for e in resp.entries:
        if not (e.HasField("spiffe_id") and e.spiffe_id in allowed):
            raise Failure(f"unexpected entry: {show(e.spiffe_id) if e.HasField('spiffe_id') else '<nil>'}")


def get_entry(c):
    resp = expect_ok_or_denied(c, c.entry_client().GetEntry, entry_pb2.GetEntryRequest(id=state["entry_id"]))
    if resp is None:
        return
    expected = bar_entry(c, id=state["entry_id"], created_at=resp.created_at)
    if resp != expected:
        raise Failure(f"unexpected entry: {show(resp)}")


def batch_update_entry(c):
    entry = bar_entry(c, uids=("1001", "1002"), id=state["entry_id"], dns_names=["dns1"], revision_number=1)
    resp = expect_ok_or_denied(c, c.entry_client().BatchUpdateEntry, entry_pb2.BatchUpdateEntryRequest(entries=[entry]))
    if resp is None:
        return
    if len(resp.results) != 1:
        raise Failure(f"unexpected response size: {len(resp.results)}")
    r = resp.results[0]
    expected = entry_types.Entry()
    expected.CopyFrom(entry)
    if r.HasField("entry"):
        expected.created_at = r.entry.created_at
    check_status_ok(r)
    if not r.HasField("entry") or r.entry != expected:
        raise Failure(f"unexpected entry: {show(r.entry) if r.HasField('entry') else '<nil>'}")


def batch_delete_entry(c):
    resp = expect_ok_or_denied(c, c.entry_client().BatchDeleteEntry, entry_pb2.BatchDeleteEntryRequest(ids=[state["entry_id"]]))
    if resp is None:
        return
    if len(resp.results) != 1:
        raise Failure(f"unexpected response size: {len(resp.results)}")
    r = resp.results[0]
    check_status_ok(r)
    if r.id != state["entry_id"]:
        raise Failure(f"unexpected entry: {show(r)}")


# --- Agent -----------------------------------------------------------------------------------------

def create_join_token(c):
    req = agent_pb2.CreateJoinTokenRequest(agent_id=spiffe_id(c.td, "/agent-alias"), ttl=60)
    resp = expect_ok_or_denied(c, c.agent_client().CreateJoinToken, req)
    if resp is None:
        return
    if resp.expires_at == 0:
        raise Failure("missing expiration")
    if resp.value == "":
        raise Failure("missing token")
    state["agent_id"] = spiffe_id(c.td, f"/spire/agent/join_token/{resp.value}")
    # Attest an agent with the token: one Params message on the stream (left open), one answer.
    stream = c.agent_client().AttestAgent()
    params = agent_pb2.AttestAgentRequest.Params(
        data=attestation_pb2.AttestationData(type="join_token", payload=resp.value.encode()),
        params=agent_pb2.AgentX509SVIDParams(csr=csr()))
    try:
        stream.send(agent_pb2.AttestAgentRequest(params=params))
        stream.recv()
    except (RpcError, EOFError) as e:
        raise Failure(str(e))


def count_agents(c):
    resp = expect_ok_or_denied(c, c.agent_client().CountAgents, agent_pb2.CountAgentsRequest())
    if resp is not None and resp.count != 2:
        raise Failure(f"unexpected agent count: {resp.count}")


def check_join_token_agent(agent):
    if agent.attestation_type != "join_token":
        raise Failure(f"unexpected attestation type: {quote(agent.attestation_type)}")
    if agent.banned:
        raise Failure("agent is banned")
    if not agent.HasField("id") or agent.id != state["agent_id"]:
        raise Failure(f"unexpected ID: {quote(show(agent.id)) if agent.HasField('id') else '<nil>'}")


def list_agents(c):
    req = agent_pb2.ListAgentsRequest(filter=agent_pb2.ListAgentsRequest.Filter(by_attestation_type="join_token"))
    resp = expect_ok_or_denied(c, c.agent_client().ListAgents, req)
    if resp is None:
        return
    if len(resp.agents) != 1:
        raise Failure("only one agent is expected")
    check_join_token_agent(resp.agents[0])


def get_agent(c):
    resp = expect_ok_or_denied(c, c.agent_client().GetAgent, agent_pb2.GetAgentRequest(id=state["agent_id"]))
    if resp is not None:
        check_join_token_agent(resp)


def ban_agent(c):
    if expect_ok_or_denied(c, c.agent_client().BanAgent, agent_pb2.BanAgentRequest(id=state["agent_id"])) is None:
        return
    agent, err = call(c.agent_client().GetAgent, agent_pb2.GetAgentRequest(id=state["agent_id"]))
    if err is not None:
        raise Failure(f"failed to get agent: {err}")
    if not agent.banned:
        raise Failure("agent is not banned")


def delete_agent(c):
    if expect_ok_or_denied(c, c.agent_client().DeleteAgent, agent_pb2.DeleteAgentRequest(id=state["agent_id"])) is None:
        return
    _, err = call(c.agent_client().GetAgent, agent_pb2.GetAgentRequest(id=state["agent_id"]))
    if status_code(err) != NOT_FOUND:
        raise Failure("not found status expected")


# --- TrustDomain -----------------------------------------------------------------------------------

def relationship(url):
    return fr_types.FederationRelationship(trust_domain="federated.test", bundle_endpoint_url=url,
                                           https_web=fr_types.HTTPSWebProfile())


def check_relationship_result(resp, url):
    if len(resp.results) != 1:
        raise Failure("only one relationship expected")
    r = resp.results[0]
    check_status_ok(r)
    fr = need(r, "federation_relationship")
    if fr.trust_domain != "federated.test":
        raise Failure(f"unexpected trust domain: {quote(fr.trust_domain)}")
    if fr.bundle_endpoint_url != url:
        raise Failure(f"unexpected bundle endpoint: {quote(fr.bundle_endpoint_url)}")
    if fr.WhichOneof("bundle_endpoint_profile") != "https_web":
        raise Failure("unexpected profile type")


def batch_create_federation_relationship(c):
    url = "https://federated.test/endpoint"
    req = trustdomain_pb2.BatchCreateFederationRelationshipRequest(federation_relationships=[relationship(url)])
    resp = expect_ok_or_denied(c, c.trust_domain_client().BatchCreateFederationRelationship, req)
    if resp is not None:
        check_relationship_result(resp, url)


def batch_update_federation_relationship(c):
    url = "https://federated.test/endpointupdated"
    req = trustdomain_pb2.BatchUpdateFederationRelationshipRequest(federation_relationships=[relationship(url)])
    resp = expect_ok_or_denied(c, c.trust_domain_client().BatchUpdateFederationRelationship, req)
    if resp is not None:
        check_relationship_result(resp, url)


def get_federation_relationship(c):
    req = trustdomain_pb2.GetFederationRelationshipRequest(trust_domain="federated.test")
    resp = expect_ok_or_denied(c, c.trust_domain_client().GetFederationRelationship, req)
    if resp is not None and resp.trust_domain != "federated.test":
        raise Failure(f"unexpected trut domain: {quote(resp.trust_domain)}")


def list_federation_relationships(c):
    req = trustdomain_pb2.ListFederationRelationshipsRequest()
    resp = expect_ok_or_denied(c, c.trust_domain_client().ListFederationRelationships, req)
    if resp is not None and len(resp.federation_relationships) != 1:
        raise Failure("only one relationship expected")


def batch_delete_federation_relationship(c):
    req = trustdomain_pb2.BatchDeleteFederationRelationshipRequest(trust_domains=["federated.test"])
    resp = expect_ok_or_denied(c, c.trust_domain_client().BatchDeleteFederationRelationship, req)
    if resp is None:
        return
    if len(resp.results) != 1:
        raise Failure("only one relationship expected")
    r = resp.results[0]
    check_status_ok(r)
    if r.trust_domain != "federated.test":
        raise Failure(f"unexpected trust domain: {quote(r.trust_domain)}")


TESTS = [
    ("MintX509SVID", mint_x509_svid),
    ("MintJWTSVID", mint_jwt_svid),
    ("AppendBundle", append_bundle),
    ("BatchCreateFederatedBundle", batch_create_federated_bundle),
    ("BatchUpdateFederatedBundle", batch_update_federated_bundle),
    ("BatchSetFederatedBundle", batch_set_federated_bundle),
    ("CountBundles", count_bundles),
    ("ListFederatedBundles", list_federated_bundles),
    ("GetFederatedBundle", get_federated_bundle),
    ("BatchDeleteFederatedBundle", batch_delete_federated_bundle),
    ("BatchCreateEntry", batch_create_entry),
    ("CountEntries", count_entries),
    ("ListEntries", list_entries),
    ("GetEntry", get_entry),
    ("BatchUpdateEntry", batch_update_entry),
    ("BatchDeleteEntry", batch_delete_entry),
    ("CreateJoinToken", create_join_token),
    ("CountAgents", count_agents),
    ("ListAgents", list_agents),
    ("GetAgent", get_agent),
    ("BanAgent", ban_agent),
    ("DeleteAgent", delete_agent),
    ("BatchCreateFederationRelationship", batch_create_federation_relationship),
    ("BatchUpdateFederationRelationship", batch_update_federation_relationship),
    ("GetFederationRelationship", get_federation_relationship),
    ("ListFederationRelationships", list_federation_relationships),
    ("BatchDeleteFederationRelationship", batch_delete_federation_relationship),
]


def main():
    flags = itclient.parse_flags(sys.argv[1:])
    deadline = time.time() + 60  # the Go program's one-minute context, for everything
    c = itclient.Client.new(flags, deadline)
    failures = []
    try:
        for name, test in TESTS:
            try:
                test(c)
            except (Failure, RpcError) as e:
                failures.append(f"RPC {quote(name)}: {e}\n")
    except GoPanic as e:
        sys.stderr.write(f"panic: {e}\n")
        sys.exit(2)
    if failures:
        itclient.log_fatal("".join(failures))
    c.release()
    itclient.log_print("Admin client finished successfully")


if __name__ == "__main__":
    main()
