-- cairn datastore schema v1 (MySQL 5.7+ / MariaDB 10.3+): the SQLite schema as of its migration
-- 0002 in one step. Keys are VARCHAR (MySQL indexes no TEXT without a prefix length) and every
-- table compares bytes (utf8mb4_bin): SPIFFE IDs and selectors are case-sensitive.
CREATE TABLE bundles (
    trust_domain    VARCHAR(255) NOT NULL PRIMARY KEY,
    data            MEDIUMTEXT NOT NULL,
    sequence_number BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE registered_entries (
    entry_id        VARCHAR(255) NOT NULL PRIMARY KEY,
    spiffe_id       VARCHAR(2048) NOT NULL,
    parent_id       VARCHAR(2048) NOT NULL,
    selectors       MEDIUMTEXT NOT NULL,
    x509_svid_ttl   INTEGER NOT NULL,
    jwt_svid_ttl    INTEGER NOT NULL,
    admin           BOOLEAN NOT NULL,
    downstream      BOOLEAN NOT NULL,
    federates_with  MEDIUMTEXT NOT NULL,
    dns_names       MEDIUMTEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    hint            TEXT NOT NULL,
    store_svid      BOOLEAN NOT NULL,
    revision_number BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    INDEX registered_entries_spiffe_id (spiffe_id(255)),
    INDEX registered_entries_parent_id (parent_id(255))
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE join_tokens (
    token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE attested_nodes (
    spiffe_id              VARCHAR(768) NOT NULL PRIMARY KEY,
    attestation_type       VARCHAR(255) NOT NULL,
    cert_serial_number     VARCHAR(255) NOT NULL,
    cert_not_after         BIGINT NOT NULL,
    new_cert_serial_number VARCHAR(255) NOT NULL,
    new_cert_not_after     BIGINT NOT NULL,
    can_reattest           BOOLEAN NOT NULL,
    selectors              MEDIUMTEXT NOT NULL,
    created_at             BIGINT NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE federation_relationships (
    trust_domain            VARCHAR(255) NOT NULL PRIMARY KEY,
    bundle_endpoint_url     TEXT NOT NULL,
    bundle_endpoint_profile VARCHAR(32) NOT NULL,
    endpoint_spiffe_id      VARCHAR(2048) NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE ca_journals (
    server_key VARCHAR(255) NOT NULL PRIMARY KEY,
    data       MEDIUMTEXT NOT NULL,
    updated_at BIGINT NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Rows that read-then-write transactions lock (SELECT ... FOR UPDATE), since LOCK TABLES would
-- end the transaction.
CREATE TABLE cairn_locks (
    name VARCHAR(64) NOT NULL PRIMARY KEY
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
INSERT INTO cairn_locks (name) VALUES ('bundles'), ('registered_entries'), ('attested_nodes'), ('join_tokens');

-- The shared change feed: every write appends its kind of change; each server polls for the
-- rows other servers appended and tells its caches (datastore::sql::shared_feed).
CREATE TABLE cairn_events (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind       VARCHAR(32) NOT NULL,
    origin     VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
