-- Secrets: one row per version, AES-256-GCM encrypted under the master key with the name and
-- version as associated data (phases/src/secrets). Values never appear in clear here.

CREATE TABLE secrets (
    name       text NOT NULL CHECK (length(name) <= 255
                   AND name ~ '^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$'),
    version    integer NOT NULL CHECK (version >= 1),
    nonce      bytea NOT NULL CHECK (length(nonce) = 12),
    -- ciphertext followed by the 16-byte GCM tag
    ciphertext bytea NOT NULL CHECK (length(ciphertext) >= 16),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- At most one row: an encryption of a constant under the master key, written on first use, so a
-- different key is recognised before anything is read or written.
CREATE TABLE secret_keycheck (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    nonce      bytea NOT NULL CHECK (length(nonce) = 12),
    ciphertext bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
