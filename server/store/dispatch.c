/* SPDX-License-Identifier: MIT */
/* store.h's functions: the arguments checked once, then the store's
 * backend (backend.h); the group commit, which is the same for both. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "store/backend.h"

#define fail curvd_store_fail

static void commit_batch(void *ctx, struct curvd_batch_item **links, size_t n);

int curvd_store_base_init(struct curvd_store *st, const struct curvd_store_ops *ops, char *err,
                          size_t errlen)
{
    st->ops = ops;
    atomic_store(&st->history_default, CURVD_STORE_HISTORY_DEFAULT);
    atomic_store(&st->log_file_min, CURVD_STORE_LOG_FILE_MIN_DEFAULT);
    st->commits = curvd_batcher_new(COMMIT_BATCH_MAX, commit_batch, st);
    return st->commits ? CURVD_STORE_OK : curvd_store_no_memory(err, errlen);
}

void curvd_store_base_stop(struct curvd_store *st)
{
    curvd_batcher_free(st->commits); /* commits what is queued first */
    st->commits = NULL;
}

int curvd_store_open(const char *path, enum curvd_durability durability, struct curvd_store **out,
                     char *err, size_t errlen)
{
    if (!path || !out ||
        (durability != CURVD_DURABILITY_FULL && durability != CURVD_DURABILITY_NORMAL))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_open: invalid argument");
    return curvd_store_is_postgres(path) ? curvd_pg_open(path, durability, out, err, errlen)
                                         : curvd_sqlite_open(path, durability, out, err, errlen);
}

void curvd_store_close(struct curvd_store *st)
{
    if (st)
        st->ops->close(st);
}

int curvd_store_set_busy_timeout(struct curvd_store *st, int ms, char *err, size_t errlen)
{
    if (!st || ms < 0)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_set_busy_timeout: bad argument");
    return st->ops->set_busy_timeout(st, ms, err, errlen);
}

void curvd_store_wal(struct curvd_store *st, struct curvd_store_wal *out)
{
    memset(out, 0, sizeof *out);
    if (st)
        st->ops->wal(st, out);
}

void curvd_store_checkpoint_soon(struct curvd_store *st)
{
    if (st)
        st->ops->checkpoint_soon(st);
}

int curvd_store_info(struct curvd_store *st, struct curvd_store_info *out, char *err, size_t errlen)
{
    if (!st || !out)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_info: invalid argument");
    return st->ops->info(st, out, err, errlen);
}

int curvd_store_health(struct curvd_store *st, char *err, size_t errlen)
{
    if (!st)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_health: invalid argument");
    char why[1600];
    if (curvd_trouble_status(&st->trouble, why, sizeof why) == 0)
        return CURVD_STORE_OK;
    return fail(err, errlen, CURVD_STORE_ERROR, "%s", why);
}

int curvd_store_create(struct curvd_store *st, const struct curvd_session_new *s,
                       int64_t *created_at, char *err, size_t errlen)
{
    if (!st || !s || !s->id || !s->tenant || !s->optimizer || s->step < 0 ||
        !curvd_state_valid(&s->state) || (s->has_idle_ttl && s->idle_ttl_s < 0) ||
        (s->has_history && (s->history_steps < 0 || s->history_steps > CURVD_STORE_HISTORY_MAX)))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_create: invalid argument");
    return st->ops->create(st, s, created_at, err, errlen);
}

int curvd_store_get(struct curvd_store *st, const char *tenant, const char *id, int with_state,
                    struct curvd_session *out, char *err, size_t errlen)
{
    if (!st || !tenant || !id || !out)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_get: invalid argument");
    struct curvd_session o;
    memset(&o, 0, sizeof o);
    int status = st->ops->get(st, tenant, id, with_state, &o, err, errlen);
    if (status == CURVD_STORE_OK)
        *out = o;
    else
        curvd_session_clear(&o);
    return status;
}

int curvd_store_list(struct curvd_store *st, const char *tenant, size_t page_size,
                     const char *page_token, struct curvd_session_list *out, char *err,
                     size_t errlen)
{
    return curvd_store_list_labeled(st, tenant, page_size, page_token, NULL, NULL, out, err,
                                    errlen);
}

