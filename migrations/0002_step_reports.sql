-- The report of each session's latest step (its "report" object as compact
-- JSON), so that GET /v1/sessions/{id} can show it; NULL for a step
-- committed before this migration.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.

-- ALTER TABLE ADD COLUMN would put the column after the reply body, and a
-- read of it would then walk the body's overflow pages. The table is
-- rebuilt with the small columns first instead (SQLite's documented
-- procedure: new table, copy, drop, rename; no other table refers to it).
CREATE TABLE step_responses_new (
    session_id   TEXT    NOT NULL PRIMARY KEY
                         REFERENCES sessions (id) ON DELETE CASCADE,
    step         INTEGER NOT NULL CHECK (step >= 1),
    content_type TEXT    NOT NULL,
    report       TEXT,
    body         BLOB    NOT NULL
);

INSERT INTO step_responses_new (session_id, step, content_type, body)
    SELECT session_id, step, content_type, body FROM step_responses;

DROP TABLE step_responses;

ALTER TABLE step_responses_new RENAME TO step_responses;
