/* SPDX-License-Identifier: MIT */
/*
 * Hessian-free optimization (Martens' thesis ch. 4, Algorithm 3) as a
 * resumable state machine: the library has no model, so every curvature
 * product and every loss comes from the trainer as the answer to a
 * request. One step (outer iteration k):
 *
 *   curv_opt_step(grad = ∇h(θ_k) on the gradient batch S', loss = h(θ_k)
 *                 on S', grad_sq = mean over S' of squared per-example
 *                 gradients when the preconditioner or diag damping is on)
 *   -> CURVATURE_PRODUCT x_0            only when warm-starting (x_0 = ζ·prev)
 *   -> CURVATURE_PRODUCT p_0, p_1, ...  one per CG iteration
 *   -> LOSS [stored CG iterates]        CG-backtracking, one batch (usually)
 *   -> LOSS [β·δ, β²·δ, ...]            only when α = 1 fails the line search
 *   -> CURV_OK with the update Δ = η_t·α·δ and the step report.
 *
 * What the trainer answers:
 *  - CURVATURE_PRODUCT (n_vectors = 1): G·v, the mean over the curvature
 *    mini-batch S'' of J_xᵀ H_L J_x v (the generalized Gauss-Newton matrix,
 *    thesis §3.4, §4.4.1), WITHOUT damping: the library adds λ·D·v itself.
 *  - LOSS (n_vectors candidates): h(θ_k + v) for each vector v, on the same
 *    cases as the step's loss (ρ and the line search compare them with it).
 * θ_k and S'' must stay fixed for the whole step: CG is only defined for
 * one fixed matrix, and re-sampling inside CG makes it diverge (§4.2).
 *
 * Only the committed state (λ, the warm-start vector, the request counter)
 * is saved; the in-flight CG vectors live in struct hf_work. A blob saved
 * while a request is pending therefore restarts that step from its
 * beginning; the step's report then says restarted = 1. The request
 * counter is saved as it stands, so seqs are never reused, not even by a
 * restarted step: a late answer to an abandoned request cannot match.
 *
 * The report (curv_opt_report) after each step:
 *   cg_iterations       CG updates made (x_0 -> x_N)
 *   cg_stop             0 progress test (eq. 4.2), 1 cg_max, 2 pᵀAp <= 0 or
 *                       overflow (x_i kept), 3 exact convergence (rᵀP⁻¹r = 0)
 *   chosen_iterate      CG iteration of the δ backtracking chose
 *   candidates          stored iterates offered to backtracking
 *   rho                 ρ of eq. 4.9 (0 when the model predicts no decrease)
 *   lambda              λ after the LM rule (the next step's λ)
 *   model_value         M(δ) − M(0) = ∇hᵀδ + ½δᵀGδ, the undamped model
 *   model_value_damped  q(δ) = M̂(δ) − M̂(0), which CG minimized
 *   line_search_alpha   α (1, β^j, or 0 when the step was rejected)
 *   loss_before         h(θ), as sent with the step
 *   loss_after          h(θ + α·δ) as the trainer reported it
 *   grad_norm, update_norm  ‖∇h‖ and ‖Δ‖
 *   round_trips, curvature_products, loss_evaluations  this step's requests
 *   restarted           1 when the step was taken again after an interruption
 *   lambda_used         λ during this step
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hf_int.h"

#define H struct hf_hyper

static const struct curv__param PARAMS[] = {
    CURV__SCHED_PARAMS(H, sched, 1.0, CURV__SCHED_LR_DOC),
    CURV__REAL(H, lambda, "lambda", 0.3, 0, 1e100,
               "damping strength λ to start from (thesis §4.13: 0.3 without structural damping); "
               "the LM rule then adapts it. Setting it again (reconfigure) restarts λ from the "
               "new value"),
    CURV__REAL(H, lambda_min, "lambda_min", 1e-12, 0, 1e100,
               "lower clamp of the LM rule (not in the thesis; keeps λ from underflowing to 0)"),
    CURV__REAL(H, lambda_max, "lambda_max", 1e100, 0, 1e100, "upper clamp of the LM rule"),
    CURV__BOOL(H, adapt_lambda, "adapt_lambda", 1,
               "adapt λ by the Levenberg-Marquardt rule (§4.6.5); 0 keeps it fixed"),
    CURV__REAL(H, lm_high, "lm_rho_high", 0.75, -10, 10, "ρ above this: λ ← lm_decrease·λ"),
    CURV__REAL(H, lm_low, "lm_rho_low", 0.25, -10, 10, "ρ below this: λ ← lm_increase·λ"),
    CURV__REAL(H, lm_decrease, "lm_decrease", 2.0 / 3.0, 1e-6, 1, "LM factor for a good ρ"),
    CURV__REAL(H, lm_increase, "lm_increase", 1.5, 1, 1e6, "LM factor for a bad ρ"),
    CURV__ENUM(H, rho_model, "rho_model", "undamped", "undamped|damped",
               "denominator of ρ: the undamped model M(δ) − M(0) (eq. 4.9) or the damped one"),
    CURV__ENUM(H, damping, "damping", "tikhonov", "tikhonov|diag",
               "damping matrix D in A = G + λD: tikhonov D = I (§4.6.1); diag D = "
               "diag((F̄ + damping_kappa)^damping_xi), F̄ = grad_sq, the scale-sensitive "
               "damping of §4.6.3 (damping_xi = 1: Levenberg-Marquardt's diag(B))"),
    CURV__REAL(H, damping_xi, "damping_xi", 1, 0, 1, "exponent of diag damping"),
    CURV__REAL(H, damping_kappa, "damping_kappa", 0, 0, 1e100,
               "added to F̄ in diag damping (> 0 keeps A positive definite where F̄ is 0)"),
    CURV__ENUM(H, precond, "precond", "fisher_diag", "fisher_diag|none",
               "CG preconditioner: P = (diag(F̄) + λ·diag(D) + precond_kappa)^precond_xi, F̄ = "
               "grad_sq (the empirical Fisher diagonal, §4.9.2-4.9.3), or none (P = I)"),
    CURV__REAL(H, precond_xi, "precond_xi", 0.75, 0, 1, "exponent ξ of the preconditioner"),
    CURV__REAL(H, precond_kappa, "precond_kappa", 0, 0, 1e100,
               "κ of the preconditioner (§4.11: about 1e-2·mean(diag D) with diag damping)"),
    CURV__INT(H, cg_min, "cg_min", 1, 1, 1e6, "CG iterations before the progress test may stop CG"),
    CURV__INT(H, cg_max, "cg_max", 250, 1, 1e6,
              "CG iterations at most (Martens 2010: 250; §4.11: 25-50 for the momentum-like "
              "variant)"),
    CURV__INT(H, cg_window, "cg_window", 10, 1, 1e6,
              "least window k of the progress test s_j = (q_j − q_{j−k})/q_j (eq. 4.2)"),
    CURV__REAL(H, cg_window_frac, "cg_window_frac", 0.1, 0, 1,
               "k = max(cg_window, floor(cg_window_frac·j)) (eq. 4.2: max(10, j/10))"),
    CURV__REAL(H, cg_eps, "cg_eps", 1e-4, 0, 1,
               "CG stops when j > k, q_j < 0 and s_j < cg_eps (eq. 4.2)"),
    CURV__REAL(H, zeta, "zeta", 0.95, 0, 1,
               "CG starts from x_0 = ζ·(previous solution) (§4.8); 0 starts from 0"),
    CURV__ENUM(H, warm_start, "warm_start", "last", "last|chosen",
               "previous solution for the warm start: the last CG iterate, or the iterate "
               "CG-backtracking chose"),
    CURV__BOOL(H, backtrack, "backtrack", 1,
               "CG-backtracking (§4.6.7): choose among the stored iterates by their loss"),
    CURV__REAL(H, backtrack_nu, "backtrack_nu", 1.3, 1.01, 100,
               "iterates round(ν^m) are stored for backtracking (not given in the thesis; 1.3 "
               "as in Martens 2010's code); the memory is about log_ν(cg_max) vectors of d"),
    CURV__INT(H, backtrack_batch, "backtrack_batch", 32, 1, 1e6,
              "stored iterates per LOSS request, latest first"),
    CURV__REAL(H, ls_c, "ls_c", 1e-2, 0, 0.999,
               "sufficient decrease h(θ+αδ) <= h(θ) + c·α·∇hᵀδ of the line search (§4.6.8)"),
    CURV__REAL(H, ls_beta, "ls_beta", 0.8, 0.01, 0.99,
               "line search step factor: α = 1, β, β², ... (not given in the thesis)"),
    CURV__INT(H, ls_max, "ls_max", 60, 0, 10000,
              "step sizes below 1 tried before the step is rejected (α = 0)"),
    CURV__INT(H, ls_batch, "ls_batch", 8, 1, 10000, "line-search step sizes per LOSS request"),
    CURV__INT(H, max_request_values, "max_request_values", 16777216, 1, 1e15,
              "numbers (vectors x d) in one LOSS request at most: backtrack_batch and ls_batch "
              "shrink to fit, one vector at least (2^24: 64 MB in FP32)"),
};

#undef H

static void work_free(struct hf_work *w)
{
    curv__free(w->g);
    curv__free(w->pinv);
    curv__free(w->dvec);
    curv__free(w->x);
    curv__free(w->r);
    curv__free(w->p);
    curv__free(w->q);
    curv__free(w->snap);
    curv__free(w->snap_it);
    curv__free(w->ls);
    *w = (struct hf_work){0};
}

/* Size the in-flight buffers for the current settings (they may change
 * between steps). On failure the work is empty and nothing else changed. */
