/* SPDX-License-Identifier: MIT */
/*
 * Whole-optimizer save/load. Payload inside the state.c frame:
 *   u32 kind
 *   u32 nblocks, then per block: str name, u32 kind, u64 n_out, n_in, c_in,
 *       kh, kw, u32 has_bias
 *   hyperparameter records (param.c)
 *   u64 completed steps, u32 interrupted (saved while a request was pending,
 *       or by an optimizer loaded so and not stepped since)
 *   the kind's own state (its vt->save)
 * All of it up to the kind's state is one volatile part (stamp 0); the
 * kind marks its arrays as stable parts (state.h, curv_opt_save_parts).
 * Loading rebuilds the layout and config through the public constructors,
 * so a blob is validated by exactly the rules that guard fresh input.
 */
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

/* Smallest encoding of one block record, to bound counts read from blobs. */
#define MIN_BLOCK_BYTES (4 + 4 + 5 * 8 + 4)

static void save_layout(const curv_layout *l, struct curv__writer *w)
{
    size_t n = curv_layout_nblocks(l);
    curv__w_u32(w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        curv_block_info b;
        curv_layout_block(l, i, &b);
        curv__w_str(w, b.name);
        curv__w_u32(w, (uint32_t)b.kind);
        curv__w_u64(w, b.n_out);
        curv__w_u64(w, b.n_in);
        curv__w_u64(w, b.c_in);
        curv__w_u64(w, b.kh);
        curv__w_u64(w, b.kw);
        curv__w_u32(w, (uint32_t)b.has_bias);
    }
}

static curv_status add_block_record(curv_layout *l, struct curv__reader *r)
{
    char name[CURV_NAME_MAX + 1];
    curv__r_str(r, name, sizeof name);
    uint32_t kind = curv__r_u32(r);
    uint64_t n_out = curv__r_u64(r), n_in = curv__r_u64(r), c_in = curv__r_u64(r);
    uint64_t kh = curv__r_u64(r), kw = curv__r_u64(r);
    uint32_t bias = curv__r_u32(r);
    if (r->bad || bias > 1 || n_out > SIZE_MAX || n_in > SIZE_MAX || c_in > SIZE_MAX ||
        kh > SIZE_MAX || kw > SIZE_MAX)
        return CURV_E_CORRUPT;
    /* Only the canonical record of each kind, as save_layout writes it, so
     * that load -> save gives back the same bytes. */
    switch (kind) {
    case CURV_BLOCK_DENSE:
        if (c_in || kh || kw)
            return CURV_E_CORRUPT;
        return curv_layout_add_dense(l, name, n_out, n_in, (int)bias, NULL);
    case CURV_BLOCK_CONV2D:
        if (kh == 0 || kw == 0 || c_in > UINT64_MAX / kh / kw || c_in * kh * kw != n_in)
            return CURV_E_CORRUPT;
        return curv_layout_add_conv2d(l, name, n_out, c_in, kh, kw, (int)bias, NULL);
    case CURV_BLOCK_VECTOR:
        if (n_in != 1 || c_in || kh || kw || bias)
            return CURV_E_CORRUPT;
        return curv_layout_add_vector(l, name, n_out, NULL);
    default:
        return CURV_E_CORRUPT;
    }
}

static curv_status load_layout(struct curv__reader *r, curv_layout **out, curv_error *err)
{
    curv_layout *l = curv_layout_new();
    if (!l)
        return curv__fail(err, CURV_E_NOMEM, "state: out of memory");
    uint32_t n = curv__r_u32(r);
    curv_status st = (size_t)n > curv__r_left(r) / MIN_BLOCK_BYTES ? CURV_E_CORRUPT : CURV_OK;
    for (uint32_t i = 0; i < n && st == CURV_OK; i++)
        st = add_block_record(l, r);
    if (st != CURV_OK) {
        curv_layout_free(l);
        if (st == CURV_E_NOMEM)
            return curv__fail(err, st, "state: out of memory");
        return curv__fail(err, CURV_E_CORRUPT, "state: malformed layout record");
    }
    *out = l;
    return CURV_OK;
}

