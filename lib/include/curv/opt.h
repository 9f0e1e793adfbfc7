/* SPDX-License-Identifier: MIT */
#ifndef CURV_OPT_H
#define CURV_OPT_H

#include <stdint.h>

#include "config.h"
#include "layout.h"
#include "status.h"

/*
 * The one optimizer interface. Lifecycle (GSL style):
 *   curv_opt_new(kind, layout, config) -> curv_opt_step() ... -> curv_opt_free()
 * A step takes the mini-batch gradient (flat, in the layout's order) and
 * writes the update Δ to add to the parameters: θ ← θ + Δ.
 *
 * A step may instead return CURV_NEED_INPUT with a request (for example
 * "multiply these vectors by your curvature matrix"); the caller computes
 * the answer and calls curv_opt_resume(), which again finishes with an
 * update or another request. While a request is pending the optimizer
 * accepts only curv_opt_resume(), curv_opt_save() and curv_opt_free().
 *
 * Every error leaves the optimizer's state byte-for-byte unchanged.
 * Thread-safety: one optimizer must not be used by two threads at once;
 * distinct optimizers are independent.
 */
typedef struct curv_opt curv_opt;

/* Kinds: values are stored in saved state; never renumber. A code may be
 * unassigned (reserved for a kind not merged yet): curv_opt_kind_name()
 * returns NULL for it and curv_opt_new() refuses it. */
#define CURV_OPT_KIND_MAP(X)                                                                       \
    X(SGD, 0, "sgd")                                                                               \
    X(ADAGRAD_DIAG, 1, "adagrad_diag")                                                             \
    X(ADAGRAD_FULL, 2, "adagrad_full")                                                             \
    X(ADAGRAD_BMA, 3, "adagrad_bma")                                                               \
    X(MBAG, 4, "mbag")                                                                             \
    X(MBAG_EMA, 5, "mbag_ema")                                                                     \
    X(MBAG_N, 6, "mbag_n")                                                                         \
    X(KFAC, 7, "kfac")                                                                             \
    X(HF, 8, "hf")

typedef enum {
#define CURV__KIND_ENUM(name, code, text) CURV_OPT_##name = code,
    CURV_OPT_KIND_MAP(CURV__KIND_ENUM)
#undef CURV__KIND_ENUM
        CURV_OPT_KIND_COUNT
} curv_opt_kind;

/* Element type of the vectors passed in and out. */
typedef enum { CURV_F64 = 0, CURV_F32 = 1 } curv_dtype;

/*
 * curv_layer_stats - one layer's statistics for curvature estimation
 * (K-FAC's Kronecker factors), sent with a step.
 * @block:    index of a dense or conv2d block of the layout.
 * @rows:     rows of @acts and @signals: one per example of the statistics
 *            batch (dense), or per example and output position (conv2d).
 * @examples: examples the rows come from (dense: equal to @rows; conv2d:
 *            @rows must be a multiple of it).
 * @acts:     @rows x n_in, row-major: the layer's inputs (conv2d: unfolded
 *            input patches, [c_in][kh][kw] order) without the homogeneous 1.
 * @signals:  @rows x n_out, row-major: derivatives with respect to the
 *            layer's pre-activations of EACH EXAMPLE'S OWN loss, not divided
 *            by the batch size (a trainer backpropagating a mean-reduced
 *            loss multiplies them by the number of examples). For the true
 *            Fisher (K-FAC's "fisher": "true", the thesis' choice) the
 *            targets behind them are sampled from the model's predictive
 *            distribution; "empirical" means the training targets.
 * @f32:      0: @acts and @signals are in the step's dtype; 1: both are
 *            float whatever the step's dtype (a trainer's FP32 statistics
 *            beside a float64 gradient, without a double copy). The
 *            values are what count: the same values as floats or doubles
 *            give the same step, bit for bit.
 * Finite, borrowed for the call only (until curv_opt_settle when the step
 * defers its statistics: curv_opt_defer_stats).
 */
typedef struct curv_layer_stats {
    size_t block;
    size_t rows;
    size_t examples;
    const void *acts;
    const void *signals;
    int f32;
} curv_layer_stats;

