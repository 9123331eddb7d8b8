//! `cairn server entry ...`: SPIRE's `spire-server entry` verbs with its flags, checks, text
//! and `-output json`.
//!
//! What operators' scripts rely on, and SPIRE does:
//! - `update` replaces the entry: a flag not given is cleared, not kept;
//! - `show` and `count` filter by selectors and federated trust domains with a match mode
//!   (`-matchSelectorsOn`, `-matchFederatesWithOn`; superset unless told), by hint, and by
//!   downstream; `show` sorts by SPIFFE ID, parent ID, TTLs and selectors;
//! - `create -data FILE` and `update -data FILE` take SPIRE's registration JSON
//!   (`{"entries": [{"spiffe_id": "spiffe://...", "parent_id": ..., "selectors": [...]}]}`),
//!   `-` meaning stdin; cairn also reads back what `entry show -output json` prints (IDs as
//!   `{trust_domain, path}`, `id`, `expires_at`), so a listing can be re-imported;
//! - `delete -file` takes `{"ids": [...]}` (a BatchDeleteEntryRequest);
//! - `-output json` prints the API reply as protojson with proto field names, 64-bit integers
//!   as strings and keys sorted, as SPIRE's printer does.

use super::client::connect_admin;
use super::server::{Sock, code_name, rpc_error};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::wire::convert::id_to_proto;
use crate::wire::pb::spire::api::server::entry::v1 as entrypb;
use crate::wire::pb::spire::api::types as pt;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

type CliResult = Result<(), String>;

/// Entries sent per BatchCreateEntry/BatchUpdateEntry call for `-data` files: one reply stays
/// far below gRPC's 4 MiB message limit.
const BATCH: usize = 1000;

/// Page size of `entry show` (SPIRE's CLI uses the same).
const PAGE: i32 = 500;

/// Entry fields (create and update).
#[derive(Debug, Args, Clone, Default)]
pub struct EntryFields {
    /// Entry ID (update: which entry; create: a custom ID).
    #[arg(long)]
    entry_id: Option<String>,
    /// SPIFFE ID the entry issues.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Parent ID (an agent or node alias).
    #[arg(long)]
    parent_id: Option<String>,
    /// Selector `type:value` (repeatable).
    #[arg(long)]
    selector: Vec<String>,
    /// Make a node-alias entry (parent = the server).
    #[arg(long)]
    node: bool,
    /// The identity may call admin APIs.
    #[arg(long)]
    admin: bool,
    /// The identity is a downstream tier.
    #[arg(long)]
    downstream: bool,
    /// Trust domain whose bundle the workload receives (repeatable).
    #[arg(long)]
    federates_with: Vec<String>,
    /// DNS SAN (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// X509-SVID TTL: seconds or a duration (`1h`, `90s`).
    #[arg(long, value_parser = super::parse_ttl)]
    x509_svid_ttl: Option<i32>,
    /// JWT-SVID TTL: seconds or a duration (`5m`).
    #[arg(long, value_parser = super::parse_ttl)]
    jwt_svid_ttl: Option<i32>,
    /// Entry expiry, unix seconds.
    #[arg(long)]
    entry_expiry: Option<i64>,
    /// Hint for workloads.
    #[arg(long)]
    hint: Option<String>,
    /// The agent stores the SVID.
    #[arg(long)]
    store_svid: bool,
    /// The agent mints this entry's X509-SVID only when a workload first asks for it.
    #[arg(long)]
    disable_x509_svid_prefetch: bool,
    /// JWT-SVIDs of this entry carry a fresh `jti`; agents do not cache them.
    #[arg(long)]
    jwt_svid_include_jti: bool,
    /// Registration JSON to read instead of flags (`-` for stdin).
    #[arg(long)]
    data: Option<String>,
}

/// Filters of `entry show` and `entry count`.
#[derive(Debug, Args, Clone)]
pub struct EntryQuery {
    /// Filter by SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Filter by parent ID.
    #[arg(long)]
    parent_id: Option<String>,
    /// Filter by selector (repeatable).
    #[arg(long)]
    selector: Vec<String>,
    /// Filter by federated trust domain (repeatable).
    #[arg(long)]
    federates_with: Vec<String>,
    /// Selector match mode: exact, any, superset or subset.
    #[arg(long, default_value = "superset")]
    match_selectors_on: String,
    /// Federated trust domain match mode: exact, any, superset or subset.
    #[arg(long, default_value = "superset")]
    match_federates_with_on: String,
    /// Filter by hint.
    #[arg(long)]
    hint: Option<String>,
    /// Only downstream entries.
    #[arg(long)]
    downstream: bool,
}

