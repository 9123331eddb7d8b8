#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! A Python grpcio client generated from SPIRE's own protos (spire-api-sdk, fetched by
//! scripts/install-test-deps.sh) drives the server's admin socket with no channel options, as
//! an operator's tooling would (issue 8, item 1). gRPC C-core sends the socket path as
//! `:authority`, which the Rust HTTP/2 stack rejects unless cairn rewrites it.

use crate::common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

/// Generates Python gRPC modules from SPIRE's protos (argv[1]) and puts them on the path;
/// argv[2] is the admin socket. Each client script below starts with it.
const GENERATE: &str = r#"
import os, sys, tempfile
proto, sock = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp()
files = []
for root, _, names in os.walk(os.path.join(proto, "spire/api")):
    files += [os.path.join(root, n) for n in names if n.endswith(".proto")]
import grpc_tools, grpc_tools.protoc
inc = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
assert grpc_tools.protoc.main(["protoc", f"-I{proto}", f"-I{inc}", f"--python_out={out}", f"--grpc_python_out={out}"] + files) == 0, "protoc failed"
sys.path.insert(0, out)
"#;

const CLIENT: &str = r#"
import grpc
from spire.api.server.bundle.v1 import bundle_pb2, bundle_pb2_grpc
from spire.api.server.entry.v1 import entry_pb2, entry_pb2_grpc
from spire.api.server.svid.v1 import svid_pb2, svid_pb2_grpc
from spire.api.server.agent.v1 import agent_pb2, agent_pb2_grpc
from spire.api.server.debug.v1 import debug_pb2, debug_pb2_grpc
from spire.api.types import entry_pb2 as tentry, spiffeid_pb2, selector_pb2
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ch = grpc.insecure_channel("unix:" + sock)  # no options: C-core sends the path as :authority
b = bundle_pb2_grpc.BundleStub(ch).GetBundle(bundle_pb2.GetBundleRequest())
assert b.trust_domain == "example.org" and len(b.x509_authorities) >= 1, b
assert len(b.jwt_authorities) >= 1, b

entries = entry_pb2_grpc.EntryStub(ch)
e = tentry.Entry(
    spiffe_id=spiffeid_pb2.SPIFFEID(trust_domain="example.org", path="/py/workload"),
    parent_id=spiffeid_pb2.SPIFFEID(trust_domain="example.org", path="/py/node"),
    selectors=[selector_pb2.Selector(type="unix", value="uid:1234")],
)
r = entries.BatchCreateEntry(entry_pb2.BatchCreateEntryRequest(entries=[e]))
assert r.results[0].status.code == 0, r
eid = r.results[0].entry.id
assert entries.CountEntries(entry_pb2.CountEntriesRequest()).count >= 1
got = entries.GetEntry(entry_pb2.GetEntryRequest(id=eid))
assert got.spiffe_id.path == "/py/workload", got
listed = entries.ListEntries(entry_pb2.ListEntriesRequest())
assert any(x.id == eid for x in listed.entries)

svid = svid_pb2_grpc.SVIDStub(ch)
key = ec.generate_private_key(ec.SECP256R1())
csr = (x509.CertificateSigningRequestBuilder()
       .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]))
       .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/py/minted")]), critical=False)
       .sign(key, hashes.SHA256()))
m = svid.MintX509SVID(svid_pb2.MintX509SVIDRequest(csr=csr.public_bytes(serialization.Encoding.DER), ttl=600))
assert m.svid.id.path == "/py/minted", m
leaf = x509.load_der_x509_certificate(m.svid.cert_chain[0])
assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/py/minted"]
j = svid.MintJWTSVID(svid_pb2.MintJWTSVIDRequest(id=spiffeid_pb2.SPIFFEID(trust_domain="example.org", path="/py/jwt"), audience=["db"], ttl=300))
assert j.svid.token.count(".") == 2, j

agents = agent_pb2_grpc.AgentStub(ch)
tok = agents.CreateJoinToken(agent_pb2.CreateJoinTokenRequest(ttl=600))
assert len(tok.value) > 10, tok
agents.ListAgents(agent_pb2.ListAgentsRequest())
agents.CountAgents(agent_pb2.CountAgentsRequest())
info = debug_pb2_grpc.DebugStub(ch).GetInfo(debug_pb2.GetInfoRequest())
assert len(info.svid_chain) >= 1, info
# A refused call is a proper gRPC status, not a broken stream.
try:
    entries.GetEntry(entry_pb2.GetEntryRequest(id="no-such-entry"))
    raise SystemExit("missing entry found")
except grpc.RpcError as err:
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
print("GRPCIO-OK")
"#;

fn sdk_protos() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/spire-api-sdk/spire-api-0.6.0/spire-api-sdk/proto");
    assert!(p.join("spire/api/server/entry/v1/entry.proto").exists(), "SPIRE's protos are missing: run scripts/install-test-deps.sh");
    p
}

