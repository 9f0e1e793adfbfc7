-- An idle time-to-live per session (issue 20): a session whose last write
-- (create, step, PATCH) is older than its TTL is deleted by the daemon's
-- sweeper. NULL: the daemon's default (--idle-ttl, off unless set);
-- 0: never expires, whatever the default; otherwise seconds.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.
ALTER TABLE sessions ADD COLUMN idle_ttl_s INTEGER CHECK (idle_ttl_s IS NULL OR idle_ttl_s >= 0);
