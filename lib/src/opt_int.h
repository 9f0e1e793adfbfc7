/* SPDX-License-Identifier: MIT */
/* The optimizer vtable and the table-driven hyperparameter machinery. */
#ifndef CURV_OPT_INT_H
#define CURV_OPT_INT_H

#include <stddef.h>

#include "internal.h"
#include "state.h"

/* Most entries a CURV_PARAM_LIST value may hold. */
#define CURV__LIST_MAX 16

struct curv__list {
    size_t n;
    uint64_t v[CURV__LIST_MAX];
};

/*
 * One hyperparameter. @offset locates its storage in the optimizer's
 * hyper struct: REAL -> double, INT -> int64_t, BOOL -> int, ENUM -> int
 * (index into @choices), LIST -> struct curv__list.
 */
struct curv__param {
    const char *name;
    curv_param_type type;
    double def, min, max; /* numeric default and inclusive range */
    const char *def_str;  /* ENUM / LIST default */
    const char *choices;  /* ENUM: "a|b|c" */
    size_t offset;
    const char *doc;
};

#define CURV__REAL(st, f, nm, d, lo, hi, doc)                                                      \
    {                                                                                              \
        nm, CURV_PARAM_REAL, d, lo, hi, NULL, NULL, offsetof(st, f), doc                           \
    }
#define CURV__INT(st, f, nm, d, lo, hi, doc)                                                       \
    {                                                                                              \
        nm, CURV_PARAM_INT, d, lo, hi, NULL, NULL, offsetof(st, f), doc                            \
    }
#define CURV__BOOL(st, f, nm, d, doc)                                                              \
    {                                                                                              \
        nm, CURV_PARAM_BOOL, d, 0, 1, NULL, NULL, offsetof(st, f), doc                             \
    }
#define CURV__ENUM(st, f, nm, dstr, ch, doc)                                                       \
    {                                                                                              \
        nm, CURV_PARAM_ENUM, 0, 0, 0, dstr, ch, offsetof(st, f), doc                               \
    }
#define CURV__LIST(st, f, nm, dstr, doc)                                                           \
    {                                                                                              \
        nm, CURV_PARAM_LIST, 0, 0, 0, dstr, NULL, offsetof(st, f), doc                             \
    }

/* Learning-rate schedule shared by every optimizer (sched.c). */
enum { CURV__SCHED_CONSTANT = 0, CURV__SCHED_STEP, CURV__SCHED_MULTISTEP, CURV__SCHED_EXP };

struct curv__sched {
    double lr;
    int kind;
    double gamma;
    int64_t step_size;
    struct curv__list milestones;
};

/* The schedule's table entries, for a hyper struct @st with a
 * `struct curv__sched` member @f; @lr_def is the optimizer's default. */
#define CURV__SCHED_LR_DOC "learning rate η (the base of the schedule)"
/* The schedule's parameters; @lr_doc says what lr means for the kind. */
#define CURV__SCHED_PARAMS(st, f, lr_def, lr_doc)                                                        \
    CURV__REAL(st, f.lr, "lr", lr_def, 0, 1e6, lr_doc),                                                  \
        CURV__ENUM(st, f.kind, "lr_schedule", "constant", "constant|step|multistep|exponential",         \
                   "constant: η; step: η·γ^floor((t-1)/lr_step_size); multistep: η·γ^(number of " \
                   "milestones < t); exponential: η·γ^(t-1)"),                                           \
        CURV__REAL(st, f.gamma, "lr_gamma", 0.1, 0, 1, "decay factor γ of the schedule"),                \
        CURV__INT(st, f.step_size, "lr_step_size", 1000, 1, 1e15, "steps between decays (step)"),        \
        CURV__LIST(st, f.milestones, "lr_milestones", "",                                                \
                   "steps after which η is multiplied by γ (multistep), e.g. \"100,150\"")

/* curv__sched_lr - the learning rate for step t (1-based). */
double curv__sched_lr(const struct curv__sched *s, uint64_t t);

struct curv__opt_vt;

/* One layer's statistics as a kind sees them: checked, in doubles, or in
 * floats as the trainer sent them when the kind reads floats
 * (curv__opt_vt.float_layers; then acts and signals are NULL). */
struct curv__layer_in {
    size_t block;
    size_t rows, examples;
    const double *acts;    /* rows x n_in */
    const double *signals; /* rows x n_out */
    const float *acts_f, *signals_f;
};

/* A step's input as a kind sees it: every vector checked finite (grad_sq
 * also >= 0), converted to doubles, of the layout's dimension. */
struct curv__step_args {
    const double *g;
    const double *theta;   /* NULL when not sent */
    const double *grad_sq; /* NULL when not sent */
    double loss;
    int has_loss;
    const struct curv__layer_in *layers; /* sorted by block, no repeats */
    size_t n_layers;
    size_t batch;   /* examples behind g; 0: not given */
    double g_sumsq; /* Σ g_i², in order: its finiteness is g's, its root grad_norm */
};

/* curv__report_update_sumsq - a kind that has Σ δ_i² of its update (in
 * order, as a pass it makes anyway) gives it here; update_norm is then not
 * computed again. */
