-- Federation between a hub and its spokes: which pairs dive linked, and every verification
-- (a real brokered login per test user and direction). No secret values here.

CREATE TABLE federation_links (
    hub        text NOT NULL,
    spoke      text NOT NULL,
    run_id     uuid,
    linked_at  timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hub, spoke),
    CHECK (hub <> spoke)
);

CREATE TABLE federation_verifications (
    id          bigserial PRIMARY KEY,
    run_id      uuid,
    -- Users of `source` logged in at `target` through `target`'s `<source>-idp`.
    source      text NOT NULL,
    target      text NOT NULL,
    ok          boolean NOT NULL,
    latency_ms  integer NOT NULL CHECK (latency_ms >= 0),
    -- [{username, ok, claims, mismatches}]
    users       jsonb NOT NULL,
    error       text,
    verified_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX federation_verifications_latest ON federation_verifications (source, target, verified_at DESC);
