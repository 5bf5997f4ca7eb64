-- The projector runtime: where each projector stands in the log, and the events it parked.
--
-- A projector's checkpoint moves in the same transaction as its read-model writes, so every
-- event takes effect exactly once. `applied` counts the events it has taken in (applied or
-- parked), which makes a double application visible.
CREATE TABLE projection_checkpoints (
    name        text PRIMARY KEY,
    tx          bigint NOT NULL DEFAULT 0,
    position    bigint NOT NULL DEFAULT 0,
    applied     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Events a projector could not apply after its retries (a poison event), and the later events
-- of the same stream, held back in log order until `chronicle projections retry`.
CREATE TABLE projection_parked (
    projector    text NOT NULL,
    tx           bigint NOT NULL,
    position     bigint NOT NULL,
    stream_id    uuid NOT NULL,
    event_id     uuid NOT NULL,
    event_type   text NOT NULL,
    error        text NOT NULL,
    attempts     integer NOT NULL,
    parked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, tx, position)
);

CREATE INDEX projection_parked_stream ON projection_parked (projector, stream_id);