static curv_status work_ensure(curv_opt *o, struct hf_work *w, curv_error *err)
{
    const struct hf_hyper *h = o->hyper;
    const size_t d = o->dim, iters = (size_t)h->cg_max;
    const size_t ls = curv__hf_per_request(h, h->ls_batch, d);
    const size_t slots = h->backtrack ? curv__hf_schedule_slots(h->backtrack_nu, iters) : 1;
    const int diag = h->damping == HF_DAMP_DIAG;
    if (w->g && w->max_iters >= iters && w->slots >= slots && w->ls_slots >= ls &&
        !!w->dvec == diag)
        return CURV_OK;
    work_free(w);
    size_t sd, ld;
    int ok = curv__mul_ok(slots, d, &sd) && curv__mul_ok(ls, d, &ld);
    if (ok) {
        w->g = curv__calloc_n(d, sizeof(double));
        w->pinv = curv__calloc_n(d, sizeof(double));
        w->dvec = diag ? curv__calloc_n(d, sizeof(double)) : NULL;
        w->x = curv__calloc_n(d, sizeof(double));
        w->r = curv__calloc_n(d, sizeof(double));
        w->p = curv__calloc_n(d, sizeof(double));
        w->q = curv__calloc_n(iters + 1, sizeof(double));
        w->snap = curv__calloc_n(sd, sizeof(double));
        w->snap_it = curv__calloc_n(slots, sizeof(size_t));
        w->ls = curv__calloc_n(ld, sizeof(double));
        ok = w->g && w->pinv && (w->dvec || !diag) && w->x && w->r && w->p && w->q && w->snap &&
             w->snap_it && w->ls;
    }
    if (!ok) {
        work_free(w);
        return curv__fail(err, CURV_E_NOMEM,
                          "hf: out of memory for the step's vectors: %zu + %zu stored iterates + "
                          "%zu line-search vectors of d = %zu",
                          (size_t)(diag ? 6 : 5), slots, ls, d);
    }
    w->max_iters = iters;
    w->slots = slots;
    w->ls_slots = ls;
    return CURV_OK;
}

