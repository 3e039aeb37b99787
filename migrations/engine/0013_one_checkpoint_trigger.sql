-- A checkpoint updates checkpoint rows in place; everything the database checks and derives on
-- such an update now happens in one BEFORE UPDATE trigger without a WHEN clause, calling one
-- PL/pgSQL function.
--
-- Why: PostgreSQL prepares a trigger's WHEN clause and a table's CHECK constraints again on
-- every execution of a statement (they are stored as expression trees and planned per
-- execution); a prepared statement does not keep them. With two row triggers (transition
-- check, history) and three CHECK constraints, that preparation cost as much as the write of
-- the two rows itself: pgbench, prepared, the two-row checkpoint upsert took 0.30-0.32 ms
-- against 0.21-0.22 ms with none of them and 0.19-0.20 ms for the one-row floor. One trigger
-- without WHEN whose function holds the checks costs 0.24-0.25 ms: PL/pgSQL keeps its
-- compiled function and expressions for the session.
--
-- What is enforced does not change: the same transitions, a succeeded phase has its output,
-- attempts are not negative, rows are created only pending, running or skipped; the failed
-- attempts and compensated successes still go to `phase_attempt_history`, compensation states
-- to `compensations`. `engine/tests/schema.rs` checks all of it against the engine.

DROP TRIGGER phases_transition ON phases;
DROP TRIGGER phases_history ON phases;
DROP TRIGGER phases_created ON phases;
ALTER TABLE phases
    DROP CONSTRAINT phases_state_check,
    DROP CONSTRAINT phases_attempt_check,
    DROP CONSTRAINT succeeded_has_output;
DROP FUNCTION dive_record_phase_history();
DROP FUNCTION dive_check_phase_transition();

-- One function for both triggers. Creation: only in a state a run starts a phase in. Update:
-- an allowed transition. Both: the row's own rules; then, on update, the history the row will
-- no longer show (a failed attempt; the succeeded attempt once it is compensated) and the
-- compensation.
CREATE FUNCTION dive_check_phase() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state NOT IN ('pending', 'running', 'skipped') THEN
            RAISE EXCEPTION 'phase %/% cannot be created in state %',
                NEW.run_id, NEW.phase_id, NEW.state USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.state <> OLD.state AND NOT (OLD.state || '>' || NEW.state = ANY (ARRAY[
            'pending>running', 'pending>skipped',
            'running>succeeded', 'running>failed',
            'failed>running', 'skipped>running',
            'succeeded>compensating', 'failed>compensating',
            'compensating>compensated', 'compensating>compensation_failed',
            'compensation_failed>compensating'])) THEN
        RAISE EXCEPTION 'phase %/%: transition % -> % is not allowed',
            NEW.run_id, NEW.phase_id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state = 'succeeded' AND NEW.output IS NULL THEN
        RAISE EXCEPTION 'phase %/%: a succeeded phase needs its output', NEW.run_id, NEW.phase_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempt < 0 THEN
        RAISE EXCEPTION 'phase %/%: attempt % is negative', NEW.run_id, NEW.phase_id, NEW.attempt
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'INSERT' THEN
        RETURN NULL;
    END IF;
    IF NEW.state = 'failed' THEN
        INSERT INTO phase_attempt_history AS a
            (run_id, phase_id, attempt, state, started_at, finished_at, error)
        VALUES (NEW.run_id, NEW.phase_id, NEW.attempt, NEW.state, NEW.started_at,
                NEW.finished_at, NEW.error)
        ON CONFLICT (run_id, phase_id, attempt) DO UPDATE
            SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at, error = EXCLUDED.error;
    ELSIF NEW.state IN ('compensating', 'compensated', 'compensation_failed') THEN
        IF OLD.state = 'succeeded' THEN
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
    RETURN NEW;
END $$;

-- Rows are created once per run, all in one statement: there the WHEN clause costs nothing.
CREATE TRIGGER phases_created AFTER INSERT ON phases FOR EACH ROW
    WHEN (NEW.state NOT IN ('pending', 'running', 'skipped') OR NEW.attempt < 0)
    EXECUTE FUNCTION dive_check_phase();
CREATE TRIGGER phases_checkpoint BEFORE UPDATE ON phases FOR EACH ROW
    EXECUTE FUNCTION dive_check_phase();