/*
 * curv_step_input - what the trainer sends for one step. Fields a kind
 * does not use may stay zero (designated initializers keep it short).
 * @grad:     the mini-batch *mean* gradient in the layout's flat order.
 * @params:   the current parameters θ (same length), or NULL. Needed only
 *            by options that read θ (weight decay).
 * @len:      number of elements in @grad (and @params, @grad_sq): must
 *            equal curv_layout_dim(); a mismatch is CURV_E_SHAPE naming
 *            the blocks.
 * @dtype:    element type of every vector and matrix here and of the
 *            update written.
 * @layers, @n_layers: per-layer statistics (kinds that estimate curvature
 *            from them, K-FAC); at most one entry per block. A kind that
 *            takes none refuses them (CURV_E_INVALID).
 * @loss, @has_loss: the mini-batch mean loss h(θ), when the trainer has
 *            it; kinds that adapt damping use it, the others ignore it.
 * @grad_sq:  the mean over the mini-batch of squared per-example gradients
 *            (the empirical Fisher diagonal; HF's preconditioner), or NULL.
 *            A kind that takes none refuses it (CURV_E_INVALID).
 * @batch:    examples the gradient averages over (the mini-batch size), or
 *            0 when not given. Adaptive K-FAC reads the gradient's noise
 *            from it (its "noise" option; without it, the largest
 *            @examples among @layers stands in); other kinds ignore it.
 */
typedef struct curv_step_input {
    const void *grad;
    const void *params;
    size_t len;
    curv_dtype dtype;
    const curv_layer_stats *layers;
    size_t n_layers;
    double loss;
    int has_loss;
    const void *grad_sq;
    size_t batch;
} curv_step_input;

typedef enum {
    CURV_REQ_NONE = 0,
    CURV_REQ_CURVATURE_PRODUCT = 1, /* answer: C v for each vector v (n_vectors x dim) */
    CURV_REQ_LOSS = 2,              /* answer: loss at θ + v for each vector v (n_vectors) */
    CURV_REQ_QUADRATIC_FORM = 3     /* answer: V C V^T, row-major (n_vectors x n_vectors) */
} curv_request_kind;

/*
 * HF ("hf", Hessian-free, thesis ch. 4) asks for both kinds of request
 * within one step and needs loss (and grad_sq while its preconditioner or
 * diag damping is on) with every step:
 *  - CURVATURE_PRODUCT, one vector v per request (the first of a
 *    warm-started step is x_0, then one per CG iteration): answer G v, the
 *    MEAN over the curvature mini-batch of J^T H_L J v (the generalized
 *    Gauss-Newton matrix), without damping; the library adds λ·D·v.
 *  - LOSS, several vectors v (stored CG iterates, then line-search step
 *    sizes): answer h(θ + v) for each, on the cases of the step's loss.
 * θ and the curvature mini-batch must stay fixed from curv_opt_step to
 * the update. Refused answers change nothing; a blob saved mid-step
 * restarts the step (curv_opt_interrupted), and its report says so.
 */

/*
 * curv_request - what a step asks of the trainer (CURV_NEED_INPUT).
 * C is the curvature matrix the kind documents (for K-FAC and HF the
 * mini-batch mean Gauss-Newton / Fisher matrix, *without* damping: the
 * library adds its own).
 * @vectors:  @n_vectors rows of @dim doubles, borrowed from the optimizer
 *            and valid until its next call.
 * @seq:      echo in curv_response.seq; guards against stale answers.
 * @n_values: the length the answer must have (see the kinds above).
 */
typedef struct curv_request {
    curv_request_kind kind;
    uint64_t seq;
    size_t n_vectors;
    size_t dim;
    const double *vectors;
    size_t n_values;
} curv_request;

/* curv_response - the trainer's answer: @n_values doubles (borrowed). */
typedef struct curv_response {
    uint64_t seq;
    size_t n_values;
    const double *values;
} curv_response;