static void hf_fini(curv_opt *o)
{
    struct hf_state *s = o->impl;
    work_free(&s->w);
    curv__free(s->prev);
    curv__free(s);
}

#define HF_REPORT_ENTRIES 16

static curv_status hf_init(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    const struct hf_hyper *h = o->hyper;
    struct hf_state scratch, *s = curv__tally_obj(t, &scratch, sizeof *s);
    if (!s)
        return curv__fail(err, CURV_E_NOMEM, "hf: out of memory");
    o->impl = s;
    s->prev = curv__tally_calloc(t, o->dim, sizeof(double));
    if (t->failed)
        return curv__fail(err, CURV_E_NOMEM, "hf: out of memory for d = %zu", o->dim);
    s->lambda = s->lambda_set = h->lambda;
    return curv__report_reserve(o, t, HF_REPORT_ENTRIES, err);
}

/* Issue a request; seqs count up over the optimizer's whole life. */
static curv_status ask(curv_opt *o, curv_request *req, enum hf_phase phase, curv_request_kind kind,
                       const double *v, size_t n)
{
    struct hf_state *s = o->impl;
    s->w.phase = phase;
    s->w.round_trips++;
    *req =
        (curv_request){.kind = kind, .seq = ++s->seq, .n_vectors = n, .dim = o->dim, .vectors = v};
    return CURV_NEED_INPUT;
}