/// `entry` subcommands.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Create entries (from flags, or many from -data).
    Create {
        #[command(flatten)]
        f: EntryFields,
        #[command(flatten)]
        sock: Sock,
    },
    /// Replace entries: every field takes the value given, flags not given are cleared.
    Update {
        #[command(flatten)]
        f: EntryFields,
        #[command(flatten)]
        sock: Sock,
    },
    /// Show entries (filters optional).
    Show {
        /// Entry ID.
        #[arg(long)]
        entry_id: Option<String>,
        #[command(flatten)]
        q: EntryQuery,
        #[command(flatten)]
        sock: Sock,
    },
    /// Delete entries.
    Delete {
        /// Entry ID.
        #[arg(long)]
        entry_id: Option<String>,
        /// JSON `{"ids": [...]}` to delete many (`-` for stdin).
        #[arg(long)]
        file: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
    /// Count entries (filters optional).
    Count {
        #[command(flatten)]
        q: EntryQuery,
        #[command(flatten)]
        sock: Sock,
    },
}

fn id_proto(s: &str) -> Result<pt::Spiffeid, String> {
    SpiffeId::new(s).map(|i| id_to_proto(&i)).map_err(|e| format!("{s:?}: {e}"))
}

fn id_text(i: Option<&pt::Spiffeid>) -> String {
    i.map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default()
}