/*
 * K-FAC ("kfac", Martens' thesis ch. 6) - what the trainer sends:
 *  - grad: the mini-batch MEAN gradient (a dense/conv2d block's bias is its
 *    last column, the thesis' homogeneous coordinate); params with every
 *    step while weight_decay η > 0 (default 1e-5, the thesis' value);
 *  - layers: for every dense and conv2d block, @acts (without the 1; the
 *    library appends it when the block has a bias) and @signals as
 *    described at curv_layer_stats. The factors are
 *      Ā = mean over rows of ā āᵀ,  G = (1/examples) Σ_rows g gᵀ
 *    (dense: rows = examples; conv2d: rows = examples x output positions,
 *    unfolded patches, Grosse & Martens' KFC), so that G ⊗ Ā is one
 *    example's Fisher block exactly when there is one example. Statistics
 *    are due at steps 1, 1 + cov_interval, ...; a step between may omit or
 *    send them. With inverse = tridiag all layers of a chain (consecutive
 *    dense blocks, each fed by the previous one) send the same rows.
 *    Vector blocks take no statistics: a fallback (AdaGrad-diag or SGD)
 *    updates them.
 *  - adaptive mode (default): each step asks CURV_REQ_QUADRATIC_FORM over
 *    the candidate updates and the previous update (1 to 4 vectors): the
 *    answer is V C Vᵀ with C the exact Fisher / GGN on the trainer's
 *    mini-batch WITHOUT damping (the thesis' App. B.3: only J v products
 *    are needed). Every lambda_interval steps it then asks CURV_REQ_LOSS
 *    at θ + δ (rho_source "request", on the same mini-batch as the step's
 *    loss) or reads the next step's loss ("next_step", another batch).
 *    @loss (without the ℓ2 term: the library adds η/2‖θ‖²) is needed at
 *    those steps. All requests of a step are at the same θ: apply δ only
 *    once the step returns CURV_OK.
 *  - simple mode: no requests; Δ = −lr·v, v ← μv + F̆⁻¹(∇h) at a fixed
 *    damping.
 * Report (after grad_norm, update_norm): mode, fisher, gamma, lambda, rho
 * (when measured), alpha, mu, model_change (M(δ) − M(0)), rejected,
 * inverse_failures, stats_updated, inverse_age.<block>, clamped (tridiag).
 */

/* What a kind reads beyond the gradient, and whether it asks for input. */
typedef enum {
    CURV_INPUT_LAYERS = 1,  /* curv_step_input.layers (per-layer statistics) */
    CURV_INPUT_GRAD_SQ = 2, /* curv_step_input.grad_sq */
    CURV_INPUT_REQUESTS = 4 /* steps may return CURV_NEED_INPUT */
} curv_input_flags;

/* curv_opt_kind_inputs - the curv_input_flags of @kind (0 if unknown). */
CURV_API unsigned curv_opt_kind_inputs(curv_opt_kind kind);

/* curv_opt_kind_name - "sgd", "adagrad_bma", ...; NULL for an unknown kind. */
CURV_API const char *curv_opt_kind_name(curv_opt_kind kind);

/* curv_opt_kind_parse - kind from its name. Return CURV_OK or CURV_E_INVALID. */
CURV_API curv_status curv_opt_kind_parse(const char *name, curv_opt_kind *out);

typedef enum {
    CURV_PARAM_REAL = 0,
    CURV_PARAM_INT = 1,
    CURV_PARAM_BOOL = 2,
    CURV_PARAM_ENUM = 3,
    CURV_PARAM_LIST = 4 /* comma-separated non-negative integers, e.g. "100,150" */
} curv_param_type;

/*
 * curv_param_info - one documented hyperparameter (introspection).
 * All pointers are static strings. @choices is a '|'-separated list for
 * CURV_PARAM_ENUM, else NULL; @def_str is the default of ENUM and LIST.
 */
typedef struct curv_param_info {
    const char *name;
    curv_param_type type;
    double def, min, max;
    const char *def_str;
    const char *choices;
    const char *doc;
} curv_param_info;

/* curv_opt_param_count - number of hyperparameters of @kind (0 if unknown). */
CURV_API size_t curv_opt_param_count(curv_opt_kind kind);

