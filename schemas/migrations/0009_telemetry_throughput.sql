-- Telemetry for throughput (docs/telemetry.md, "The write"): a batch now writes its raw rows
-- and one queued rollup delta, and nothing else.
--
-- * Deduplication moves into the raw table: every day partition of `telemetry` carries a
--   unique index on (device_id, seq). A unique index of a partitioned table must contain the
--   partition key, so it is declared per partition (by telemetry_ensure_partitions, below):
--   the same (device, seq) is one reading within a UTC day of `ts`. `telemetry_seen` (a
--   second btree-indexed heap written for every reading) is dropped.
-- * Rollups leave the ingest transaction: each write queues the pre-aggregated rollup delta
--   of the readings it stored (one row of arrays per batch, in the same transaction) in
--   `telemetry_rollup_queue`; the rollup worker merges queued deltas, upserts
--   `telemetry_minute` and `telemetry_latest`, and deletes the deltas it applied, in one
--   transaction. Min, max, count, sum and "newest by (ts, seq)" merge in any order, so the
--   queue needs no commit order: each delta is applied exactly once.
--
-- Deploying: stop the previous version's ingest (HTTP and NATS) before migrating. Its write
-- statement names telemetry_seen, so a forgotten old writer fails (503, NAK) instead of
-- writing rollups a second time.

-- Every existing raw partition gets the key. telemetry_seen kept (device_id, seq) unique
-- across the whole table, so no partition holds a repeat.
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname::text AS name
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass
    LOOP
        EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON %I (device_id, seq)',
            part.name || '_key', part.name);
    END LOOP;
END
$$;

DROP TABLE telemetry_seen;
DROP FUNCTION telemetry_begin_write(date[]);

-- The rollup deltas of committed batches, not yet applied. One row per batch; entry i of the
-- arrays is one (device, metric, minute) of the batch's stored readings: min, max, sum and
-- count of its values, and its newest value by (ts, seq) (what telemetry_latest keeps). An
-- entry of a single reading leaves max, sum and last_value NULL: they equal min.
CREATE TABLE telemetry_rollup_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    readings    integer NOT NULL,
    device_id   uuid[] NOT NULL,
    metric      text[] NOT NULL,
    bucket      timestamptz[] NOT NULL,
    min         double precision[] NOT NULL,
    max         double precision[] NOT NULL,
    sum         double precision[] NOT NULL,
    count       bigint[] NOT NULL,
    last_value  double precision[] NOT NULL,
    last_ts     timestamptz[] NOT NULL,
    last_seq    bigint[] NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now()
);
-- A delta is written once and read once. lz4 (where the server has it) halves its WAL for
-- about the CPU of storing it uncompressed (entries are sorted by device and metric, so the
-- device, metric, bucket and count arrays shrink to little); pglz would cost the writer
-- several times more CPU. Without lz4, the arrays are stored uncompressed.
DO $$
DECLARE
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['device_id', 'metric', 'bucket', 'min', 'max', 'sum', 'count',
                               'last_value', 'last_ts', 'last_seq'] LOOP
        BEGIN
            EXECUTE format('ALTER TABLE telemetry_rollup_queue ALTER COLUMN %I SET COMPRESSION lz4', col);
        EXCEPTION WHEN feature_not_supported THEN
            EXECUTE format('ALTER TABLE telemetry_rollup_queue ALTER COLUMN %I SET STORAGE EXTERNAL', col);
        END;
    END LOOP;
END
$$;

-- The rollup worker rewrites the latest value of every active (device, metric) at each step:
-- room on the page lets those updates stay on it (HOT), without a new index entry each time.
-- Per-minute rows are rewritten while their minute lasts (their partitions get 70, below).
ALTER TABLE telemetry_latest SET (fillfactor = 50);

-- Creates the missing day partitions (raw, with its (device_id, seq) key, and per-minute) of
-- `days`, skipping days already behind the horizon or more than a week ahead. Returns how
-- many days it created. A raw partition is built with its key and then attached (which locks
-- `telemetry` against other DDL only, not against writers and readers, unlike CREATE TABLE
-- ... PARTITION OF); it becomes visible with its key, when the creating transaction commits.
CREATE OR REPLACE FUNCTION telemetry_ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    raw text;
    minute text;
    created integer := 0;
BEGIN
    FOREACH d IN ARRAY days LOOP
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        raw := 'telemetry_p' || to_char(d, 'YYYYMMDD');
        minute := 'telemetry_minute_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN hi <= telemetry_horizon() OR lo > statement_timestamp() + interval '7 days';
        CONTINUE WHEN to_regclass(format('%I', raw)) IS NOT NULL
            AND to_regclass(format('%I', minute)) IS NOT NULL;
        -- One creator at a time; the catalog is checked again under the lock.
        PERFORM pg_advisory_xact_lock(hashtext('chronicle.telemetry.partitions'));
        BEGIN
            IF to_regclass(format('%I', raw)) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', raw);
                EXECUTE format('CREATE UNIQUE INDEX %I ON %I (device_id, seq)', raw || '_key', raw);
                EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                    raw, lo, hi);
                created := created + 1;
            END IF;
            IF to_regclass(format('%I', minute)) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF telemetry_minute FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 70)',
                    minute, lo, hi);
            END IF;
        EXCEPTION WHEN duplicate_table OR duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
    RETURN created;
END
$$;

-- Retention: keeps `keep_days` whole UTC days before today. Under the exclusive side of the
-- lock the writers and the rollup worker share, it records the setting, moves the horizon and
-- drops the expired day partitions (raw and per-minute), all in one transaction. Queued
-- rollup deltas of dropped days are skipped by the rollup worker. Returns how many
-- partitions it dropped.
CREATE OR REPLACE FUNCTION telemetry_apply_retention(keep_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz;
    part record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('chronicle.telemetry.retention'));
    cutoff := date_trunc('day', statement_timestamp(), 'UTC') - make_interval(days => keep_days);
    UPDATE telemetry_settings
       SET retention_days = keep_days, dropped_before = GREATEST(dropped_before, cutoff);
    FOR part IN
        SELECT c.relname::text AS name, to_date(right(c.relname, 8), 'YYYYMMDD') AS day
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent IN ('telemetry'::regclass, 'telemetry_minute'::regclass)
          AND c.relname ~ '_p[0-9]{8}$'
    LOOP
        IF (part.day + 1)::timestamp AT TIME ZONE 'UTC' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

-- What a writer's transaction does first: take the shared side of the retention lock (so a
-- retention run waits for writers in flight, and writers wait for it), create the missing
-- partitions of the days it is about to write, and return the horizon (the writer stores
-- nothing older; it stays put until the transaction ends, because retention waits).
CREATE FUNCTION telemetry_begin_batch(days date[]) RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('chronicle.telemetry.retention'));
    PERFORM telemetry_ensure_partitions(days);
    RETURN telemetry_horizon();
END
$$;

-- What the rollup worker's transaction does first: the shared side of the retention lock (a
-- retention run waits for it, so the minute partitions it is about to write stay), and the
-- horizon (deltas of days already dropped are skipped).
CREATE FUNCTION telemetry_begin_rollup() RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('chronicle.telemetry.retention'));
    RETURN telemetry_horizon();
END
$$;
