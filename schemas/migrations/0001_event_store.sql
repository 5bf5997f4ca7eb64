-- Chronicle's event store: one append-only log of every aggregate's events.
--
-- Global order: `position` is assigned at INSERT but becomes visible at COMMIT, possibly in
-- another order. Readers therefore never trust position alone: each row carries the id of the
-- transaction that wrote it (`tx`), and a reader only returns rows whose transaction is below
-- the oldest transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`), ordered by
-- (tx, position). See docs/architecture.md for the proof sketch.
CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx              bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    event_id        uuid NOT NULL,
    stream_type     text NOT NULL,
    stream_id       uuid NOT NULL,
    stream_version  bigint NOT NULL CHECK (stream_version > 0),
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    payload         jsonb NOT NULL,
    actor_sub       text NOT NULL,
    actor_role      text NOT NULL,
    command_id      uuid NOT NULL,
    correlation_id  uuid NOT NULL,
    causation_id    uuid,
    occurred_at     timestamptz NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE INDEX events_tx_position ON events (tx, position);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP;
END
$$;

CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Unique facts claimed by commands in the same transaction as their events: one account per
-- subject, e-mail uniqueness, one wallet per owner and currency, deposit references.
CREATE TABLE claims (
    scope           text NOT NULL,
    key             text NOT NULL,
    stream_id       uuid NOT NULL,
    stream_version  bigint NOT NULL,
    position        bigint NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The latest snapshot of a stream's aggregate state, taken every N events.
CREATE TABLE snapshots (
    stream_id    uuid PRIMARY KEY,
    stream_type  text NOT NULL,
    version      bigint NOT NULL,
    state        jsonb NOT NULL
);

-- Idempotency keys: stored in the same transaction as the command's events. A success keeps
-- the result (id, version, position); a business rejection keeps its status and problem.
CREATE TABLE idempotency (
    subject          text NOT NULL,
    key              text NOT NULL,
    request_hash     text NOT NULL,
    status           smallint NOT NULL,
    result_id        uuid,
    result_version   bigint,
    result_position  bigint,
    body             jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, key)
);
