-- The hospital store's first schema (commit a263979): before
-- letters.treated_at/treated_by, groups.consumer_version, letters.digest and
-- the audit, rates and canaries tables. Copied from its CreateTableSQL.

CREATE TABLE IF NOT EXISTS "${schema}"."hosp_letters" (
  id               BIGSERIAL PRIMARY KEY,
  identity         TEXT NOT NULL UNIQUE,
  broker           TEXT NOT NULL,
  dlq_topic        TEXT NOT NULL,
  format           TEXT NOT NULL,
  uuid             TEXT NOT NULL,
  original_topic   TEXT NOT NULL,
  handler          TEXT NOT NULL,
  consumer_group   TEXT NOT NULL,
  reason           TEXT NOT NULL,
  error            TEXT NOT NULL,
  error_type       TEXT NOT NULL,
  stack            TEXT NOT NULL,
  producer         TEXT NOT NULL,
  consumer_version TEXT NOT NULL,
  attempts         INTEGER NOT NULL,
  first_failed_at  TIMESTAMPTZ,
  last_failed_at   TIMESTAMPTZ,
  fingerprint      TEXT NOT NULL,
  payload          BYTEA NOT NULL,
  metadata         BYTEA NOT NULL,
  problem          TEXT NOT NULL,
  state            TEXT NOT NULL DEFAULT 'dead',
  ingested_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "hosp_letters_fingerprint" ON "${schema}"."hosp_letters" (fingerprint, id);
CREATE INDEX IF NOT EXISTS "hosp_letters_state" ON "${schema}"."hosp_letters" (state, id);
CREATE TABLE IF NOT EXISTS "${schema}"."hosp_groups" (
  fingerprint    TEXT PRIMARY KEY,
  handler        TEXT NOT NULL,
  reason         TEXT NOT NULL,
  error_type     TEXT NOT NULL,
  frame          TEXT NOT NULL,
  message        TEXT NOT NULL,
  shape          TEXT NOT NULL,
  producer       TEXT NOT NULL,
  count          BIGINT NOT NULL,
  dead           BIGINT NOT NULL,
  first_seen     TIMESTAMPTZ NOT NULL,
  last_seen      TIMESTAMPTZ NOT NULL,
  example        BIGINT NOT NULL,
  original_topic TEXT NOT NULL
);