void curv__report_update_sumsq(curv_opt *o, double sumsq);

/* curv__overflow - refuse a step (CURV_E_NONFINITE, nothing changed yet):
 * "<kind>: <what> overflows at element @i, <where in the layout>". */
curv_status curv__overflow(const curv_opt *o, size_t i, const char *what, curv_error *err);

/* The step report: entries with names held in @names (fixed-size slots). */
#define CURV__REPORT_NAME 96
struct curv__report {
    curv_report_entry *e;
    char (*names)[CURV__REPORT_NAME];
    size_t n, cap;
};

/* Entries every report opens with (grad_norm, update_norm), filled by opt.c. */
#define CURV__REPORT_BASE 2
/* curv__report_reserve - room for @cap entries of the kind's own besides
 * the CURV__REPORT_BASE ones (call from init, with its tally: counting only
 * counts). A kind that reserves nothing gets the base entries alone. */
curv_status curv__report_reserve(curv_opt *o, struct curv__tally *t, size_t cap, curv_error *err);
/* curv__report_add - append "name" = value; @fmt builds the name. Entries
 * beyond the reserved capacity are dropped (reserve enough in init). */
void curv__report_add(curv_opt *o, double value, const char *fmt, ...) CURV__PRINTF(3, 4);

struct curv_opt {
    curv_opt_kind kind;
    const struct curv__opt_vt *vt;
    curv_layout *layout;
    size_t dim;
    void *hyper;      /* filled from the param table */
    void *impl;       /* the optimizer's own state */
    uint64_t t;       /* completed steps */
    int pending;      /* a request awaits curv_opt_resume() */
    int interrupted;  /* loaded from a blob saved mid-step */
    uint64_t req_seq; /* the pending request's seq and answer length */
    size_t req_values;
    struct curv__report report; /* cleared when a step starts */
    double *sbuf;               /* float32 conversion of grad_sq */
    double *lbuf;               /* float32 conversion of layer statistics */
    size_t lbuf_cap;
    struct curv__layer_in *layers;
    size_t layers_cap;
    double *gbuf, *pbuf, *ubuf; /* float32 conversion buffers, allocated on demand */
};

/*
 * The per-kind vtable. Conventions:
 *  - init: allocate and initialise o->impl from o->layout and o->hyper
 *    (range checks that need the layout go here, e.g. d limits). Every
 *    allocation it keeps goes through @t (struct curv__tally). With a
 *    counting tally it allocates nothing and fills no array: it only sizes
 *    the state for curv_opt_state_bytes (o->impl may then point at a local
 *    stand-in, and fini is not called), so it must refuse exactly what it
 *    refuses when allocating;
 *  - step: @a checked (see struct curv__step_args); write @delta (dim
 *    doubles) and return CURV_OK, or fill @req and return CURV_NEED_INPUT
 *    (opt.c sets req->n_values from the kind and checks seq and length of
 *    the answer before resume sees it). Must leave the state unchanged
 *    when it fails. The step number being taken is o->t + 1;
 *  - resume: NULL when the kind never asks for input; @a of the step that
 *    asked is not kept by opt.c (copy what the resume needs);
 *  - save/load: the impl state only (kind, layout, hyper and t are handled
 *    by opt.c). load runs on a freshly init'ed optimizer. save while
 *    o->pending must write the state from before the pending step (the
 *    loaded optimizer starts that step over). curv_opt_cancel only clears
 *    o->pending, so step must start from the committed state whatever
 *    in-flight data a cancelled step left behind.
 */
struct curv__opt_vt {
    const struct curv__param *params;
    size_t n_params;
    size_t hyper_size;
    curv_status (*init)(curv_opt *o, struct curv__tally *t, curv_error *err);
    void (*fini)(curv_opt *o);
    curv_status (*step)(curv_opt *o, const struct curv__step_args *a, double *delta,
                        curv_request *req, curv_error *err);
    curv_status (*resume)(curv_opt *o, const curv_response *resp, double *delta, curv_request *req,
                          curv_error *err);
    void (*save)(const curv_opt *o, struct curv__writer *w);
    curv_status (*load)(curv_opt *o, struct curv__reader *r, curv_error *err);
    /* Parameters that shape the state and so cannot change after
     * creation (curv_opt_reconfigure); NULL-terminated, may be NULL. */
    const char *const *fixed;
    /* A lower bound on the doubles a saved state of this configuration
     * holds, computed from layout and hyper before init allocates (NULL:
     * none). Loading refuses a blob shorter than that, so a small forged
     * blob cannot make init allocate gigabytes. SIZE_MAX on overflow. */
    size_t (*saved_doubles)(const curv_opt *o);
    /* Optional inputs the kind reads (CURV_INPUT_LAYERS, _GRAD_SQ); the
     * others are refused. CURV_INPUT_REQUESTS follows from @resume. */
    unsigned inputs;
    /* 1: resume refuses NaN/Inf answer values itself, before it changes
     * anything (with curv__answer_finite's error), so opt.c does not scan
     * them first: a kind that reads every value anyway can fold the check
     * into that pass. 0: opt.c scans every answer before resume. */
    int checks_answers;
    /* Settings a state saved by an earlier version was running with, for
     * keys it lacks whose defaults have changed since (NULL: none); called
     * on the stored config before the optimizer is built. */
    curv_status (*upgrade)(curv_config *stored);
    /* Finish what the last step left for after its return (K-FAC's
     * deferred statistics: curv_opt_settle); NULL: never any. opt.c calls
     * it first in every call that reads or changes the state. */
    void (*settle)(curv_opt *o);
    /* 1 when the kind reads float layer statistics as they are (a step's
     * acts_f and signals_f); NULL or 0: doubles, converted for it. */
    int (*float_layers)(const curv_opt *o);
};

