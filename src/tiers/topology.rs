//! `topology.conf`: which servers and agents a local demo runs, in cairn's HCL reader.
//!
//! ```text
//! trust_domain = "example.org"
//! server "root" {}
//! server "region-a" { upstream = "root" }
//! agent "node-a" { server = "region-a" }
//! ```
//!
//! Servers may nest to any depth. Every problem is reported at once with its key path
//! (`server.region-a.upstream`), like the server and agent configs.

use crate::config::hcl::{Object, Value};
use crate::config::{ConfigErrors, Walker, as_object, format_duration, join};
use crate::spiffe::TrustDomain;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The root's CA lifetime unless the topology says otherwise (the server's own default).
const ROOT_CA_TTL: i64 = 24 * 3600;
/// Default X509-SVID lifetime cap (the server's default).
const X509_SVID_TTL: i64 = 3600;
/// Default JWT-SVID lifetime cap (the server's default).
const JWT_SVID_TTL: i64 = 300;
/// Shortest CA lifetime the demo derives on its own: below this the CA rotates every few
/// minutes and the 10 s rotation check becomes a noticeable share of its life.
const MIN_DERIVED_CA_TTL: i64 = 5 * 60;
/// Longest tier name; it becomes a directory and part of socket paths, which are short.
const MAX_NAME: usize = 40;

/// One CA server of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Its name (directory, SPIFFE ID segment).
    pub name: String,
    /// The server whose CA signs this one's; `None` for the root.
    pub upstream: Option<String>,
    /// 0 for the root, 1 below it, ...
    pub depth: usize,
    /// `ca_ttl`, seconds.
    pub ca_ttl: i64,
    /// `default_x509_svid_ttl`, seconds.
    pub x509_svid_ttl: i64,
    /// `default_jwt_svid_ttl`, seconds.
    pub jwt_svid_ttl: i64,
    /// Line of the `server` block (for messages).
    pub line: u32,
}

/// One workload agent of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Its name.
    pub name: String,
    /// The server it attests to.
    pub server: String,
}

/// A validated topology: servers root first, then level by level (file order within a level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The one trust domain every tier serves.
    pub trust_domain: TrustDomain,
    /// Servers, root first, each after its upstream.
    pub servers: Vec<ServerSpec>,
    /// Agents in file order.
    pub agents: Vec<AgentSpec>,
}