int curvd_store_list_labeled(struct curvd_store *st, const char *tenant, size_t page_size,
                             const char *page_token, const char *label_key, const char *label_value,
                             struct curvd_session_list *out, char *err, size_t errlen)
{
    if (!st || !tenant || !out || page_size < 1 || page_size > CURVD_STORE_MAX_PAGE ||
        (label_key &&
         (!label_value || !*label_key || strlen(label_key) > 200 || strpbrk(label_key, "\"\\"))))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_list: invalid argument");
    int64_t after_time = 0;
    char *after_id = NULL;
    if (page_token && *page_token) {
        int status = curvd_page_token_decode(page_token, &after_time, &after_id, err, errlen);
        if (status != CURVD_STORE_OK)
            return status;
    }
    /* One row more than the page means another page. */
    struct curvd_session_list l = {NULL, 0, NULL};
    int status = st->ops->list(st, tenant, page_size + 1, after_time, after_id, label_key,
                               label_value, &l, err, errlen);
    sqlite3_free(after_id);
    if (status == CURVD_STORE_OK && l.count > page_size) {
        curvd_session_clear(&l.items[page_size]);
        l.count = page_size;
        struct curvd_session *last = &l.items[page_size - 1];
        if (!(l.next_page_token = curvd_page_token_encode(last->created_at, last->id)))
            status = curvd_store_no_memory(err, errlen);
    }
    if (status != CURVD_STORE_OK) {
        curvd_session_list_clear(&l);
        return status;
    }
    *out = l;
    return CURVD_STORE_OK;
}

int curvd_store_delete(struct curvd_store *st, const char *tenant, const char *id, char *err,
                       size_t errlen)
{
    if (!st || !tenant || !id)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_delete: invalid argument");
    return st->ops->delete (st, tenant, id, err, errlen);
}

static int valid_item(const struct curvd_commit_item *it)
{
    const struct curvd_step_commit *c = it->c;
    return it->tenant && it->id && c && c->step >= 1 && c->content_type &&
           (c->record
                ? c->update_digest != NULL && strlen(c->update_digest) < CURVD_STORE_DIGEST_TEXT
                : curvd_state_valid(&c->state)) &&
           (c->record || !c->record_len) && (c->response || !c->response_len) &&
           c->callbacks >= 0 && c->epoch >= CURVD_STORE_ANY_EPOCH;
}

/* A failed group goes again one step at a time, so that one step's
 * failure (a blob too big, say) is not every step's. */
static void commit_group(struct curvd_store *st, struct curvd_commit_item **items, size_t n)
{
    if (n && st->ops->commit_group(st, items, n) != CURVD_STORE_OK && n > 1)
        for (size_t i = 0; i < n; i++)
            st->ops->commit_group(st, items + i, 1);
}

void curvd_store_commit_steps(struct curvd_store *st, struct curvd_commit_item **items, size_t n)
{
    struct curvd_commit_item *ok[COMMIT_BATCH_MAX];
    while (n) { /* in slices, invalid items answered on the spot */
        size_t k = 0;
        for (; n && k < COMMIT_BATCH_MAX; items++, n--) {
            if (!st || !valid_item(*items)) {
                (*items)->status = fail((*items)->err, sizeof(*items)->err, CURVD_STORE_INVALID,
                                        "curvd_store_commit_step: invalid argument");
                continue;
            }
            (*items)->err[0] = '\0';
            ok[k++] = *items;
        }
        commit_group(st, ok, k);
    }
}

static void commit_batch(void *ctx, struct curvd_batch_item **links, size_t n)
{
    struct curvd_commit_item *items[COMMIT_BATCH_MAX];
    for (size_t i = 0; i < n; i++)
        items[i] = &((struct curvd_commit_job *)(void *)links[i])->item;
    curvd_store_commit_steps(ctx, items, n);
}

static void job_done(struct curvd_batch_item *link)
{
    struct curvd_commit_job *job = (struct curvd_commit_job *)(void *)link;
    job->done(job);
}

