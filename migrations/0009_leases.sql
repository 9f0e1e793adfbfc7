-- Leases with fencing (issue 24, docs/CLUSTER.md "Leases and fencing"):
-- a session is held in memory by at most one daemon, the lease's owner,
-- until lease_expires (unix ms, the store's clock). Every acquisition
-- increments lease_epoch, and every write of the session names the epoch
-- it was loaded under: a write with another epoch is refused (FENCED), so
-- a daemon that was paused past its lease cannot write over the new
-- owner. A new or imported session has no owner and epoch 0.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.
ALTER TABLE sessions ADD COLUMN lease_owner TEXT;                        -- NULL: not held
ALTER TABLE sessions ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN lease_expires INTEGER NOT NULL DEFAULT 0;