/* curv_opt_param_info - describe parameter @i of @kind; CURV_E_INVALID when
 * out of range. */
CURV_API curv_status curv_opt_param_info(curv_opt_kind kind, size_t i, curv_param_info *out);

/*
 * curv_opt_new - create an optimizer.
 * @layout: copied; the caller keeps ownership of its own.
 * @config: may be NULL (all defaults); read, not kept.
 * Return: CURV_OK and *out; CURV_E_INVALID (empty layout, NULL args),
 * CURV_E_CONFIG (unknown key, wrong type, out of range: the text names the
 * key and its allowed range), CURV_E_RANGE (state too large, e.g. d*d
 * overflow for adagrad_full), CURV_E_NOMEM. *out is written only on success.
 * Ownership: caller frees *out with curv_opt_free().
 */
CURV_API curv_status curv_opt_new(curv_opt_kind kind, const curv_layout *layout,
                                  const curv_config *config, curv_opt **out, curv_error *err);

/*
 * curv_opt_state_bytes - bytes the optimizer of @kind with @layout and
 * @config will hold in memory once created (its state arrays, not counting
 * malloc overhead), computed without allocating the state: exactly what
 * curv_opt_new() would allocate and keep, so a service can refuse a
 * session over its memory budget before creating it. For example mbag
 * keeps about 2·tau + 5 doubles per parameter, adagrad_full d² doubles,
 * kfac two n x n matrices per factor side (the factor and its
 * eigenvectors) and a few d-vectors, hf one d-vector.
 * Steps allocate working memory beyond this, freed when the step ends
 * unless said here: hf keeps its CG vectors from the first step on (5 +
 * ls_batch + the stored iterates, about log_1.3(cg_max): 34 vectors of d
 * with the defaults), sgd its momentum (a d-vector) from the first step
 * that uses one, kfac with inverse = tridiag each chain's inverse, kfac
 * the explicit damped inverses of the damping in use (at most one more
 * n x n matrix per dense factor side, as many bytes as its eigenvectors)
 * and, with an executor of W workers (curv_opt_set_executor), W - 1 more
 * multiply scratch buffers of twice the largest block, and float32 steps
 * a conversion buffer per vector they send.
 * Return: CURV_OK and *@bytes (SIZE_MAX when the count overflows); the
 * refusals of curv_opt_new(): CURV_E_INVALID (unknown kind, NULL layout or
 * @bytes, empty layout), CURV_E_CONFIG (the text names the key),
 * CURV_E_RANGE (a state over the kind's limits, e.g. adagrad_full's
 * max_dim); CURV_E_NOMEM. *@bytes is written only on success.
 */
CURV_API curv_status curv_opt_state_bytes(curv_opt_kind kind, const curv_layout *layout,
                                          const curv_config *config, size_t *bytes,
                                          curv_error *err);

/* curv_opt_free - NULL is a no-op. */
CURV_API void curv_opt_free(curv_opt *o);

/*
 * curv_opt_step - one optimizer step.
 * @update: caller buffer of curv_layout_dim() elements of @in->dtype;
 *          written only when CURV_OK is returned.
 * @req:    filled when CURV_NEED_INPUT is returned; may be NULL for
 *          optimizers that never ask (SGD, the AdaGrad family, MBAG).
 * Return: CURV_OK (update written, step counter advanced), CURV_NEED_INPUT,
 * CURV_E_INVALID (NULL pointers, params missing where required, layer
 * statistics or grad_sq given to a kind that takes none, a layer entry
 * naming a vector block, a repeated block, zero rows, rows not a multiple
 * of examples), CURV_E_SHAPE (@in->len is not the layout's dimension),
 * CURV_E_NONFINITE (NaN/Inf in any input: the text names the block and
 * the element; also for a finite input that would overflow the kind's
 * state, the update or a request's vectors), CURV_E_STATE (a request is
 * pending),
 * CURV_E_NUMERIC, CURV_E_NOMEM.
 * On any error nothing changes.
 */
