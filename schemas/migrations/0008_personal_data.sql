-- Personal data: one key per account seals its personal fields in the log (see
-- schemas/src/personal.rs). Erasing the account's personal data deletes the key; the row
-- stays, empty, so that no new key is ever made for the account again.
CREATE TABLE personal_data_keys (
    account_id  uuid PRIMARY KEY,
    key         bytea CHECK (key IS NULL OR octet_length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    erased_at   timestamptz,
    CONSTRAINT personal_data_keys_erased CHECK ((key IS NULL) = (erased_at IS NOT NULL))
);

-- PersonalDataErased deletes the key in the same transaction that appends the event, whoever
-- appends it, and releases the account's e-mail claim (a hash of the address).
CREATE FUNCTION erase_personal_data() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO personal_data_keys (account_id, key, erased_at)
    VALUES (NEW.stream_id, NULL, now())
    ON CONFLICT (account_id) DO UPDATE
        SET key = NULL, erased_at = COALESCE(personal_data_keys.erased_at, now());
    DELETE FROM claims WHERE scope = 'account_email' AND stream_id = NEW.stream_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_erase_personal_data AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.stream_type = 'account' AND NEW.event_type = 'PersonalDataErased')
    EXECUTE FUNCTION erase_personal_data();
