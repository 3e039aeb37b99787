-- Instances: one row per deployed hub or spoke (phases/src/instance). The port block decides
-- every port of the instance (base + 10 * block + offset), so its uniqueness here is what keeps
-- two instances from ever sharing a port.

CREATE TABLE instances (
    code       text PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    role       text NOT NULL CHECK (role IN ('hub', 'spoke')),
    runtime    text NOT NULL CHECK (runtime IN ('local', 'docker')),
    port_block integer NOT NULL UNIQUE CHECK (port_block >= 0),
    -- The run whose `instance.register` phase created the row (NULL when registered outside a
    -- run): its compensation removes the registration only if that run created it, even when
    -- the phase ran again after a crash and found the row already there.
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- At most one hub.
CREATE UNIQUE INDEX instances_one_hub ON instances ((role)) WHERE role = 'hub';
