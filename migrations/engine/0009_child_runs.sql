-- The run (and the key, one per child within that run: the phase id, or `<phase id>/<name>` for
-- a phase that starts several) that started a child run, so that a parent resumed after a crash
-- resumes its unfinished child instead of starting a second one.
ALTER TABLE runs ADD COLUMN parent_run_id uuid REFERENCES runs (id) ON DELETE SET NULL;
ALTER TABLE runs ADD COLUMN parent_key text;
CREATE INDEX runs_parent ON runs (parent_run_id, parent_key) WHERE parent_run_id IS NOT NULL;
