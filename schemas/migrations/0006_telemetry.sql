-- Telemetry: the devices' time-series log, outside the event store (DOMAIN.md "Device").
-- Written by the `ingest` crate (HTTP batches and the NATS JetStream worker); see
-- docs/telemetry.md for the design.
--
-- * `telemetry` holds the raw readings, one row per reading (metrics as jsonb), partitioned
--   by day of `ts` (UTC). Partitions are created on demand by the writers and ahead of time
--   by the ingest role; there is no default partition: a reading outside the accepted window
--   (older than the retention horizon, more than 5 minutes in the future) is refused by the
--   writer with a code before it reaches the table.
-- * `telemetry_seen` deduplicates on (device_id, seq): a unique constraint of a partitioned
--   table must contain the partition key, so it cannot say "one reading per (device, seq)
--   whatever its ts"; this small unpartitioned table can, and the writer inserts into it
--   first (ON CONFLICT DO NOTHING RETURNING) in the same statement that stores the readings.
-- * Rollups `telemetry_latest` and `telemetry_minute` are kept in that same statement, from
--   the readings that were new only.
-- * Retention drops whole day partitions (raw and per-minute) and the dedup rows of those
--   days, in one transaction, and moves the horizon so that nothing older comes back.

-- One row: how many days are kept, and the oldest time any writer may store (moved forward
-- by each retention run, never back).
CREATE TABLE telemetry_settings (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    retention_days  integer NOT NULL DEFAULT 30 CHECK (retention_days BETWEEN 1 AND 3650),
    dropped_before  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO telemetry_settings DEFAULT VALUES;

CREATE TABLE telemetry (
    device_id    uuid NOT NULL,
    seq          bigint NOT NULL CHECK (seq >= 0),
    ts           timestamptz NOT NULL,
    metrics      jsonb NOT NULL,
    received_at  timestamptz NOT NULL
) PARTITION BY RANGE (ts);

-- Readings arrive roughly in time order: a BRIN index is tiny and enough for time ranges.
CREATE INDEX telemetry_ts ON telemetry USING brin (ts);

CREATE TABLE telemetry_seen (
    device_id  uuid NOT NULL,
    seq        bigint NOT NULL,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (device_id, seq)
);
-- Retention deletes by ts.
CREATE INDEX telemetry_seen_ts ON telemetry_seen USING brin (ts);

-- The newest value of each metric of each device (by ts, then seq).
CREATE TABLE telemetry_latest (
    device_id  uuid NOT NULL,
    metric     text NOT NULL,
    value      double precision NOT NULL,
    ts         timestamptz NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (device_id, metric)
);

-- Per-minute rollups, partitioned like the raw readings so that retention drops them alike.
-- Hourly answers are summed from these rows.
CREATE TABLE telemetry_minute (
    device_id  uuid NOT NULL,
    metric     text NOT NULL,
    bucket     timestamptz NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    sum        double precision NOT NULL,
    count      bigint NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) PARTITION BY RANGE (bucket);

-- Messages the NATS worker can never accept: recorded once per stream message (a redelivery
-- of the same message only counts `deliveries`), then terminated.
CREATE TABLE telemetry_dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream       text NOT NULL,
    stream_seq   bigint NOT NULL,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    deliveries   integer NOT NULL DEFAULT 1,
    received_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT telemetry_dead_letters_message UNIQUE (stream, stream_seq)
);

-- The oldest reading time a writer may store now: the retention window (whole UTC days),
-- and never before what retention has already dropped.
CREATE FUNCTION telemetry_horizon() RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT GREATEST(
        dropped_before,
        date_trunc('day', statement_timestamp(), 'UTC') - make_interval(days => retention_days))
    FROM telemetry_settings
$$;

-- Creates the missing day partitions (raw and per-minute) of `days`, skipping days already
-- behind the horizon or more than a week ahead. Returns how many days it created.
CREATE FUNCTION telemetry_ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    created integer := 0;
BEGIN
    FOREACH d IN ARRAY days LOOP
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN hi <= telemetry_horizon() OR lo > statement_timestamp() + interval '7 days';
        CONTINUE WHEN to_regclass(format('%I', 'telemetry_p' || to_char(d, 'YYYYMMDD'))) IS NOT NULL
            AND to_regclass(format('%I', 'telemetry_minute_p' || to_char(d, 'YYYYMMDD'))) IS NOT NULL;
        -- One creator at a time; a concurrent creator may still win the race on the catalog.
        PERFORM pg_advisory_xact_lock(hashtext('chronicle.telemetry.partitions'));
        BEGIN
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF telemetry FOR VALUES FROM (%L) TO (%L)',
                'telemetry_p' || to_char(d, 'YYYYMMDD'), lo, hi);
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF telemetry_minute FOR VALUES FROM (%L) TO (%L)',
                'telemetry_minute_p' || to_char(d, 'YYYYMMDD'), lo, hi);
            created := created + 1;
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END LOOP;
    RETURN created;
END
$$;

-- Retention: keeps `keep_days` whole UTC days before today. Under the exclusive side of the
-- lock the writers share, it records the setting, moves the horizon, drops the expired day
-- partitions (raw and per-minute) and deletes their dedup rows, all in one transaction.
-- Returns how many partitions it dropped.
CREATE FUNCTION telemetry_apply_retention(keep_days integer) RETURNS integer
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
    DELETE FROM telemetry_seen WHERE ts < cutoff;
    RETURN dropped;
END
$$;

-- What a writer's transaction does first: take the shared side of the retention lock (so a
-- retention run waits for writers in flight, and writers wait for it), then create the
-- missing partitions of the days it is about to write.
CREATE FUNCTION telemetry_begin_write(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('chronicle.telemetry.retention'));
    RETURN telemetry_ensure_partitions(days);
END
$$;
