-- A session's name and labels (issue 20): free text for people, and
-- key/value strings that GET /v1/sessions?label=key=value filters on.
-- labels is a JSON object of strings (the daemon checks its form), NULL
-- for none. Applied by curvd_store_open() inside its migration
-- transaction; do not add BEGIN/COMMIT here.
ALTER TABLE sessions ADD COLUMN name TEXT;
ALTER TABLE sessions ADD COLUMN labels TEXT;