static curv_status save(const curv_opt *o, unsigned char **blob, size_t *len,
                        curv_state_part **parts, size_t *n_parts, curv_error *err)
{
    /* The state saved is the settled one: a fold the last step left is
     * part of it (curv_opt_settle), finished here, hence the cast. */
    curv_opt_settle((curv_opt *)o);
    struct curv__writer w = {0};
    size_t doubles = o->vt->saved_doubles ? o->vt->saved_doubles(o) : 0;
    if (doubles < SIZE_MAX / 16)
        curv__w_hint(&w, 8 * doubles + 4096 + 64 * curv_layout_nblocks(o->layout));
    curv__w_frame(&w);
    curv__w_u32(&w, (uint32_t)o->kind);
    save_layout(o->layout, &w);
    curv__params_save(o->vt->params, o->vt->n_params, o->hyper, &w);
    curv__w_u64(&w, o->t);
    /* Still interrupted until its next step: a reloaded copy saved again
     * (a daemon evicting a session twice) keeps the mark. */
    curv__w_u32(&w, (uint32_t)(o->pending || o->interrupted));
    o->vt->save(o, &w);
    curv_status st = curv__state_seal(&w, blob, len, parts, n_parts, err);
    curv__w_release(&w);
    return st;
}

curv_status curv_opt_save(const curv_opt *o, unsigned char **blob, size_t *len, curv_error *err)
{
    if (!o || !blob || !len)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL optimizer or output pointer");
    return save(o, blob, len, NULL, NULL, err);
}

curv_status curv_opt_save_parts(const curv_opt *o, unsigned char **blob, size_t *len,
                                curv_state_part **parts, size_t *n_parts, curv_error *err)
{
    if (!o || !blob || !len || !parts || !n_parts)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL optimizer or output pointer");
    return save(o, blob, len, parts, n_parts, err);
}

curv_status curv_opt_load(const unsigned char *blob, size_t len, curv_opt **out, curv_error *err)
{
    if (!out)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL output pointer");
    struct curv__reader r;
    curv_status st = curv__state_open(blob, len, &r, err);
    if (st != CURV_OK)
        return st;
    uint32_t kind = curv__r_u32(&r);
    if (r.bad || kind >= CURV_OPT_KIND_COUNT)
        return curv__fail(err, CURV_E_CORRUPT, "state: unknown optimizer kind %u", kind);
    curv_layout *layout = NULL;
    curv_config *config = NULL;
    curv_opt *o = NULL;
    if ((st = load_layout(&r, &layout, err)) != CURV_OK ||
        (st = curv__params_read(&r, &config, err)) != CURV_OK)
        goto out;
    if ((st = curv__opt_upgrade((curv_opt_kind)kind, config)) != CURV_OK) {
        st = curv__fail(err, st, "state: out of memory upgrading stored settings");
        goto out;
    }
    /* The state's arrays must fit in what is left of the blob: checked
     * before init allocates them (vt->saved_doubles). */
    st = curv__opt_new_bounded((curv_opt_kind)kind, layout, config, curv__r_left(&r) / 8, &o, err);
    if (st != CURV_OK) {
        if (st != CURV_E_NOMEM && err) {
            char why[CURV_ERROR_TEXT];
            memcpy(why, err->text, sizeof why); /* err->text is also the destination */
            st = curv__fail(err, CURV_E_CORRUPT, "state: stored settings rejected: %s", why);
        } else if (st != CURV_E_NOMEM) {
            st = CURV_E_CORRUPT;
        }
        goto out;
    }
    o->t = curv__r_u64(&r);
    uint32_t pending = curv__r_u32(&r);
    o->interrupted = pending == 1; /* the blob holds the state from before that step */
    if (r.bad || pending > 1 || (pending && !o->vt->resume)) {
        st = curv__fail(err, CURV_E_CORRUPT, "state: malformed step counter");
        goto out;
    }
    if ((st = o->vt->load(o, &r, err)) != CURV_OK)
        goto out;
    if (r.bad || r.pos != r.len) {
        st = curv__fail(err, CURV_E_CORRUPT, "state: %s state is malformed or has trailing bytes",
                        curv_opt_kind_name(o->kind));
        goto out;
    }
    *out = o;
    o = NULL;
out:
    curv_opt_free(o);
    curv_config_free(config);
    curv_layout_free(layout);
    return st;
}
