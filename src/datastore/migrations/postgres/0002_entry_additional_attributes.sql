-- SPIRE's entry "additional attributes": the agent does not prefetch the entry's X509-SVID
-- (mints it when a workload first asks), and JWT-SVIDs carry a fresh `jti` (the agent does not
-- cache them). Existing entries keep SPIRE's defaults (both off).
ALTER TABLE registered_entries ADD COLUMN disable_x509_svid_prefetch BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE registered_entries ADD COLUMN jwt_svid_include_jti BOOLEAN NOT NULL DEFAULT FALSE;