impl Topology {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// The file cannot be read, or every problem in it, one per line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound && path.is_relative() {
                " (relative paths start at the current directory: run from the repository root, or pass DIR)"
            } else {
                ""
            };
            format!("cannot read the topology {}: {e}{hint}", path.display())
        })?;
        crate::config::parse_text(&text, false)
            .and_then(|tree| Self::from_tree(&tree))
            .map_err(|e| format!("topology {} is not valid:\n{e}", path.display()))
    }

    /// Validates a parsed tree.
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    pub fn from_tree(tree: &Object) -> Result<Self, ConfigErrors> {
        let mut w = Walker::new();
        w.unknown_keys(tree, &["trust_domain", "server", "agent"], "", |k| match k {
            "servers" | "tier" => Some("write server \"name\" { upstream = \"...\" }"),
            "agents" => Some("write agent \"name\" { server = \"...\" }"),
            _ => None,
        });
        let trust_domain = match w.string(tree, "trust_domain", "") {
            None => {
                w.err("trust_domain", "missing: set the trust domain every tier serves, e.g. \"example.org\"");
                None
            }
            Some(t) if t.starts_with("spiffe://") => {
                w.err("trust_domain", "give the bare name (example.org), not a SPIFFE ID");
                None
            }
            Some(t) => TrustDomain::new(&t).map_err(|e| w.err("trust_domain", format!("invalid trust domain {t:?}: {e}"))).ok(),
        };

        // Names are shared by servers and agents: each is a directory and a node alias.
        let mut names: HashMap<String, (&'static str, u32)> = HashMap::new();
        let mut raw_servers = Vec::new();
        for (name, body, line) in labelled(&mut w, tree, "server") {
            let path = join("server", &name);
            if !check_name(&mut w, &name, &path, "server", line, &mut names) {
                continue;
            }
            w.unknown_keys(body, &["upstream", "ca_ttl", "x509_svid_ttl", "jwt_svid_ttl"], &path, |k| match k {
                "parent" | "upstream_authority" => Some("the key is upstream = \"<server name>\""),
                _ => None,
            });
            let upstream = w.string(body, "upstream", &path);
            let ca_ttl = w.duration(body, "ca_ttl", &path);
            let x509 = w.duration(body, "x509_svid_ttl", &path);
            let jwt = w.duration(body, "jwt_svid_ttl", &path);
            for (key, v) in [("ca_ttl", ca_ttl), ("x509_svid_ttl", x509), ("jwt_svid_ttl", jwt)] {
                if v == Some(0) {
                    w.err(&join(&path, key), "must be greater than zero");
                }
            }
            raw_servers.push(RawServer { name, upstream, ca_ttl, x509, jwt, line });
        }
        let mut agents = Vec::new();
        for (name, body, line) in labelled(&mut w, tree, "agent") {
            let path = join("agent", &name);
            if !check_name(&mut w, &name, &path, "agent", line, &mut names) {
                continue;
            }
            w.unknown_keys(body, &["server"], &path, |k| match k {
                "upstream" | "parent" => Some("an agent names its server with server = \"<server name>\""),
                _ => None,
            });
            match w.string(body, "server", &path) {
                None if body.get_all("server").next().is_none() => {
                    w.err(&join(&path, "server"), "missing: the name of the server this agent attests to");
                }
                None => {}
                Some(s) => agents.push((AgentSpec { name, server: s }, line)),
            }
        }

        let servers = order_servers(&mut w, &raw_servers);
        let server_names: Vec<&str> = raw_servers.iter().map(|s| s.name.as_str()).collect();
        for (a, _) in &agents {
            if !server_names.contains(&a.server.as_str()) {
                w.err(&format!("agent.{}.server", a.name), unknown_server(&a.server, &server_names, &names));
            }
        }

        match (trust_domain, w.errors.is_empty()) {
            (Some(trust_domain), true) => Ok(Self { trust_domain, servers, agents: agents.into_iter().map(|(a, _)| a).collect() }),
            _ => Err(ConfigErrors(w.errors)),
        }
    }

    /// The root server.
    #[must_use]
    pub fn root(&self) -> Option<&ServerSpec> {
        self.servers.first()
    }

    /// A server by name.
    #[must_use]
    pub fn server(&self, name: &str) -> Option<&ServerSpec> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The servers whose upstream is `name`, in order.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ServerSpec> + 'a {
        self.servers.iter().filter(move |s| s.upstream.as_deref() == Some(name))
    }

    /// The agents attesting to `name`, in order.
    pub fn agents_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a AgentSpec> + 'a {
        self.agents.iter().filter(move |a| a.server == name)
    }
}

struct RawServer {
    name: String,
    upstream: Option<String>,
    ca_ttl: Option<i64>,
    x509: Option<i64>,
    jwt: Option<i64>,
    line: u32,
}

/// The `kind "label" { ... }` blocks of `tree`: (label, body, line).
fn labelled<'a>(w: &mut Walker, tree: &'a Object, kind: &str) -> Vec<(String, &'a Object, u32)> {
    let mut out = Vec::new();
    for item in tree.get_all(kind) {
        let Some(named) = as_object(&item.value) else {
            w.err(kind, format!("expected {kind} \"name\" {{ ... }} (line {})", item.line));
            continue;
        };
        for inner in &named.items {
            match as_object(&inner.value) {
                Some(body) => out.push((inner.key.clone(), body, inner.line)),
                None if matches!(inner.value, Value::List(_)) => w.err(&join(kind, &inner.key), "expected a block { ... }"),
                // `server { upstream = "x" }`: a key where a label should be.
                None => w.err(kind, format!("expected {kind} \"name\" {{ ... }}: the block has no name (line {})", inner.line)),
            }
        }
    }
    out
}

