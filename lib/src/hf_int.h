/* SPDX-License-Identifier: MIT */
/* Hessian-free optimization: state shared by hf.c (the step state machine),
 * hf_cg.c (preconditioned CG) and hf_select.c (CG-backtracking, the
 * Levenberg-Marquardt rule and the line search). */
#ifndef CURV_HF_INT_H
#define CURV_HF_INT_H

#include "opt_int.h"

enum { HF_DAMP_TIKHONOV = 0, HF_DAMP_DIAG = 1 };
enum { HF_PRECOND_FISHER = 0, HF_PRECOND_NONE = 1 };
enum { HF_RHO_UNDAMPED = 0, HF_RHO_DAMPED = 1 };
enum { HF_WARM_LAST = 0, HF_WARM_CHOSEN = 1 };

struct hf_hyper {
    struct curv__sched sched;
    double lambda, lambda_min, lambda_max;
    int adapt_lambda;
    double lm_high, lm_low, lm_decrease, lm_increase;
    int rho_model;
    int damping;
    double damping_xi, damping_kappa;
    int precond;
    double precond_xi, precond_kappa;
    int64_t cg_min, cg_max, cg_window;
    double cg_window_frac, cg_eps;
    double zeta;
    int warm_start;
    int backtrack;
    double backtrack_nu;
    int64_t backtrack_batch;
    double ls_c, ls_beta;
    int64_t ls_max, ls_batch;
    int64_t max_request_values;
};

/* Why CG stopped (the report's cg_stop). */
enum {
    HF_STOP_PROGRESS = 0,  /* relative progress below cg_eps (thesis eq. 4.2) */
    HF_STOP_MAX = 1,       /* cg_max iterations */
    HF_STOP_CURVATURE = 2, /* p^T A p <= 0 or overflowing, or a step that would overflow */
    HF_STOP_CONVERGED = 3  /* r^T P^-1 r = 0: x is the exact minimizer */
};

enum hf_phase { HF_IDLE = 0, HF_AX0, HF_CG, HF_BACKTRACK, HF_LINESEARCH };

/*
 * Everything a step builds and discards. None of it is saved: a blob
 * written while a request is pending holds struct hf_state only, so the
 * loaded optimizer takes the step again from its beginning.
 */
struct hf_work {
    size_t max_iters, slots, ls_slots; /* capacities the buffers were sized for */
    double *g;                         /* the step's gradient (b = -g) */
    double *pinv;                      /* diagonal of P^-1 */
    double *dvec;                      /* diagonal of the damping matrix D (NULL: D = I) */
    double *x, *r, *p;
    double *q;       /* q(x_i) = (r_i - b)^T x_i / 2 for i = 0..iters */
    double *snap;    /* slots x d: stored CG iterates, then the final one */
    size_t *snap_it; /* the CG iteration of each slot */
    double *ls;      /* ls_slots x d: the line search's α·δ */
    enum hf_phase phase;
    double h0, lambda;   /* h(θ) of the step; λ during the step */
    int warm;            /* x_0 ≠ 0 */
    double ry, pmax, pr; /* r_iᵀP⁻¹r_i; max |p_i|; p_iᵀr_i */
    size_t iters, stop, n_snap, next_store, store_exp;
    /* CG-backtracking: candidates [0, bt_end) not yet asked about. */
    size_t bt_end, bt_batch, best;
    double best_loss, earliest_loss;
    /* The chosen δ and what the rest of the step needs about it. */
    const double *delta;
    double h_delta, g_delta, d_delta, delta_norm, model, model_damped, rho, lambda_next;
    size_t ls_tried, ls_n;
    int restarted;
    unsigned round_trips, products, losses;
};

/* The committed state: what curv_opt_save writes. */
struct hf_state {
    uint64_t seq;      /* last request seq issued (never reused, even across loads) */
    double lambda;     /* the adapted λ */
    double lambda_set; /* the 'lambda' setting λ was last taken from */
    double *prev;      /* the vector ζ scales for the next warm start */
    struct hf_work w;
};

/* ---- hf_cg.c: preconditioned CG (thesis Algorithm 2) ---- */

/* Build P^-1 (and D for scale-sensitive damping) for this step, §4.9.2. */
void curv__hf_prepare(const struct hf_hyper *h, struct hf_work *w, size_t d, const double *grad_sq);
/* x_0 = 0: r_0 = -b = g, p_0 = -P^-1 r_0. */
void curv__hf_start_zero(const struct hf_hyper *h, struct hf_work *w, size_t d);
/* x_0 given, @gx = G x_0 from the trainer: r_0 = A x_0 - b, p_0. */
void curv__hf_start_from(const struct hf_hyper *h, struct hf_work *w, size_t d, const double *gx);
/* c = {p_iᵀA p_i, max |A p_i|} for @gp = G p_i; reads, writes nothing.
 * pᵀAp is NaN or ±Inf whenever some (G p)_i is: each term p_i·(A p)_i is
 * then NaN or ±Inf (0·Inf is NaN), and a sum never returns to finite. */
void curv__hf_curvature(const struct hf_work *w, size_t d, const double *gp, double c[2]);
/* One CG iteration with @gp = G p_i and @c from curv__hf_curvature;
 * returns 1 when CG has stopped (w->stop). */
int curv__hf_iterate(const struct hf_hyper *h, struct hf_work *w, size_t d, const double *gp,
                     const double c[2]);
/* After a stop: the backtracking candidates in w->snap, the final iterate last. */
void curv__hf_collect(struct hf_work *w, size_t d);
/* Number of slots the iterate schedule needs for @max_iters iterations. */
size_t curv__hf_schedule_slots(double nu, size_t max_iters);
/* Σ dvec_i a_i² (dvec NULL: Σ a_i²). */
double curv__hf_wnorm2(const double *dvec, const double *a, size_t n);

/* ---- hf_select.c: CG-backtracking, LM and the line search ---- */

/* Take the losses of the candidates last asked about; returns 1 when the
 * choice is made (w->delta and the rest set), 0 to ask for earlier ones. */
int curv__hf_backtrack_answer(struct hf_work *w, size_t d, const double *loss);
/* ρ (thesis eq. 4.9) and the Levenberg-Marquardt rule (§4.6.5). */
void curv__hf_levenberg_marquardt(const struct hf_hyper *h, struct hf_work *w);
/* Sufficient decrease (§4.6.8) at step size @alpha with loss @h_alpha. */
int curv__hf_armijo(const struct hf_hyper *h, const struct hf_work *w, double alpha,
                    double h_alpha);
/* Vectors of d per LOSS request: @batch, fewer when max_request_values
 * numbers would not hold them, one at least. */
size_t curv__hf_per_request(const struct hf_hyper *h, int64_t batch, size_t d);
/* Fill the next batch of α·δ; returns the number of vectors (0: none left). */
size_t curv__hf_linesearch_batch(const struct hf_hyper *h, struct hf_work *w, size_t d);
/* Step size j of the line search, counting from 1: β^j. */
double curv__hf_alpha(const struct hf_hyper *h, size_t j);

#endif
