-- The similar-entry check (same SPIFFE ID, parent and selectors) runs for every entry created:
-- an index on both IDs answers it directly and also serves lookups by SPIFFE ID alone, so it
-- replaces the single-column one.
DROP INDEX registered_entries_spiffe_id ON registered_entries;
CREATE INDEX registered_entries_spiffe_id_parent_id ON registered_entries (spiffe_id(255), parent_id(255));