fn check_name(
    w: &mut Walker,
    name: &str,
    path: &str,
    kind: &'static str,
    line: u32,
    names: &mut HashMap<String, (&'static str, u32)>,
) -> bool {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || !valid_chars || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || name.len() > MAX_NAME {
        w.err(
            path,
            format!("invalid name {name:?}: use 1-{MAX_NAME} letters, digits, '-' or '_', starting with a letter or digit (it names a directory and a SPIFFE ID segment)"),
        );
        return false;
    }
    if let Some((other_kind, other_line)) = names.get(name) {
        w.err(
            path,
            format!(
                "the name {name:?} is already used by the {other_kind} on line {other_line}; every server and agent needs its own name"
            ),
        );
        return false;
    }
    names.insert(name.to_owned(), (kind, line));
    true
}

fn unknown_server(name: &str, servers: &[&str], names: &HashMap<String, (&'static str, u32)>) -> String {
    if names.get(name).is_some_and(|(k, _)| *k == "agent") {
        return format!("{name:?} is an agent, not a server");
    }
    format!("no server named {name:?} (servers: {})", if servers.is_empty() { "none".to_owned() } else { servers.join(", ") })
}

/// Checks the tree shape (one root, known upstreams, no cycles) and orders the servers root
/// first, each after its upstream, deriving TTLs level by level.
fn order_servers(w: &mut Walker, raw: &[RawServer]) -> Vec<ServerSpec> {
    let names: Vec<&str> = raw.iter().map(|s| s.name.as_str()).collect();
    let empty = HashMap::new();
    let roots: Vec<&RawServer> = raw.iter().filter(|s| s.upstream.is_none()).collect();
    match roots.as_slice() {
        [] if raw.is_empty() => w.err("server", "missing: at least one server \"name\" {} (the root, without upstream)"),
        [] => w.err("server", "no root: exactly one server must have no upstream (it is the self-signed root of the trust domain)"),
        [_] => {}
        [first, rest @ ..] => {
            for r in rest {
                w.err(
                    &join("server", &r.name),
                    format!(
                        "a second root: server {:?} (line {}) already has no upstream, and a trust domain has exactly one root; give this one upstream = \"...\"",
                        first.name, first.line
                    ),
                );
            }
        }
    }
    let mut known_upstreams = true;
    for s in raw {
        if let Some(u) = &s.upstream
            && !names.contains(&u.as_str())
        {
            w.err(&format!("server.{}.upstream", s.name), unknown_server(u, &names, &empty));
            known_upstreams = false;
        }
    }
    // A server not reached from the root, while every upstream is known, sits on a cycle.
    let by_name: BTreeMap<&str, &RawServer> = raw.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out: Vec<ServerSpec> = Vec::new();
    let Some(root) = roots.first() else { return out };
    let mut frontier = vec![*root];
    let mut depth = 0;
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for s in frontier {
            let parent = s.upstream.as_deref().and_then(|u| out.iter().find(|p| p.name == u)).cloned();
            out.push(derive(w, s, depth, parent.as_ref()));
            next.extend(raw.iter().filter(|c| c.upstream.as_deref() == Some(s.name.as_str())));
        }
        frontier = next;
        depth += 1;
    }
    if known_upstreams && roots.len() == 1 {
        for s in raw.iter().filter(|s| !out.iter().any(|o| o.name == s.name)) {
            // Walk up from s until a name repeats: that loop is the cycle to report.
            let mut chain = vec![s.name.as_str()];
            let mut cur = s;
            while let Some(u) = cur.upstream.as_deref().and_then(|u| by_name.get(u)) {
                let seen = chain.contains(&u.name.as_str());
                chain.push(u.name.as_str());
                if seen {
                    break;
                }
                cur = u;
            }
            w.err(
                &format!("server.{}.upstream", s.name),
                format!(
                    "cycle: {} never reaches the root {:?}; every chain of upstreams must end at the root",
                    chain.join(" -> "),
                    root.name
                ),
            );
        }
    }
    out
}

/// TTLs for one server: given values are checked against the upstream's, missing ones are
/// derived so every level works (a downstream CA lives at most 1/6 of its upstream's, and an
/// SVID at most 1/6 of its CA's: the server refuses anything else).
fn derive(w: &mut Walker, s: &RawServer, depth: usize, parent: Option<&ServerSpec>) -> ServerSpec {
    let path = join("server", &s.name);
    let ca_ttl = match (s.ca_ttl.filter(|v| *v > 0), parent) {
        (Some(v), None) => v,
        (Some(v), Some(p)) => {
            if v > p.ca_ttl / 6 {
                w.err(
                    &join(&path, "ca_ttl"),
                    format!(
                        "{} is more than 1/6 of upstream {:?}'s ca_ttl ({}): a downstream CA must fit in the time its upstream CA stays active; use at most {}",
                        format_duration(v),
                        p.name,
                        format_duration(p.ca_ttl),
                        format_duration(p.ca_ttl / 6)
                    ),
                );
            }
            v
        }
        (None, None) => ROOT_CA_TTL,
        (None, Some(p)) => {
            let v = p.ca_ttl / 6;
            if v < MIN_DERIVED_CA_TTL {
                w.err(
                    &path,
                    format!(
                        "at depth {depth} this server's CA would live only {} (each tier at most 1/6 of its upstream's {}); give the root a longer ca_ttl, e.g. ca_ttl = \"{}h\"",
                        format_duration(v),
                        format_duration(p.ca_ttl),
                        (MIN_DERIVED_CA_TTL * 6_i64.pow(u32::try_from(depth).unwrap_or(u32::MAX).min(12)) + 3599) / 3600
                    ),
                );
            }
            v
        }
    };
    // A CA is active for its last sixth; an SVID must fit in that, with room to renew.
    let cap = (ca_ttl / 8).max(1);
    let svid = |w: &mut Walker, key: &str, given: Option<i64>, default: i64| -> i64 {
        match given.filter(|v| *v > 0) {
            Some(v) if v > ca_ttl / 6 => {
                w.err(
                    &join(&path, key),
                    format!(
                        "{} is longer than ca_ttl/6 ({}); SVIDs would outlive their CA",
                        format_duration(v),
                        format_duration(ca_ttl / 6)
                    ),
                );
                v
            }
            Some(v) => v,
            None => default.min(cap),
        }
    };
    let x509_svid_ttl = svid(w, "x509_svid_ttl", s.x509, X509_SVID_TTL);
    let jwt_svid_ttl = svid(w, "jwt_svid_ttl", s.jwt, JWT_SVID_TTL);
    ServerSpec { name: s.name.clone(), upstream: s.upstream.clone(), depth, ca_ttl, x509_svid_ttl, jwt_svid_ttl, line: s.line }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
    use super::*;

    fn parse(text: &str) -> Result<Topology, String> {
        crate::config::parse_text(text, false).and_then(|t| Topology::from_tree(&t)).map_err(|e| e.to_string())
    }

    #[test]
    fn demo_topology_orders_servers_and_derives_ttls() {
        let t = parse(
            r#"
trust_domain = "example.org"
agent "node-a" { server = "region-a" }
server "region-a" { upstream = "root" }
server "zone-1" { upstream = "region-a" }
server "root" {}
server "region-b" { upstream = "root" }
agent "node-z" { server = "zone-1" }
"#,
        )
        .unwrap();
        let names: Vec<_> = t.servers.iter().map(|s| (s.name.as_str(), s.depth)).collect();
        assert_eq!(names, [("root", 0), ("region-a", 1), ("region-b", 1), ("zone-1", 2)]);
        let ttl = |n: &str| t.server(n).map(|s| (s.ca_ttl, s.x509_svid_ttl, s.jwt_svid_ttl)).unwrap();
        assert_eq!(ttl("root"), (86_400, 3_600, 300));
        assert_eq!(ttl("region-a"), (14_400, 1_800, 300));
        assert_eq!(ttl("zone-1"), (2_400, 300, 300));
        assert_eq!(t.children("root").map(|s| s.name.as_str()).collect::<Vec<_>>(), ["region-a", "region-b"]);
        assert_eq!(t.agents_of("zone-1").map(|a| a.name.as_str()).collect::<Vec<_>>(), ["node-z"]);
        assert_eq!(t.root().map(|r| r.name.as_str()), Some("root"));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = parse(
            r#"
trust_domain = "spiffe://x"
server "root" {}
server "other-root" {}
server "a" { upstream = "nowhere" }
server "a" { upstream = "root" }
server "bad name" {}
agent "n" { server = "ghost" }
agent "m" {}
agent "k" { server = "n" }
server "r" { upstream = "root" colour = "red" }
"#,
        )
        .unwrap_err();
        for want in [
            "trust_domain: give the bare name",
            "server.other-root: a second root",
            "server.a.upstream: no server named \"nowhere\"",
            "server.a: the name \"a\" is already used by the server on line 5",
            "server.bad name: invalid name",
            "agent.n.server: no server named \"ghost\"",
            "agent.m.server: missing",
            "agent.k.server: \"n\" is an agent, not a server",
            "server.r.colour: unknown key",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn cycles_and_missing_roots_are_refused() {
        let e = parse(
            "trust_domain = \"example.org\"\nserver \"root\" {}\nserver \"a\" { upstream = \"b\" }\nserver \"b\" { upstream = \"a\" }\n",
        )
        .unwrap_err();
        assert!(e.contains("server.a.upstream: cycle: a -> b -> a"), "{e}");
        assert!(e.contains("server.b.upstream: cycle: b -> a -> b"), "{e}");
        let e = parse("trust_domain = \"example.org\"\nserver \"a\" { upstream = \"a\" }\n").unwrap_err();
        assert!(e.contains("no root"), "{e}");
        let e = parse("trust_domain = \"example.org\"\n").unwrap_err();
        assert!(e.contains("server: missing"), "{e}");
        let e = parse("trust_domain = \"example.org\"\nserver { upstream = \"x\" }\n").unwrap_err();
        assert!(e.contains("the block has no name"), "{e}");
    }

    #[test]
    fn ttls_are_checked_against_the_upstream() {
        let e = parse("trust_domain = \"example.org\"\nserver \"root\" {}\nserver \"r\" { upstream = \"root\" ca_ttl = \"5h\" }\n")
            .unwrap_err();
        assert!(e.contains("server.r.ca_ttl: 5h is more than 1/6 of upstream \"root\"'s ca_ttl (24h)"), "{e}");
        let deep = "trust_domain = \"example.org\"\nserver \"l0\" {}\nserver \"l1\" { upstream = \"l0\" }\nserver \"l2\" { upstream = \"l1\" }\nserver \"l3\" { upstream = \"l2\" }\nserver \"l4\" { upstream = \"l3\" }\n";
        let e = parse(deep).unwrap_err();
        assert!(e.contains("server.l4: at depth 4"), "{e}");
        let ok = deep.replace("server \"l0\" {}", "server \"l0\" { ca_ttl = \"720h\" }");
        let t = parse(&ok).unwrap();
        assert_eq!(t.server("l4").map(|s| s.ca_ttl), Some(720 * 3600 / 1296));
        let e = parse("trust_domain = \"example.org\"\nserver \"root\" { x509_svid_ttl = \"5h\" }\n").unwrap_err();
        assert!(e.contains("server.root.x509_svid_ttl: 5h is longer than ca_ttl/6 (4h)"), "{e}");
    }
}