void curvd_store_commit_submit(struct curvd_store *st, struct curvd_commit_job *job)
{
    if (!st || !valid_item(&job->item)) {
        job->item.status = fail(job->item.err, sizeof job->item.err, CURVD_STORE_INVALID,
                                "curvd_store_commit_submit: invalid argument");
        job->done(job);
        return;
    }
    curvd_batcher_submit(st->commits, &job->link, job_done);
}

int curvd_store_commit_step(struct curvd_store *st, const char *tenant, const char *id,
                            const struct curvd_step_commit *c, int64_t *current_step, char *err,
                            size_t errlen)
{
    struct curvd_commit_job w = {.item = {.tenant = tenant, .id = id, .c = c}};
    if (!st || !valid_item(&w.item))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_commit_step: invalid argument");
    curvd_batcher_run(st->commits, &w.link);
    if (w.item.status == CURVD_STORE_CONFLICT && current_step)
        *current_step = w.item.current_step;
    if (w.item.status != CURVD_STORE_OK && err && errlen)
        snprintf(err, errlen, "%s", w.item.err);
    return w.item.status;
}

int curvd_store_update_state(struct curvd_store *st, const char *tenant, const char *id,
                             int64_t expected_step, int64_t epoch,
                             const struct curvd_state_in *state, const char *meta,
                             int64_t *current_step, char *err, size_t errlen)
{
    if (!st || !tenant || !id || expected_step < 0 || epoch < CURVD_STORE_ANY_EPOCH ||
        !curvd_state_valid(state))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_update_state: bad argument");
    return st->ops->update_state(st, tenant, id, expected_step, epoch, state, meta, current_step,
                                 err, errlen);
}

int curvd_store_snapshot(struct curvd_store *st, const char *tenant, const char *id, int64_t step,
                         int64_t epoch, const struct curvd_state_in *state, int64_t *current_step,
                         char *err, size_t errlen)
{
    if (!st || !tenant || !id || step < 0 || epoch < CURVD_STORE_ANY_EPOCH ||
        !curvd_state_valid(state))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_snapshot: bad argument");
    return st->ops->snapshot(st, tenant, id, step, epoch, state, current_step, err, errlen);
}

int curvd_store_get_response(struct curvd_store *st, const char *tenant, const char *id,
                             struct curvd_step_response *out, char *err, size_t errlen)
{
    if (!st || !tenant || !id || !out)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_get_response: bad argument");
    struct curvd_step_response o = {0};
    int status = st->ops->get_response(st, tenant, id, &o, err, errlen);
    if (status == CURVD_STORE_OK)
        *out = o;
    else
        curvd_step_response_clear(&o);
    return status;
}

int curvd_store_count(struct curvd_store *st, const char *tenant, int64_t *out, char *err,
                      size_t errlen)
{
    if (!st || !out)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_count: invalid argument");
    return st->ops->count(st, tenant, out, err, errlen);
}

int curvd_store_set_idle_ttl(struct curvd_store *st, const char *tenant, const char *id, int has,
                             int64_t ttl_s, char *err, size_t errlen)
{
    if (!st || !tenant || !id || (has && ttl_s < 0))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_set_idle_ttl: invalid argument");
    return st->ops->set_idle_ttl(st, tenant, id, has, ttl_s, err, errlen);
}

int curvd_store_expire(struct curvd_store *st, int64_t now, int64_t default_ttl_s, size_t max,
                       void (*each)(void *ctx, const char *id), void *ctx, size_t *count, char *err,
                       size_t errlen)
{
    if (!st || max == 0 || default_ttl_s < 0)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_expire: invalid argument");
    char **ids = sqlite3_malloc64(max * sizeof *ids);
    if (!ids)
        return curvd_store_no_memory(err, errlen);
    size_t n = 0;
    int status = st->ops->expire(st, now, default_ttl_s, max, ids, &n, err, errlen);
    /* Called back outside the store's lock: @each may use the store. */
    for (size_t i = 0; i < n; i++) {
        if (status == CURVD_STORE_OK && each)
            each(ctx, ids[i]);
        sqlite3_free(ids[i]);
    }
    sqlite3_free(ids);
    if (count)
        *count = status == CURVD_STORE_OK ? n : 0;
    return status;
}

