-- Which run minted a version (`run:<uuid>`), so that a rotation resumed after a crash finds the
-- version it already wrote instead of minting a second one. NULL for versions written by hand
-- or by `ensure`.
ALTER TABLE secrets ADD COLUMN origin text CHECK (origin IS NULL OR length(origin) <= 200);
CREATE UNIQUE INDEX secrets_origin ON secrets (name, origin) WHERE origin IS NOT NULL;