static void report(curv_opt *o, const struct hf_work *w, double alpha, double h_after)
{
    const struct {
        const char *name;
        double value;
    } e[HF_REPORT_ENTRIES] = {
        {"cg_iterations", (double)w->iters},
        {"cg_stop", (double)w->stop},
        {"chosen_iterate", w->best < w->n_snap ? (double)w->snap_it[w->best] : 0.0},
        {"candidates", (double)w->n_snap},
        {"rho", w->rho},
        {"lambda", w->lambda_next},
        {"model_value", w->model},
        {"model_value_damped", w->model_damped},
        {"line_search_alpha", alpha},
        {"loss_before", w->h0},
        {"loss_after", h_after},
        {"round_trips", (double)w->round_trips},
        {"curvature_products", (double)w->products},
        {"loss_evaluations", (double)w->losses},
        {"restarted", (double)w->restarted},
        {"lambda_used", w->lambda},
    };
    for (size_t i = 0; i < HF_REPORT_ENTRIES; i++)
        curv__report_add(o, e[i].value, "%s", e[i].name);
}

/* The end of a step: Δ = η_t·α·δ, and the committed state moves on. */
static curv_status finish(curv_opt *o, double *delta, double alpha, double h_after)
{
    const struct hf_hyper *h = o->hyper;
    struct hf_state *s = o->impl;
    struct hf_work *w = &s->w;
    const double lr = curv__sched_lr(&h->sched, o->t + 1), scale = lr * alpha;
    for (size_t i = 0; i < o->dim; i++)
        delta[i] = scale * w->delta[i];
    const double *next = h->warm_start == HF_WARM_CHOSEN ? w->delta : w->x;
    memcpy(s->prev, next, o->dim * sizeof(double));
    s->lambda = w->lambda_next;
    s->lambda_set = h->lambda;
    w->phase = HF_IDLE;
    report(o, w, alpha, h_after);
    return CURV_OK;
}

static curv_status ask_linesearch(curv_opt *o, double *delta, curv_request *req)
{
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    size_t n = curv__hf_linesearch_batch(o->hyper, w, o->dim);
    if (n == 0) /* every step size failed: reject the step (§4.6.8) */
        return finish(o, delta, 0.0, w->h0);
    return ask(o, req, HF_LINESEARCH, CURV_REQ_LOSS, w->ls, n);
}

/* δ chosen: ρ and λ, then α = 1 or the line search. */
static curv_status chosen(curv_opt *o, double *delta, curv_request *req)
{
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    curv__hf_levenberg_marquardt(o->hyper, w);
    if (curv__hf_armijo(o->hyper, w, 1.0, w->h_delta))
        return finish(o, delta, 1.0, w->h_delta);
    w->ls_tried = 0;
    return ask_linesearch(o, delta, req);
}

