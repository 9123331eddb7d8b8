-- The version each agent last reported through PostStatus (SPIRE's `agent_version`, at most
-- 255 characters; MySQL allows no literal default on TEXT).
ALTER TABLE attested_nodes ADD COLUMN agent_version VARCHAR(255) NOT NULL DEFAULT '';