pub(crate) fn parse_selector(s: &str) -> Result<pt::Selector, String> {
    match s.split_once(':') {
        Some((t, v)) => Ok(pt::Selector { r#type: t.to_owned(), value: v.to_owned() }),
        None => Err(format!("selector \"{s}\" must be formatted as type:value")),
    }
}

fn trust_domain(s: &str) -> Result<String, String> {
    TrustDomain::new(s).map(|t| t.as_str().to_owned()).map_err(|e| format!("invalid federated trust domain {s:?}: {e}"))
}

pub(crate) fn match_behaviour(mode: &str) -> Result<i32, String> {
    use pt::selector_match::MatchBehavior as B;
    Ok(match mode {
        "exact" => B::MatchExact as i32,
        "subset" => B::MatchSubset as i32,
        "superset" => B::MatchSuperset as i32,
        "any" => B::MatchAny as i32,
        other => return Err(format!("match behavior {other:?} unknown")),
    })
}

/// SPIRE's entry block.
fn print_entry(e: &pt::Entry, w: &mut dyn FnMut(String)) {
    let id = if e.id.is_empty() { "(none)" } else { e.id.as_str() };
    w(format!("Entry ID                : {id}"));
    w(format!("SPIFFE ID               : {}", id_text(e.spiffe_id.as_ref())));
    w(format!("Parent ID               : {}", id_text(e.parent_id.as_ref())));
    w(format!("Revision                : {}", e.revision_number));
    if e.downstream {
        w("Downstream              : true".into());
    }
    let ttl = |t: i32| if t == 0 { "default".to_owned() } else { t.to_string() };
    w(format!("X509-SVID TTL           : {}", ttl(e.x509_svid_ttl)));
    w(format!("JWT-SVID TTL            : {}", ttl(e.jwt_svid_ttl)));
    if e.expires_at != 0 {
        w(format!("Expiration time         : {}", super::agent::go_time(e.expires_at)));
    }
    for s in &e.selectors {
        w(format!("Selector                : {}:{}", s.r#type, s.value));
    }
    for f in &e.federates_with {
        w(format!("FederatesWith           : {f}"));
    }
    for d in &e.dns_names {
        w(format!("DNS name                : {d}"));
    }
    if e.admin {
        w("Admin                   : true".into());
    }
    if e.store_svid {
        w("StoreSvid               : true".into());
    }
    if !e.hint.is_empty() {
        w(format!("Hint                    : {}", e.hint));
    }
    if let Some(a) = &e.additional_attributes {
        if a.disable_x509_svid_prefetch {
            w("DisableX509SvidPrefetch : true".into());
        }
        if a.jwt_svid_include_jti {
            w("JwtSvidIncludeJti       : true".into());
        }
    }
    w(String::new());
}

fn print_out(e: &pt::Entry) {
    print_entry(e, &mut |l| outln!("{l}"));
}

fn print_err(e: &pt::Entry) {
    print_entry(e, &mut |l| eprintln!("{l}"));
}

/// An entry as SPIRE's `-output json` prints it (protojson: proto names, int64 as strings,
/// unpopulated fields present).
#[must_use]
pub fn entry_json(e: &pt::Entry) -> Value {
    let id = |i: Option<&pt::Spiffeid>| i.map_or(Value::Null, |i| json!({"path": i.path, "trust_domain": i.trust_domain}));
    let mut v = json!({
        "admin": e.admin,
        "created_at": e.created_at.to_string(),
        "dns_names": e.dns_names,
        "downstream": e.downstream,
        "expires_at": e.expires_at.to_string(),
        "federates_with": e.federates_with,
        "hint": e.hint,
        "id": e.id,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "parent_id": id(e.parent_id.as_ref()),
        "revision_number": e.revision_number.to_string(),
        "selectors": e.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "spiffe_id": id(e.spiffe_id.as_ref()),
        "store_svid": e.store_svid,
        "x509_svid_ttl": e.x509_svid_ttl,
    });
    // An optional field: present only when set, as protojson prints it.
    if let Some(a) = &e.additional_attributes {
        v["additional_attributes"] =
            json!({"disable_x509_svid_prefetch": a.disable_x509_svid_prefetch, "jwt_svid_include_jti": a.jwt_svid_include_jti});
    }
    v
}

pub(crate) fn status_json(st: Option<&pt::Status>) -> Value {
    st.map_or(Value::Null, |s| json!({"code": s.code, "message": s.message}))
}

fn status_code(st: Option<&pt::Status>) -> i32 {
    st.map_or(0, |s| s.code)
}

/// The entry the flags describe, checked as SPIRE's `entry create` checks them.
fn from_flags(f: &EntryFields, update: bool) -> Result<pt::Entry, String> {
    if update && f.entry_id.as_deref().unwrap_or("").is_empty() {
        return Err("entry ID is required".into());
    }
    if f.selector.is_empty() {
        return Err("at least one selector is required".into());
    }
    if !update && f.node && !f.federates_with.is_empty() {
        return Err("node entries can not federate".into());
    }
    if f.parent_id.is_none() && !f.node {
        return Err(if update { "a parent ID is required".into() } else { "a parent ID is required if the node flag is not set".into() });
    }
    let Some(spiffe_id) = f.spiffe_id.as_deref() else {
        return Err("a SPIFFE ID is required".into());
    };
    if f.x509_svid_ttl.unwrap_or(0) < 0 {
        return Err("a positive x509-SVID TTL is required".into());
    }
    if f.jwt_svid_ttl.unwrap_or(0) < 0 {
        return Err("a positive JWT-SVID TTL is required".into());
    }
    let spiffe_id = id_proto(spiffe_id).map_err(|e| format!("invalid SPIFFE ID {e}"))?;
    let parent_id = if f.node {
        pt::Spiffeid { trust_domain: spiffe_id.trust_domain.clone(), path: "/spire/server".into() }
    } else {
        id_proto(f.parent_id.as_deref().unwrap_or_default()).map_err(|e| format!("invalid parent ID {e}"))?
    };
    Ok(pt::Entry {
        id: f.entry_id.clone().unwrap_or_default(),
        spiffe_id: Some(spiffe_id),
        parent_id: Some(parent_id),
        selectors: f.selector.iter().map(|s| parse_selector(s)).collect::<Result<_, _>>()?,
        x509_svid_ttl: f.x509_svid_ttl.unwrap_or(0),
        jwt_svid_ttl: f.jwt_svid_ttl.unwrap_or(0),
        federates_with: f.federates_with.iter().map(|t| trust_domain(t)).collect::<Result<_, _>>()?,
        admin: f.admin,
        downstream: f.downstream,
        expires_at: f.entry_expiry.unwrap_or(0),
        dns_names: f.dns.clone(),
        hint: f.hint.clone().unwrap_or_default(),
        store_svid: f.store_svid,
        additional_attributes: (f.disable_x509_svid_prefetch || f.jwt_svid_include_jti).then_some(pt::entry::AdditionalAttributes {
            disable_x509_svid_prefetch: f.disable_x509_svid_prefetch,
            jwt_svid_include_jti: f.jwt_svid_include_jti,
        }),
        ..pt::Entry::default()
    })
}

fn read_input(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("reading stdin: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| format!("open {path}: {e}"))
    }
}

/// A JSON object's field by any of its spellings (Go's decoder matches names without regard
/// to case; the protojson names are accepted too).
fn field<'a>(o: &'a serde_json::Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    o.iter().find(|(k, v)| !v.is_null() && names.iter().any(|n| k.eq_ignore_ascii_case(n))).map(|(_, v)| v)
}

fn json_int(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{what}: {n} is not an integer")),
        Value::String(s) => s.parse().map_err(|_| format!("{what}: {s:?} is not an integer")),
        other => Err(format!("{what}: expected a number, got {other}")),
    }
}

fn json_id(v: &Value, what: &str) -> Result<pt::Spiffeid, String> {
    match v {
        Value::String(s) => id_proto(s).map_err(|e| format!("invalid {what}: {e}")),
        Value::Object(o) => {
            let td = field(o, &["trust_domain", "trustDomain"]).and_then(Value::as_str).unwrap_or_default();
            let path = field(o, &["path"]).and_then(Value::as_str).unwrap_or_default();
            id_proto(&format!("spiffe://{td}{path}")).map_err(|e| format!("invalid {what}: {e}"))
        }
        other => Err(format!("invalid {what}: expected a string, got {other}")),
    }
}

fn json_strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: expected a list"))?
        .iter()
        .map(|s| s.as_str().map(str::to_owned).ok_or_else(|| format!("{what}: expected strings, got {s}")))
        .collect()
}

fn json_bool(v: &Value, what: &str) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("{what}: expected true or false, got {v}"))
}