CURV_API curv_status curv_opt_step(curv_opt *o, const curv_step_input *in, void *update,
                                   curv_request *req, curv_error *err);

/*
 * curv_opt_resume - answer the pending request. Same outcomes as
 * curv_opt_step(); CURV_E_STATE when nothing is pending, after an
 * interruption, or when @resp->seq is not the pending request's;
 * CURV_E_SHAPE when @resp->n_values is not the request's n_values;
 * CURV_E_NONFINITE for a NaN/Inf value. A refused answer changes nothing:
 * the same request stays pending. Exception: CURV_E_NONFINITE when the
 * next request's vectors would overflow (inputs or answers too large to go
 * on): the step is abandoned, as by curv_opt_cancel, and nothing is
 * pending (curv_opt_pending() is 0).
 */
CURV_API curv_status curv_opt_resume(curv_opt *o, const curv_response *resp, curv_dtype dtype,
                                     void *update, curv_request *req, curv_error *err);

/*
 * curv_opt_cancel - abandon the pending request and the step that made it:
 * the state is as before that step (curv_opt_save would have written the
 * same), and the next curv_opt_step starts afresh. A no-op when nothing is
 * pending or @o is NULL.
 */
CURV_API void curv_opt_cancel(curv_opt *o);

/* curv_opt_pending - 1 while a request awaits curv_opt_resume (0 for NULL). */
CURV_API int curv_opt_pending(const curv_opt *o);

/* curv_opt_kind_of - the optimizer's kind (CURV_OPT_KIND_COUNT for NULL). */
CURV_API curv_opt_kind curv_opt_kind_of(const curv_opt *o);

/* curv_opt_layout - the optimizer's layout (borrowed; NULL for NULL). */
CURV_API const curv_layout *curv_opt_layout(const curv_opt *o);

/* curv_opt_steps - number of completed steps (0 for NULL). */
CURV_API uint64_t curv_opt_steps(const curv_opt *o);

/* curv_report_entry - one named figure of a step's report. */
typedef struct curv_report_entry {
    const char *name;
    double value;
} curv_report_entry;

/*
 * curv_opt_report - the report of the step that last returned CURV_OK:
 * for every kind grad_norm (‖gradient sent‖) and update_norm (‖update‖)
 * first, then the kind's own figures (damping, ρ, CG iterations: each kind
 * documents its entries), no name twice. Sets *@entries (borrowed, valid
 * until the next call on @o) and returns their number; 0 for NULL.
 */
CURV_API size_t curv_opt_report(const curv_opt *o, const curv_report_entry **entries);

/*
 * curv_opt_interrupted - 1 when @o was loaded from a blob saved while a
 * request was pending. Such a blob holds the state from before that step
 * (an unfinished step is never saved), so the step must be taken again
 * from its beginning; resume refuses with CURV_E_STATE. The flag clears
 * at the next step.
 */
CURV_API int curv_opt_interrupted(const curv_opt *o);

/* curv_opt_get_param - the resolved value of hyperparameter @name: numbers
 * as set, booleans 0/1, enums their index in @choices, lists their number
 * of entries. CURV_E_INVALID for NULL arguments or an unknown name. */
CURV_API curv_status curv_opt_get_param(const curv_opt *o, const char *name, double *out);

/* curv_opt_get_param_str - the resolved value of @name as text: numbers
 * "%.17g", booleans "true"/"false", enums their name, lists "3,10".
 * CURV_E_INVALID for NULL arguments or an unknown name; CURV_E_RANGE when
 * @cap is too small (then @buf holds a truncated value). */
CURV_API curv_status curv_opt_get_param_str(const curv_opt *o, const char *name, char *buf,
                                            size_t cap);

/*
 * curv_opt_reconfigure - change hyperparameters of a live optimizer,
 * keeping its state (for example the learning rate between steps). Keys
 * not in @changes keep their values. Parameters that shape the state
 * (MBAG's tau, AdaGrad-BMA's partition, ...) cannot change.
 * Return: CURV_OK; CURV_E_CONFIG (unknown key, bad value, or a fixed
 * parameter: the text names it); CURV_E_STATE (a request is pending);
 * CURV_E_INVALID (NULL); CURV_E_NOMEM. On failure nothing changes.
 */