static curv_status ask_backtrack(curv_opt *o, curv_request *req)
{
    const struct hf_hyper *h = o->hyper;
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    size_t n = curv__hf_per_request(h, h->backtrack_batch, o->dim);
    if (n > w->bt_end)
        n = w->bt_end;
    w->bt_batch = n;
    return ask(o, req, HF_BACKTRACK, CURV_REQ_LOSS, w->snap + (w->bt_end - n) * o->dim, n);
}

/* CG has stopped: ask for the candidates' losses, unless δ is 0 (a zero
 * gradient and no warm start), which needs no loss and leaves λ alone. */
static curv_status end_cg(curv_opt *o, double *delta, curv_request *req)
{
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    curv__hf_collect(w, o->dim);
    w->best_loss = w->earliest_loss = INFINITY;
    if (w->iters > 0 || w->warm)
        return ask_backtrack(o, req);
    w->best = 0;
    w->delta = w->snap;
    w->h_delta = w->h0;
    w->g_delta = w->d_delta = w->delta_norm = w->model = w->model_damped = w->rho = 0;
    w->lambda_next = w->lambda;
    return finish(o, delta, 1.0, w->h0);
}

static curv_status after_start(curv_opt *o, double *delta, curv_request *req)
{
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    if (w->ry > 0)
        return ask(o, req, HF_CG, CURV_REQ_CURVATURE_PRODUCT, w->p, 1);
    return end_cg(o, delta, req); /* x_0 solves the system already */
}

static curv_status check_inputs(const curv_opt *o, const struct curv__step_args *a, curv_error *err)
{
    const struct hf_hyper *h = o->hyper;
    if (!a->has_loss)
        return curv__fail(err, CURV_E_INVALID,
                          "hf: the step needs loss (has_loss = 1): h(θ) on the gradient "
                          "mini-batch, which ρ and the line search compare with");
    const char *user = h->precond == HF_PRECOND_FISHER ? "precond = fisher_diag"
                       : h->damping == HF_DAMP_DIAG    ? "damping = diag"
                                                       : NULL;
    if (user && !a->grad_sq)
        return curv__fail(err, CURV_E_INVALID,
                          "hf: grad_sq is missing: %s needs the mean over the mini-batch of "
                          "squared per-example gradients (or set precond = none and damping = "
                          "tikhonov)",
                          user);
    return CURV_OK;
}

static curv_status hf_step(curv_opt *o, const struct curv__step_args *a, double *delta,
                           curv_request *req, curv_error *err)
{
    const struct hf_hyper *h = o->hyper;
    struct hf_state *s = o->impl;
    struct hf_work *w = &s->w;
    const size_t d = o->dim;
    curv_status st = check_inputs(o, a, err);
    if (st == CURV_OK)
        st = work_ensure(o, w, err);
    if (st != CURV_OK)
        return st;
    w->h0 = a->loss;
    w->lambda = h->lambda != s->lambda_set ? h->lambda : s->lambda;
    w->restarted = o->interrupted;
    w->round_trips = w->products = w->losses = 0;
    w->best = SIZE_MAX;
    memcpy(w->g, a->g, d * sizeof(double));
    curv__hf_prepare(h, w, d, a->grad_sq);
    w->warm = 0;
    for (size_t i = 0; i < d && h->zeta > 0; i++) {
        w->x[i] = h->zeta * s->prev[i];
        w->warm |= w->x[i] != 0;
    }
    if (w->warm) /* r_0 = A x_0 − b needs G x_0 before p_0 exists */
        return ask(o, req, HF_AX0, CURV_REQ_CURVATURE_PRODUCT, w->x, 1);
    curv__hf_start_zero(h, w, d);
    return after_start(o, delta, req);
}

/* G·p for a CG iteration. The front end leaves the NaN/Inf check to the
 * kind (checks_answers): pᵀAp reads every value anyway and is finite
 * exactly when they all are (or overflows), so the d-long scan runs only
 * then, to name the bad value. Nothing is written before the check. */
