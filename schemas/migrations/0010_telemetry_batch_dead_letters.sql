-- A NATS message may carry a batch of readings (`{"readings": [...]}`, docs/telemetry.md):
-- each reading of a batch that can never be accepted is dead-lettered on its own, so a
-- message may now have several letters. `reading_index` is the refused reading's position
-- in the batch (from 0); NULL when the whole message was refused (a single-reading message,
-- or a batch refused whole: not JSON, no or too many readings, too large, unknown or
-- inactive device). A redelivery of the same message still finds its letters by
-- (stream, stream_seq, reading_index) and only raises `deliveries`.
ALTER TABLE telemetry_dead_letters ADD COLUMN reading_index integer;
ALTER TABLE telemetry_dead_letters DROP CONSTRAINT telemetry_dead_letters_message;
ALTER TABLE telemetry_dead_letters ADD CONSTRAINT telemetry_dead_letters_message
    UNIQUE NULLS NOT DISTINCT (stream, stream_seq, reading_index);
