-- The engine's durable state: runs with their stored plan, the current checkpoint of every phase,
-- the history of attempts and compensations, breaker transitions and lock holders.
-- Allowed state transitions are enforced here as well as in code (engine/src/state.rs).

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    workflow         text NOT NULL,
    lock_key         text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed',
                         'rolling_back', 'rolled_back', 'rollback_failed', 'cancelled')),
    params           jsonb NOT NULL,
    plan             jsonb NOT NULL,
    no_rollback      boolean NOT NULL DEFAULT false,
    cancel_requested boolean NOT NULL DEFAULT false,
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_started_at ON runs (started_at DESC);
CREATE INDEX runs_active ON runs (state) WHERE state IN ('running', 'rolling_back');

-- One row per phase: the checkpoint the engine resumes from.
CREATE TABLE phases (
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase_id    text NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'skipped',
                    'compensating', 'compensated', 'compensation_failed')),
    attempt     integer NOT NULL CHECK (attempt >= 0),
    started_at  timestamptz,
    finished_at timestamptz,
    output      jsonb,
    error       text,
    PRIMARY KEY (run_id, phase_id),
    CONSTRAINT succeeded_has_output CHECK (state <> 'succeeded' OR output IS NOT NULL)
);

-- Every attempt of every phase, kept by trigger from the checkpoint rows.
CREATE TABLE phase_attempts (
    run_id      uuid NOT NULL,
    phase_id    text NOT NULL,
    attempt     integer NOT NULL,
    state       text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    started_at  timestamptz,
    finished_at timestamptz,
    error       text,
    PRIMARY KEY (run_id, phase_id, attempt),
    FOREIGN KEY (run_id, phase_id) REFERENCES phases (run_id, phase_id) ON DELETE CASCADE
);

-- Every compensation of a phase, kept by trigger from the checkpoint rows.
CREATE TABLE compensations (
    run_id      uuid NOT NULL,
    phase_id    text NOT NULL,
    state       text NOT NULL CHECK (state IN ('compensating', 'compensated', 'compensation_failed')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error       text,
    PRIMARY KEY (run_id, phase_id),
    FOREIGN KEY (run_id, phase_id) REFERENCES phases (run_id, phase_id) ON DELETE CASCADE
);

CREATE TABLE breaker_events (
    id         bigserial PRIMARY KEY,
    run_id     uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    breaker    text NOT NULL,
    transition text NOT NULL CHECK (transition IN ('open', 'half_open', 'closed', 'rejected')),
    at         timestamptz NOT NULL
);
CREATE INDEX breaker_events_run ON breaker_events (run_id, id);

-- Who holds (or last held) a lock key. The lock itself is a session advisory lock on
-- hashtextextended(key, 0); this table only names the holder.
CREATE TABLE locks (
    key         text PRIMARY KEY,
    run_id      uuid NOT NULL,
    pid         integer NOT NULL,
    host        text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION dive_check_run_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state NOT IN ('pending', 'running') THEN
            RAISE EXCEPTION 'run % cannot be created in state %', NEW.id, NEW.state;
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.state = NEW.state OR (OLD.state, NEW.state) IN (
        ('pending', 'running'),
        ('running', 'succeeded'), ('running', 'failed'), ('running', 'rolling_back'),
        ('running', 'cancelled'),
        ('failed', 'running'), ('failed', 'rolling_back'),
        ('cancelled', 'running'), ('cancelled', 'rolling_back'),
        ('rolling_back', 'rolled_back'), ('rolling_back', 'rollback_failed'),
        ('rolling_back', 'cancelled'),
        ('rollback_failed', 'rolling_back'))
    THEN
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run %: transition % -> % is not allowed', NEW.id, OLD.state, NEW.state;
END $$;
CREATE TRIGGER runs_transition BEFORE INSERT OR UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION dive_check_run_transition();

CREATE FUNCTION dive_check_phase_transition() RETURNS trigger LANGUAGE plpgsql AS $$
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
        ('succeeded', 'compensating'),
        ('compensating', 'compensated'), ('compensating', 'compensation_failed'),
        ('compensation_failed', 'compensating'))
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'phase %/%: transition % -> % is not allowed', NEW.run_id, NEW.phase_id, OLD.state, NEW.state;
END $$;
-- An upsert fires BEFORE INSERT triggers even when it ends up updating, so the initial state
-- is checked after a real insert and transitions before an update.
CREATE TRIGGER phases_created AFTER INSERT ON phases
    FOR EACH ROW EXECUTE FUNCTION dive_check_phase_transition();
CREATE TRIGGER phases_transition BEFORE UPDATE ON phases
    FOR EACH ROW EXECUTE FUNCTION dive_check_phase_transition();

CREATE FUNCTION dive_record_phase_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('running', 'succeeded', 'failed') THEN
        INSERT INTO phase_attempts AS a (run_id, phase_id, attempt, state, started_at, finished_at, error)
        VALUES (NEW.run_id, NEW.phase_id, NEW.attempt, NEW.state, NEW.started_at, NEW.finished_at, NEW.error)
        ON CONFLICT (run_id, phase_id, attempt) DO UPDATE
            SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at, error = EXCLUDED.error;
    ELSIF NEW.state IN ('compensating', 'compensated', 'compensation_failed') THEN
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
CREATE TRIGGER phases_history AFTER INSERT OR UPDATE ON phases
    FOR EACH ROW EXECUTE FUNCTION dive_record_phase_history();
