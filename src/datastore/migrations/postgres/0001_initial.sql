-- cairn datastore schema v1 (PostgreSQL): the SQLite schema as of its migration 0002, in one
-- step (join tokens are stored hashed from the start). Lists (selectors, DNS names,
-- federates_with) are JSON text, as on every database.
CREATE TABLE bundles (
    trust_domain    TEXT PRIMARY KEY NOT NULL,
    data            TEXT NOT NULL,
    sequence_number BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE registered_entries (
    entry_id        TEXT PRIMARY KEY NOT NULL,
    spiffe_id       TEXT NOT NULL,
    parent_id       TEXT NOT NULL,
    selectors       TEXT NOT NULL,
    x509_svid_ttl   INTEGER NOT NULL,
    jwt_svid_ttl    INTEGER NOT NULL,
    admin           BOOLEAN NOT NULL,
    downstream      BOOLEAN NOT NULL,
    federates_with  TEXT NOT NULL,
    dns_names       TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    hint            TEXT NOT NULL,
    store_svid      BOOLEAN NOT NULL,
    revision_number BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX registered_entries_spiffe_id ON registered_entries (spiffe_id);
CREATE INDEX registered_entries_parent_id ON registered_entries (parent_id);

CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE attested_nodes (
    spiffe_id              TEXT PRIMARY KEY NOT NULL,
    attestation_type       TEXT NOT NULL,
    cert_serial_number     TEXT NOT NULL,
    cert_not_after         BIGINT NOT NULL,
    new_cert_serial_number TEXT NOT NULL,
    new_cert_not_after     BIGINT NOT NULL,
    can_reattest           BOOLEAN NOT NULL,
    selectors              TEXT NOT NULL,
    created_at             BIGINT NOT NULL
);

CREATE TABLE federation_relationships (
    trust_domain            TEXT PRIMARY KEY NOT NULL,
    bundle_endpoint_url     TEXT NOT NULL,
    bundle_endpoint_profile TEXT NOT NULL,
    endpoint_spiffe_id      TEXT NOT NULL
);

CREATE TABLE ca_journals (
    server_key TEXT PRIMARY KEY NOT NULL,
    data       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The shared change feed: every write appends its kind of change; each server polls for the
-- rows other servers appended and tells its caches (datastore::sql::shared_feed).
CREATE TABLE cairn_events (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