static curv_status resume_cg(curv_opt *o, const double *gp, double *delta, curv_request *req,
                             curv_error *err)
{
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    double c[2];
    curv__hf_curvature(w, o->dim, gp, c);
    if (!isfinite(c[0])) {
        curv_status st = curv__answer_finite(o, gp, o->dim, err);
        if (st != CURV_OK)
            return st;
    }
    w->products++;
    if (!curv__hf_iterate(o->hyper, w, o->dim, gp, c))
        return ask(o, req, HF_CG, CURV_REQ_CURVATURE_PRODUCT, w->p, 1);
    return end_cg(o, delta, req);
}

static curv_status hf_resume(curv_opt *o, const curv_response *resp, double *delta,
                             curv_request *req, curv_error *err)
{
    const struct hf_hyper *h = o->hyper;
    struct hf_work *w = &((struct hf_state *)o->impl)->w;
    const size_t d = o->dim;
    const double *v = resp->values;
    if (w->phase == HF_CG)
        return resume_cg(o, v, delta, req, err);
    curv_status st = curv__answer_finite(o, v, resp->n_values, err);
    if (st != CURV_OK)
        return st;
    switch (w->phase) {
    case HF_AX0:
        w->products++;
        curv__hf_start_from(h, w, d, v);
        return after_start(o, delta, req);
    case HF_BACKTRACK:
        w->losses += (unsigned)w->bt_batch;
        if (!curv__hf_backtrack_answer(w, d, v))
            return ask_backtrack(o, req);
        return chosen(o, delta, req);
    case HF_LINESEARCH:
        w->losses += (unsigned)w->ls_n;
        for (size_t j = 0; j < w->ls_n; j++) {
            double alpha = curv__hf_alpha(h, w->ls_tried + j + 1);
            if (curv__hf_armijo(h, w, alpha, v[j]))
                return finish(o, delta, alpha, v[j]);
        }
        w->ls_tried += w->ls_n;
        return ask_linesearch(o, delta, req);
    default:
        return curv__fail(err, CURV_E_STATE, "hf: no request is pending");
    }
}

/* Saved: u64 seq, f64 λ, f64 the 'lambda' setting it follows, d x f64 prev. */
static size_t hf_saved(const curv_opt *o)
{
    return o->dim > SIZE_MAX - 3 ? SIZE_MAX : o->dim + 3;
}

static void hf_save(const curv_opt *o, struct curv__writer *w)
{
    const struct hf_state *s = o->impl;
    curv__w_u64(w, s->seq);
    curv__w_f64(w, s->lambda);
    curv__w_f64(w, s->lambda_set);
    curv__w_part(w, curv__steps_stamp(o));
    curv__w_f64s(w, s->prev, o->dim);
}

static curv_status hf_load(curv_opt *o, struct curv__reader *r, curv_error *err)
{
    (void)err;
    struct hf_state *s = o->impl;
    s->seq = curv__r_u64(r);
    s->lambda = curv__r_f64(r);
    s->lambda_set = curv__r_f64(r);
    curv__r_f64s(r, s->prev, o->dim);
    /* As steps leave them: finite, λ >= 0. */
    if (!(s->lambda >= 0) || !isfinite(s->lambda) || !(s->lambda_set >= 0) ||
        !isfinite(s->lambda_set) || curv__first_nonfinite(s->prev, o->dim) < o->dim)
        r->bad = 1;
    return CURV_OK;
}

const struct curv__opt_vt curv__hf_vt = {
    .params = PARAMS,
    .n_params = sizeof PARAMS / sizeof PARAMS[0],
    .hyper_size = sizeof(struct hf_hyper),
    .init = hf_init,
    .fini = hf_fini,
    .step = hf_step,
    .resume = hf_resume,
    .save = hf_save,
    .load = hf_load,
    .saved_doubles = hf_saved,
    .inputs = CURV_INPUT_GRAD_SQ,
    .checks_answers = 1,
};
