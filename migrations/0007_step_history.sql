-- The last N step reports of each session (issue 23): what curvd watch,
-- the dashboard and the clients page through (GET /v1/sessions/{id}/steps).
-- A row is written in the transaction that commits its step, and the rows
-- older than the session's bound are deleted in the same transaction.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.

-- Keyed by (session_id, step) without a rowid: one session's history in
-- order is a range of the primary key, and pruning deletes a range.
CREATE TABLE step_history (
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL CHECK (step >= 1),
    at         INTEGER NOT NULL,   -- unix ms, when the step was committed
    callbacks  INTEGER NOT NULL CHECK (callbacks >= 0),  -- exchanges the step took
    timing     TEXT,               -- the daemon's time split, a JSON object of ms
    report     TEXT,               -- the step's report as its reply carried it
    PRIMARY KEY (session_id, step)
) WITHOUT ROWID;

-- How many steps a session keeps: NULL the daemon's --history; 0 none.
ALTER TABLE sessions ADD COLUMN history_steps INTEGER
    CHECK (history_steps IS NULL OR history_steps >= 0);