int curvd_store_set_name_labels(struct curvd_store *st, const char *tenant, const char *id,
                                int set_name, const char *name, int set_labels, const char *labels,
                                char *err, size_t errlen)
{
    if (!st || !tenant || !id || (!set_name && !set_labels))
        return fail(err, errlen, CURVD_STORE_INVALID,
                    "curvd_store_set_name_labels: invalid argument");
    return st->ops->set_name_labels(st, tenant, id, set_name, name, set_labels, labels, err,
                                    errlen);
}

int curvd_store_history(struct curvd_store *st, const char *tenant, const char *id, int64_t since,
                        size_t page_size, struct curvd_history_page *out, char *err, size_t errlen)
{
    if (!st || !tenant || !id || !out || since < 0 || page_size < 1 ||
        page_size > CURVD_STORE_MAX_PAGE)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_history: invalid argument");
    struct curvd_history_page page = {0};
    int status = st->ops->history(st, tenant, id, since, page_size, &page, err, errlen);
    if (status == CURVD_STORE_OK)
        *out = page;
    else
        curvd_history_page_clear(&page);
    return status;
}

int curvd_store_write_ahead(struct curvd_store *st, struct curvd_write_ahead *w)
{
    w->failed = 0;
    w->offset = 0;
    return st && st->ops->write_ahead ? st->ops->write_ahead(st, w) : 0;
}

int curvd_store_write_ahead_wait(struct curvd_write_ahead *w)
{
    curvd_batcher_wait(&w->wait);
    return w->failed ? -1 : 0;
}

int curvd_store_set_log_file_min(struct curvd_store *st, size_t bytes)
{
    if (!st)
        return CURVD_STORE_INVALID;
    atomic_store(&st->log_file_min, bytes);
    return CURVD_STORE_OK;
}

int curvd_store_set_history_default(struct curvd_store *st, int64_t steps)
{
    if (!st || steps < 0 || steps > CURVD_STORE_HISTORY_MAX)
        return CURVD_STORE_INVALID;
    atomic_store(&st->history_default, steps);
    return CURVD_STORE_OK;
}

int curvd_store_set_history(struct curvd_store *st, const char *tenant, const char *id, int has,
                            int64_t steps, char *err, size_t errlen)
{
    if (!st || !tenant || !id || (has && (steps < 0 || steps > CURVD_STORE_HISTORY_MAX)))
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_set_history: invalid argument");
    return st->ops->set_history(st, tenant, id, has, steps, err, errlen);
}

static int valid_owner(const char *owner)
{
    return owner && *owner && strlen(owner) < CURVD_STORE_OWNER_MAX;
}

int curvd_store_lease_acquire(struct curvd_store *st, const char *tenant, const char *id,
                              const char *owner, int64_t ttl_ms, struct curvd_lease *out, char *err,
                              size_t errlen)
{
    if (!st || !tenant || !id || !valid_owner(owner) || ttl_ms <= 0 || !out)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_lease_acquire: bad argument");
    return st->ops->lease_acquire(st, tenant, id, owner, ttl_ms, out, err, errlen);
}

int curvd_store_lease_renew(struct curvd_store *st, const char *tenant, const char *id,
                            const char *owner, int64_t epoch, int64_t ttl_ms,
                            struct curvd_lease *out, char *err, size_t errlen)
{
    if (!st || !tenant || !id || !valid_owner(owner) || epoch < 0 || ttl_ms <= 0 || !out)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_lease_renew: bad argument");
    return st->ops->lease_renew(st, tenant, id, owner, epoch, ttl_ms, out, err, errlen);
}

int curvd_store_lease_release(struct curvd_store *st, const char *tenant, const char *id,
                              const char *owner, int64_t epoch, char *err, size_t errlen)
{
    if (!st || !tenant || !id || !valid_owner(owner) || epoch < 0)
        return fail(err, errlen, CURVD_STORE_INVALID, "curvd_store_lease_release: bad argument");
    return st->ops->lease_release(st, tenant, id, owner, epoch, err, errlen);
}
