-- The similar-entry check (same SPIFFE ID, parent and selectors) runs for every entry created.
-- Without statistics SQLite answered it through the parent_id index, reading every entry of
-- that parent: creation slowed as parents filled. An index on both IDs answers it directly and
-- also serves lookups by SPIFFE ID alone, so it replaces the single-column one.
DROP INDEX registered_entries_spiffe_id;
CREATE INDEX registered_entries_spiffe_id_parent_id ON registered_entries (spiffe_id, parent_id);
