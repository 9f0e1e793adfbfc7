-- The step log (issue 20, docs/DURABILITY.md): a step is committed as
-- its input (the record the library was given, and its callback answers)
-- instead of the state it changed; the state in state_parts is the
-- session's latest snapshot, and the rows here are the steps after it,
-- replayed onto it when the session is loaded. Writing a snapshot deletes
-- the session's rows in the same transaction.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.

-- A rowid table, keyed by (session_id, step): a session's log in order is
-- a range of that key's index; the small columns come before the record.
CREATE TABLE step_log (
    session_id    TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    step          INTEGER NOT NULL CHECK (step >= 1),
    update_digest TEXT    NOT NULL,  -- the digest of the update the step replied with
    record        BLOB    NOT NULL,  -- server/wire/step_record.h
    PRIMARY KEY (session_id, step)
);
