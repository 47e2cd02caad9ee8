-- The outbox as CreateTables made it before the ordering key (commit
-- 95507e9): no key_hash column, no _keyless/_keyed indexes.

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
  sent_at         TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS "outbox_pending" ON "${schema}"."outbox" (id) WHERE sent_at IS NULL;
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
