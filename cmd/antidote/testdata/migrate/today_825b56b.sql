-- The DDL every table Antidote owns was created with at commit 825b56b,
-- before schema versions: copied from CreateTableSQL of each store there
-- (${schema} is the test's schema). Do not edit: it is what deployments hold.

-- pgstore.DeliveryTracker (table ${schema}.deliveries)
CREATE TABLE IF NOT EXISTS "${schema}"."deliveries" (
  key        TEXT PRIMARY KEY,
  count      INTEGER NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "deliveries_updated_at_idx" ON "${schema}"."deliveries" (updated_at);

-- pgstore.IdempotencyStore (table ${schema}.idem)
CREATE TABLE IF NOT EXISTS "${schema}"."idem" (
  key        TEXT PRIMARY KEY,
  token      TEXT NOT NULL,
  completed  BOOLEAN NOT NULL DEFAULT false,
  result     BYTEA,
  expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS "idem_expires_at_idx" ON "${schema}"."idem" (expires_at);

-- pgstore.ClaimCheckStore (table ${schema}.claims)
CREATE TABLE IF NOT EXISTS "${schema}"."claims" (
  key        TEXT PRIMARY KEY,
  data       BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- pgstore.HospitalStore (prefix ${schema}.hosp)
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
  ingested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  treated_at       TIMESTAMPTZ,
  treated_by       TEXT NOT NULL DEFAULT '',
  digest           TEXT NOT NULL DEFAULT ''
);
ALTER TABLE "${schema}"."hosp_letters" ADD COLUMN IF NOT EXISTS digest TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS "hosp_letters_digest" ON "${schema}"."hosp_letters" (digest);
CREATE INDEX IF NOT EXISTS "hosp_letters_fingerprint" ON "${schema}"."hosp_letters" (fingerprint, id);
CREATE INDEX IF NOT EXISTS "hosp_letters_state" ON "${schema}"."hosp_letters" (state, id);
CREATE INDEX IF NOT EXISTS "hosp_letters_uuid" ON "${schema}"."hosp_letters" (uuid, id);
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
  original_topic TEXT NOT NULL,
  consumer_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS "${schema}"."hosp_canaries" (
  fingerprint TEXT NOT NULL,
  version     TEXT NOT NULL,
  started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  outcome     TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (fingerprint, version)
);
CREATE TABLE IF NOT EXISTS "${schema}"."hosp_rates" (
  fingerprint TEXT NOT NULL,
  hour        TIMESTAMPTZ NOT NULL,
  count       BIGINT NOT NULL,
  PRIMARY KEY (fingerprint, hour)
);
CREATE TABLE IF NOT EXISTS "${schema}"."hosp_audit" (
  id          BIGSERIAL PRIMARY KEY,
  at          TIMESTAMPTZ NOT NULL DEFAULT now(),
  actor       TEXT NOT NULL,
  action      TEXT NOT NULL,
  letter_id   BIGINT NOT NULL,
  fingerprint TEXT NOT NULL,
  detail      TEXT NOT NULL
);

-- outbox.Outbox (table ${schema}.outbox)
CREATE TABLE IF NOT EXISTS "${schema}"."outbox" (
  id              BIGSERIAL PRIMARY KEY,
  message_id      TEXT NOT NULL UNIQUE,
  topic           TEXT NOT NULL,
  payload         BYTEA NOT NULL,
  metadata        BYTEA NOT NULL,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  attempts        INTEGER NOT NULL DEFAULT 0,
  last_error      TEXT NOT NULL DEFAULT '',
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  locked_by       TEXT,
  locked_until    TIMESTAMPTZ,
  sent_at         TIMESTAMPTZ,
  key_hash        BYTEA
);
-- Tables created before the ordering key. Issue 25 brings real migrations;
-- until then CreateTables upgrades in place (CREATE INDEX holds writes for
-- the time it takes to read the table once).
ALTER TABLE "${schema}"."outbox" ADD COLUMN IF NOT EXISTS key_hash BYTEA;
CREATE INDEX IF NOT EXISTS "outbox_pending" ON "${schema}"."outbox" (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS "outbox_keyless" ON "${schema}"."outbox" (id) WHERE sent_at IS NULL AND key_hash IS NULL;
CREATE INDEX IF NOT EXISTS "outbox_keyed" ON "${schema}"."outbox" (key_hash, id) WHERE sent_at IS NULL AND key_hash IS NOT NULL;
CREATE TABLE IF NOT EXISTS "${schema}"."outbox_dead" (
  id         BIGINT PRIMARY KEY,
  message_id TEXT NOT NULL,
  topic      TEXT NOT NULL,
  payload    BYTEA NOT NULL,
  metadata   BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL,
  attempts   INTEGER NOT NULL,
  reason     TEXT NOT NULL,
  dead_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