#[test]
fn grpcio_client_from_spires_protos_drives_the_admin_socket() {
    require("python3");
    let protos = sdk_protos();
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let (ok, out) = run(Command::new("python3").arg("-c").arg(format!("{GENERATE}{CLIENT}")).arg(&protos).arg(&s.socket));
    assert!(ok && out.contains("GRPCIO-OK"), "grpcio client failed:\n{out}\nserver log:\n{}", s.log());
}

/// ListEntries/CountEntries filters as SPIRE's API defines them, asked for by a client generated
/// from SPIRE's protos: every selector and federates-with match mode, the hint, combinations,
/// pagination, and the refusals of empty sets.
const FILTERS: &str = r#"
import grpc
from google.protobuf import wrappers_pb2
from spire.api.server.entry.v1 import entry_pb2, entry_pb2_grpc
from spire.api.types import entry_pb2 as tentry, spiffeid_pb2, selector_pb2, federateswith_pb2

ch = grpc.insecure_channel("unix:" + sock)
E = entry_pb2_grpc.EntryStub(ch)
def sid(p): return spiffeid_pb2.SPIFFEID(trust_domain="example.org", path=p)
def sel(*kv): return [selector_pb2.Selector(type=k, value=v) for k, v in kv]
made = {}
for name, sels, feds, hint in [("A", sel(("a", "1")), ["fed1.test"], "h1"),
                               ("B", sel(("a", "1"), ("b", "2")), ["fed1.test", "fed2.test"], ""),
                               ("C", sel(("b", "2")), [], "h1")]:
    r = E.BatchCreateEntry(entry_pb2.BatchCreateEntryRequest(entries=[tentry.Entry(
        spiffe_id=sid("/f/" + name), parent_id=sid("/f/node"), selectors=sels, federates_with=feds, hint=hint)]))
    assert r.results[0].status.code == 0, r
    made[r.results[0].entry.id] = name

SM = selector_pb2.SelectorMatch
FM = federateswith_pb2.FederatesWithMatch
def ask(**f):
    lf = entry_pb2.ListEntriesRequest.Filter(**f)
    got = sorted(made[e.id] for e in E.ListEntries(entry_pb2.ListEntriesRequest(filter=lf)).entries if e.id in made)
    n = E.CountEntries(entry_pb2.CountEntriesRequest(filter=entry_pb2.CountEntriesRequest.Filter(**f))).count
    assert n == len(got), (f, n, got)
    return "".join(got)

cases = [
    (dict(by_selectors=SM(selectors=sel(("a", "1")), match=SM.MATCH_EXACT)), "A"),
    (dict(by_selectors=SM(selectors=sel(("a", "1")), match=SM.MATCH_SUPERSET)), "AB"),
    (dict(by_selectors=SM(selectors=sel(("a", "1")), match=SM.MATCH_SUBSET)), "A"),
    (dict(by_selectors=SM(selectors=sel(("a", "1")), match=SM.MATCH_ANY)), "AB"),
    (dict(by_selectors=SM(selectors=sel(("a", "1"), ("b", "2")), match=SM.MATCH_EXACT)), "B"),
    (dict(by_selectors=SM(selectors=sel(("a", "1"), ("b", "2")), match=SM.MATCH_SUPERSET)), "B"),
    (dict(by_selectors=SM(selectors=sel(("a", "1"), ("b", "2")), match=SM.MATCH_SUBSET)), "ABC"),
    (dict(by_selectors=SM(selectors=sel(("b", "2"), ("c", "3")), match=SM.MATCH_ANY)), "BC"),
    (dict(by_federates_with=FM(trust_domains=["fed1.test"], match=FM.MATCH_EXACT)), "A"),
    (dict(by_federates_with=FM(trust_domains=["spiffe://fed1.test"], match=FM.MATCH_SUPERSET)), "AB"),
    (dict(by_federates_with=FM(trust_domains=["fed1.test"], match=FM.MATCH_SUBSET)), "A"),
    (dict(by_federates_with=FM(trust_domains=["fed1.test", "fed2.test"], match=FM.MATCH_SUBSET)), "AB"),
    (dict(by_federates_with=FM(trust_domains=["fed2.test"], match=FM.MATCH_ANY)), "B"),
    (dict(by_hint=wrappers_pb2.StringValue(value="h1")), "AC"),
    (dict(by_hint=wrappers_pb2.StringValue(value="h1"), by_selectors=SM(selectors=sel(("b", "2")), match=SM.MATCH_SUPERSET)), "C"),
    (dict(by_selectors=SM(selectors=sel(("a", "1")), match=SM.MATCH_SUPERSET),
          by_federates_with=FM(trust_domains=["fed2.test"], match=FM.MATCH_ANY)), "B"),
    (dict(by_downstream=wrappers_pb2.BoolValue(value=False)), "ABC"),
    (dict(by_parent_id=sid("/f/node"), by_spiffe_id=sid("/f/B")), "B"),
]
for f, want in cases:
    got = ask(**f)
    assert got == want, (f, got, want)

