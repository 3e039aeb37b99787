-- A failed phase may be compensated too: a phase that changes several objects can fail half-way,
-- and one whose compensation works from the live state undoes that partial work
-- (Phase::compensates_failure). Adds failed -> compensating to the allowed transitions.

CREATE OR REPLACE FUNCTION dive_check_phase_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state NOT IN ('pending', 'running', 'skipped') THEN
            RAISE EXCEPTION 'phase %/% cannot be created in state %', NEW.run_id, NEW.phase_id, NEW.state;
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.state = NEW.state OR (OLD.state, NEW.state) IN (
        ('pending', 'running'), ('pending', 'skipped'),
        ('running', 'succeeded'), ('running', 'failed'),
        ('failed', 'running'), ('skipped', 'running'),
        ('succeeded', 'compensating'), ('failed', 'compensating'),
        ('compensating', 'compensated'), ('compensating', 'compensation_failed'),
        ('compensation_failed', 'compensating'))
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'phase %/%: transition % -> % is not allowed', NEW.run_id, NEW.phase_id, OLD.state, NEW.state;
END $$;

DROP TRIGGER phases_transition ON phases;
CREATE TRIGGER phases_transition BEFORE UPDATE ON phases FOR EACH ROW
    WHEN (OLD.state <> NEW.state AND (OLD.state, NEW.state) NOT IN (
        ('pending', 'running'), ('pending', 'skipped'),
        ('running', 'succeeded'), ('running', 'failed'),
        ('failed', 'running'), ('skipped', 'running'),
        ('succeeded', 'compensating'), ('failed', 'compensating'),
        ('compensating', 'compensated'), ('compensating', 'compensation_failed'),
        ('compensation_failed', 'compensating')))
    EXECUTE FUNCTION dive_check_phase_transition();
