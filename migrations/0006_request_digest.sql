-- The digest of each session's latest step request (issue 21): a re-post
-- of that step is given its stored reply only when the digest of the new
-- request is the same ("mm3-128:" and 32 hex digits; the canonical form is
-- in server/wire/request_digest.h). NULL for a step committed before this
-- migration: its re-posts are replayed whatever they hold, as before.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.

-- As in 0002, the table is rebuilt so that the small columns come before
-- the reply body (ALTER TABLE ADD COLUMN would put it after).
CREATE TABLE step_responses_new (
    session_id     TEXT    NOT NULL PRIMARY KEY
                           REFERENCES sessions (id) ON DELETE CASCADE,
    step           INTEGER NOT NULL CHECK (step >= 1),
    content_type   TEXT    NOT NULL,
    report         TEXT,
    request_digest TEXT,
    body           BLOB    NOT NULL
);

INSERT INTO step_responses_new (session_id, step, content_type, report, body)
    SELECT session_id, step, content_type, report, body FROM step_responses;

DROP TABLE step_responses;

ALTER TABLE step_responses_new RENAME TO step_responses;
