-- A checkpoint is one statement (a phase's result and its dependents' `running` rows); what the
-- database does around it should cost less than the write itself.
--
-- 1. Transition checks call their function only for a transition that is not allowed: the
--    triggers' WHEN clauses decide in the executor, and the function then raises.
-- 2. The attempt history keeps only what the checkpoint row no longer shows: failed attempts,
--    and a succeeded attempt once the phase is being compensated. `phase_attempts` is a view
--    that adds each phase's current attempt from `phases`, so readers see every attempt as
--    before, and the common path (running, then succeeded) writes no history row.
-- 3. A run writes all its checkpoint rows as `pending` when it is created, so checkpoints update
--    rows in place; free space on each page lets those updates stay on the page (HOT).

DROP TRIGGER phases_created ON phases;
DROP TRIGGER phases_transition ON phases;
DROP TRIGGER phases_history ON phases;

CREATE TRIGGER phases_created AFTER INSERT ON phases FOR EACH ROW
    WHEN (NEW.state NOT IN ('pending', 'running', 'skipped'))
    EXECUTE FUNCTION dive_check_phase_transition();
CREATE TRIGGER phases_transition BEFORE UPDATE ON phases FOR EACH ROW
    WHEN (OLD.state <> NEW.state AND (OLD.state, NEW.state) NOT IN (
        ('pending', 'running'), ('pending', 'skipped'),
        ('running', 'succeeded'), ('running', 'failed'),
        ('failed', 'running'), ('skipped', 'running'),
        ('succeeded', 'compensating'),
        ('compensating', 'compensated'), ('compensating', 'compensation_failed'),
        ('compensation_failed', 'compensating')))
    EXECUTE FUNCTION dive_check_phase_transition();

ALTER TABLE phases SET (fillfactor = 50);

ALTER TABLE phase_attempts RENAME TO phase_attempt_history;

CREATE VIEW phase_attempts AS
    SELECT run_id, phase_id, attempt, state, started_at, finished_at, error
    FROM phase_attempt_history
    UNION ALL
    SELECT p.run_id, p.phase_id, p.attempt, p.state, p.started_at, p.finished_at, p.error
    FROM phases p
    WHERE p.state IN ('running', 'succeeded', 'failed')
      AND NOT EXISTS (SELECT 1 FROM phase_attempt_history h
                      WHERE h.run_id = p.run_id AND h.phase_id = p.phase_id
                        AND h.attempt = p.attempt);

CREATE OR REPLACE FUNCTION dive_record_phase_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'failed' THEN
        INSERT INTO phase_attempt_history AS a
            (run_id, phase_id, attempt, state, started_at, finished_at, error)
        VALUES (NEW.run_id, NEW.phase_id, NEW.attempt, NEW.state, NEW.started_at,
                NEW.finished_at, NEW.error)
        ON CONFLICT (run_id, phase_id, attempt) DO UPDATE
            SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at, error = EXCLUDED.error;
    ELSIF NEW.state IN ('compensating', 'compensated', 'compensation_failed') THEN
        IF TG_OP = 'UPDATE' AND OLD.state = 'succeeded' THEN
            -- The attempt that succeeded, before its row starts showing the compensation.
            INSERT INTO phase_attempt_history
                (run_id, phase_id, attempt, state, started_at, finished_at, error)
            VALUES (OLD.run_id, OLD.phase_id, OLD.attempt, OLD.state, OLD.started_at,
                    OLD.finished_at, NULL)
            ON CONFLICT (run_id, phase_id, attempt) DO NOTHING;
        END IF;
        INSERT INTO compensations AS c (run_id, phase_id, state, started_at, finished_at, error)
        VALUES (NEW.run_id, NEW.phase_id, NEW.state, now(),
                CASE WHEN NEW.state = 'compensating' THEN NULL ELSE now() END,
                CASE WHEN NEW.state = 'compensation_failed' THEN NEW.error END)
        ON CONFLICT (run_id, phase_id) DO UPDATE
            SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at, error = EXCLUDED.error,
                started_at = CASE WHEN EXCLUDED.state = 'compensating' THEN now() ELSE c.started_at END;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER phases_history AFTER INSERT OR UPDATE ON phases FOR EACH ROW
    WHEN (NEW.state IN ('failed', 'compensating', 'compensated', 'compensation_failed'))
    EXECUTE FUNCTION dive_record_phase_history();
