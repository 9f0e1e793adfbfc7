-- SQLite's 0010 (large step records in files beside the database), for
-- the same shape of tables: PostgreSQL keeps every record in its row
-- (TOAST), so here both columns stay NULL.
ALTER TABLE step_log ADD COLUMN file_offset bigint CHECK (file_offset >= 0);
ALTER TABLE step_log ADD COLUMN file_len bigint CHECK (file_len >= 0);
ALTER TABLE step_log ADD COLUMN file_gen bigint CHECK (file_gen >= 0);
