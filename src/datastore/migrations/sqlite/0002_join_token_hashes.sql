-- Join tokens are kept as the lowercase hex SHA-256 of the token from now on, so the database
-- never holds a token that could attest an agent. SQLite has no SHA-256 function, so the old
-- rows are moved aside here and cairn hashes them into the new table right after migrating
-- (SqlDatastore::open), then drops `join_tokens_plaintext`.
ALTER TABLE join_tokens RENAME TO join_tokens_plaintext;
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
