/* SPDX-License-Identifier: MIT */
/* The SQL migrations, compiled in from migrations/NNNN_*.sql (SQLite) and
 * migrations/pg/NNNN_*.sql (PostgreSQL) in order. */
#ifndef CURVD_MIGRATIONS_H
#define CURVD_MIGRATIONS_H

struct curvd_migration {
    const char *name; /* file name, e.g. "0001_init.sql" */
    const char *sql;
};

extern const struct curvd_migration curvd_migrations[];
extern const unsigned curvd_migration_count;

/* PostgreSQL's, from migrations/pg/NNNN_*.sql, recorded in curvd_schema. */
extern const struct curvd_migration curvd_pg_migrations[];
extern const unsigned curvd_pg_migration_count;

#endif
