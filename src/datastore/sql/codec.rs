//! How records become column values and back, the same on every database: lists (selectors,
//! DNS names, federated trust domains) are JSON text, a bundle is one JSON document, a join
//! token is kept only as its hash.

use crate::datastore::{DatastoreError, Entry, Selector};
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How a bundle is stored: the authorities with their expiries (the SPIFFE JSON form has no
/// place for a JWT key's expiry, which pruning needs).
#[derive(Serialize, Deserialize)]
struct StoredBundle {
    x509_authorities: Vec<String>,
    jwt_authorities: Vec<StoredJwtKey>,
    refresh_hint: Option<i64>,
    /// Indexes into `x509_authorities` of the tainted roots (absent before taint existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tainted_x509: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct StoredJwtKey {
    key_id: String,
    public_key: String,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tainted: bool,
}

pub(super) fn corrupt(what: &'static str, reason: impl ToString) -> DatastoreError {
    DatastoreError::Corrupt { what, reason: reason.to_string() }
}

pub(super) fn encode_bundle(b: &Bundle) -> Result<String, DatastoreError> {
    let stored = StoredBundle {
        x509_authorities: b.x509_authorities.iter().map(|d| B64.encode(d)).collect(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|k| StoredJwtKey {
                key_id: k.key_id.clone(),
                public_key: B64.encode(&k.public_key),
                expires_at: k.expires_at,
                tainted: k.tainted,
            })
            .collect(),
        refresh_hint: b.refresh_hint,
        tainted_x509: b.x509_authorities.iter().enumerate().filter(|(_, d)| b.is_tainted_x509(d)).map(|(i, _)| i).collect(),
    };
    serde_json::to_string(&stored).map_err(|e| corrupt("bundle", e))
}

pub(super) fn decode_bundle(td: &str, data: &str, seq: i64) -> Result<Bundle, DatastoreError> {
    let trust_domain = TrustDomain::new(td).map_err(|e| corrupt("bundle", e))?;
    let stored: StoredBundle = serde_json::from_str(data).map_err(|e| corrupt("bundle", e))?;
    let x509_authorities =
        stored.x509_authorities.iter().map(|s| B64.decode(s)).collect::<Result<Vec<_>, _>>().map_err(|e| corrupt("bundle", e))?;
    let jwt_authorities = stored
        .jwt_authorities
        .into_iter()
        .map(|k| {
            Ok(JwtAuthority {
                key_id: k.key_id,
                public_key: B64.decode(&k.public_key).map_err(|e| corrupt("bundle", e))?,
                expires_at: k.expires_at,
                tainted: k.tainted,
            })
        })
        .collect::<Result<Vec<_>, DatastoreError>>()?;
    let tainted_x509 = stored
        .tainted_x509
        .iter()
        .map(|i| x509_authorities.get(*i).cloned().ok_or_else(|| corrupt("bundle", format!("tainted root #{i} does not exist"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bundle {
        trust_domain,
        x509_authorities,
        jwt_authorities,
        refresh_hint: stored.refresh_hint,
        sequence_number: u64::try_from(seq).unwrap_or(0),
        tainted_x509,
    })
}

/// An empty bundle for `td`, the starting point of the first append.
pub(super) fn empty_bundle(td: &TrustDomain) -> Bundle {
    Bundle::new(td.clone())
}

pub(super) fn same_content(a: &Bundle, b: &Bundle) -> bool {
    a.x509_authorities == b.x509_authorities
        && a.jwt_authorities == b.jwt_authorities
        && a.refresh_hint == b.refresh_hint
        && a.tainted_x509 == b.tainted_x509
}

pub(super) fn cert_not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c.validity().not_after.timestamp())
}

pub(super) fn json<T: Serialize>(v: &T) -> Result<String, DatastoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("record", e))
}

/// The stored selector set: sorted, without duplicates, so that equal sets compare equal as
/// text (the "similar entry" check and `selectors_exact` rely on it).
pub(super) fn selectors_json(s: &[Selector]) -> Result<String, DatastoreError> {
    let mut pairs: Vec<(&str, &str)> = s.iter().map(|s| (s.kind.as_str(), s.value.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    json(&pairs)
}

pub(super) fn parse_selectors(what: &'static str, text: &str) -> Result<Vec<Selector>, DatastoreError> {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).map_err(|e| corrupt(what, e))?;
    Ok(pairs.into_iter().map(|(kind, value)| Selector { kind, value }).collect())
}

/// The columns of one `registered_entries` row, borrowed from whichever driver read it: sqlx
/// for single entries and filtered lists, rusqlite for SQLite's whole-table read (see
/// `sqlite::read_all_entries`). One decoder for both, so the two reads cannot disagree.
pub(super) struct EntryColumns<'a> {
    pub entry_id: &'a str,
    pub spiffe_id: &'a str,
    pub parent_id: &'a str,
    pub selectors: &'a str,
    pub x509_svid_ttl: i32,
    pub jwt_svid_ttl: i32,
    pub admin: bool,
    pub downstream: bool,
    pub federates_with: &'a str,
    pub dns_names: &'a str,
    pub expires_at: i64,
    pub hint: &'a str,
    pub store_svid: bool,
    pub disable_x509_svid_prefetch: bool,
    pub jwt_svid_include_jti: bool,
    pub revision_number: i64,
    pub created_at: i64,
}

impl EntryColumns<'_> {
    /// The entry these columns hold; a value that does not parse means a damaged record.
    pub(super) fn decode(&self) -> Result<Entry, DatastoreError> {
        const W: &str = "entry";
        let id = |text: &str| SpiffeId::new(text).map_err(|e| corrupt(W, e));
        Ok(Entry {
            id: self.entry_id.to_owned(),
            spiffe_id: id(self.spiffe_id)?,
            parent_id: id(self.parent_id)?,
            selectors: parse_selectors(W, self.selectors)?,
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            federates_with: parse_federates(self.federates_with)?,
            admin: self.admin,
            downstream: self.downstream,
            dns_names: if self.dns_names == "[]" { Vec::new() } else { serde_json::from_str(self.dns_names).map_err(|e| corrupt(W, e))? },
            expires_at: self.expires_at,
            hint: self.hint.to_owned(),
            store_svid: self.store_svid,
            disable_x509_svid_prefetch: self.disable_x509_svid_prefetch,
            jwt_svid_include_jti: self.jwt_svid_include_jti,
            revision_number: self.revision_number,
            created_at: self.created_at,
        })
    }
}

pub(super) fn federates_json(tds: &[TrustDomain]) -> Result<String, DatastoreError> {
    json(&tds.iter().map(TrustDomain::as_str).collect::<Vec<_>>())
}

pub(super) fn parse_federates(text: &str) -> Result<Vec<TrustDomain>, DatastoreError> {
    // Most entries federate with nothing; a million of them are read at every cache load.
    if text == "[]" {
        return Ok(Vec::new());
    }
    let names: Vec<String> = serde_json::from_str(text).map_err(|e| corrupt("entry", e))?;
    names.iter().map(|t| TrustDomain::new(t)).collect::<Result<_, _>>().map_err(|e| corrupt("entry", e))
}

pub(super) fn sorted_selectors(s: &[Selector]) -> Vec<Selector> {
    let mut v = s.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The stored form of a join token: lowercase hex SHA-256.
pub(super) fn join_token_hash(token: &str) -> String {
    use sha2::Digest as _;
    crate::text::hex(&sha2::Sha256::digest(token.as_bytes()))
}