CURV_API curv_status curv_opt_reconfigure(curv_opt *o, const curv_config *changes, curv_error *err);

/*
 * curv_opt_save - serialize kind, layout, resolved hyperparameters and the
 * whole state into one portable blob (see lib/src/state.c for the format).
 * While a request is pending the blob holds the state from before that
 * step and marks it interrupted (curv_opt_interrupted).
 * Return CURV_OK with the blob and its length, CURV_E_INVALID (NULL
 * arguments) or CURV_E_NOMEM.
 * Ownership: caller frees *blob with curv_free().
 */
CURV_API curv_status curv_opt_save(const curv_opt *o, unsigned char **blob, size_t *len,
                                   curv_error *err);

/* One part of a saved state: a byte range of the blob and a stamp. */
typedef struct curv_state_part {
    size_t offset, len; /* bytes [offset, offset+len) of the blob; parts tile it in order */
    uint64_t stamp;     /* 0: may have changed. Otherwise equal stamps of the same part index
                           in two blobs of this optimizer (across save/load too) guarantee
                           byte-identical contents, as long as both blobs have the same parts
                           layout (count, offsets, lengths). */
} curv_state_part;

/*
 * curv_opt_save_parts - curv_opt_save(), plus how the blob divides into
 * parts, so that a store can rewrite only the parts that changed.
 * The blob is byte for byte what curv_opt_save() returns; the parts only
 * describe it. *@parts (*@n_parts entries) tile [0, *@len) in order, none
 * empty. The parts layout (count, offsets, lengths) depends on the kind,
 * the layout and the settings (a list setting such as lr_milestones that
 * changes length shifts it), never on the values in the state (sgd's
 * momentum buffer, created by its first step with momentum, adds a part).
 *
 * Stamps: the header (kind, layout, settings, step count, small scalars)
 * and the CRC trailer change with every save and have stamp 0. The large
 * arrays carry stamps derived from the saved state itself, so a loaded
 * optimizer saves the same stamps again: every kind stamps its arrays by
 * the number of completed steps (they change only when a step completes;
 * a blob saved mid-step holds the state from before that step); K-FAC
 * stamps each factor by its block's number of statistics updates, each
 * eigendecomposition (Q, w and π) by the step of its refresh (a refresh
 * that fails keeps the old one and its stamp), and a tridiagonal chain's
 * cross factors and their snapshot likewise.
 * "This optimizer" means one history: the optimizer, and optimizers loaded
 * from its blobs and stepped on from there. Two histories that part from
 * one blob (an older blob loaded and stepped with other input, or one
 * blob loaded twice) are not comparable: a consumer that goes back to an
 * older blob must compare what follows with that blob's parts, not with
 * parts it stored later. Compare stamps with those of the blob actually
 * stored, and treat a different parts layout as all parts changed. The
 * trailer's CRC is computed over the whole blob at every save, so
 * curv_opt_load() checks a blob reassembled from stored parts as a whole.
 *
 * Return CURV_OK; CURV_E_INVALID (NULL arguments); CURV_E_NOMEM.
 * Ownership: caller frees *@blob and *@parts with curv_free(). Outputs are
 * written only on success.
 */
CURV_API curv_status curv_opt_save_parts(const curv_opt *o, unsigned char **blob, size_t *len,
                                         curv_state_part **parts, size_t *n_parts, curv_error *err);

/*
 * curv_opt_load - recreate an optimizer from a blob of curv_opt_save().
 * A corrupted, truncated or foreign blob is CURV_E_CORRUPT (or CURV_E_VERSION
 * for a newer format), never a crash. Stepping the loaded optimizer gives
 * results bit-identical to the one that was saved.
 * Ownership: caller frees *out with curv_opt_free().
 */
CURV_API curv_status curv_opt_load(const unsigned char *blob, size_t len, curv_opt **out,
                                   curv_error *err);

/* curv_free - release memory the library handed out (blobs). */
CURV_API void curv_free(void *p);

#endif
