-- Tamper evidence: one hash chain over the whole log in commit order, one link per event.
--
-- The `chain` projector (projections/src/chain.rs) takes in the log exactly once and in
-- commit order, like every projector, and writes for each event
--     hash = sha256(previous link's hash || canonical encoding of the stored event)
-- (32 zero bytes before the first link). `chronicle audit verify` and GET /v1/audit/verify
-- recompute the chain from the events and report the first link that does not match: a
-- changed, removed, inserted or reordered event. Why a global chain written after commit
-- rather than per stream or at append time: docs/audit.md.
CREATE TABLE event_chain (
    tx        bigint NOT NULL,
    position  bigint PRIMARY KEY,
    event_id  uuid NOT NULL,
    hash      bytea NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE UNIQUE INDEX event_chain_order ON event_chain (tx, position);

-- Append-only like the log itself.
CREATE FUNCTION event_chain_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event_chain table is append-only (% refused)', TG_OP;
END
$$;

CREATE TRIGGER event_chain_no_update_or_delete BEFORE UPDATE OR DELETE ON event_chain
    FOR EACH ROW EXECUTE FUNCTION event_chain_append_only();
CREATE TRIGGER event_chain_no_truncate BEFORE TRUNCATE ON event_chain
    FOR EACH STATEMENT EXECUTE FUNCTION event_chain_append_only();
