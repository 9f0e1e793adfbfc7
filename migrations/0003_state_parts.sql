-- Each session's state as parts (libcurv's curv_opt_save_parts), so that a
-- step rewrites only the parts whose stamp changed. The blob is the parts'
-- bytes concatenated in idx order; a session with an empty state has none.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.

-- A rowid table (incremental blob reads need one), keyed by (session_id,
-- idx): one session's parts in order are a range of that key's index. The
-- small columns come first, so reading stamps and lengths never walks the
-- overflow pages of the bytes.
CREATE TABLE state_parts (
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    stamp      INTEGER NOT NULL,   -- libcurv's 64-bit stamp, as a signed integer; 0: unknown
    bytes      BLOB    NOT NULL,
    PRIMARY KEY (session_id, idx)
);

-- Existing states become one part each, with stamp 0 (compares equal to
-- nothing): the first step after the upgrade rewrites them whole.
INSERT INTO state_parts (session_id, idx, stamp, bytes)
    SELECT id, 0, 0, state FROM sessions WHERE length(state) > 0;

-- sessions.state stays (a landed migration is never edited, and dropping a
-- column rewrites the table anyway) but holds an empty blob from now on.
UPDATE sessions SET state = x'';
