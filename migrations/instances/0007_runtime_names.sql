-- Which runtimes exist is decided in code (the registry of runtimes, `RUNTIMES` in
-- crates/runtime), and a runtime name is checked there whenever a row is written or read; the
-- database no longer lists them, so adding a runtime needs no migration.
ALTER TABLE instances DROP CONSTRAINT instances_runtime_check;
