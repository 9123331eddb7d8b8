-- cairn datastore schema v1 (SQLite). Lists (selectors, DNS names, federates_with) are JSON
-- text so the same shape works on PostgreSQL and MySQL.
CREATE TABLE bundles (
    trust_domain    TEXT PRIMARY KEY NOT NULL,
    data            TEXT NOT NULL,          -- SPIFFE bundle JSON (with expiries of JWT keys)
    sequence_number INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE registered_entries (
    entry_id        TEXT PRIMARY KEY NOT NULL,
    spiffe_id       TEXT NOT NULL,
    parent_id       TEXT NOT NULL,
    selectors       TEXT NOT NULL,          -- JSON [[type, value], ...], sorted
    x509_svid_ttl   INTEGER NOT NULL,
    jwt_svid_ttl    INTEGER NOT NULL,
    admin           INTEGER NOT NULL,
    downstream      INTEGER NOT NULL,
    federates_with  TEXT NOT NULL,          -- JSON ["td", ...]
    dns_names       TEXT NOT NULL,          -- JSON ["name", ...]
    expires_at      INTEGER NOT NULL,
    hint            TEXT NOT NULL,
    store_svid      INTEGER NOT NULL,
    revision_number INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX registered_entries_spiffe_id ON registered_entries (spiffe_id);
CREATE INDEX registered_entries_parent_id ON registered_entries (parent_id);

CREATE TABLE join_tokens (
    token      TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE attested_nodes (
    spiffe_id              TEXT PRIMARY KEY NOT NULL,
    attestation_type       TEXT NOT NULL,
    cert_serial_number     TEXT NOT NULL,   -- decimal; empty = banned
    cert_not_after         INTEGER NOT NULL,
    new_cert_serial_number TEXT NOT NULL,
    new_cert_not_after     INTEGER NOT NULL,
    can_reattest           INTEGER NOT NULL,
    selectors              TEXT NOT NULL,
    created_at             INTEGER NOT NULL
);

CREATE TABLE federation_relationships (
    trust_domain            TEXT PRIMARY KEY NOT NULL,
    bundle_endpoint_url     TEXT NOT NULL,
    bundle_endpoint_profile TEXT NOT NULL,
    endpoint_spiffe_id      TEXT NOT NULL
);

-- One row per server: the CA journal (slots and their status), keyed by the server's name.
CREATE TABLE ca_journals (
    server_key TEXT PRIMARY KEY NOT NULL,
    data       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