/// One entry of a registration JSON file.
fn entry_from_json(v: &Value, n: usize) -> Result<pt::Entry, String> {
    let o = v.as_object().ok_or_else(|| format!("entry {n}: expected an object"))?;
    let at = |what: &str| format!("entry {n}: {what}");
    let spiffe_id = field(o, &["spiffe_id", "spiffeId"]).ok_or_else(|| at("invalid SPIFFE ID: missing"))?;
    let parent_id = field(o, &["parent_id", "parentId"]).ok_or_else(|| at("invalid parent ID: missing"))?;
    let int32 = |names: &[&str], what: &str| -> Result<i32, String> {
        field(o, names).map_or(Ok(0), |v| {
            let i = json_int(v, &at(what))?;
            i32::try_from(i).map_err(|_| at(&format!("{what}: {i} is out of range")))
        })
    };
    let selectors = match field(o, &["selectors"]) {
        None => Vec::new(),
        Some(s) => s
            .as_array()
            .ok_or_else(|| at("selectors: expected a list"))?
            .iter()
            .map(|s| {
                let so = s.as_object().ok_or_else(|| at("selectors: expected {\"type\", \"value\"} objects"))?;
                Ok(pt::Selector {
                    r#type: field(so, &["type"]).and_then(Value::as_str).unwrap_or_default().to_owned(),
                    value: field(so, &["value"]).and_then(Value::as_str).unwrap_or_default().to_owned(),
                })
            })
            .collect::<Result<_, String>>()?,
    };
    let federates_with = match field(o, &["federates_with", "federatesWith"]) {
        None => Vec::new(),
        Some(v) => json_strings(v, &at("federates_with"))?.iter().map(|t| trust_domain(t).map_err(|e| at(&e))).collect::<Result<_, _>>()?,
    };
    Ok(pt::Entry {
        id: field(o, &["entry_id", "entryId", "id"]).and_then(Value::as_str).unwrap_or_default().to_owned(),
        spiffe_id: Some(json_id(spiffe_id, "SPIFFE ID").map_err(|e| at(&e))?),
        parent_id: Some(json_id(parent_id, "parent ID").map_err(|e| at(&e))?),
        selectors,
        x509_svid_ttl: int32(&["x509_svid_ttl", "x509SvidTtl"], "x509_svid_ttl")?,
        jwt_svid_ttl: int32(&["jwt_svid_ttl", "jwtSvidTtl"], "jwt_svid_ttl")?,
        federates_with,
        admin: field(o, &["admin"]).map_or(Ok(false), |v| json_bool(v, &at("admin")))?,
        downstream: field(o, &["downstream"]).map_or(Ok(false), |v| json_bool(v, &at("downstream")))?,
        expires_at: field(o, &["entryExpiry", "expires_at", "expiresAt"]).map_or(Ok(0), |v| json_int(v, &at("entryExpiry")))?,
        dns_names: field(o, &["dns_names", "dnsNames"]).map_or(Ok(Vec::new()), |v| json_strings(v, &at("dns_names")))?,
        store_svid: field(o, &["store_svid", "storeSvid"]).map_or(Ok(false), |v| json_bool(v, &at("store_svid")))?,
        hint: field(o, &["hint"]).and_then(Value::as_str).unwrap_or_default().to_owned(),
        additional_attributes: match field(o, &["additional_attributes", "additionalAttributes"]) {
            None => None,
            Some(a) => {
                let a = a.as_object().ok_or_else(|| at("additional_attributes: expected an object"))?;
                let flag = |names: &[&str]| field(a, names).map_or(Ok(false), |v| json_bool(v, &at(names[0])));
                Some(pt::entry::AdditionalAttributes {
                    disable_x509_svid_prefetch: flag(&["disable_x509_svid_prefetch", "disableX509SvidPrefetch"])?,
                    jwt_svid_include_jti: flag(&["jwt_svid_include_jti", "jwtSvidIncludeJti"])?,
                })
            }
        },
        ..pt::Entry::default()
    })
}

