-- What the metrics exporter (`dive serve`) reads without parsing stored plans: each phase's type,
-- and every run refused because another run held one of its locks.

ALTER TABLE phases ADD COLUMN phase_type text;

-- Existing rows get their type from their run's plan. The history trigger stays out of it: the
-- rows' states do not change.
ALTER TABLE phases DISABLE TRIGGER phases_history;
UPDATE phases p SET phase_type = e->>'type'
FROM runs r, jsonb_array_elements(r.plan->'phases') e
WHERE r.id = p.run_id AND e->>'id' = p.phase_id;
ALTER TABLE phases ENABLE TRIGGER phases_history;

CREATE TABLE lock_refusals (
    id       bigserial PRIMARY KEY,
    key      text NOT NULL,
    workflow text NOT NULL,
    holder   uuid,
    at       timestamptz NOT NULL DEFAULT now()
);