# Pages: every entry once, in pages of at most 2, the last page without a token.
seen, token, pages = [], "", 0
while True:
    r = E.ListEntries(entry_pb2.ListEntriesRequest(page_size=2, page_token=token))
    assert len(r.entries) <= 2, r
    seen += [e.id for e in r.entries]
    pages += 1
    token = r.next_page_token
    if not token:
        break
assert sorted(seen) == sorted(made) and pages >= 2, (seen, pages)

# Output masks: the ID always, then only what the mask asks for.
m = tentry.EntryMask(spiffe_id=True)
for e in E.ListEntries(entry_pb2.ListEntriesRequest(output_mask=m)).entries:
    assert e.id and e.spiffe_id.path and not e.selectors and not e.HasField("parent_id") and not e.federates_with, e
one = next(iter(made))
g = E.GetEntry(entry_pb2.GetEntryRequest(id=one, output_mask=tentry.EntryMask(selectors=True)))
assert g.id == one and g.selectors and not g.HasField("spiffe_id"), g
full = E.GetEntry(entry_pb2.GetEntryRequest(id=one))
assert full.HasField("spiffe_id") and full.selectors and full.revision_number == 0, full

for bad in [dict(by_selectors=SM(selectors=[], match=SM.MATCH_ANY)), dict(by_federates_with=FM(trust_domains=[], match=FM.MATCH_ANY))]:
    try:
        E.ListEntries(entry_pb2.ListEntriesRequest(filter=entry_pb2.ListEntriesRequest.Filter(**bad)))
        raise SystemExit(f"accepted {bad}")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in err.details(), err
# BatchUpdateFederatedBundle with an input mask changes only the masked fields.
from spire.api.server.bundle.v1 import bundle_pb2 as bpb, bundle_pb2_grpc as bgrpc
from spire.api.types import bundle_pb2 as tbundle
B = bgrpc.BundleStub(ch)
before = B.GetFederatedBundle(bpb.GetFederatedBundleRequest(trust_domain="fed1.test"))
assert len(before.x509_authorities) == 1, before
r = B.BatchUpdateFederatedBundle(bpb.BatchUpdateFederatedBundleRequest(
    bundle=[tbundle.Bundle(trust_domain="fed1.test", refresh_hint=77)], input_mask=tbundle.BundleMask(refresh_hint=True)))
assert r.results[0].status.code == 0, r
after = B.GetFederatedBundle(bpb.GetFederatedBundleRequest(trust_domain="fed1.test"))
assert after.refresh_hint == 77 and list(after.x509_authorities) == list(before.x509_authorities), after
# Bundle output masks: only the named fields are filled (the trust domain always is).
m = B.GetFederatedBundle(bpb.GetFederatedBundleRequest(trust_domain="fed1.test", output_mask=tbundle.BundleMask(refresh_hint=True)))
assert m.trust_domain == "fed1.test" and m.refresh_hint == 77 and not m.x509_authorities, m
own = B.GetBundle(bpb.GetBundleRequest(output_mask=tbundle.BundleMask(jwt_authorities=True)))
assert own.jwt_authorities and not own.x509_authorities and own.sequence_number == 0, own
assert B.GetBundle(bpb.GetBundleRequest()).x509_authorities
# ListFederatedBundles pages in trust domain order.
p1 = B.ListFederatedBundles(bpb.ListFederatedBundlesRequest(page_size=1, output_mask=tbundle.BundleMask()))
assert [b.trust_domain for b in p1.bundles] == ["fed1.test"] and p1.next_page_token and not p1.bundles[0].x509_authorities, p1
p2 = B.ListFederatedBundles(bpb.ListFederatedBundlesRequest(page_size=1, page_token=p1.next_page_token))
assert [b.trust_domain for b in p2.bundles] == ["fed2.test"] and p2.bundles[0].x509_authorities, p2
p3 = B.ListFederatedBundles(bpb.ListFederatedBundlesRequest(page_size=1, page_token=p2.next_page_token))
assert not p3.bundles and not p3.next_page_token, p3
print("FILTERS-OK")
"#;

#[test]
fn entry_filters_match_spires_api_through_a_grpcio_client() {
    require("python3");
    let protos = sdk_protos();
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let ca = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spire-suites/suites/spire-server-cli/conf/fixture/ca.pem");
    for td in ["spiffe://fed1.test", "spiffe://fed2.test"] {
        s.cli_ok(&["bundle", "set", "-id", td, "-path", ca.to_str().unwrap()]);
    }
    let (ok, out) = run(Command::new("python3").arg("-c").arg(format!("{GENERATE}{FILTERS}")).arg(&protos).arg(&s.socket));
    assert!(ok && out.contains("FILTERS-OK"), "filters differ from SPIRE's:\n{out}\nserver log:\n{}", s.log());
}
