-- A run may hold several lock keys (`lock: [a, b]` in a workflow file). `lock_keys` lists them
-- all, sorted; a run is orphaned when none of them is held. `lock_key` stays for readers and
-- writers of the one-key schema and is the first of `lock_keys`; a trigger fills whichever of
-- the two an insert leaves out.
ALTER TABLE runs ADD COLUMN lock_keys text[];
UPDATE runs SET lock_keys = ARRAY[lock_key];
ALTER TABLE runs ALTER COLUMN lock_keys SET NOT NULL;
ALTER TABLE runs ADD CONSTRAINT runs_lock_keys_not_empty
    CHECK (cardinality(lock_keys) >= 1 AND array_position(lock_keys, NULL) IS NULL);
ALTER TABLE runs ADD CONSTRAINT runs_lock_key_is_first CHECK (lock_key = lock_keys[1]);

CREATE FUNCTION dive_fill_lock_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.lock_keys IS NULL AND NEW.lock_key IS NOT NULL THEN
        NEW.lock_keys := ARRAY[NEW.lock_key];
    ELSIF NEW.lock_key IS NULL THEN
        NEW.lock_key := NEW.lock_keys[1];
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER runs_fill_lock_keys BEFORE INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION dive_fill_lock_keys();
