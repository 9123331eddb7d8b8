-- The version each agent last reported through PostStatus (SPIRE's `agent_version`).
ALTER TABLE attested_nodes ADD COLUMN agent_version TEXT NOT NULL DEFAULT '';
