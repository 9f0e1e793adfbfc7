-- Large step records in files (docs/DURABILITY.md, "Large records in
-- files"): a record of at least --log-file-min bytes is appended to its
-- session's file beside the database (<db>-steps/<id>/<gen>.log), and its row
-- says where. NULL in all three: the record is in the row, as before.
-- Applied by curvd_store_open() inside its migration transaction; do not
-- add BEGIN/COMMIT here.
ALTER TABLE step_log ADD COLUMN file_offset INTEGER CHECK (file_offset >= 0);
ALTER TABLE step_log ADD COLUMN file_len INTEGER CHECK (file_len >= 0);
-- The generation of the session's files it is in: the lease epoch of the
-- daemon that wrote it (store/logfile.h), <db>-steps/<id>/<gen>.log.
ALTER TABLE step_log ADD COLUMN file_gen INTEGER CHECK (file_gen >= 0);
