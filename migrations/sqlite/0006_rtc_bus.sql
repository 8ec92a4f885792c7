-- The /rtc bus between API instances (PostgreSQL migration 0006) has no SQLite
-- counterpart: a SQLite database serves one instance, whose hub keeps channel presence in
-- memory. This migration keeps the numbering of both folders in step.
SELECT 1;