/* curv__steps_stamp - the stamp (curv__w_part) of arrays that change only
 * when a step completes: never in a step that fails, is pending or is
 * cancelled, nor by curv_opt_reconfigure, so within one history they are
 * a function of the number of completed steps. */
static inline uint64_t curv__steps_stamp(const curv_opt *o)
{
    return curv__stamp(CURV__STAMP_STEPS, o->t);
}

/* curv__answer_finite - CURV_OK, or CURV_E_NONFINITE naming the first NaN
 * or Inf among the @n answer values @v ("response value %zu is %g"). */
curv_status curv__answer_finite(const curv_opt *o, const double *v, size_t n, curv_error *err);

/* curv__step_args_build - check @in and convert it to doubles (opt_input.c);
 * the arrays live in @o's conversion buffers until the next step. */
curv_status curv__step_args_build(curv_opt *o, const curv_step_input *in, struct curv__step_args *a,
                                  curv_error *err);

/* curv_opt_new, refusing (CURV_E_CORRUPT) a configuration whose saved
 * state would exceed @max_doubles; used by curv_opt_load. */
curv_status curv__opt_new_bounded(curv_opt_kind kind, const curv_layout *layout,
                                  const curv_config *config, size_t max_doubles, curv_opt **out,
                                  curv_error *err);

/* The vtables, one per kind (defined in each optimizer's .c). */
extern const struct curv__opt_vt curv__sgd_vt;
extern const struct curv__opt_vt curv__adagrad_diag_vt;
extern const struct curv__opt_vt curv__adagrad_full_vt;
extern const struct curv__opt_vt curv__adagrad_bma_vt;
extern const struct curv__opt_vt curv__mbag_vt;
extern const struct curv__opt_vt curv__mbag_ema_vt;
extern const struct curv__opt_vt curv__mbag_n_vt;
extern const struct curv__opt_vt curv__kfac_vt;
extern const struct curv__opt_vt curv__hf_vt;

/* curv__layout_dup_bytes - the bytes curv_layout_dup(@l) allocates. */
size_t curv__layout_dup_bytes(const curv_layout *l);

/* curv__describe - "'fc1' 3x5, 'gain' 5x1" (truncated with "..." to fit). */
void curv__describe(const curv_layout *l, char *buf, size_t cap);

/* curv__locate - describe flat index @i as "block 'fc1' (row 2, col 5)". */
void curv__locate(const curv_layout *l, size_t i, char *buf, size_t cap);

/* A config entry (config.c); @str is NULL for numbers. */
struct curv__cfg_entry {
    const char *key;
    const char *str;
    double num;
};
/* curv__config_entry - entry @i of @c (borrowed); 0 when out of range. */
int curv__config_entry(const curv_config *c, size_t i, struct curv__cfg_entry *out);
/* curv__config_find - the entry of @key into @out (borrowed); 0 when absent. */
int curv__config_find(const curv_config *c, const char *key, struct curv__cfg_entry *out);
/* curv__opt_upgrade - @kind's upgrade of settings loaded from a state
 * (curv__opt_vt.upgrade); CURV_OK when it has none. */
curv_status curv__opt_upgrade(curv_opt_kind kind, curv_config *stored);

/* Parameter tables (param.c). */
curv_status curv__params_apply(const struct curv__param *tab, size_t n, const char *kind_name,
                               const curv_config *c, void *hyper, curv_error *err);
/* Apply @c over the values already in @hyper (no defaults). */
curv_status curv__params_set(const struct curv__param *tab, size_t n, const char *kind_name,
                             const curv_config *c, void *hyper, curv_error *err);
/* Format a resolved value: numbers "%.17g", booleans "true"/"false", enums
 * their name, lists "3,10". */
void curv__param_format(const struct curv__param *p, const void *hyper, char *buf, size_t cap);
/* Serialize resolved values as (name, type, value) records. */
void curv__params_save(const struct curv__param *tab, size_t n, const void *hyper,
                       struct curv__writer *w);
/* Read what curv__params_save wrote into a new config (NULL on bad input). */
curv_status curv__params_read(struct curv__reader *r, curv_config **out, curv_error *err);
/* A parameter's numeric value (ENUM gives its index, LIST its length). */
double curv__param_value(const struct curv__param *p, const void *hyper);

#endif
