-- Durable timers of the deadline processes. The scheduler fills them from the log (its
-- checkpoint moves in the same transaction); the runner fires those that are due, and each
-- firing is recorded with the events it appends (a `process_step` claim), so that a restart
-- neither loses nor repeats a step.
CREATE TABLE timers (
    kind          text NOT NULL,
    aggregate_id  uuid NOT NULL,
    due_at        timestamptz NOT NULL,
    done_at       timestamptz,
    outcome       text,
    PRIMARY KEY (kind, aggregate_id)
);

CREATE INDEX timers_due ON timers (due_at) WHERE done_at IS NULL;

-- Where each log-reading process stands: the (tx, position) cursor of `read_all`.
CREATE TABLE process_checkpoints (
    name      text PRIMARY KEY,
    tx        bigint NOT NULL,
    position  bigint NOT NULL
);