/// SPIRE's registration JSON (`{"entries": [...]}`), or a bare list of entries.
fn entries_from_json(data: &[u8]) -> Result<Vec<pt::Entry>, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("the registration JSON is not valid JSON: {e}"))?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => match field(o, &["entries"]) {
            Some(Value::Array(a)) => a,
            Some(_) => return Err("the registration JSON's \"entries\" is not a list".into()),
            None => return Ok(Vec::new()),
        },
        _ => return Err("the registration JSON must be an object with an \"entries\" list".into()),
    };
    list.iter().enumerate().map(|(i, e)| entry_from_json(e, i + 1)).collect()
}

fn ids_from_json(data: &[u8]) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("the delete JSON is not valid JSON: {e}"))?;
    let o = v.as_object().ok_or("the delete JSON must be an object with an \"ids\" list")?;
    match field(o, &["ids"]) {
        None => Ok(Vec::new()),
        Some(ids) => json_strings(ids, "ids"),
    }
}

fn filter_from(q: &EntryQuery) -> Result<entrypb::list_entries_request::Filter, String> {
    let mut f = entrypb::list_entries_request::Filter::default();
    if let Some(p) = &q.parent_id {
        f.by_parent_id = Some(id_proto(p).map_err(|e| format!("error parsing parent ID {p:?}: {e}"))?);
    }
    if let Some(s) = &q.spiffe_id {
        f.by_spiffe_id = Some(id_proto(s).map_err(|e| format!("error parsing SPIFFE ID {s:?}: {e}"))?);
    }
    if !q.selector.is_empty() {
        let m = match_behaviour(&q.match_selectors_on)?;
        let selectors =
            q.selector.iter().map(|s| parse_selector(s)).collect::<Result<_, _>>().map_err(|e| format!("error parsing selectors: {e}"))?;
        f.by_selectors = Some(pt::SelectorMatch { selectors, r#match: m });
    }
    if !q.federates_with.is_empty() {
        let m = match_behaviour(&q.match_federates_with_on)?;
        f.by_federates_with = Some(pt::FederatesWithMatch { trust_domains: q.federates_with.clone(), r#match: m });
    }
    if let Some(h) = q.hint.as_ref().filter(|h| !h.is_empty()) {
        f.by_hint = Some(h.clone());
    }
    f.by_downstream = q.downstream.then_some(true);
    Ok(f)
}

/// SPIRE's order for `entry show`: SPIFFE ID, parent ID, X.509 then JWT TTL, then selectors.
fn sort_entries(entries: &mut [pt::Entry]) {
    for e in entries.iter_mut() {
        e.selectors.sort_by(|a, b| (&a.r#type, &a.value).cmp(&(&b.r#type, &b.value)));
    }
    let key = |i: Option<&pt::Spiffeid>| i.map(|i| (i.trust_domain.clone(), i.path.clone())).unwrap_or_default();
    entries.sort_by(|a, b| {
        key(a.spiffe_id.as_ref())
            .cmp(&key(b.spiffe_id.as_ref()))
            .then_with(|| key(a.parent_id.as_ref()).cmp(&key(b.parent_id.as_ref())))
            .then_with(|| a.x509_svid_ttl.cmp(&b.x509_svid_ttl))
            .then_with(|| a.jwt_svid_ttl.cmp(&b.jwt_svid_ttl))
            .then_with(|| a.selectors.len().cmp(&b.selectors.len()))
            .then_with(|| {
                let sel = |e: &pt::Entry| e.selectors.iter().map(|s| (s.r#type.clone(), s.value.clone())).collect::<Vec<_>>();
                sel(a).cmp(&sel(b))
            })
    });
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Runs one `entry` subcommand.
///
/// # Errors
/// A message for the operator, as SPIRE words it.
pub async fn run(cmd: EntryCommand) -> CliResult {
    match cmd {
        EntryCommand::Create { f, sock } => create(f, sock).await,
        EntryCommand::Update { f, sock } => update(f, sock).await,
        EntryCommand::Show { entry_id, q, sock } => show(entry_id, q, sock).await,
        EntryCommand::Delete { entry_id, file, sock } => delete(entry_id, file, sock).await,
        EntryCommand::Count { q, sock } => {
            let f = filter_from(&q)?;
            let filter = entrypb::count_entries_request::Filter {
                by_spiffe_id: f.by_spiffe_id,
                by_parent_id: f.by_parent_id,
                by_selectors: f.by_selectors,
                by_federates_with: f.by_federates_with,
                by_hint: f.by_hint,
                by_downstream: f.by_downstream,
            };
            let mut c = entrypb::entry_client::EntryClient::new(connect_admin(&sock.path()?).await?);
            let n =
                c.count_entries(entrypb::CountEntriesRequest { filter: Some(filter) }).await.map_err(|e| rpc_error(&e))?.into_inner().count;
            if sock.output == "json" {
                outln!("{}", json!({"count": n}));
            } else {
                outln!("{}", plural(usize::try_from(n).unwrap_or(0), "registration entry", "registration entries"));
            }
            Ok(())
        }
    }
}

async fn create(f: EntryFields, sock: Sock) -> CliResult {
    let entries = match &f.data {
        Some(path) => entries_from_json(&read_input(path)?)?,
        None => vec![from_flags(&f, false)?],
    };
    let mut c = entrypb::entry_client::EntryClient::new(connect_admin(&sock.path()?).await?);
    let mut results = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(BATCH) {
        let resp = c
            .batch_create_entry(entrypb::BatchCreateEntryRequest { entries: chunk.to_vec(), output_mask: None })
            .await
            .map_err(|e| rpc_error(&e))?
            .into_inner();
        // A failed result carries the entry as it was asked for (SPIRE's CLI does the same).
        for (r, asked) in resp.results.into_iter().zip(chunk) {
            let failed = status_code(r.status.as_ref()) != 0;
            results.push((r.status, if failed { Some(asked.clone()) } else { r.entry }));
        }
    }
    report(&results, &sock, "create")
}

async fn update(f: EntryFields, sock: Sock) -> CliResult {
    let mut entries = match &f.data {
        Some(path) => entries_from_json(&read_input(path)?)?,
        None => vec![from_flags(&f, true)?],
    };
    let mut c = entrypb::entry_client::EntryClient::new(connect_admin(&sock.path()?).await?);
    // As SPIRE's CLI: an attribute flag adds to the attributes the entry has; without one,
    // the attributes are replaced (cleared) like every other field.
    if f.data.is_none()
        && (f.disable_x509_svid_prefetch || f.jwt_svid_include_jti)
        && let Some(e) = entries.first_mut()
    {
        let existing = c
            .get_entry(entrypb::GetEntryRequest { id: e.id.clone(), output_mask: None })
            .await
            .map_err(|err| format!("failed to fetch existing entry to merge additional attributes: {}", rpc_error(&err)))?
            .into_inner();
        let mut a = existing.additional_attributes.unwrap_or_default();
        a.disable_x509_svid_prefetch |= f.disable_x509_svid_prefetch;
        a.jwt_svid_include_jti |= f.jwt_svid_include_jti;
        e.additional_attributes = Some(a);
    }
    let mut results = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(BATCH) {
        // No input mask: the entry is replaced as given, as SPIRE's CLI asks.
        let resp = c
            .batch_update_entry(entrypb::BatchUpdateEntryRequest { entries: chunk.to_vec(), input_mask: None, output_mask: None })
            .await
            .map_err(|e| rpc_error(&e))?
            .into_inner();
        for (r, asked) in resp.results.into_iter().zip(chunk) {
            let failed = status_code(r.status.as_ref()) != 0;
            results.push((r.status, if failed { Some(asked.clone()) } else { r.entry }));
        }
    }
    report(&results, &sock, "update")
}

/// Prints batch results as SPIRE does: successes on stdout, failures with their code on
/// stderr and an error; `-output json` prints the reply and succeeds.
fn report(results: &[(Option<pt::Status>, Option<pt::Entry>)], sock: &Sock, verb: &str) -> CliResult {
    if sock.output == "json" {
        let list: Vec<Value> = results
            .iter()
            .map(|(st, e)| json!({"status": status_json(st.as_ref()), "entry": e.as_ref().map_or(Value::Null, entry_json)}))
            .collect();
        outln!("{}", json!({"results": list}));
        return Ok(());
    }
    let mut failed = 0;
    for (st, e) in results {
        if let Some(e) = e.as_ref().filter(|_| status_code(st.as_ref()) == 0) {
            print_out(e);
        }
    }
    for (st, e) in results {
        if let Some(st) = st.as_ref().filter(|s| s.code != 0) {
            failed += 1;
            eprintln!("Failed to {verb} the following entry (code: {}, msg: {:?}):", code_name(tonic::Code::from_i32(st.code)), st.message);
            if let Some(e) = e {
                print_err(e);
            }
        }
    }
    if failed > 0 { Err(format!("failed to {verb} one or more entries")) } else { Ok(()) }
}

async fn show(entry_id: Option<String>, q: EntryQuery, sock: Sock) -> CliResult {
    if entry_id.is_some() && (q.parent_id.is_some() || q.spiffe_id.is_some() || !q.selector.is_empty()) {
        return Err("the -entryID flag can't be combined with others".into());
    }
    let mut c = entrypb::entry_client::EntryClient::new(connect_admin(&sock.path()?).await?);
    let mut entries = Vec::new();
    if let Some(id) = entry_id.filter(|i| !i.is_empty()) {
        let e = c
            .get_entry(entrypb::GetEntryRequest { id: id.clone(), output_mask: None })
            .await
            .map_err(|e| format!("error fetching entry ID {id}: {}", rpc_error(&e)))?
            .into_inner();
        entries.push(e);
    } else {
        let filter = filter_from(&q)?;
        let mut page_token = String::new();
        loop {
            let resp = c
                .list_entries(entrypb::ListEntriesRequest { filter: Some(filter.clone()), page_size: PAGE, page_token, output_mask: None })
                .await
                .map_err(|e| format!("error fetching entries: {}", rpc_error(&e)))?
                .into_inner();
            entries.extend(resp.entries);
            if resp.next_page_token.is_empty() {
                break;
            }
            page_token = resp.next_page_token;
        }
    }
    sort_entries(&mut entries);
    if sock.output == "json" {
        outln!("{}", json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>(), "next_page_token": ""}));
        return Ok(());
    }
    outln!("Found {}", plural(entries.len(), "entry", "entries"));
    entries.iter().for_each(print_out);
    Ok(())
}

async fn delete(entry_id: Option<String>, file: Option<String>, sock: Sock) -> CliResult {
    let ids = match (&file, entry_id) {
        (Some(path), _) => ids_from_json(&read_input(path)?)?,
        (None, Some(id)) if !id.is_empty() => vec![id],
        (None, _) => return Err("an entry ID is required".into()),
    };
    let mut c = entrypb::entry_client::EntryClient::new(connect_admin(&sock.path()?).await?);
    let mut results = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH) {
        let resp =
            c.batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids: chunk.to_vec() }).await.map_err(|e| rpc_error(&e))?.into_inner();
        results.extend(resp.results);
    }
    if sock.output == "json" {
        let list: Vec<Value> = results.iter().map(|r| json!({"id": r.id, "status": status_json(r.status.as_ref())})).collect();
        outln!("{}", json!({"results": list}));
        return Ok(());
    }
    let (ok, failed): (Vec<_>, Vec<_>) = results.iter().partition(|r| status_code(r.status.as_ref()) == 0);
    for r in &ok {
        outln!("Deleted entry with ID: {}", r.id);
    }
    if !ok.is_empty() {
        outln!("\n");
    }
    for r in &failed {
        let st = r.status.clone().unwrap_or_default();
        eprintln!("Failed to delete entry with ID {} (code: {}, msg: {:?})", r.id, code_name(tonic::Code::from_i32(st.code)), st.message);
    }
    if !failed.is_empty() {
        outln!("\n");
        if ok.is_empty() {
            out!("Failed to delete {} entries", failed.len());
        } else {
            out!("Deleted {} entries successfully, but failed to delete {} entries", ok.len(), failed.len());
        }
        return Err("failed to delete one or more entries".into());
    }
    out!("Deleted {} entries successfully", ok.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn spire_registration_json_and_show_output_both_import() {
        let spire = br#"{"entries": [{"selectors": [{"type": "unix", "value": "uid:1"}], "spiffe_id": "spiffe://domain.test/w",
            "parent_id": "spiffe://domain.test/node", "x509_svid_ttl": 60, "federates_with": ["spiffe://fed.test"],
            "entryExpiry": 1700000000, "dns_names": ["a.test"], "admin": true, "entry_id": "custom",
            "additional_attributes": {"disable_x509_svid_prefetch": true}}]}"#;
        let e = entries_from_json(spire).unwrap().remove(0);
        assert_eq!(e.id, "custom");
        assert_eq!(id_text(e.spiffe_id.as_ref()), "spiffe://domain.test/w");
        assert_eq!(e.federates_with, vec!["fed.test".to_owned()]);
        assert_eq!((e.x509_svid_ttl, e.expires_at, e.admin), (60, 1_700_000_000, true));
        assert_eq!(
            e.additional_attributes,
            Some(pt::entry::AdditionalAttributes { disable_x509_svid_prefetch: true, jwt_svid_include_jti: false })
        );
        // What `entry show -output json` prints reads back to the same entry.
        let shown = json!({"entries": [entry_json(&e)], "next_page_token": ""}).to_string();
        let again = entries_from_json(shown.as_bytes()).unwrap().remove(0);
        assert_eq!(again, e);
    }

    #[test]
    fn bad_registration_json_names_the_entry_and_field() {
        let err = entries_from_json(
            br#"{"entries": [{"spiffe_id": "spiffe://d.test/a", "parent_id": "spiffe://d.test/p"},
            {"spiffe_id": "not an id", "parent_id": "spiffe://d.test/p"}]}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("entry 2: invalid SPIFFE ID"), "{err}");
        let err = entries_from_json(
            br#"{"entries": [{"spiffe_id": "spiffe://d.test/a", "parent_id": "spiffe://d.test/p", "x509_svid_ttl": "x"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("x509_svid_ttl"), "{err}");
        assert!(entries_from_json(b"{").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn update_flags_are_checked_as_spire_checks_them() {
        let f = EntryFields { spiffe_id: Some("spiffe://d.test/a".into()), ..EntryFields::default() };
        assert_eq!(from_flags(&f, true).unwrap_err(), "entry ID is required");
        let f = EntryFields { entry_id: Some("x".into()), ..f };
        assert_eq!(from_flags(&f, true).unwrap_err(), "at least one selector is required");
        let f = EntryFields { selector: vec!["unix:uid:0".into()], ..f };
        assert_eq!(from_flags(&f, true).unwrap_err(), "a parent ID is required");
        assert_eq!(from_flags(&f, false).unwrap_err(), "a parent ID is required if the node flag is not set");
        let f = EntryFields { selector: vec!["nocolon".into()], parent_id: Some("spiffe://d.test/p".into()), ..f };
        assert_eq!(from_flags(&f, true).unwrap_err(), "selector \"nocolon\" must be formatted as type:value");
    }
}
